"""The handler with its two collaborators faked: Namespace labels and the Secret ensurer.

The recorded reviews of ``test_golden.py`` cover the answers offline; these tests cover what
the handler asks its collaborators and what it makes of their answers.
"""

from __future__ import annotations

from collections.abc import Mapping

import orjson
import pytest

from tests.builders import injected, pod_body, review, warnings
from webhook.admission.handler import EnsureResult, Handler, Remembered
from webhook.admission.view import decode_view
from webhook.policy.matching import CompiledPolicy, load_policy
from webhook.policy.model import Rule

POLICY = load_policy("""
rules:
  - name: hub
    registries: [docker.io]
    secret: hub-pull
  - name: quay
    registries: [quay.io]
    secret: quay-pull
    source: {secret: {namespace: ops, name: shared}}
  - name: strict
    registries: [ghcr.io]
    namespaces: {selector: {matchLabels: {strict: "yes"}}}
    secret: ghcr-pull
    failurePolicy: Fail
    source: {secret: {namespace: ops, name: shared}}
""")


class Labels:
    """Namespace labels; ``cached``: known without waiting too (the watch has shown them)."""

    def __init__(self, labels: Mapping[str, str] | None, *, cached: bool = False) -> None:
        self.value = labels
        self.cached = cached
        self.asked: list[str] = []

    async def labels(self, namespace: str) -> Mapping[str, str] | None:
        self.asked.append(namespace)
        return self.value

    def labels_now(self, namespace: str) -> Mapping[str, str] | None:
        return self.value if self.cached else None


class Ensurer:
    def __init__(self, result: EnsureResult | None = None) -> None:
        self.result = result or EnsureResult()
        self.calls: list[tuple[str, list[str], bool]] = []

    async def ensure(self, *, namespace: str, secrets: Mapping[str, Rule], dry_run: bool) -> EnsureResult:
        self.calls.append((namespace, list(secrets), dry_run))
        return self.result


def handler(labels: Labels | None = None, ensurer: Ensurer | None = None) -> Handler:
    return Handler(policy=lambda: POLICY, namespaces=labels, ensurer=ensurer)


async def test_only_secrets_with_a_source_are_ensured_with_the_dry_run_flag() -> None:
    ensurer = Ensurer()
    answer = await handler(ensurer=ensurer).handle(review("team-a", "nginx", "quay.io/a/b", dry_run=True))
    assert injected(answer) == ["hub-pull", "quay-pull"]
    assert ensurer.calls == [("team-a", ["quay-pull"], True)]


async def test_nothing_managed_means_no_ensure_call() -> None:
    ensurer = Ensurer()
    answer = await handler(ensurer=ensurer).handle(review("team-a", "nginx"))
    assert injected(answer) == ["hub-pull"]
    assert ensurer.calls == []


async def test_labels_are_asked_for_only_when_a_selector_needs_them() -> None:
    labels = Labels({"strict": "yes"})
    answer = await handler(labels).handle(review("team-a", "ghcr.io/a/b"))
    assert injected(answer) == ["ghcr-pull"]
    assert labels.asked == ["team-a"]
    await handler(labels).handle(review("kube-system", "ghcr.io/a/b"))  # excluded by default
    assert labels.asked == ["team-a"]


async def test_a_failed_secret_of_a_fail_closed_rule_denies() -> None:
    ensurer = Ensurer(EnsureResult(warnings=["Secret ghcr-pull not provided: timeout"], failed=["ghcr-pull"]))
    answer = await handler(Labels({"strict": "yes"}), ensurer).handle(review("team-a", "ghcr.io/a/b"))
    response = answer["response"]
    assert response["allowed"] is False
    assert response["status"]["code"] == 503
    assert "ghcr-pull" in response["status"]["message"]
    assert warnings(answer) == ["pullsecret-injector: Secret ghcr-pull not provided: timeout"]


