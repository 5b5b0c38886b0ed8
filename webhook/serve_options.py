"""``serve``'s flags: each one the setting it fills and the ``PSI_*`` variables that fill it when absent.

One table (:data:`SERVE_OPTIONS`) builds the argparse flags and :func:`settings_from_args`, so
a flag, its variable and its default (read from :mod:`webhook.config`) can never disagree.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from webhook.config import CERT_MODES, LOG_FORMATS, LOG_LEVELS, Settings, SettingsError, default_identity
from webhook.errors import UserError


@dataclass(frozen=True, slots=True)
class ServeOption:
    """One ``serve`` flag: the setting it fills and the environment variables that fill it when it is absent.

    ``parse`` turns the text of the flag or of the variable into the setting's type (an
    ``argparse.ArgumentTypeError`` or ``ValueError`` is a bad value); range checks are the
    dataclasses' own (:mod:`webhook.config`), so they hold however the settings are built.
    """

    flag: str
    #: ``group.field`` in :class:`~webhook.config.Settings`.
    setting: str
    help: str
    #: Read in order when the flag is absent; the first one set (and not empty) wins.
    env: tuple[str, ...] = ()
    parse: Callable[[str], Any] = str
    choices: tuple[str, ...] | None = None
    metavar: str | None = None
    #: ``switch``: ``--x``/``--no-x``; ``on``: a flag without a value that sets True.
    kind: Literal["value", "switch", "on"] = "value"

    @property
    def dest(self) -> str:
        return self.flag.removeprefix("--").replace("-", "_")

    @property
    def default(self) -> Any:
        group, name = self.setting.split(".")
        return getattr(getattr(DEFAULTS, group), name)


def _optional(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """An empty value means "not set" (as an empty ``PSI_POLICY`` always did)."""

    def parse_optional(text: str) -> Any:
        return parse(text) if text else None

    parse_optional.__name__ = getattr(parse, "__name__", "value")  # argparse names the type in its errors
    return parse_optional


def parse_bool(text: str) -> bool:
    """``true``/``false`` (also ``1``/``0``, ``yes``/``no``, ``on``/``off``), any case."""
    value = text.strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")


#: The settings every ``serve`` flag fills; the defaults shown in ``--help`` are read from here.
DEFAULTS = Settings()

SERVE_OPTIONS: tuple[ServeOption, ...] = (
    ServeOption(
        "--policy",
        "policy.file",
        "policy YAML file (re-read on change)",
        ("PSI_POLICY",),
        _optional(Path),
        metavar="FILE",
    ),
    ServeOption(
        "--policy-configmap",
        "policy.configmap",
        "name of the policy ConfigMap (in --namespace): with a cluster the policy is read and watched "
        "through the API (no --policy file needed), permission-checked, and its status written on it",
        ("PSI_POLICY_CONFIGMAP",),
        _optional(str),
    ),
    ServeOption(
        "--ledger-configmap",
        "kube.ledger_configmap",
        "ConfigMap (in --namespace) the webhook keeps its ownership ledger in: the copies it made and "
        "the ones it owes, so any replica, after any restart, cleans up and finishes them",
        ("PSI_LEDGER_CONFIGMAP",),
    ),
    ServeOption("--host", "server.host", "address to listen on", ("PSI_HOST",)),
    ServeOption("--port", "server.port", "HTTPS port", ("PSI_PORT",), int),
    ServeOption(
        "--cert-mode",
        "certs.mode",
        "files: --tls-cert/--tls-key (reloaded on change); self: CA and certificate kept in a "
        "Secret by the webhook itself; dev: a throwaway self-signed certificate",
        ("PSI_CERT_MODE",),
        choices=CERT_MODES,
    ),
    ServeOption("--tls-cert", "certs.tls_cert", "files mode: PEM certificate", ("PSI_TLS_CERT",), _optional(Path)),
    ServeOption("--tls-key", "certs.tls_key", "files mode: PEM private key", ("PSI_TLS_KEY",), _optional(Path)),
    ServeOption(
        "--cert-secret",
        "certs.secret_name",
        "self mode: Secret holding the CA and serving certificate",
        ("PSI_CERT_SECRET",),
    ),
    ServeOption("--service", "certs.service", "self mode: the Service name", ("PSI_SERVICE",)),
    ServeOption(
        "--webhook-config",
        "certs.webhook_config",
        "self mode: MutatingWebhookConfiguration whose caBundle to keep current",
        ("PSI_WEBHOOK_CONFIG",),
    ),
    ServeOption(
        "--cert-check-interval",
        "certs.check_interval",
        "self mode: seconds between checks of the certificate, the CA and the caBundle",
        ("PSI_CERT_CHECK_INTERVAL",),
        float,
    ),
    ServeOption(
        "--cert-startup-timeout",
        "certs.startup_timeout",
        "self mode: how long start-up retries an unreachable API server for the certificate",
        ("PSI_CERT_STARTUP_TIMEOUT",),
        float,
    ),
    ServeOption(
        "--namespace",
        "kube.namespace",
        "the webhook's own namespace (default: $POD_NAMESPACE, else %(default)s)",
        ("PSI_NAMESPACE", "POD_NAMESPACE"),
    ),
    ServeOption(
        "--kubeconfig",
        "kube.kubeconfig",
        "kubeconfig file; in a Pod the in-cluster config is used",
        ("PSI_KUBECONFIG",),
        _optional(Path),
        metavar="FILE",
    ),
    ServeOption("--no-kube", "kube.offline", "run without any cluster (offline: nothing is written)", kind="on"),
    ServeOption(
        "--metrics-port",
        "server.metrics_port",
        "plain-HTTP port for /metrics, 0 to disable",
        ("PSI_METRICS_PORT",),
        int,
    ),
    ServeOption(
        "--ensure-timeout",
        "kube.ensure_timeout",
        "seconds an admission may spend making Secrets exist",
        ("PSI_ENSURE_TIMEOUT",),
        float,
    ),
    ServeOption(
        "--cleanup",
        "kube.cleanup",
        "delete managed copies that no rule allows any more",
        ("PSI_CLEANUP",),
        parse_bool,
        kind="switch",
    ),
    ServeOption(
        "--leader-election-lease",
        "kube.lease_name",
        "Lease (in --namespace) that elects the one replica running the reconciler",
        ("PSI_LEASE",),
    ),
    # leader election durations and fail-open recovery (issue 12) -----------------
    ServeOption(
        "--leader-election-lease-duration",
        "kube.lease_duration",
        "seconds a Lease not renewed stays with its holder before another replica takes it",
        ("PSI_LEASE_DURATION",),
        float,
    ),
    ServeOption(
        "--leader-election-renew-deadline",
        "kube.renew_deadline",
        "seconds the leader keeps leading without a successful renewal",
        ("PSI_RENEW_DEADLINE",),
        float,
    ),
    ServeOption(
        "--leader-election-retry-period",
        "kube.retry_period",
        "seconds between two attempts to acquire or renew the Lease",
        ("PSI_RETRY_PERIOD",),
        float,
    ),
    ServeOption(
        "--recover-fail-open",
        "recovery.enabled",
        "delete controller-owned Pods admitted without their pull secret (webhook down) that are stuck "
        "in ImagePullBackOff, so that their controller recreates them through the webhook",
        ("PSI_RECOVER_FAIL_OPEN",),
        parse_bool,
        kind="switch",
    ),
    ServeOption(
        "--recovery-grace-seconds",
        "recovery.grace_seconds",
        "seconds a fail-open Pod must be in an image-pull error before it is deleted",
        ("PSI_RECOVERY_GRACE_SECONDS",),
        float,
    ),
    ServeOption(
        "--recovery-interval",
        "recovery.interval",
        "seconds between two looks at the Pods for fail-open recovery",
        ("PSI_RECOVERY_INTERVAL",),
        float,
    ),
    # ---------------------------------------------------------------- end of issue 12
    ServeOption(
        "--resync-seconds",
        "kube.resync_seconds",
        "full reconcile interval on top of watch events",
        ("PSI_RESYNC",),
        float,
    ),
    ServeOption(
        "--max-body-bytes",
        "server.max_body_bytes",
        "largest AdmissionReview body accepted",
        ("PSI_MAX_BODY_BYTES",),
        int,
    ),
    ServeOption(
        "--admission-timeout",
        "server.admission_timeout",
        "hard ceiling for one admission answer; keep it above --ensure-timeout and below the webhook's timeoutSeconds",
        ("PSI_ADMISSION_TIMEOUT",),
        float,
    ),
    ServeOption(
        "--read-timeout",
        "server.read_timeout",
        "seconds a client has to send its request headers, and again its body",
        ("PSI_READ_TIMEOUT",),
        float,
    ),
    ServeOption(
        "--shutdown-delay",
        "server.shutdown_delay",
        "seconds between readiness going false and the listener closing on SIGTERM",
        ("PSI_SHUTDOWN_DELAY",),
        float,
    ),
    ServeOption("--log-format", "server.log_format", "log line format", ("PSI_LOG_FORMAT",), choices=LOG_FORMATS),
    ServeOption(
        "--log-level", "server.log_level", "lowest level logged", ("PSI_LOG_LEVEL",), str.upper, choices=LOG_LEVELS
    ),
    ServeOption(
        "--mirror-check-budget",
        "mirrors.check_budget",
        "seconds the mirror checks of one Pod may take together (inside --admission-timeout, before "
        "--ensure-timeout)",
        ("PSI_MIRROR_CHECK_BUDGET",),
        float,
    ),
    ServeOption(
        "--mirror-probe-timeout",
        "mirrors.probe_timeout",
        "seconds one manifest HEAD (with its token request) may take",
        ("PSI_MIRROR_PROBE_TIMEOUT",),
        float,
    ),
    ServeOption(
        "--mirror-ca-file",
        "mirrors.ca_file",
        "PEM CA bundle trusted for mirror endpoints, on top of the system's (private registries)",
        ("PSI_MIRROR_CA_FILE",),
        _optional(Path),
        metavar="FILE",
    ),
)
_BY_SETTING = MappingProxyType({option.setting: option for option in SERVE_OPTIONS})


def _add_serve_option(parser: argparse.ArgumentParser, option: ServeOption) -> None:
    """Every flag defaults to ``None`` (absent), so that :func:`settings_from_args` can tell it from a value."""
    shown = option.default
    env = f" [env {', '.join(option.env)}]" if option.env else ""
    text = option.help.replace("%(default)s", str(shown))
    if option.kind == "on":
        parser.add_argument(option.flag, dest=option.dest, action="store_const", const=True, default=None, help=text)
        return
    if option.kind == "switch":
        parser.add_argument(
            option.flag,
            dest=option.dest,
            action=argparse.BooleanOptionalAction,
            default=None,
            help=f"{text} (default: {'on' if shown else 'off'}){env}",
        )
        return
    if "(default:" not in text and shown is not None:
        text += f" (default: {shown})"
    parser.add_argument(
        option.flag,
        dest=option.dest,
        type=option.parse,
        choices=option.choices,
        metavar=option.metavar,
        default=None,
        help=(text + env).replace("%", "%%"),
    )


def settings_from_args(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> Settings:
    """The :class:`Settings` of ``serve``: a flag wins over its environment variable, which wins over the default.

    ``env`` defaults to ``os.environ``. A bad value is a :class:`UserError` naming where it
    came from (the flag or the variable), never a traceback; the Pod name (``POD_NAME``)
    becomes the identity in the Lease and in Events.
    """
    environ: Mapping[str, str] = os.environ if env is None else env
    parts: dict[str, dict[str, Any]] = {part.name: {} for part in dataclasses.fields(Settings)}
    origin: dict[str, str] = {}
    for option in SERVE_OPTIONS:
        group, name = option.setting.split(".")
        value = getattr(args, option.dest, None)
        if value is not None:
            origin[option.setting] = option.flag
        else:
            found = next(((var, environ[var]) for var in option.env if environ.get(var)), None)
            if found is None:
                continue
            var, text = found
            origin[option.setting] = var
            try:
                value = option.parse(text)
            except (argparse.ArgumentTypeError, ValueError) as exc:
                raise UserError(f"{var}={text!r}: {_reason(exc, option)}") from None
        parts[group][name] = value
    parts["kube"]["identity"] = default_identity(environ)

    def where(setting: str) -> str:
        if setting in origin:
            return origin[setting]
        option = _BY_SETTING.get(setting)
        return f"{option.flag} (default {option.default})" if option else setting

    try:
        groups: dict[str, Any] = {}
        for group, values in parts.items():
            try:  # each part is built by its own class, which checks its values
                groups[group] = type(getattr(DEFAULTS, group))(**values)
            except SettingsError as exc:
                raise SettingsError(f"{group}.{exc.setting}", exc.problem) from None
        return Settings(**groups)
    except SettingsError as exc:
        raise UserError(f"{where(exc.setting)}: {exc.problem}") from None


def _reason(exc: Exception, option: ServeOption) -> str:
    if isinstance(exc, argparse.ArgumentTypeError):
        return str(exc)
    kind = getattr(option.parse, "__name__", "value")
    return f"invalid {kind} value"


