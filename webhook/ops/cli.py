"""The ``doctor`` and ``import docker-config`` subcommands, and the ``kubectl-pullsecrets`` plugin.

:func:`add_subcommands` adds both to ``pullsecret-injector``'s parser; each sets
``ops_handler`` so the main CLI dispatches with one line. The kubectl plugin is the same
two subcommands under ``prog="kubectl pullsecrets"`` (kubectl runs any ``kubectl-<name>``
on PATH for ``kubectl <name>``).

Exit codes: ``doctor`` 0 nothing wrong, 1 a problem found, 2 it could not run (bad
arguments, the object is not there, the cluster is unreachable). ``import`` 0 written or
printed, 1 refused (a registry without credential: nothing printed or written), 2 bad
arguments. Errors go to stderr as one line and never hold a credential.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import orjson

from webhook.ops.k3s import add_import_kind as add_k3s_import

EXIT_OK = 0
EXIT_PROBLEM = 1
EXIT_USAGE = 2


def add_subcommands(sub: Any) -> None:
    """Add ``doctor`` and ``import`` to an ``add_subparsers()`` object."""
    doctor = sub.add_parser(
        "doctor",
        help="explain why a Pod has no working pull secret (read-only, live cluster)",
        description="Check everything a Pod's image pulls depend on: the webhook configuration, the policy, "
        "the Secret and the kubelet's choice of auths entry. One line per finding; exit 0 when nothing "
        "is wrong, 1 when a problem was found, 2 when doctor could not run.",
    )
    doctor.add_argument("target", metavar="POD|KIND/NAME", help="a Pod name, or deploy/NAME, sts/NAME, job/NAME...")
    doctor.add_argument("-n", "--namespace", help="namespace (default: the kubeconfig context's)")
    doctor.add_argument("-o", "--output", choices=("text", "json"), default="text")
    doctor.add_argument("--kubeconfig", type=Path, help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config)")
    doctor.add_argument("--context", help="kubeconfig context")
    policy = doctor.add_mutually_exclusive_group()
    policy.add_argument("--policy", type=Path, help="policy file (default: the chart's policy ConfigMap)")
    policy.add_argument("--policy-configmap", metavar="NAMESPACE/NAME", help="ConfigMap holding policy.yaml")
    doctor.add_argument(
        "--webhook-config",
        metavar="NAME",
        help="MutatingWebhookConfiguration (default: the one labelled app.kubernetes.io/name=pullsecret-injector)",
    )
    doctor.add_argument("--no-probe", action="store_true", help="do not contact the webhook (TLS and /readyz)")
    doctor.set_defaults(ops_handler=cmd_doctor)

    imp = sub.add_parser(
        "import", help="build pull Secrets and policy from local credentials or another tool's registry configuration"
    )
    kinds = imp.add_subparsers(dest="import_kind", required=True, metavar="SOURCE")
    dc = kinds.add_parser(
        "docker-config",
        help="from ~/.docker/config.json (credsStore, credHelpers, auths) or Podman's auth.json",
        description="Print (or --apply) a kubernetes.io/dockerconfigjson Secret holding only the given "
        "registries, resolving credential helpers. Refuses registries without a credential.",
    )
    dc.add_argument("--config", type=Path, help="the config file (default: $DOCKER_CONFIG or ~/.docker/config.json)")
    dc.add_argument(
        "--podman",
        action="store_true",
        help="look where Podman does: $REGISTRY_AUTH_FILE, $XDG_RUNTIME_DIR/containers/auth.json, "
        "~/.config/containers/auth.json, then docker's",
    )
    dc.add_argument("--registry", action="append", required=True, metavar="HOST", help="a registry (repeatable)")
    dc.add_argument("--name", required=True, help="the Secret's name")
    dc.add_argument("-n", "--namespace", required=True, help="the Secret's namespace")
    dc.add_argument("--apply", action="store_true", help="create or replace the Secret instead of printing it")
    dc.add_argument("--kubeconfig", type=Path, help="kubeconfig for --apply (default: $KUBECONFIG, ~/.kube/config)")
    dc.add_argument("--context", help="kubeconfig context for --apply")
    dc.set_defaults(ops_handler=cmd_import)
    add_k3s_import(kinds)  # import k3s FILE (webhook/ops/k3s.py)


def _reader(args: argparse.Namespace) -> Any:
    from webhook.kube.inspect import ClusterReader, default_kubeconfig

    return ClusterReader(kubeconfig=args.kubeconfig or default_kubeconfig(), context=args.context)


def cmd_doctor(args: argparse.Namespace, out: TextIO) -> int:
    from webhook.kube.inspect import InspectError
    from webhook.ops.doctor import DoctorError, gather, parse_target
    from webhook.ops.findings import diagnose, exit_code, render_json, render_text

    try:
        target = parse_target(args.target)
        reader = _reader(args)
        try:
            namespace = args.namespace or reader.default_namespace
            snap = gather(
                reader,
                namespace=namespace,
                target=target,
                policy_file=args.policy,
                policy_configmap=args.policy_configmap,
                webhook_config=args.webhook_config,
                probe=not args.no_probe,
            )
        finally:
            reader.close()
    except (DoctorError, InspectError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    findings = diagnose(snap)
    if args.output == "json":
        out.write(orjson.dumps(render_json(snap, findings), option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        out.write(render_text(snap, findings))
    return exit_code(findings)


def cmd_import(args: argparse.Namespace, out: TextIO) -> int:
    from webhook.kube.inspect import InspectError
    from webhook.ops.import_docker import (
        ImportFailure,
        default_helper,
        find_config,
        load_config,
        manifest_yaml,
        resolve_all,
        secret_body,
    )
    from webhook.secrets.desired import is_managed

    env = dict(os.environ)
    try:
        path = find_config(args.config, podman=args.podman, env=env)
        document = load_config(path)
        resolved = resolve_all(document, args.registry, path=path, get=default_helper(env))
    except ImportFailure as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_PROBLEM
    for item in resolved:
        for note in item.notes:
            print(f"warning: {note}", file=sys.stderr)
    body = secret_body(args.name, args.namespace, resolved)
    if not args.apply:
        out.write(manifest_yaml(body))
        return EXIT_OK
    try:
        reader = _reader(args)
        try:
            existing = None
            try:
                existing = reader.secret(args.namespace, args.name)
            except InspectError as exc:
                if exc.kind != "not_found":
                    raise
            if existing is not None and is_managed(existing):
                print(
                    f"error: Secret {args.namespace}/{args.name} is a copy managed by pullsecret-injector "
                    "(it would be reverted): import into its source instead",
                    file=sys.stderr,
                )
                return EXIT_PROBLEM
            if existing is not None and existing.get("type") != body["type"]:
                print(
                    f"error: Secret {args.namespace}/{args.name} exists with type {existing.get('type')}; "
                    f"the type cannot change: delete it first",
                    file=sys.stderr,
                )
                return EXIT_PROBLEM
            action, _ = reader.create_or_replace_secret(body)
        finally:
            reader.close()
    except InspectError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_PROBLEM
    origins = "; ".join(f"{item.registry} from {item.origin}" for item in resolved)
    print(f"secret/{args.name} {action} in namespace {args.namespace} ({origins})", file=out)
    return EXIT_OK


def plugin_main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """``kubectl pullsecrets doctor|import ...``: the same subcommands as ``pullsecret-injector``."""
    parser = argparse.ArgumentParser(
        prog="kubectl pullsecrets",
        description="pullsecret-injector's operator tools as a kubectl plugin.",
    )
    add_subcommands(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    args = parser.parse_args(argv)
    handler = args.ops_handler
    result: int = handler(args, out or sys.stdout)
    return result


def main() -> None:
    sys.exit(plugin_main())
