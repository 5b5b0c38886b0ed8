"""The command line: check explains, validate judges, user errors exit 2 without a traceback."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonpatch
import pytest
import yaml

from tests.builders import pod_body
from webhook.cli import SERVE_OPTIONS, build_parser, main, settings_from_args
from webhook.config import KubeSettings, Settings
from webhook.examples import bundled_example

README = Path(__file__).parent.parent / "README.md"


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), out=out)
    return code, out.getvalue()


def test_check_on_the_bundled_example_explains_every_container() -> None:
    code, text = run("check")
    assert code == 0
    assert "Deployment/web (namespace team-a)" in text
    assert "initContainer 'migrate'" in text
    assert "normalized: docker.io/library/nginx:1.27" in text
    assert "rule:       artifact-registry -> secret gar-pull" in text
    assert "rule:       internal -> secret internal-pull" in text
    assert "inject: gar-pull, dockerhub-pull, internal-pull" in text
    assert '{"op":"add","path":"/spec/imagePullSecrets"' in text
    # The excluded namespace and the unknown labels are explained, not hidden.
    assert "namespace 'team-sandbox' is in namespaces.exclude" in text
    assert "labels are unknown" in text


def test_check_json_patch_applies_to_the_template_pod() -> None:
    code, text = run("check", "--output", "json")
    assert code == 0
    results = json.loads(text)
    web = next(r for r in results if r["object"] == "Deployment/web")
    assert web["inject"] == ["gar-pull", "dockerhub-pull", "internal-pull"]
    assert [c["rule"] for c in web["containers"]] == [
        "artifact-registry",
        "artifact-registry",
        "docker-hub",
        "internal",
    ]
    docs = list(yaml.safe_load_all(bundled_example("workloads.yaml").read_text()))
    template = docs[0]["spec"]["template"]
    pod = jsonpatch.apply_patch({"metadata": template["metadata"], "spec": template["spec"]}, web["patch"])
    assert [s["name"] for s in pod["spec"]["imagePullSecrets"]] == web["inject"]


def test_check_with_namespace_labels_evaluates_selectors(tmp_path: Path) -> None:
    manifest = tmp_path / "pod.yaml"
    manifest.write_text(yaml.safe_dump(pod_body("quay.io/org/app", name="p")))
    code, text = run("check", "-n", "apps", "--namespace-label", "pull-secrets=enabled", str(manifest))
    assert code == 0
    assert "rule:       quay -> secret quay-pull" in text


@pytest.mark.parametrize(
    "kind",
    ["Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob"],
)
def test_check_reads_every_workload_kind(tmp_path: Path, kind: str) -> None:
    template = {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "nginx"}]}}
    spec = {"jobTemplate": {"spec": {"template": template}}} if kind == "CronJob" else {"template": template}
    manifest = tmp_path / "w.json"
    manifest.write_text(json.dumps({"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": "w"}, "spec": spec}))
    code, text = run("check", "--output", "json", str(manifest))
    assert code == 0
    assert json.loads(text)[0]["inject"] == ["dockerhub-pull"]


def test_validate_good_policy() -> None:
    code, text = run("validate", str(bundled_example("policy.yaml")))
    assert code == 0
    assert "valid, 4 rule(s)" in text


def test_validate_bad_policy_exits_2_with_field_messages(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "policy.yaml"
    bad.write_text("rules:\n  - name: x\n    registries: [quay.io]\n    secrets: x\n")
    code, _ = run("validate", str(bad))
    err = capsys.readouterr().err
    assert code == 2
    assert "rules[0].secrets: unknown field" in err
    assert "rules[0].secret: Field required" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["check", "/nonexistent/pod.yaml"], "cannot read /nonexistent/pod.yaml"),
        (["check", "--policy", "/nonexistent/policy.yaml"], "cannot read policy"),
        (["check", "--namespace-label", "novalue"], "KEY=VALUE"),
        (["validate", "/nonexistent/policy.yaml"], "cannot read policy"),
    ],
    ids=["missing-manifest", "missing-policy", "bad-label", "validate-missing"],
)
def test_user_errors_exit_2(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = run(*args)
    err = capsys.readouterr().err
    assert code == 2
    assert message in err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("kind: [", "not valid YAML"),
        ("- 1\n- 2\n", "not a Kubernetes object"),
        ("kind: ConfigMap\nmetadata: {name: x}\n", "no Pods or Pod templates"),
        ("kind: Deployment\nmetadata: {name: x}\nspec: {}\n", "no Pod template"),
    ],
    ids=["yaml-syntax", "not-objects", "no-pods", "no-template"],
)
def test_bad_manifests_exit_2(tmp_path: Path, content: str, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = tmp_path / "m.yaml"
    manifest.write_text(content)
    code, _ = run("check", str(manifest))
    assert code == 2
    assert message in capsys.readouterr().err


def test_serve_without_policy_is_a_user_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = run("serve", "--no-kube", "--log-format", "text")
    assert code == 2
    assert "--policy is required" in capsys.readouterr().err


def test_python_dash_m_is_the_same_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "webhook", "validate", str(bundled_example("policy.yaml"))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout


def test_readme_check_example_matches_the_bundled_files() -> None:
    """The README shows the output of `check` on the bundled example: it must stay true."""
    text = README.read_text()
    start = text.index("<!-- check-output:start -->")
    end = text.index("<!-- check-output:end -->")
    block = text[start:end].split("```", 2)[1].removeprefix("text\n")
    _, output = run("check")
    assert block.strip() == output.strip()


def test_certs_writes_a_ca_and_a_serving_pair_for_the_service(tmp_path: Path) -> None:
    from webhook.tls.pki import load_certificates, verify_chain

    code, text = run("certs", "--service", "psi", "--namespace", "tools", "--out", str(tmp_path / "certs"))
    assert code == 0
    files = {p.name for p in (tmp_path / "certs").iterdir()}
    assert files == {"ca.crt", "tls.crt", "tls.key"}
    assert "tls.key" in text
    assert (tmp_path / "certs" / "tls.key").stat().st_mode & 0o077 == 0
    ca = (tmp_path / "certs" / "ca.crt").read_bytes()
    cert = (tmp_path / "certs" / "tls.crt").read_bytes()
    verify_chain(cert, ca, dns_name="psi.tools.svc")
    assert len(load_certificates(ca)) == 1


# --------------------------------------------------------------------------- serve: flags and PSI_* variables

#: One sample per ``serve`` option: (flag, text given, setting filled, value expected).
SAMPLES: list[tuple[str, str, str, Any]] = [
    ("--policy", "/etc/psi/policy.yaml", "policy.file", Path("/etc/psi/policy.yaml")),
    ("--policy-configmap", "psi-policy", "policy.configmap", "psi-policy"),
    ("--host", "127.0.0.1", "server.host", "127.0.0.1"),
    ("--port", "9443", "server.port", 9443),
    ("--cert-mode", "self", "certs.mode", "self"),
    ("--tls-cert", "/tls/tls.crt", "certs.tls_cert", Path("/tls/tls.crt")),
    ("--tls-key", "/tls/tls.key", "certs.tls_key", Path("/tls/tls.key")),
    ("--cert-secret", "psi-tls", "certs.secret_name", "psi-tls"),
    ("--service", "psi", "certs.service", "psi"),
    ("--webhook-config", "psi-hook", "certs.webhook_config", "psi-hook"),
    ("--cert-check-interval", "60", "certs.check_interval", 60.0),
    ("--cert-startup-timeout", "5.5", "certs.startup_timeout", 5.5),
    ("--namespace", "tools", "kube.namespace", "tools"),
    ("--kubeconfig", "/home/me/.kube/config", "kube.kubeconfig", Path("/home/me/.kube/config")),
    ("--metrics-port", "0", "server.metrics_port", 0),
    ("--ensure-timeout", "1.5", "kube.ensure_timeout", 1.5),
    ("--leader-election-lease", "psi-leader", "kube.lease_name", "psi-leader"),
    ("--resync-seconds", "60", "kube.resync_seconds", 60.0),
    ("--max-body-bytes", "1048576", "server.max_body_bytes", 1048576),
    ("--admission-timeout", "4", "server.admission_timeout", 4.0),
    ("--read-timeout", "2.5", "server.read_timeout", 2.5),
    ("--shutdown-delay", "5", "server.shutdown_delay", 5.0),
    ("--log-format", "text", "server.log_format", "text"),
    ("--log-level", "debug", "server.log_level", "DEBUG"),
    ("--ledger-configmap", "psi-ledger", "kube.ledger_configmap", "psi-ledger"),
    ("--mirror-check-budget", "0.5", "mirrors.check_budget", 0.5),
    ("--mirror-probe-timeout", "0.3", "mirrors.probe_timeout", 0.3),
    ("--mirror-ca-file", "/etc/psi/mirror-ca.pem", "mirrors.ca_file", Path("/etc/psi/mirror-ca.pem")),
    # issue 12: leader election durations, fail-open recovery
    ("--leader-election-lease-duration", "20", "kube.lease_duration", 20.0),
    ("--leader-election-renew-deadline", "9", "kube.renew_deadline", 9.0),
    ("--leader-election-retry-period", "1.5", "kube.retry_period", 1.5),
    ("--recovery-grace-seconds", "30", "recovery.grace_seconds", 30.0),
    ("--recovery-interval", "5", "recovery.interval", 5.0),
]
SWITCHES: list[tuple[list[str], dict[str, str], str, Any]] = [
    (["--no-kube"], {}, "kube.offline", True),
    (["--no-cleanup"], {}, "kube.cleanup", False),
    ([], {"PSI_CLEANUP": "false"}, "kube.cleanup", False),
    ([], {"PSI_CLEANUP": "Off"}, "kube.cleanup", False),
    (["--cleanup"], {"PSI_CLEANUP": "false"}, "kube.cleanup", True),
    (["--dev"], {}, "certs.mode", "dev"),
    (["--cert-mode", "self", "--dev"], {}, "certs.mode", "dev"),
    (["--recover-fail-open"], {}, "recovery.enabled", True),  # issue 12
    ([], {"PSI_RECOVER_FAIL_OPEN": "true"}, "recovery.enabled", True),
]


def setting(settings: Settings, name: str) -> Any:
    group, field_name = name.split(".")
    return getattr(getattr(settings, group), field_name)


def parse_serve(argv: list[str], env: dict[str, str] | None = None) -> Settings:
    return settings_from_args(build_parser().parse_args(["serve", *argv]), env={} if env is None else env)


def test_every_serve_option_has_a_sample() -> None:
    sampled = {flag for flag, *_ in SAMPLES} | {"--no-kube", "--cleanup", "--recover-fail-open"}
    assert sampled == {option.flag for option in SERVE_OPTIONS}


def test_no_flags_no_environment_is_the_dataclass_defaults() -> None:
    assert parse_serve([], {"POD_NAME": "web-1"}) == Settings(kube=KubeSettings(identity="web-1"))


@pytest.mark.parametrize(("flag", "text", "name", "value"), SAMPLES, ids=[s[0] for s in SAMPLES])
def test_a_flag_fills_its_setting(flag: str, text: str, name: str, value: Any) -> None:
    settings = parse_serve([flag, text])
    assert setting(settings, name) == value
    assert setting(settings, name) != setting(Settings(), name)  # the sample is not the default


@pytest.mark.parametrize(("flag", "text", "name", "value"), SAMPLES, ids=[s[0] for s in SAMPLES])
def test_an_environment_variable_fills_the_setting_of_an_absent_flag(
    flag: str, text: str, name: str, value: Any
) -> None:
    option = next(o for o in SERVE_OPTIONS if o.flag == flag)
    assert setting(parse_serve([], {option.env[0]: text}), name) == value


@pytest.mark.parametrize(
    ("argv", "env", "name", "value"),
    SWITCHES,
    ids=[
        "no-kube",
        "no-cleanup",
        "env-false",
        "env-off",
        "flag-over-env",
        "dev",
        "dev-last-wins",
        "recover",
        "recover-env",
    ],
)
def test_switches(argv: list[str], env: dict[str, str], name: str, value: Any) -> None:
    assert setting(parse_serve(argv, env), name) == value


@pytest.mark.parametrize(
    ("argv", "env", "name", "value"),
    [
        (["--port", "9443"], {"PSI_PORT": "9444"}, "server.port", 9443),
        ([], {"PSI_PORT": "9444"}, "server.port", 9444),
        ([], {"PSI_PORT": ""}, "server.port", 8443),
        ([], {"POD_NAMESPACE": "from-pod"}, "kube.namespace", "from-pod"),
        ([], {"PSI_NAMESPACE": "from-psi", "POD_NAMESPACE": "from-pod"}, "kube.namespace", "from-psi"),
        (["--namespace", "from-flag"], {"PSI_NAMESPACE": "from-psi"}, "kube.namespace", "from-flag"),
        ([], {"POD_NAME": "web-7"}, "kube.identity", "web-7"),
        ([], {"PSI_POLICY": ""}, "policy.file", None),
        ([], {"PSI_LEASE": "env-lease"}, "kube.lease_name", "env-lease"),
        ([], {"PSI_RESYNC": "30"}, "kube.resync_seconds", 30.0),
    ],
    ids=[
        "flag-over-env",
        "env-over-default",
        "empty-env-is-unset",
        "pod-namespace",
        "psi-over-pod-namespace",
        "flag-over-both",
        "pod-name-is-identity",
        "empty-policy",
        "lease-env",
        "resync-env",
    ],
)
def test_precedence_flag_then_environment_then_default(
    argv: list[str], env: dict[str, str], name: str, value: Any
) -> None:
    assert setting(parse_serve(argv, env), name) == value


def test_without_pod_name_the_identity_is_host_and_pid() -> None:
    identity = parse_serve([]).kube.identity
    assert identity.endswith(f"-{os.getpid()}")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No PSI_*/POD_* variable of the developer's shell leaks into ``main``."""
    for name in list(os.environ):
        if name.startswith(("PSI_", "POD_")) or name == "KUBERNETES_SERVICE_HOST":
            monkeypatch.delenv(name)
    return monkeypatch


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--port", "x"], {}, "argument --port: invalid int value: 'x'"),
        ([], {"PSI_PORT": "x"}, "PSI_PORT='x': invalid int value"),
        (["--port", "0"], {}, "--port: must be a port number, 1 to 65535 (got 0)"),
        ([], {"PSI_PORT": "70000"}, "PSI_PORT: must be a port number"),
        (["--metrics-port", "8443"], {}, "--metrics-port: must differ from the HTTPS port (8443)"),
        ([], {"PSI_MAX_BODY_BYTES": "1.5"}, "PSI_MAX_BODY_BYTES='1.5': invalid int value"),
        (["--ensure-timeout", "5"], {}, "--admission-timeout (default 3.0): must be larger than the ensure timeout"),
        (["--admission-timeout", "1"], {}, "--admission-timeout: must be larger than the ensure timeout (2s)"),
        (["--resync-seconds", "0"], {}, "--resync-seconds: must be greater than 0"),
        (["--shutdown-delay", "-1"], {}, "--shutdown-delay: must be 0 or more"),
        (["--namespace", ""], {}, "--namespace: must not be empty"),
        ([], {"PSI_CLEANUP": "maybe"}, "PSI_CLEANUP='maybe': expected true or false"),
        (["--log-format", "xml"], {}, "argument --log-format: invalid choice: 'xml'"),
        ([], {"PSI_LOG_FORMAT": "xml"}, "PSI_LOG_FORMAT: must be one of json, text"),
        ([], {"PSI_LOG_LEVEL": "loud"}, "PSI_LOG_LEVEL: must be one of DEBUG, INFO"),
        ([], {"PSI_CERT_MODE": "acme"}, "PSI_CERT_MODE: must be one of files, self, dev"),
        (["--no-kube", "--log-format", "text"], {}, "--policy is required"),
    ],
    ids=[
        "port-not-int",
        "env-port-not-int",
        "port-zero",
        "env-port-too-big",
        "metrics-port-clash",
        "env-body-not-int",
        "ensure-above-default-admission",
        "admission-below-ensure",
        "resync-zero",
        "negative-delay",
        "empty-namespace",
        "env-bad-bool",
        "bad-log-format",
        "env-bad-log-format",
        "env-bad-log-level",
        "env-bad-cert-mode",
        "no-policy",
    ],
)
def test_bad_serve_input_is_one_line_and_exit_2(
    argv: list[str],
    env: dict[str, str],
    message: str,
    clean_env: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in env.items():
        clean_env.setenv(name, value)
    try:
        code = main(["serve", *argv])
    except SystemExit as exc:  # argparse's own errors
        code = int(exc.code or 0)
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert "Traceback" not in err
