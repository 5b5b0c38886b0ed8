"""Mirrors at admission: decide every image, optionally check the endpoints, build the rewrite.

The order matters and is the point of this module: images are rewritten *first*, and the
pull-secret rules are matched against the rewritten Pod afterwards (``plan_pod`` on
:attr:`MirrorOutcome.pod`), so the mirror's credentials are the ones injected and ensured.

With ``check: true`` the candidates of an image are probed (all at once, under one deadline
for the whole Pod) and the first endpoint *in order* that has the manifest wins; an endpoint
that has not answered by the deadline counts as not having it. Nothing found: ``fallback:
original`` keeps the image as written (with a warning), ``fallback: deny`` rejects the Pod
naming the image and the endpoints tried. So a registry that never answers costs at most the
budget, well inside the admission timeout.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from webhook.admission.patch import build_patch, existing_pull_secrets, is_skipped
from webhook.admission.podplan import PodPlan, plan_pod
from webhook.admission.rewrite import PodImage, Replacement, apply_ops, iter_pod_images, rewrite_ops
from webhook.admission.wire import AdmissionReview, AdmissionReviewResponse, PatchOperation, build_response
from webhook.config import MirrorSettings
from webhook.policy.images import InvalidReference, Registry, parse_registry
from webhook.policy.matching import CompiledPolicy
from webhook.policy.mirrors import MirrorDecision, MirrorSet, Target
from webhook.policy.model import Policy, Rule
from webhook.registry.probe import ManifestProbe, ProbeResult, RegistryAuth
from webhook.secrets.dockerconfig import (
    SourceError,
    credentials_auths,
    filter_auths,
    parse_source_secret,
    secret_value,
)

#: Seconds the checks of one Pod may take together (keep it plus --ensure-timeout below the admission timeout).
DEFAULT_CHECK_BUDGET = MirrorSettings().check_budget

def mirror_set(policy: Policy) -> MirrorSet:
    """The compiled mirrors of ``policy`` (built once per policy object: one per policy version)."""
    return policy.mirror_set


class CredentialSource(Protocol):
    """The credentials a rule gives for a registry, or ``None`` (then the probe is anonymous)."""

    def auth_for(self, rule: Rule, registry: Registry, namespace: str) -> RegistryAuth | None: ...


#: ``lookup(namespace, name)`` -> the Secret as the API returns it, or ``None``.
SecretLookup = Callable[[str, str], Mapping[str, Any] | None]


class SecretCredentials:
    """Credentials read from the rules' sources through a Secret lookup (the webhook's cache).

    A ``secret`` source is parsed like any source and its entries filtered by the rule's
    registries; ``credentials`` are built as kubectl would; a rule without a source names a
    Secret in the Pod's namespace, looked up there. An entry for the endpoint's exact registry
    is preferred over another entry the rule's patterns allow.
    """

    def __init__(self, lookup: SecretLookup) -> None:
        self._lookup = lookup

    def auth_for(self, rule: Rule, registry: Registry, namespace: str) -> RegistryAuth | None:
        try:
            auths = self._auths(rule, namespace)
        except SourceError:
            return None
        if not auths:
            return None
        kept = filter_auths(auths, rule.registries)
        chosen = None
        for server, entry in kept.items():
            try:
                if parse_registry(server) == registry:
                    chosen = entry
                    break
            except InvalidReference:
                continue
        if chosen is None:
            chosen = next(iter(kept.values()), None)
        if chosen is None:
            return None
        auth = RegistryAuth(
            username=chosen.username,
            password=chosen.password,
            identity_token=chosen.identitytoken,
            registry_token=chosen.registrytoken,
        )
        if not auth.username and not auth.password and chosen.auth:
            decoded = RegistryAuth.from_auth(chosen.auth)
            auth = RegistryAuth(decoded.username, decoded.password, auth.identity_token, auth.registry_token)
        return auth

    def _auths(self, rule: Rule, namespace: str) -> dict[str, Any] | None:
        source = rule.source
        if source is None:
            secret = self._lookup(namespace, rule.secret)
            return parse_source_secret(secret, what=f"Secret {namespace}/{rule.secret}") if secret else None
        if source.secret is not None:
            secret = self._lookup(source.secret.namespace, source.secret.name)
            what = f"source Secret {source.secret.namespace}/{source.secret.name}"
            return parse_source_secret(secret, what=what) if secret else None
        creds = source.credentials
        assert creds is not None
        ref = creds.password_from
        secret = self._lookup(ref.namespace, ref.name)
        if secret is None:
            return None
        password = secret_value(secret, ref.key, what=f"Secret {ref.namespace}/{ref.name}")
        return dict(
            credentials_auths(registry=creds.registry, username=creds.username, password=password, email=creds.email)
        )


@dataclass(slots=True)
class MirrorChecker:
    """What the ``check`` needs at admission: the probe, where credentials come from, the budget."""

    probe: ManifestProbe
    credentials: CredentialSource | None = None
    budget: float = DEFAULT_CHECK_BUDGET

    async def check(self, target: Target, rule: Rule | None, namespace: str) -> ProbeResult:
        auth = None
        if rule is not None and self.credentials is not None:
            auth = self.credentials.auth_for(rule, target.endpoint.registry, namespace)
        reference = target.ref.digest or target.ref.tag or "latest"
        return await self.probe.has_manifest(target.endpoint.base_url, target.ref.repository, reference, auth)


@dataclass(slots=True)
class ImageOutcome:
    image: PodImage
    decision: MirrorDecision
    chosen: Target | None = None
    tried: list[tuple[Target, ProbeResult]] = field(default_factory=list)
    explanation: str = ""


@dataclass(slots=True)
class MirrorOutcome:
    """The Pod as the rules should see it, the operations that make it so, and what happened."""

    pod: Mapping[str, Any]
    ops: list[PatchOperation] = field(default_factory=list)
    images: list[ImageOutcome] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: Set when a ``fallback: deny`` mirror found the image nowhere: the denial message.
    denied: str | None = None


def _decide(
    pod: Mapping[str, Any],
    namespace: str,
    labels: Mapping[str, str] | None,
    mirrors: MirrorSet,
    only: Callable[[PodImage], bool] | None,
) -> list[ImageOutcome]:
    spec = pod.get("spec")
    if not isinstance(spec, dict):
        return []
    found: list[ImageOutcome] = []
    for image in iter_pod_images(spec):
        if not isinstance(image.image, str) or (only is not None and not only(image)):
            continue
        found.append(ImageOutcome(image=image, decision=mirrors.decide(image.image, namespace, labels)))
    return found


def _finish(
    pod: Mapping[str, Any], images: list[ImageOutcome], *, annotate: bool, warnings: list[str]
) -> MirrorOutcome:
    denied: list[str] = []
    for outcome in images:
        decision = outcome.decision
        if not decision.targets:
            outcome.explanation = decision.reason
            if decision.mirror is not None and decision.problems:  # a rewrite that makes no valid name
                if decision.fallback == "deny":
                    denied.append(f"image {decision.image!r}: {decision.reason}")
                else:
                    warnings.append(f"{decision.image} kept as written: {decision.reason}")
            continue
        if outcome.chosen is not None:
            outcome.explanation = outcome.chosen.explain(decision.ref, decision.mirror.key)  # type: ignore[arg-type, union-attr]
            if outcome.tried:
                outcome.explanation += f" (checked: {_tried(outcome.tried)})"
            continue
        assert decision.mirror is not None
        tried = _tried(outcome.tried)
        if decision.fallback == "deny":
            denied.append(
                f"image {decision.image!r} is on no endpoint of mirror {decision.mirror.key} (tried: {tried})"
            )
            outcome.explanation = f"denied: not on any endpoint of mirror {decision.mirror.key} ({tried})"
        else:
            # Admission warnings are cut at 120 characters: the image and the verdict come first.
            warnings.append(f"{decision.image} kept as written, not found on mirror {decision.mirror.key}: {tried}")
            outcome.explanation = f"kept as written: not on any endpoint of mirror {decision.mirror.key} ({tried})"
    result = MirrorOutcome(pod=pod, images=images, warnings=warnings)
    if denied:
        result.denied = "pullsecret-injector: " + "; ".join(denied) + " and the mirror's fallback is deny"
        return result
    replacements = [Replacement(o.image, o.chosen.image) for o in images if o.chosen is not None]
    result.ops = rewrite_ops(pod, replacements, annotate=annotate)
    if result.ops:
        result.pod = apply_ops(pod, result.ops)
    return result


def _tried(tried: Sequence[tuple[Target, ProbeResult]]) -> str:
    return "; ".join(f"{t.endpoint.name} {r.detail}" for t, r in tried) or "no endpoint checked"


def apply_mirrors_offline(
    *,
    pod: Mapping[str, Any],
    namespace: str,
    labels: Mapping[str, str] | None,
    policy: Policy,
    only: Callable[[PodImage], bool] | None = None,
    annotate: bool = True,
) -> MirrorOutcome:
    """The rewrite without any check (the ``check`` command, offline): the first endpoint wins."""
    mirrors = mirror_set(policy)
    if not mirrors:
        return MirrorOutcome(pod=pod)
    images = _decide(pod, namespace, labels, mirrors, only)
    for outcome in images:
        if outcome.decision.targets:
            outcome.chosen = outcome.decision.targets[0]
    result = _finish(pod, images, annotate=annotate, warnings=[])
    for outcome in result.images:
        if outcome.chosen is not None and outcome.decision.mirror is not None and outcome.decision.mirror.mirror.check:
            outcome.explanation += " (check: not run offline)"
    return result


async def apply_mirrors(
    *,
    pod: Mapping[str, Any],
    namespace: str,
    labels: Mapping[str, str] | None,
    policy: CompiledPolicy,
    checker: MirrorChecker | None,
    only: Callable[[PodImage], bool] | None = None,
    annotate: bool = True,
) -> MirrorOutcome:
    """Decide, check (bounded by ``checker.budget``) and build the rewrite of ``pod``."""
    mirrors = mirror_set(policy.policy)
    if not mirrors:
        return MirrorOutcome(pod=pod)
    images = _decide(pod, namespace, labels, mirrors, only)
    warnings: list[str] = []
    probes: dict[tuple[int, int], asyncio.Task[ProbeResult]] = {}
    for i, outcome in enumerate(images):
        decision = outcome.decision
        if not decision.targets or decision.mirror is None:
            continue
        if not decision.mirror.mirror.check:
            outcome.chosen = decision.targets[0]
            continue
        if checker is None:
            outcome.chosen = decision.targets[0]
            warnings.append(f"{outcome.image.key}: mirror {decision.mirror.key} check unavailable, rewritten unchecked")
            continue
        for j, target in enumerate(decision.targets):
            rule = policy.decide(target.ref, namespace, labels).rule
            probes[(i, j)] = asyncio.ensure_future(checker.check(target, rule, namespace))
    if probes:
        _done, pending = await asyncio.wait(probes.values(), timeout=checker.budget if checker else 0)
        for task in pending:
            task.cancel()
        for (i, j), task in sorted(probes.items()):
            outcome = images[i]
            target = outcome.decision.targets[j]
            if task in pending:
                result = ProbeResult(None, f"no answer within the {checker.budget if checker else 0:g}s budget")
            else:
                result = task.result()
            outcome.tried.append((target, result))
        for i, outcome in enumerate(images):
            if not any(key[0] == i for key in probes):
                continue
            for target, result in outcome.tried:
                if result.present:
                    outcome.chosen = target
                    break
            if outcome.chosen is not None:  # report only what was asked up to the winner
                index = next(k for k, (t, _) in enumerate(outcome.tried) if t is outcome.chosen)
                outcome.tried = outcome.tried[: index + 1]
    return _finish(pod, images, annotate=annotate, warnings=warnings)


def image_volume_rules(
    pod: Mapping[str, Any], namespace: str, labels: Mapping[str, str] | None, policy: CompiledPolicy
) -> dict[str, Rule]:
    """Secret -> rule for the image volumes (``plan_pod`` looks at containers only)."""
    from webhook.policy.images import parse_image

    spec = pod.get("spec")
    found: dict[str, Rule] = {}
    if not isinstance(spec, dict) or not any(isinstance(v, dict) and "image" in v for v in spec.get("volumes") or ()):
        return found  # the common case, on the hot path: no image volume at all
    for image in iter_pod_images(spec):
        if image.kind != "volumes" or not isinstance(image.image, str):
            continue
        try:
            ref = parse_image(image.image)
        except InvalidReference:
            continue
        rule = policy.decide(ref, namespace, labels).rule
        if rule is not None:
            found.setdefault(rule.secret, rule)
    return found


def with_image_volumes(
    plan: PodPlan, mirrored: MirrorOutcome, *, policy: CompiledPolicy, labels: Mapping[str, str] | None
) -> PodPlan:
    """``plan`` (made on the rewritten Pod) with the image volumes' secrets and the rewrite ops in front."""
    extra = image_volume_rules(mirrored.pod, plan.namespace, labels, policy)
    if any(name not in plan.secrets for name in extra):
        for name, rule in extra.items():
            plan.secrets.setdefault(name, rule)
        plan.patch, plan.added = build_patch(pod=mirrored.pod, secrets=list(plan.secrets))
    if mirrored.ops:
        plan.patch = [*mirrored.ops, *plan.patch]
    return plan


