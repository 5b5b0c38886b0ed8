"""``doctor``: read what one Pod (or workload) depends on from the live cluster, then judge it.

Read-only: every call is a GET or LIST (:class:`webhook.kube.inspect.ClusterReader`), and
the webhook is contacted only for a TLS handshake and ``GET /readyz``. Reading is kept
apart from judging: :func:`gather` builds a :class:`~webhook.ops.findings.Snapshot` and
:func:`~webhook.ops.findings.diagnose` (pure) turns it into findings. An object the user
may not read becomes :class:`~webhook.ops.findings.Unreadable` and a ``warn`` finding:
``doctor`` with a namespaced user still says everything it can.

Secrets are read (the check is whether the kubelet would find an entry), so their
credentials are registered with the log redactor on decoding
(:mod:`webhook.secrets.dockerconfig` does that), and no finding holds anything but
names, types, ``auths`` keys and hashes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from webhook.kube.inspect import WORKLOAD_KINDS, ClusterReader, InspectError
from webhook.ops.findings import source_key, template_images
from webhook.ops.probe import cert_secret_names, probe_endpoints, probe_url, verify_service_certificate
from webhook.ops.snapshot import Read, Snapshot, Unreadable, WebhookProbe, pull_secret_names
from webhook.policy.images import InvalidReference, parse_image
from webhook.policy.matching import CompiledPolicy, load_policy
from webhook.policy.model import PolicyError

#: The label the chart puts on its MutatingWebhookConfiguration and policy ConfigMap.
CHART_SELECTOR = "app.kubernetes.io/name=pullsecret-injector"
POLICY_KEY = "policy.yaml"

T = TypeVar("T")


class DoctorError(Exception):
    """``doctor`` cannot run at all (bad target, object not found, cluster unreachable): exit 2."""


@dataclass(frozen=True, slots=True)
class Target:
    kind: str
    name: str


def parse_target(text: str) -> Target:
    """``NAME`` (a Pod) or ``KIND/NAME`` (``deploy/web``, ``statefulset/db``, ``pod/web``...)."""
    kind_text, sep, name = text.partition("/")
    if not sep:
        kind_text, name = "pod", text
    kind = WORKLOAD_KINDS.get(kind_text.lower().split(".", 1)[0])
    if kind is None:
        known = "pod, deployment, statefulset, daemonset, replicaset, job, cronjob"
        raise DoctorError(f"unknown kind {kind_text!r} in {text!r} (one of: {known})")
    if not name or "/" in name:
        raise DoctorError(f"{text!r} is not POD or KIND/NAME")
    return Target(kind, name)


def _read(fn: Callable[[], T]) -> T | Unreadable | None:
    """Call a reader: ``None`` for 404, :class:`Unreadable` when forbidden or failing."""
    try:
        return fn()
    except InspectError as exc:
        if exc.kind == "not_found":
            return None
        return Unreadable(exc.kind.replace("_", " "))


def pod_template(kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    """The Pod (as is) or ``{"metadata", "spec"}`` of a workload's Pod template."""
    if kind == "Pod":
        return obj
    spec = obj.get("spec") or {}
    if kind == "CronJob":
        spec = ((spec.get("jobTemplate") or {}).get("spec")) or {}
    template = spec.get("template") or {}
    return {"metadata": template.get("metadata") or {}, "spec": template.get("spec") or {}}


def load_cluster_policy(
    reader: ClusterReader, policy_file: Path | None, configmap: str | None
) -> tuple[CompiledPolicy | None, str, str | None]:
    """The policy, where it came from, and why there is none (``--policy``, ``--policy-configmap``, or discovery)."""
    try:
        if policy_file is not None:
            try:
                text = policy_file.read_text()
            except OSError as exc:
                raise DoctorError(f"cannot read policy {policy_file}: {exc.strerror}") from None
            return load_policy(text), f"file {policy_file}", None
        if configmap is not None:
            namespace, sep, name = configmap.partition("/")
            if not sep:
                raise DoctorError("--policy-configmap takes NAMESPACE/NAME")
            found = _read(lambda: reader.config_map(namespace, name))
            if not isinstance(found, dict):
                return None, "", f"ConfigMap {configmap} {'not found' if found is None else found.reason}"
            value = (found.get("data") or {}).get(POLICY_KEY)
            if not isinstance(value, str):
                return None, "", f"ConfigMap {configmap} has no key {POLICY_KEY}"
            return load_policy(value), f"ConfigMap {configmap}", None
        listed = _read(lambda: reader.config_maps(CHART_SELECTOR))
        if not isinstance(listed, list):
            reason = "none" if listed is None else listed.reason
            return None, "", f"cannot list ConfigMaps labelled {CHART_SELECTOR} ({reason})"
        candidates = [cm for cm in listed if POLICY_KEY in (cm.get("data") or {})]
        if len(candidates) != 1:
            return None, "", f"{len(candidates)} ConfigMaps labelled {CHART_SELECTOR} hold {POLICY_KEY}"
        cm = candidates[0]
        meta = cm.get("metadata") or {}
        return load_policy(cm["data"][POLICY_KEY]), f"ConfigMap {meta.get('namespace')}/{meta.get('name')}", None
    except PolicyError as exc:
        return None, "", "invalid policy: " + "; ".join(exc.errors)


