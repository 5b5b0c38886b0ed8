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

from webhook.images import ImageRef, InvalidReference, parse_image
from webhook.patch import ContainerKind, build_patch, iter_images
from webhook.policy import CompiledPolicy, Rule
from webhook.wire import PatchOperation

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
    for container in iter_images(spec):
        raw = container.image
        if not isinstance(raw, str):
            plan.containers.append(
                ContainerPlan(container.kind, container.name, repr(raw), None, None, "image is missing or not a string")
            )
            plan.warnings.append(f"container {container.name!r}: image missing, no pull secret")
            continue
        try:
            ref = parse_image(raw)
        except InvalidReference as exc:
            plan.containers.append(ContainerPlan(container.kind, container.name, raw, None, None, str(exc)))
            plan.warnings.append(f"container {container.name!r}: invalid image {raw!r}, no pull secret")
            continue
        decision = policy.decide(ref, namespace, namespace_labels, explain=explain)
        plan.containers.append(ContainerPlan(container.kind, container.name, raw, ref, decision.rule, decision.reason))
        if decision.rule is not None:
            plan.secrets.setdefault(decision.rule.secret, decision.rule)
    plan.patch, plan.added = build_patch(pod=pod, secrets=list(plan.secrets))
    return plan
