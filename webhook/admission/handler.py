"""The admission handler: ``handle(review) -> response``, with no HTTP in sight.

As in controller-runtime, the transport (``webhook.app``) only moves bytes; everything
that decides an answer lives here, so it can be driven directly by tests, the benchmark
and the CLI. The two collaborators that need a cluster (Namespace labels and the Secrets
in the namespace) come in as small protocols; offline they are simply absent.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from webhook.admission.answers import WARNING_PREFIX, AnswerCache, PlannedAnswer, planned_answer, pod_fingerprint
from webhook.admission.mirroring import MirrorChecker, apply_mirrors, ephemeral_update, mirror_set, with_image_volumes
from webhook.admission.patch import is_skipped, labels_skip
from webhook.admission.podplan import PlanCache, plan_pod, short
from webhook.admission.view import ReviewView, pod_view
from webhook.admission.wire import SUPPORTED_API_VERSIONS, AdmissionReview, AdmissionReviewResponse, build_response
from webhook.bounded import BoundedCache
from webhook.config import CacheLimits
from webhook.policy.matching import CompiledPolicy
from webhook.policy.model import Rule

log = logging.getLogger(__name__)


class NamespaceLabels(Protocol):
    """Labels of a Namespace, or ``None`` when they are not known."""

    async def labels(self, namespace: str) -> Mapping[str, str] | None: ...

    def labels_now(self, namespace: str) -> Mapping[str, str] | None:
        """The labels ``labels`` would answer if it can without waiting (the watch has them), else ``None``."""
        ...


@dataclass(slots=True)
class EnsureResult:
    """What happened when the Secrets were made to exist in the namespace."""

    warnings: list[str] = field(default_factory=list)
    #: Secret names that could not be provided within the budget.
    failed: list[str] = field(default_factory=list)


class SecretEnsurer(Protocol):
    """Makes sure managed Secrets exist and are current in a namespace before a Pod uses them."""

    async def ensure(self, *, namespace: str, secrets: Mapping[str, Rule], dry_run: bool) -> EnsureResult: ...


@dataclass(frozen=True, slots=True)
class AdmissionOutcome:
    """What the handler decided about one review, for metrics and logs."""

    result: str  # "mutated", "unchanged", "skipped", "ignored", "denied"
    #: Names of the rules whose pull secrets the answer adds (or, denied, would have added).
    injected: tuple[str, ...] = ()


#: Called after every answer with the outcome and the seconds it took.
ObserveFn = Callable[[AdmissionOutcome, float], None]


class Handler:
    """Answers AdmissionReviews for Pod CREATE; allows everything else untouched."""

    def __init__(
        self,
        *,
        policy: Callable[[], CompiledPolicy],
        namespaces: NamespaceLabels | None = None,
        ensurer: SecretEnsurer | None = None,
        observe: ObserveFn | None = None,
        mirror_checker: MirrorChecker | None = None,
        limits: CacheLimits | None = None,
    ) -> None:
        self._mirror_checker = mirror_checker
        self._policy = policy
        #: Container plans across Pods (the admission layer's cache; the policy keeps none of it).
        limits = limits or CacheLimits()
        self.plans: PlanCache = BoundedCache(limits.container_plans)
        #: Whole answers per (namespace decisions, Pod fingerprint): see webhook/admission/answers.py.
        self.answers: AnswerCache = BoundedCache(limits.answers)
        #: The policy both caches were filled under (they are emptied when it changes).
        self._planned_for: CompiledPolicy | None = None
        self._namespaces = namespaces
        self._ensurer = ensurer
        self._observe = observe

    async def handle(self, review: AdmissionReview) -> AdmissionReviewResponse:
        start = time.perf_counter()
        answered = await self._handle(review)
        if self._observe is not None:
            self._observe(answered[1], time.perf_counter() - start)
        return answered[0]

    def answer_now(self, review: ReviewView) -> AdmissionReviewResponse | Remembered | None:
        """The answer, if it is a remembered one; ``Remembered`` if its Secrets must be ensured first.

        Most reviews are a Pod of a template already answered, in a namespace whose labels are
        known (or looked at by no rule), with no mirror to check: their answer is a lookup
        (``webhook/admission/answers.py``) made from the review's view
        (``webhook/admission/view.py``), and the transport takes it without decoding the rest
        of the review. With no Secret to ensure it is the answer itself, with no coroutine or
        deadline around it; with Secrets to ensure, :meth:`finish` awaits them. ``None`` for
        anything else, a review the full decode would refuse included: the transport then
        decodes it whole and awaits :meth:`handle`, which gives the same answer (and the same
        observation) for the reviews this answers.
        """
        start = time.perf_counter()
        request = review.request
        if (
            request is None
            or review.apiVersion not in SUPPORTED_API_VERSIONS
            or review.kind != "AdmissionReview"
            or type(request.uid) is not str
            or not request.uid
            or not is_pod_create(request.operation, request.kind, request.resource, request.subResource)
        ):
            return None
        pod = request.object
        if pod is None or pod.metadata is None or labels_skip(pod.metadata.labels):
            return None
        namespace = namespace_of(request.namespace, pod.metadata.namespace)
        if namespace is None:
            return None
        policy = self._current_policy()
        if mirror_set(policy.policy):
            return None  # a mirror check may mean waiting
        labels: Mapping[str, str] | None = None
        if policy.uses_selectors and self._namespaces is not None and not policy.namespace_excluded(namespace):
            labels = self._namespaces.labels_now(namespace)
            if labels is None:
                return None  # the namespace's labels are not known without asking the API
        fingerprint = pod_fingerprint(pod)
        if fingerprint is None:
            return None
        planned = self.answers.get((policy.namespace_decisions(namespace, labels), fingerprint))
        if planned is None:
            return None  # to be planned by the complete path
        if planned.managed and self._ensurer is not None:
            return Remembered(review, namespace, planned, start)
        response, outcome = _answer(review, planned)
        if self._observe is not None:
            self._observe(outcome, time.perf_counter() - start)
        return response

    async def finish(self, remembered: Remembered) -> AdmissionReviewResponse:
        """The answer :meth:`answer_now` remembered, once its Secrets exist in the namespace."""
        answered = await self._ensure(remembered.review, remembered.namespace, remembered.planned)
        if self._observe is not None:
            self._observe(answered[1], time.perf_counter() - remembered.start)
        return answered[0]

    def _current_policy(self) -> CompiledPolicy:
        policy = self._policy()
        if policy is not self._planned_for:
            # Both caches are keyed by the old policy's decisions: nothing in them can be hit again.
            self.plans.clear()
            self.answers.clear()
            self._planned_for = policy
        return policy

    def _planned(
        self, pod: Mapping[str, Any], namespace: str, policy: CompiledPolicy, labels: Mapping[str, str] | None
    ) -> PlannedAnswer | None:
        """The Pod template's answer (no mirrors), remembered; ``None`` for a Pod not worth remembering."""
        view = pod_view(pod)
        fingerprint = None if view is None else pod_fingerprint(view)
        if fingerprint is None:
            return None
        key = (policy.namespace_decisions(namespace, labels), fingerprint)
        planned = self.answers.get(key)
        if planned is None:
            planned = planned_answer(
                plan_pod(pod=pod, namespace=namespace, policy=policy, namespace_labels=labels, plans=self.plans)
            )
            self.answers[key] = planned
        return planned

    async def _handle(self, review: AdmissionReview) -> tuple[AdmissionReviewResponse, AdmissionOutcome]:
        request = review["request"]
        if not _is_pod_create(request):
            # mirrors: the pods/ephemeralcontainers subresource gets its new images rewritten too
            answer = await ephemeral_update(review, self._policy(), self._mirror_checker)
            if answer is not None:
                return answer[0], AdmissionOutcome(answer[1])
            return build_response(review=review), AdmissionOutcome("ignored")
        pod = request.get("object")
        if not isinstance(pod, dict):
            return build_response(
                review=review, warnings=["pullsecret-injector: no Pod object in the request"]
            ), AdmissionOutcome("ignored")
        if is_skipped(pod):
            return build_response(review=review), AdmissionOutcome("skipped")
        namespace = _namespace_of(request, pod)
        if namespace is None:
            return (
                build_response(
                    review=review, warnings=["pullsecret-injector: request has no namespace, nothing injected"]
                ),
                AdmissionOutcome("ignored"),
            )
        policy = self._current_policy()
        labels: Mapping[str, str] | None = None
        mirrors = mirror_set(policy.policy)
        if (
            (policy.uses_selectors or mirrors.uses_selectors)
            and self._namespaces is not None
            and not policy.namespace_excluded(namespace)
        ):
            labels = await self._namespaces.labels(namespace)
        # No rewrite: the answer is the Pod template's (webhook/admission/answers.py).
        planned = None if mirrors else self._planned(pod, namespace, policy, labels)
        if planned is not None:
            return await self._finish(review, namespace, planned)
        # --- mirrors (webhook/admission/mirroring.py): images are rewritten first, rules match the result
        mirrored = await apply_mirrors(
            pod=pod, namespace=namespace, labels=labels, policy=policy, checker=self._mirror_checker
        )
        mirror_warnings = tuple(short(WARNING_PREFIX + w) for w in mirrored.warnings)
        if mirrored.denied is not None:
            return build_response(
                review=review, allowed=False, message=mirrored.denied, code=403, warnings=mirror_warnings
            ), AdmissionOutcome("denied")
        plan = with_image_volumes(
            plan_pod(pod=mirrored.pod, namespace=namespace, policy=policy, namespace_labels=labels, plans=self.plans),
            mirrored,
            policy=policy,
            labels=labels,
        )
        # --- end mirrors
        return await self._finish(review, namespace, planned_answer(plan, mirror_warnings))

    async def _finish(
        self, review: AdmissionReview, namespace: str, planned: PlannedAnswer
    ) -> tuple[AdmissionReviewResponse, AdmissionOutcome]:
        """``planned`` as the answer, once its managed Secrets (if any) exist in ``namespace``."""
        if planned.managed and self._ensurer is not None:
            return await self._ensure(review, namespace, planned)
        return _answer(review, planned)

    async def _ensure(
        self, review: AdmissionReview | ReviewView, namespace: str, planned: PlannedAnswer
    ) -> tuple[AdmissionReviewResponse, AdmissionOutcome]:
        """The answer to ``review``: ``planned``, once its managed Secrets exist in ``namespace``."""
        assert self._ensurer is not None
        managed = planned.managed
        result = await self._ensurer.ensure(namespace=namespace, secrets=managed, dry_run=_is_dry_run(review))
        warnings = (*planned.warnings, *(short(WARNING_PREFIX + w) for w in result.warnings))
        denied = [name for name in result.failed if managed[name].failure_policy == "Fail"]
        if denied:
            message = (
                f"pullsecret-injector: pull secret(s) {', '.join(denied)} could not be provided in namespace "
                f"{namespace!r} and their rule fails closed; retry shortly"
            )
            return (
                build_response(review=review, allowed=False, message=message, code=503, warnings=warnings),
                AdmissionOutcome("denied", planned.injected),
            )
        return _answer(review, planned, warnings)