async def ephemeral_update(
    review: AdmissionReview, policy: CompiledPolicy, checker: MirrorChecker | None
) -> tuple[AdmissionReviewResponse, str] | None:
    """The answer for ``pods/ephemeralcontainers`` (Kubernetes 1.23+, kind Pod), or ``None`` if not one.

    Only the ephemeral containers this request adds are rewritten. The subresource keeps
    nothing but ``spec.ephemeralContainers`` of the update, so neither the annotation nor a
    pull secret can be added here: the original goes into a warning, and a missing mirror
    pull secret is reported (the Pod's creation normally brought it, for its own rewrites).
    """
    request = review["request"]
    resource = request.get("resource")
    kind = request.get("kind")
    if not (
        request.get("operation") == "UPDATE"
        and request.get("subResource") == "ephemeralcontainers"
        and isinstance(kind, dict)
        and kind.get("group", "") == ""
        and kind.get("kind") == "Pod"
        and isinstance(resource, dict)
        and resource.get("resource") == "pods"
    ):
        return None
    pod = request.get("object")
    if not isinstance(pod, dict) or is_skipped(pod) or not mirror_set(policy.policy):
        return None
    namespace = request.get("namespace") or (pod.get("metadata") or {}).get("namespace")
    if not isinstance(namespace, str) or not namespace:
        return None
    old = request.get("oldObject")
    old_spec = old.get("spec") if isinstance(old, dict) else None
    before = {c.get("name") for c in (old_spec or {}).get("ephemeralContainers") or [] if isinstance(c, dict)}

    def is_new(image: PodImage) -> bool:
        return image.kind == "ephemeralContainers" and image.name not in before

    outcome = await apply_mirrors(
        pod=pod, namespace=namespace, labels=None, policy=policy, checker=checker, only=is_new, annotate=False
    )
    warnings = [f"pullsecret-injector: {w}" for w in outcome.warnings]
    if outcome.denied is not None:
        return build_response(
            review=review, allowed=False, message=outcome.denied, code=403, warnings=warnings
        ), "denied"
    if not outcome.ops:
        return None
    present = set(existing_pull_secrets(pod.get("spec") or {}))
    for image in outcome.images:
        if image.chosen is None:
            continue
        warnings.append(f"pullsecret-injector: {image.explanation}")
        rule = policy.decide(image.chosen.ref, namespace, None).rule
        if rule is not None and rule.secret not in present:
            warnings.append(
                f"pullsecret-injector: {image.image.key} needs pull secret {rule.secret}, which the Pod lacks "
                "(the ephemeralcontainers subresource cannot add it)"
            )
    return build_response(review=review, patch=outcome.ops, warnings=warnings), "mutated"