async def test_a_failed_secret_of_a_lenient_rule_is_a_warning() -> None:
    ensurer = Ensurer(EnsureResult(warnings=["Secret quay-pull not provided: timeout"], failed=["quay-pull"]))
    answer = await handler(ensurer=ensurer).handle(review("team-a", "quay.io/a/b"))
    assert answer["response"]["allowed"] is True
    assert injected(answer) == ["quay-pull"]
    assert warnings(answer) == ["pullsecret-injector: Secret quay-pull not provided: timeout"]


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"operation": "UPDATE"}, id="update"),
        pytest.param({"subResource": "ephemeralcontainers"}, id="subresource"),
        pytest.param({"kind": {"group": "", "version": "v1", "kind": "Secret"}}, id="other-kind"),
    ],
)
async def test_anything_but_a_pod_create_is_allowed_untouched(changes: dict[str, object]) -> None:
    sent = review("team-a", "nginx")
    sent["request"].update(changes)  # type: ignore[typeddict-item]
    ensurer = Ensurer()
    answer = await handler(ensurer=ensurer).handle(sent)
    assert answer["response"] == {"uid": "0000-1111", "allowed": True}
    assert ensurer.calls == []


async def test_the_skip_label_opts_a_pod_out() -> None:
    skipped = pod_body("nginx", labels={"pullsecret-injector.io/skip": "true"})
    answer = await handler().handle(review("team-a", obj=skipped))
    assert answer["response"] == {"uid": "0000-1111", "allowed": True}


async def test_the_namespace_comes_from_the_request_else_the_pod() -> None:
    in_pod = pod_body("quay.io/a/b")
    in_pod["metadata"]["namespace"] = "team-b"
    ensurer = Ensurer()
    answer = await handler(ensurer=ensurer).handle(review(None, obj=in_pod))
    assert injected(answer) == ["quay-pull"]
    assert ensurer.calls[0][0] == "team-b"
    nowhere = await handler().handle(review(None, "nginx"))
    assert injected(nowhere) == []
    assert warnings(nowhere) == ["pullsecret-injector: request has no namespace, nothing injected"]


async def test_a_request_without_a_pod_object_is_allowed_with_a_warning() -> None:
    sent = review("team-a")
    del sent["request"]["object"]
    answer = await handler().handle(sent)
    assert answer["response"]["allowed"] is True
    assert warnings(answer) == ["pullsecret-injector: no Pod object in the request"]


NO_SELECTORS = load_policy("""
rules:
  - {name: hub, registries: [docker.io], secret: hub-pull}
  - {name: quay, registries: [quay.io], secret: quay-pull, source: {secret: {namespace: ops, name: shared}}}
""")


@pytest.mark.parametrize(
    ("policy", "with_labels", "with_ensurer", "image", "remembered"),
    [
        pytest.param(NO_SELECTORS, True, True, "nginx", "answer", id="reference-only-rule"),
        pytest.param(NO_SELECTORS, True, True, "quay.io/a/b", "to-ensure", id="secret-to-ensure"),
        pytest.param(NO_SELECTORS, True, False, "quay.io/a/b", "answer", id="secret-with-no-ensurer"),
        pytest.param(POLICY, True, False, "nginx", "nothing", id="labels-to-look-up"),
        pytest.param(POLICY, "cached", False, "nginx", "answer", id="labels-known-without-waiting"),
        pytest.param(POLICY, False, False, "nginx", "answer", id="selectors-but-no-label-source"),
    ],
)
async def test_answer_now_answers_from_the_view_exactly_as_handle(
    policy: CompiledPolicy, with_labels: bool | str, with_ensurer: bool, image: str, remembered: str
) -> None:
    """``answer_now`` is the transport's hot path: the answer, or ``Remembered`` with Secrets to ensure first.

    ``None`` whenever only ``handle`` can tell (here: labels that must be asked for).
    """
    observed: list[str] = []
    ensurer = Ensurer() if with_ensurer else None
    handler = Handler(
        policy=lambda: policy,
        namespaces=Labels({}, cached=with_labels == "cached") if with_labels else None,
        ensurer=ensurer,
        observe=lambda outcome, _seconds: observed.append(outcome.result),
    )
    request = review("team-a", image, dry_run=True)
    view = decode_view(orjson.dumps(request))
    assert view is not None
    assert handler.answer_now(view) is None  # nothing remembered yet: planned by the complete path
    awaited = await handler.handle(request)
    now = handler.answer_now(view)
    kind = "nothing" if now is None else "to-ensure" if isinstance(now, Remembered) else "answer"
    assert kind == remembered
    if isinstance(now, Remembered):
        assert await handler.finish(now) == awaited
        assert ensurer is not None
        # The same ensure as the complete path's, dry run included.
        assert ensurer.calls[0] == ensurer.calls[1] == ("team-a", ["quay-pull"], True)
    elif now is not None:
        assert now == awaited
    # Observed once per answer, by whichever path gave it.
    assert observed == ["mutated"] if now is None else ["mutated", "mutated"]
