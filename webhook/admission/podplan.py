"""Deciding what one Pod gets: pure, shared by the webhook and the ``check`` command.

Given a Pod, its namespace (and that namespace's labels, when known) and a compiled
policy, :func:`plan_pod` says for every container which rule applies and why, which
Secrets the Pod needs, and the JSON patch that adds them. It does no I/O, so the CLI's
offline explanation and the server's answer can never disagree.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from webhook.admission.patch import ContainerKind, build_patch, iter_container_images
from webhook.admission.wire import PatchOperation
from webhook.bounded import BoundedCache
from webhook.policy.images import ImageRef, InvalidReference, parse_image
from webhook.policy.matching import CompiledPolicy, NamespaceDecisions
from webhook.policy.model import Rule

#: Kubernetes rejects warnings longer than this in admission responses' spirit of brevity;
#: kubectl prints them on one line each.
MAX_WARNING_LENGTH = 120


@dataclass(frozen=True, slots=True)
class ContainerPlan:
    kind: ContainerKind
    name: str
    image: str
    ref: ImageRef | None
    rule: Rule | None
    reason: str


@dataclass(slots=True)
class PodPlan:
    namespace: str
    containers: list[ContainerPlan] = field(default_factory=list)
    #: Secret name -> the rule that provides it, in the order they were first needed.
    secrets: dict[str, Rule] = field(default_factory=dict)
    patch: list[PatchOperation] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


#: Container plans by (the namespace's decisions, kind, name, image): a plan depends on
#: nothing else, so Pods of one template in namespaces admitting the same rules share them.
PlanKey = tuple[NamespaceDecisions | None, ContainerKind, str, str]
PlanCache = BoundedCache[PlanKey, ContainerPlan]


def short(text: str, limit: int = MAX_WARNING_LENGTH) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def plan_pod(
    *,
    pod: Mapping[str, Any],
    namespace: str,
    policy: CompiledPolicy,
    namespace_labels: Mapping[str, str] | None,
    explain: bool = False,
    plans: PlanCache | None = None,
) -> PodPlan:
    """Match every container image and build the patch.

    An image that does not parse gets no secret and a warning, never an error: the kubelet
    will report it properly, and the rest of the Pod still deserves its secrets. ``plans``
    (the handler's) remembers container plans across Pods; not used when explaining.
    """
    plan = PodPlan(namespace=namespace)
    spec = pod.get("spec")
    if not isinstance(spec, dict):
        return plan
    # Resolved once per Pod: the namespace's cached decisions (not when explaining, for the CLI).
    # A container's plan depends only on (kind, name, image) and those decisions, so ``plans``
    # is keyed by them: Pods of the same template cost one lookup per container.
    decisions = None if explain else policy.namespace_decisions(namespace, namespace_labels)
    memo = plans if decisions is not None else None
    for kind, name, raw in iter_container_images(spec):
        if memo is not None and isinstance(raw, str):
            key = (decisions, kind, name, raw)
            container_plan = memo.get(key)
            if container_plan is None:
                container_plan, warning = _plan_container(
                    kind, name, raw, policy, decisions, namespace, namespace_labels
                )
                if warning is None:
                    memo[key] = container_plan
                else:
                    plan.warnings.append(warning)
        else:
            container_plan, warning = _plan_container(kind, name, raw, policy, decisions, namespace, namespace_labels)
            if warning is not None:
                plan.warnings.append(warning)
        plan.containers.append(container_plan)
        if container_plan.rule is not None:
            plan.secrets.setdefault(container_plan.rule.secret, container_plan.rule)
    plan.patch, plan.added = build_patch(pod=pod, secrets=list(plan.secrets))
    return plan


def _plan_container(
    kind: ContainerKind,
    name: str,
    raw: object,
    policy: CompiledPolicy,
    decisions: NamespaceDecisions | None,
    namespace: str,
    labels: Mapping[str, str] | None,
) -> tuple[ContainerPlan, str | None]:
    """One container's plan, and the warning to give when its image is unusable.

    ``decisions`` ``None`` means explaining (the CLI): the policy's explaining decide for
    ``namespace``; otherwise the namespace's cached decisions.
    """
    if not isinstance(raw, str):
        plan = ContainerPlan(kind, name, repr(raw), None, None, "image is missing or not a string")
        return plan, f"container {name!r}: image missing, no pull secret"
    try:
        ref = parse_image(raw)
    except InvalidReference as exc:
        warning = f"container {name!r}: invalid image {raw!r}, no pull secret"
        return ContainerPlan(kind, name, raw, None, None, str(exc)), warning
    decision = decisions.decide(ref) if decisions is not None else policy.decide(ref, namespace, labels, explain=True)
    return ContainerPlan(kind, name, raw, ref, decision.rule, decision.reason), None