def _webhook_configs(reader: ClusterReader, name: str | None) -> tuple[list[dict[str, Any]] | Unreadable, str]:
    if name is not None:
        found = _read(lambda: reader.webhook_config(name))
        if isinstance(found, Unreadable):
            return found, name
        return ([found] if found is not None else []), name
    listed = _read(lambda: reader.webhook_configs(CHART_SELECTOR))
    wanted = f"labelled {CHART_SELECTOR}"
    if isinstance(listed, Unreadable):
        return listed, wanted
    return (listed or []), wanted


def _probe(reader: ClusterReader, hook: dict[str, Any]) -> WebhookProbe | None:
    client = hook.get("clientConfig") or {}
    if client.get("url"):
        return probe_url(str(client["url"]), client.get("caBundle"))
    service = client.get("service")
    if isinstance(service, dict):
        endpoints = _read(lambda: reader.endpoints(str(service.get("namespace")), str(service.get("name"))))
        if isinstance(endpoints, Unreadable):
            return WebhookProbe(f"service {service.get('name')}", None, "", None, f"Endpoints {endpoints.reason}")
        probe = probe_endpoints(service, endpoints)
        verified, detail = _service_certificate(reader, service, client.get("caBundle"))
        return WebhookProbe(probe.target, verified, detail, probe.ready, probe.ready_detail)
    return None


def _service_certificate(
    reader: ClusterReader, service: dict[str, Any], ca_bundle: str | None
) -> tuple[bool | None, str]:
    """Find the webhook's serving certificate through its Service's Pods and check it against the caBundle."""
    namespace, name = str(service.get("namespace")), str(service.get("name"))
    svc = _read(lambda: reader.service(namespace, name))
    if not isinstance(svc, dict):
        return None, f"Service {namespace}/{name} {'not found' if svc is None else svc.reason}"
    selector = (svc.get("spec") or {}).get("selector") or {}
    if not selector:
        return None, f"Service {namespace}/{name} has no selector"
    pods = _read(lambda: reader.pods(namespace, ",".join(f"{k}={v}" for k, v in sorted(selector.items()))))
    if not isinstance(pods, list) or not pods:
        return None, f"no Pods behind Service {namespace}/{name}"
    names = cert_secret_names(pods[0])
    secrets: dict[str, dict[str, Any] | None] = {}
    for secret_name in names:
        found = _read(lambda secret_name=secret_name: reader.secret(namespace, secret_name))  # type: ignore[misc]
        if isinstance(found, Unreadable):
            return None, f"cannot read Secret {namespace}/{secret_name} ({found.reason})"
        secrets[secret_name] = found
    return verify_service_certificate(service, ca_bundle, secrets)


def gather(
    reader: ClusterReader,
    *,
    namespace: str,
    target: Target,
    policy_file: Path | None = None,
    policy_configmap: str | None = None,
    webhook_config: str | None = None,
    probe: bool = True,
) -> Snapshot:
    """Read everything :func:`~webhook.ops.findings.diagnose` looks at.

    Raises :class:`DoctorError` when the target itself cannot be read.
    """
    try:
        obj = reader.workload(target.kind, namespace, target.name)
    except InspectError as exc:
        if exc.kind == "not_found":
            raise DoctorError(f"{target.kind} {namespace}/{target.name} not found") from None
        raise DoctorError(str(exc)) from None
    pod = pod_template(target.kind, obj)
    policy, origin, policy_error = load_cluster_policy(reader, policy_file, policy_configmap)
    snap = Snapshot(
        kind=target.kind,
        name=target.name,
        namespace=namespace,
        pod=pod,
        namespace_object=_read(lambda: reader.namespace(namespace)),
        policy=policy,
        policy_origin=origin,
        policy_error=policy_error,
    )
    spec = pod.get("spec") or {}
    sa_name = str(spec.get("serviceAccountName") or spec.get("serviceAccount") or "default")
    snap.service_account = _read(lambda: reader.service_account(namespace, sa_name))
    names = list(pull_secret_names(spec))
    if policy is not None:
        for _, _, raw in template_images(snap):
            if not isinstance(raw, str):
                continue
            try:
                ref = parse_image(raw)
            except InvalidReference:
                continue
            decision = policy.decide(ref, namespace, snap.labels)
            if decision.rule is not None and decision.rule.secret not in names:
                names.append(decision.rule.secret)
        for rule in policy.policy.rules:
            key = source_key(rule) if rule.secret in names else None
            if key is not None and key not in snap.sources:
                snap.sources[key] = _read(lambda key=key: reader.secret(*key))  # type: ignore[misc]
    for name in names:
        snap.secrets[name] = _read(lambda name=name: reader.secret(namespace, name))  # type: ignore[misc]
    if target.kind == "Pod":
        events: Read | list[dict[str, Any]] = _read(
            lambda: reader.pod_events(namespace, target.name, (pod.get("metadata") or {}).get("uid"))
        )
        snap.events = events if isinstance(events, list | Unreadable) else []
    configs, wanted = _webhook_configs(reader, webhook_config)
    snap.webhook_configs, snap.webhook_wanted = configs, wanted
    if probe and isinstance(configs, list):
        for config in configs:
            config_name = str((config.get("metadata") or {}).get("name"))
            for hook in config.get("webhooks") or []:
                result = _probe(reader, hook)
                if result is not None:
                    snap.probes[(config_name, str(hook.get("name")))] = result
    return snap
