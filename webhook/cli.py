"""The ``pullsecret-injector`` command: serve, check, validate, certs.

Exit codes: 0 success, 2 bad input (an invalid policy or manifest, a bad flag). A user
error prints one clear message, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any, TextIO

import orjson

from webhook.admission.manifests import ManifestError, PodSource, load_documents, pods_of
from webhook.admission.podplan import PodPlan, plan_pod
from webhook.policy.matching import CompiledPolicy, load_policy
from webhook.policy.model import PolicyError

EXIT_OK = 0
EXIT_BAD_INPUT = 2


class UserError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""


def _env(name: str, default: str) -> str:
    return os.environ.get(f"PSI_{name}", default)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pullsecret-injector",
        description="Inject imagePullSecrets into Pods at admission time and keep the Secrets they name in sync.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the HTTPS admission webhook")
    serve.add_argument(
        "--policy", type=Path, default=_env("POLICY", "") or None, help="policy YAML file (re-read on change)"
    )
    serve.add_argument(
        "--policy-configmap",
        default=_env("POLICY_CONFIGMAP", "") or None,
        help="name of the policy ConfigMap (in --namespace): with a cluster the policy is read and watched "
        "through the API (no --policy file needed), permission-checked, and its status written on it",
    )
    serve.add_argument(
        "--ledger-configmap",
        default=_env("LEDGER_CONFIGMAP", "pullsecret-injector-ledger"),
        help="ConfigMap (in --namespace) the webhook keeps its ownership ledger in: the copies it made and "
        "the ones it owes, so any replica, after any restart, cleans up and finishes them",
    )
    serve.add_argument("--host", default=_env("HOST", "0.0.0.0"), help="address to listen on (default: %(default)s)")
    serve.add_argument("--port", type=int, default=int(_env("PORT", "8443")), help="HTTPS port (default: %(default)s)")
    serve.add_argument(
        "--cert-mode",
        choices=("files", "self", "dev"),
        default=_env("CERT_MODE", "files"),
        help="files: --tls-cert/--tls-key (reloaded on change); self: CA and certificate kept in a "
        "Secret by the webhook itself; dev: a throwaway self-signed certificate",
    )
    serve.add_argument(
        "--dev",
        action="store_const",
        const="dev",
        dest="cert_mode",
        help="shorthand for --cert-mode dev (no cluster, bundled example policy if --policy is omitted)",
    )
    serve.add_argument("--tls-cert", type=Path, default=_env("TLS_CERT", "") or None)
    serve.add_argument("--tls-key", type=Path, default=_env("TLS_KEY", "") or None)
    serve.add_argument(
        "--cert-secret",
        default=_env("CERT_SECRET", "pullsecret-injector-tls"),
        help="self mode: Secret holding the CA and serving certificate",
    )
    serve.add_argument("--service", default=_env("SERVICE", "pullsecret-injector"), help="self mode: the Service name")
    serve.add_argument(
        "--webhook-config",
        default=_env("WEBHOOK_CONFIG", "pullsecret-injector"),
        help="self mode: MutatingWebhookConfiguration whose caBundle to keep current",
    )
    serve.add_argument(
        "--cert-check-interval",
        type=float,
        default=float(_env("CERT_CHECK_INTERVAL", "300")),
        help="self mode: seconds between checks of the certificate, the CA and the caBundle (default: %(default)s)",
    )
    serve.add_argument(
        "--cert-startup-timeout",
        type=float,
        default=float(_env("CERT_STARTUP_TIMEOUT", "60")),
        help="self mode: how long start-up retries an unreachable API server for the certificate",
    )
    serve.add_argument(
        "--namespace",
        default=_env("NAMESPACE", os.environ.get("POD_NAMESPACE", "pullsecret-system")),
        help="the webhook's own namespace (default: $POD_NAMESPACE)",
    )
    serve.add_argument(
        "--kubeconfig",
        type=Path,
        default=_env("KUBECONFIG", "") or None,
        help="kubeconfig file; in a Pod the in-cluster config is used",
    )
    serve.add_argument("--no-kube", action="store_true", help="run without any cluster (offline: nothing is written)")
    serve.add_argument(
        "--metrics-port",
        type=int,
        default=int(_env("METRICS_PORT", "9090")),
        help="plain-HTTP port for /metrics, 0 to disable (default: %(default)s)",
    )
    serve.add_argument(
        "--ensure-timeout",
        type=float,
        default=float(_env("ENSURE_TIMEOUT", "2.0")),
        help="seconds an admission may spend making Secrets exist (default: %(default)s)",
    )
    serve.add_argument(
        "--cleanup",
        action=argparse.BooleanOptionalAction,
        default=_env("CLEANUP", "true") == "true",
        help="delete managed copies that no rule allows any more (default: on)",
    )
    serve.add_argument(
        "--leader-election-lease",
        default=_env("LEASE", "pullsecret-injector"),
        help="Lease (in --namespace) that elects the one replica running the reconciler",
    )
    serve.add_argument(
        "--resync-seconds",
        type=float,
        default=float(_env("RESYNC", "300")),
        help="full reconcile interval on top of watch events (default: %(default)s)",
    )
    serve.add_argument("--max-body-bytes", type=int, default=int(_env("MAX_BODY_BYTES", str(3 * 1024 * 1024))))
    serve.add_argument(
        "--admission-timeout",
        type=float,
        default=float(_env("ADMISSION_TIMEOUT", "3.0")),
        help="hard ceiling for one admission answer; keep it above --ensure-timeout and below the "
        "webhook's timeoutSeconds (default: %(default)s)",
    )
    serve.add_argument(
        "--read-timeout",
        type=float,
        default=float(_env("READ_TIMEOUT", "10.0")),
        help="seconds a client has to send its request headers, and again its body (default: %(default)s)",
    )
    serve.add_argument(
        "--shutdown-delay",
        type=float,
        default=float(_env("SHUTDOWN_DELAY", "0")),
        help="seconds between readiness going false and the listener closing on SIGTERM",
    )
    serve.add_argument("--log-format", choices=("json", "text"), default=_env("LOG_FORMAT", "json"))
    serve.add_argument("--log-level", default=_env("LOG_LEVEL", "INFO"))

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
    return parser


def bundled_example(name: str) -> Path:
    return Path(str(resources.files("webhook").joinpath("examples", name)))


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
    policy_path = args.policy or bundled_example("policy.yaml")
    manifests: list[Path] = args.manifests or [bundled_example("workloads.yaml")]
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
        plan = plan_pod(pod=source.pod, namespace=namespace, policy=policy, namespace_labels=labels, explain=True)
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
        else:
            print("    rule:       (none)", file=out)
        print(f"    why:        {c.reason}", file=out)
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
    from webhook.tls.certs import write_local_certs

    try:
        written = write_local_certs(service=args.service, namespace=args.namespace, out_dir=args.out)
    except OSError as exc:
        raise UserError(f"cannot write certificates to {args.out}: {exc.strerror}") from None
    for name, path in written.items():
        print(f"{name}: {path}", file=out)
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    from webhook.server import run

    return run(args)


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    stream = out or sys.stdout
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
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
