"""The ``pullsecret-injector`` command: serve, check, validate, certs.

Exit codes: 0 success, 2 bad input (an invalid policy or manifest, a bad flag). A user
error prints one clear message, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TextIO

import orjson

from webhook import server
from webhook.admission.manifests import ManifestError, PodSource, load_documents, pods_of
from webhook.admission.mirroring import plan_pod_offline
from webhook.admission.podplan import PodPlan
from webhook.config import CERT_MODES, LOG_FORMATS, LOG_LEVELS, Settings, SettingsError, default_identity
from webhook.errors import EXIT_BAD_INPUT, EXIT_OK, UserError
from webhook.examples import POLICY, WORKLOADS, bundled_example
from webhook.policy.matching import CompiledPolicy, load_policy
from webhook.policy.mirrors import describe_mirrors
from webhook.policy.model import PolicyError
from webhook.tls.certs import write_local_certs
from webhook.tokens.explain import explain_source


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
_BY_SETTING = {option.setting: option for option in SERVE_OPTIONS}


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pullsecret-injector",
        description="Inject imagePullSecrets into Pods at admission time and keep the Secrets they name in sync.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser(
        "serve",
        help="run the HTTPS admission webhook",
        description="Run the HTTPS admission webhook. Every flag can also be set by the environment "
        "variable named after it; a flag wins over its variable.",
    )
    for option in SERVE_OPTIONS:
        _add_serve_option(serve, option)
    serve.add_argument(
        "--dev",
        action="store_const",
        const="dev",
        dest="cert_mode",
        help="shorthand for --cert-mode dev (no cluster, bundled example policy if --policy is omitted)",
    )

    check = sub.add_parser("check", help="explain offline what the webhook would inject into the given manifests")
    check.add_argument("--policy", type=Path, help="policy YAML file (default: the bundled example)")
    check.add_argument(
        "--namespace", "-n", default=None, help="namespace for objects that name none (default: 'default')"
    )
    check.add_argument(
        "--namespace-label",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="labels of the namespace, to evaluate namespaces.selector offline (repeatable)",
    )
    check.add_argument("--output", "-o", choices=("text", "json"), default="text")
    check.add_argument(
        "manifests", nargs="*", type=Path, help="YAML or JSON files, '-' for stdin (default: bundled example)"
    )

    validate = sub.add_parser("validate", help="validate a policy file")
    validate.add_argument("file", type=Path)
    validate.add_argument(
        "--cluster",
        action="store_true",
        help="also ask the cluster whether the webhook may do what the policy needs (the preflight a "
        "replica runs before it accepts a policy), naming the chart value for each missing permission",
    )
    validate.add_argument("--kubeconfig", type=Path, default=None, help="with --cluster: kubeconfig to use")
    validate.add_argument(
        "--as",
        dest="as_user",
        default=None,
        metavar="USER",
        help="with --cluster: ask about USER, e.g. system:serviceaccount:pullsecret-system:pullsecret-injector "
        "(a SubjectAccessReview; default: the kubeconfig's own user)",
    )

    certs = sub.add_parser("certs", help="write a CA and a serving certificate for local use")
    certs.add_argument("--service", required=True)
    certs.add_argument("--namespace", required=True)
    certs.add_argument("--out", type=Path, default=Path("certs"))
    from webhook.ops.cli import add_subcommands  # doctor, import (issue 15)

    add_subcommands(sub)
    return parser


def read_policy(path: Path) -> CompiledPolicy:
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read policy {path}: {exc.strerror}") from None
    return load_policy(text)


def cmd_validate(args: argparse.Namespace, out: TextIO) -> int:
    try:
        policy = read_policy(args.file)
    except PolicyError as exc:
        print(f"{args.file}: invalid policy", file=sys.stderr)
        for error in exc.errors:
            print(f"  {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"{args.file}: valid, {len(policy.policy.rules)} rule(s)", file=out)
    for line in describe_mirrors(policy.policy.mirrors):  # mirrors: where each entry's images go
        print(f"  {line}", file=out)
    for rule in policy.policy.rules:  # issue 13: minted tokens are said to be minted at runtime
        if rule.source is not None and rule.source.token is not None:
            print(f"  rule {rule.name}: {explain_source(rule.source)}", file=out)
    if getattr(args, "cluster", False):
        return _validate_in_cluster(args, policy, out)
    return EXIT_OK


def _validate_in_cluster(args: argparse.Namespace, policy: CompiledPolicy, out: TextIO) -> int:
    from kubernetes.config.config_exception import ConfigException

    from webhook.kube.access import AccessUnknown
    from webhook.kube.clustercheck import cluster_preflight
    from webhook.kube.errors import ApiError
    from webhook.observability.logs import redact

    who = args.as_user or "the kubeconfig's user"
    try:
        report = cluster_preflight(policy, kubeconfig=args.kubeconfig, user=args.as_user)
    except (ConfigException, OSError) as exc:
        raise UserError(f"cannot configure the Kubernetes client: {redact(str(exc))}") from None
    except (ApiError, AccessUnknown) as exc:
        raise UserError(f"cannot ask the cluster: {exc}") from None
    if report.unverified:
        print(f"{args.file}: permissions not verified ({report.unverified})", file=out)
    for warning in report.warnings():
        print(f"  warning: {warning}", file=out)
    if not report.ok:
        print(f"{args.file}: the webhook ({who}) could not serve this policy:", file=sys.stderr)
        for problem in report.problems():
            print(f"  {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"{args.file}: every permission the policy needs is granted to {who}", file=out)
    return EXIT_OK


def _labels(pairs: Sequence[str]) -> dict[str, str] | None:
    if not pairs:
        return None
    labels: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"--namespace-label takes KEY=VALUE, not {pair!r}")
        labels[key] = value
    return labels


def cmd_check(args: argparse.Namespace, out: TextIO) -> int:
    policy_path = args.policy or bundled_example(POLICY)
    manifests: list[Path] = args.manifests or [bundled_example(WORKLOADS)]
    policy = read_policy(policy_path)
    labels = _labels(args.namespace_label)
    sources: list[PodSource] = []
    for path in manifests:
        try:
            text = sys.stdin.read() if str(path) == "-" else path.read_text()
        except OSError as exc:
            raise UserError(f"cannot read {path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise UserError(f"{path}: not a text file") from None
        for obj in load_documents(text, source=str(path)):
            sources.extend(pods_of(obj))
    if not sources:
        raise UserError("no Pods or Pod templates found in the given manifests")
    results = []
    for source in sources:
        namespace = args.namespace or source.namespace or "default"
        # mirrors first (offline: no manifest check), then the rules on the rewritten Pod, as at admission
        plan = plan_pod_offline(pod=source.pod, namespace=namespace, policy=policy, namespace_labels=labels)
        results.append((source, plan))
    if args.output == "json":
        out.write(orjson.dumps([_plan_json(s, p) for s, p in results], option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        if not args.policy:
            print("# policy: the bundled example (webhook/examples/policy.yaml)", file=out)
        if not args.manifests:
            print("# manifests: the bundled example (webhook/examples/workloads.yaml)", file=out)
        for source, plan in results:
            _print_plan(source, plan, policy, out)
    return EXIT_OK


def _plan_json(source: PodSource, plan: PodPlan) -> dict[str, Any]:
    return {
        "object": source.origin,
        "namespace": plan.namespace,
        "containers": [
            {
                "kind": c.kind,
                "name": c.name,
                "image": c.image,
                "normalized": str(c.ref) if c.ref else None,
                "rule": c.rule.name if c.rule else None,
                "secret": c.rule.secret if c.rule else None,
                "reason": c.reason,
            }
            for c in plan.containers
        ],
        "secrets": list(plan.secrets),
        "inject": plan.added,
        "patch": plan.patch,
        "warnings": plan.warnings,
    }


def _print_plan(source: PodSource, plan: PodPlan, policy: CompiledPolicy, out: TextIO) -> None:
    print(f"{source.origin} (namespace {plan.namespace})", file=out)
    if policy.namespace_excluded(plan.namespace):
        print(f"  namespace {plan.namespace!r} is excluded by excludeNamespaces", file=out)
    for c in plan.containers:
        print(f"  {c.kind[:-1] if c.kind.endswith('s') else c.kind} {c.name!r}", file=out)
        print(f"    image:      {c.image}", file=out)
        print(f"    normalized: {c.ref if c.ref else '(invalid)'}", file=out)
        if c.rule is not None:
            print(f"    rule:       {c.rule.name} -> secret {c.rule.secret}", file=out)
            if c.rule.source is not None and c.rule.source.token is not None:  # issue 13: minted at runtime
                print(f"    source:     {explain_source(c.rule.source)}", file=out)
        else:
            print("    rule:       (none)", file=out)
        print(f"    why:        {c.reason}", file=out)
    for line in (w for w in plan.warnings if w.startswith("mirror: ")):  # mirrors: each image's decision
        print(f"  {line}", file=out)
    if plan.secrets:
        already = [name for name in plan.secrets if name not in plan.added]
        print(f"  inject: {', '.join(plan.added) if plan.added else '(nothing new)'}", file=out)
        if already:
            print(f"  already present: {', '.join(already)}", file=out)
    else:
        print("  inject: (nothing)", file=out)
    if plan.patch:
        print("  patch:", file=out)
        for op in plan.patch:
            print(f"    {orjson.dumps(op).decode()}", file=out)
    else:
        print("  patch: (none)", file=out)
    print(file=out)


def cmd_certs(args: argparse.Namespace, out: TextIO) -> int:
    try:
        written = write_local_certs(service=args.service, namespace=args.namespace, out_dir=args.out)
    except OSError as exc:
        raise UserError(f"cannot write certificates to {args.out}: {exc.strerror}") from None
    for name, path in written.items():
        print(f"{name}: {path}", file=out)
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    return server.run(settings_from_args(args))


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    stream = out or sys.stdout
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if getattr(args, "ops_handler", None) is not None:
            return int(args.ops_handler(args, stream))
        if args.command == "validate":
            return cmd_validate(args, stream)
        if args.command == "check":
            return cmd_check(args, stream)
        if args.command == "certs":
            return cmd_certs(args, stream)
        return cmd_serve(args)
    except PolicyError as exc:
        print("invalid policy:", file=sys.stderr)
        for error in exc.errors:
            print(f"  {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (UserError, ManifestError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