def plan_pod_offline(
    *, pod: Mapping[str, Any], namespace: str, policy: CompiledPolicy, namespace_labels: Mapping[str, str] | None
) -> PodPlan:
    """``plan_pod(explain=True)`` after the mirrors (no manifest check), for the ``check`` command.

    The patch is the whole answer (rewrite, then secrets); each image's mirror decision is a
    warning starting with ``mirror: `` (``docker.io/rancher/pause:3.6 -> ... by mirror docker.io,
    rewrite ^rancher/(.*)``).
    """
    mirrored = apply_mirrors_offline(pod=pod, namespace=namespace, labels=namespace_labels, policy=policy.policy)
    plan = plan_pod(
        pod=mirrored.pod, namespace=namespace, policy=policy, namespace_labels=namespace_labels, explain=True
    )
    plan = with_image_volumes(plan, mirrored, policy=policy, labels=namespace_labels)
    plan.warnings = [
        *mirrored.warnings,
        *plan.warnings,
        *(f"mirror: {o.image.key}: {o.explanation}" for o in mirrored.images),
    ]
    return plan


def build_mirror_checker(settings: MirrorSettings, lookup: SecretLookup | None) -> MirrorChecker:
    """The checker for ``serve``: one probe for the process, credentials from the Secret cache."""
    context = ssl.create_default_context()
    if settings.ca_file is not None:
        context.load_verify_locations(cafile=str(settings.ca_file))
    probe = ManifestProbe(timeout=settings.probe_timeout, verify=context)
    credentials = SecretCredentials(lookup) if lookup is not None else None
    return MirrorChecker(probe=probe, credentials=credentials, budget=settings.check_budget)
