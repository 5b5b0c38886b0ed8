"""The command line: check explains, validate judges, user errors exit 2 without a traceback."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import jsonpatch
import pytest
import yaml

from tests.builders import pod_body
from webhook.cli import bundled_example, main

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
    from webhook.tls.certs import load_certificates, verify_chain

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