@dataclass(frozen=True, slots=True)
class Remembered:
    """A remembered answer whose managed Secrets must be ensured first (:meth:`Handler.finish`)."""

    review: ReviewView
    namespace: str
    planned: PlannedAnswer
    #: When :meth:`Handler.answer_now` began (the observed duration counts from there).
    start: float


def _is_dry_run(review: AdmissionReview | ReviewView) -> bool:
    if isinstance(review, ReviewView):
        return review.request is not None and bool(review.request.dryRun)
    return bool(review["request"].get("dryRun", False))


def _answer(
    review: AdmissionReview | ReviewView, planned: PlannedAnswer, warnings: tuple[str, ...] | None = None
) -> tuple[AdmissionReviewResponse, AdmissionOutcome]:
    """``planned`` as the response to ``review`` (with ``warnings`` instead of its own, when given)."""
    return (
        build_response(
            review=review, encoded_patch=planned.patch, warnings=planned.warnings if warnings is None else warnings
        ),
        AdmissionOutcome(planned.result, planned.injected),
    )


def _is_pod_create(request: Mapping[str, Any]) -> bool:
    return is_pod_create(
        request.get("operation"), request.get("kind"), request.get("resource"), request.get("subResource")
    )


def is_pod_create(operation: object, kind: object, resource: object, sub_resource: object) -> bool:
    """The request's fields (decoded or viewed) say: CREATE of a core Pod, not of a subresource."""
    return (
        operation == "CREATE"
        and isinstance(kind, dict)
        and kind.get("group", "") == ""
        and kind.get("kind") == "Pod"
        and (not isinstance(resource, dict) or resource.get("resource", "pods") == "pods")
        and not sub_resource
    )


def _namespace_of(request: Mapping[str, Any], pod: Mapping[str, Any]) -> str | None:
    metadata = pod.get("metadata")
    return namespace_of(request.get("namespace"), metadata.get("namespace") if isinstance(metadata, dict) else None)


def namespace_of(request_namespace: object, pod_namespace: object) -> str | None:
    """The request's namespace, else the Pod's own (decoded or viewed)."""
    # Pods created by controllers carry no metadata.namespace; the request always has it.
    if isinstance(request_namespace, str) and request_namespace:
        return request_namespace
    if isinstance(pod_namespace, str) and pod_namespace:
        return pod_namespace
    return None


__all__: Sequence[str] = (
    "AdmissionOutcome",
    "EnsureResult",
    "Handler",
    "NamespaceLabels",
    "Remembered",
    "SecretEnsurer",
)
