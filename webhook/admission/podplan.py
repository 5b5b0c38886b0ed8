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
from webhook.policy.images import ImageRef, InvalidReference, parse_image
from webhook.policy.matching import CompiledPolicy
from webhook.policy.model import Rule

#: Kubernetes rejects warnings longer than this in admission responses' spirit of brevity;
#: kubectl prints them on one line each.
MAX_WARNING_LENGTH = 120
#: Per-namespace-group bound on memoised container plans.
_MEMO_LIMIT = 4096


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


def short(text: str, limit: int = MAX_WARNING_LENGTH) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def plan_pod(
    *,
    pod: Mapping[str, Any],
    namespace: str,
    policy: CompiledPolicy,
    namespace_labels: Mapping[str, str] | None,
    explain: bool = False,
) -> PodPlan:
    """Match every container image and build the patch.

    An image that does not parse gets no secret and a warning, never an error: the kubelet
    will report it properly, and the rest of the Pod still deserves its secrets.
    """
    plan = PodPlan(namespace=namespace)
    spec = pod.get("spec")
    if not isinstance(spec, dict):
        return plan
    # Resolved once per Pod: the namespace's cached decisions (not when explaining, for the CLI).
    # A container's plan depends only on (kind, name, image) and those decisions, so it is
    # memoised next to them: Pods of the same template cost a dict lookup per container.
    decisions = None if explain else policy.namespace_decisions(namespace, namespace_labels)
    memo = decisions.memo if decisions is not None else None
    for kind, name, raw in iter_container_images(spec):
        if memo is not None and isinstance(raw, str):
            cached: ContainerPlan | None = memo.get((kind, name, raw))
            if cached is not None:
                plan.containers.append(cached)
                if cached.rule is not None:
                    plan.secrets.setdefault(cached.rule.secret, cached.rule)
                continue
        if not isinstance(raw, str):
            plan.containers.append(ContainerPlan(kind, name, repr(raw), None, None, "image is missing or not a string"))
            plan.warnings.append(f"container {name!r}: image missing, no pull secret")
            continue
        try:
            ref = parse_image(raw)
        except InvalidReference as exc:
            plan.containers.append(ContainerPlan(kind, name, raw, None, None, str(exc)))
            plan.warnings.append(f"container {name!r}: invalid image {raw!r}, no pull secret")
            continue
        if decisions is not None:
            decision = decisions.decide(ref)
        else:
            decision = policy.decide(ref, namespace, namespace_labels, explain=True)
        container_plan = ContainerPlan(kind, name, raw, ref, decision.rule, decision.reason)
        if memo is not None:
            if len(memo) >= _MEMO_LIMIT:
                memo.clear()
            memo[(kind, name, raw)] = container_plan
        plan.containers.append(container_plan)
        if decision.rule is not None:
            plan.secrets.setdefault(decision.rule.secret, decision.rule)
    plan.patch, plan.added = build_patch(pod=pod, secrets=list(plan.secrets))
    return plan
