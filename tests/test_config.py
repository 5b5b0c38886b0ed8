"""The settings (``webhook.config``): their own checks, and the chart agreeing with their defaults.

The chart is rendered by real Helm (the helpers of ``tests/test_chart.py``), the Deployment's
args are parsed by the real CLI parser into :class:`Settings`, and what comes out is compared
with the dataclass defaults: a value the chart sets must equal the default unless it is listed
in :data:`DELIBERATE` with the reason, so a default changed on one side only fails here.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.test_chart import (
    CI_VALUES,
    FULLNAME,
    MIRROR_CA,
    MIRROR_CA_FILE,
    NAMESPACE,
    Rendered,
    default_values,
    render,
    render_ci,
)
from webhook.cli import build_parser, settings_from_args
from webhook.config import (
    CertSettings,
    KubeSettings,
    MirrorSettings,
    PolicySettings,
    ServerSettings,
    Settings,
    SettingsError,
)
from webhook.errors import UserError

#: What the downward API gives the container (the chart's ``env``).
POD_ENV = {"POD_NAME": "pullsecret-injector-7d9f-abcde", "POD_NAMESPACE": NAMESPACE}

#: values.yaml key -> the setting the flag it is passed as fills.
VALUE_SETTINGS: dict[str, str] = {
    "server.port": "server.port",
    "server.ensureTimeout": "kube.ensure_timeout",
    "server.cleanup": "kube.cleanup",
    "server.maxBodyBytes": "server.max_body_bytes",
    "server.logFormat": "server.log_format",
    "server.logLevel": "server.log_level",
    "server.resyncSeconds": "kube.resync_seconds",
    "server.shutdownDelay": "server.shutdown_delay",
    "metrics.port": "server.metrics_port",
    "mirrors.checkBudget": "mirrors.check_budget",
    "mirrors.probeTimeout": "mirrors.probe_timeout",
}
#: ``server.*`` values that are not one setting each (the Lease name is checked through the args).
#: bindNodeIP sets PSI_HOST from the downward API (status.hostIP), a per-Pod value no default can hold.
SERVER_VALUES_WITHOUT_SETTING = {"leaderElection", "extraArgs", "extraEnv", "bindNodeIP"}
#: ``mirrors.*`` values that are not one setting each: together they make ``mirrors.ca_file`` (the mount).
MIRROR_VALUES_WITHOUT_SETTING = {"caBundle", "existingCaConfigMap", "caBundleKey"}

#: Settings the chart sets, by default, to something other than the dataclass default, and why.
DELIBERATE: dict[str, tuple[Any, str]] = {
    "policy.configmap": (
        f"{FULLNAME}-policy",
        "the chart owns that ConfigMap, so a rejected policy can be reported as an Event on it",
    ),
    "certs.mode": (
        "self",
        "the chart's certificates.mode defaults to self (no dependency); the CLI's to files (no cluster needed)",
    ),
    "server.shutdown_delay": (
        5.0,
        "in a Deployment the Service endpoints drop a terminating Pod asynchronously: keep answering meanwhile",
    ),
    "kube.identity": (POD_ENV["POD_NAME"], "the Pod name from the downward API (POD_NAME)"),
}
#: What each certificates.mode makes of the cert settings (files: the mounted TLS Secret).
MOUNTED_TLS: dict[str, Any] = {
    "certs.mode": "files",
    "certs.tls_cert": Path("/tls/tls.crt"),
    "certs.tls_key": Path("/tls/tls.key"),
}
CERT_SETTINGS_BY_MODE: dict[str, dict[str, Any]] = {
    "self": {"certs.mode": "self"},
    "cert-manager": MOUNTED_TLS,
    "manual": MOUNTED_TLS,
}


def flatten(settings: Settings) -> dict[str, Any]:
    """``{"server.port": 8443, ...}``: every field of every part."""
    flat: dict[str, Any] = {}
    for part in dataclasses.fields(settings):
        group = getattr(settings, part.name)
        for f in dataclasses.fields(group):
            flat[f"{part.name}.{f.name}"] = getattr(group, f.name)
    return flat


def value_at(values: dict[str, Any], path: str) -> Any:
    node: Any = values
    for key in path.split("."):
        node = node[key]
    return node


def settings_of(rendered: Rendered) -> Settings:
    """The Deployment's args through the real parser, with the Pod's environment."""
    args = rendered.args
    assert args[0] == "serve"
    return settings_from_args(build_parser().parse_args(args), env=POD_ENV)


DEFAULTS = flatten(Settings())


# --------------------------------------------------------------------------- the chart agrees


def test_chart_value_defaults_are_the_settings_defaults() -> None:
    values = default_values()
    for path, setting in VALUE_SETTINGS.items():
        expected = DELIBERATE[setting][0] if setting in DELIBERATE else DEFAULTS[setting]
        assert value_at(values, path) == expected, f"values.yaml {path} vs Settings {setting}"
    # The names the chart derives from the full name are the CLI's defaults for a release of that name.
    assert values["server"]["leaderElection"]["leaseName"] == ""  # -> <fullname>-leader
    assert DEFAULTS["kube.lease_name"] == f"{FULLNAME}-leader"
    assert values["certificates"]["self"]["secretName"] == ""  # -> <fullname>-tls
    assert DEFAULTS["certs.secret_name"] == f"{FULLNAME}-tls"


def test_every_server_value_is_mapped_to_a_setting() -> None:
    """A new ``server.*`` value must be listed in VALUE_SETTINGS (and so compared) or explicitly excluded."""
    server_values = set(default_values()["server"])
    mapped = {path.split(".", 1)[1] for path in VALUE_SETTINGS if path.startswith("server.")}
    assert server_values - SERVER_VALUES_WITHOUT_SETTING == mapped


def test_every_mirrors_value_is_mapped_to_a_setting() -> None:
    """A new ``mirrors.*`` value must be listed in VALUE_SETTINGS (and so compared) or explicitly excluded."""
    mirror_values = set(default_values()["mirrors"])
    mapped = {path.split(".", 1)[1] for path in VALUE_SETTINGS if path.startswith("mirrors.")}
    assert mirror_values - MIRROR_VALUES_WITHOUT_SETTING == mapped
    assert {f"mirrors.{f.name}" for f in dataclasses.fields(MirrorSettings)} == {
        *(VALUE_SETTINGS[f"mirrors.{value}"] for value in mapped),
        "mirrors.ca_file",
    }, "every mirror setting has its chart value"


def mirror_ca_file(values: dict[str, Any]) -> Path | None:
    """``mirrors.ca_file`` as the chart sets it: the mounted bundle when one is configured."""
    mirrors = values["mirrors"]
    return Path(MIRROR_CA_FILE) if mirrors["caBundle"] or mirrors["existingCaConfigMap"] else None


def test_default_chart_args_are_the_settings_defaults_but_the_deliberate_ones() -> None:
    actual = flatten(settings_of(render({})))
    differing = {key: value for key, value in actual.items() if value != DEFAULTS[key]}
    assert differing == {key: value for key, (value, _why) in DELIBERATE.items()}


@pytest.mark.parametrize("name", CI_VALUES, ids=CI_VALUES)
def test_chart_args_carry_the_values_into_the_settings(name: str) -> None:
    """Every ci/*-values.yaml: each value arrives as its setting, nothing else moves off its default."""
    rendered = render_ci(name)
    mode = str(rendered.values["certificates"]["mode"])
    expected = dict(DEFAULTS)
    expected.update({key: value for key, (value, _why) in DELIBERATE.items()})
    expected.update({setting: value_at(rendered.values, path) for path, setting in VALUE_SETTINGS.items()})
    if not rendered.values["metrics"]["enabled"]:
        expected["server.metrics_port"] = 0
    expected.update(CERT_SETTINGS_BY_MODE[mode])
    expected["server.admission_timeout"] = admission_timeout(rendered.values)
    expected["mirrors.ca_file"] = mirror_ca_file(rendered.values)
    assert flatten(settings_of(rendered)) == expected


def admission_timeout(values: dict[str, Any]) -> float:
    """The chart's ``--admission-timeout``: one second after the ensure timeout, at most halfway to timeoutSeconds."""
    ensure, timeout_seconds = float(values["server"]["ensureTimeout"]), float(values["webhook"]["timeoutSeconds"])
    derived = min(ensure + 1, (ensure + timeout_seconds) / 2)
    assert ensure < derived < timeout_seconds  # the backstop sits between the two
    return derived


def test_the_derived_admission_timeout_is_the_default_one() -> None:
    assert admission_timeout(default_values()) == DEFAULTS["server.admission_timeout"]


def test_changed_values_reach_the_settings() -> None:
    """Values off their defaults come out as settings off their defaults (the args are not hard-coded)."""
    rendered = render(
        {
            "server": {
                "port": 9443,
                "ensureTimeout": 1.5,
                "cleanup": False,
                "maxBodyBytes": 1048576,
                "logFormat": "text",
                "logLevel": "DEBUG",
                "resyncSeconds": 60,
                "shutdownDelay": 2,
                "leaderElection": {"leaseName": "my-lease"},
            },
            "metrics": {"enabled": False},
            "webhook": {"timeoutSeconds": 2},
            "mirrors": {"caBundle": MIRROR_CA, "checkBudget": 0.4, "probeTimeout": 0.25},
        }
    )
    settings = settings_of(rendered)
    assert settings.mirrors == MirrorSettings(check_budget=0.4, probe_timeout=0.25, ca_file=Path(MIRROR_CA_FILE))
    assert settings.server == dataclasses.replace(
        ServerSettings(),
        port=9443,
        metrics_port=0,
        max_body_bytes=1048576,
        log_format="text",
        log_level="DEBUG",
        shutdown_delay=2.0,
        admission_timeout=settings.server.admission_timeout,
    )
    assert 1.5 < settings.server.admission_timeout < 2
    assert (settings.kube.ensure_timeout, settings.kube.cleanup, settings.kube.resync_seconds) == (1.5, False, 60.0)
    assert settings.kube.lease_name == "my-lease"


@pytest.mark.parametrize(
    ("mirrors", "ca_file"),
    [
        pytest.param({}, None, id="unset"),
        pytest.param({"caBundle": MIRROR_CA}, Path(MIRROR_CA_FILE), id="ca-bundle"),
        pytest.param(
            {"existingCaConfigMap": "corp-ca", "caBundleKey": "root.pem"}, Path(MIRROR_CA_FILE), id="existing"
        ),
    ],
)
def test_the_mirror_ca_reaches_the_settings(mirrors: dict[str, Any], ca_file: Path | None) -> None:
    """The CA file the webhook is told to read is where the chart mounts the bundle, whichever ConfigMap holds it."""
    assert settings_of(render({"mirrors": mirrors})).mirrors == MirrorSettings(ca_file=ca_file)


# --------------------------------------------------------------------------- the dataclasses check themselves


def test_the_defaults_are_valid_and_frozen() -> None:
    settings = Settings()
    assert not settings.dev
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.server.port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("build", "setting", "problem"),
    [
        pytest.param(lambda: ServerSettings(port=0), "port", "port number, 1 to 65535", id="port-zero"),
        pytest.param(lambda: ServerSettings(port=65536), "port", "port number", id="port-too-big"),
        pytest.param(lambda: ServerSettings(metrics_port=-1), "metrics_port", "0 to 65535", id="metrics-negative"),
        pytest.param(lambda: ServerSettings(metrics_port=8443), "metrics_port", "must differ", id="metrics-same"),
        pytest.param(lambda: ServerSettings(max_body_bytes=0), "max_body_bytes", "greater than 0", id="body"),
        pytest.param(lambda: ServerSettings(read_timeout=0), "read_timeout", "greater than 0", id="read-timeout"),
        pytest.param(lambda: ServerSettings(shutdown_delay=-1), "shutdown_delay", "0 or more", id="shutdown"),
        pytest.param(lambda: ServerSettings(log_level="LOUD"), "log_level", "DEBUG, INFO", id="log-level"),
        pytest.param(lambda: ServerSettings(log_format="xml"), "log_format", "json, text", id="log-format"),  # type: ignore[arg-type]
        pytest.param(lambda: PolicySettings(poll_interval=0), "poll_interval", "greater than 0", id="poll"),
        pytest.param(lambda: PolicySettings(configmap=" "), "configmap", "not be empty", id="configmap"),
        pytest.param(lambda: CertSettings(mode="acme"), "mode", "files, self, dev", id="cert-mode"),  # type: ignore[arg-type]
        pytest.param(lambda: CertSettings(service=""), "service", "not be empty", id="service"),
        pytest.param(lambda: CertSettings(check_interval=0), "check_interval", "greater than 0", id="check"),
        pytest.param(lambda: KubeSettings(namespace=""), "namespace", "not be empty", id="namespace"),
        pytest.param(lambda: KubeSettings(lease_name=""), "lease_name", "not be empty", id="lease"),
        pytest.param(lambda: KubeSettings(ensure_timeout=0), "ensure_timeout", "greater than 0", id="ensure"),
        pytest.param(lambda: KubeSettings(list_page_size=-1), "list_page_size", "0 or more", id="page-size"),
        pytest.param(
            lambda: Settings(server=ServerSettings(admission_timeout=2.0)),
            "server.admission_timeout",
            "larger than the ensure timeout (2s)",
            id="admission-not-above-ensure",
        ),
    ],
)
def test_bad_values_are_refused_naming_the_setting(build: Any, setting: str, problem: str) -> None:
    with pytest.raises(SettingsError) as caught:
        build()
    assert caught.value.setting == setting
    assert problem in caught.value.problem
    assert isinstance(caught.value, UserError)  # printed as one line, exit 2


def test_log_level_is_case_insensitive() -> None:
    assert ServerSettings(log_level="debug").log_level == "debug"


# --------------------------------------------------------------------------- no cycle


def test_the_server_does_not_import_the_cli() -> None:
    """The cycle cli <-> server is gone: the server (and the settings) import without the CLI."""
    code = (
        "import sys, webhook.server, webhook.config\n"
        "assert 'webhook.cli' not in sys.modules, sorted(m for m in sys.modules if m.startswith('webhook'))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
