"""Property-based tests: generated and mutated reviews, images and policies never break the webhook.

10,000 examples in all (see the ``max_examples`` of each test): the handler and the
HTTP app never crash and never answer 5xx; every 2xx answer is a valid AdmissionReview
for the same uid whose patch applies cleanly to the request's Pod and is idempotent.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
from collections.abc import Coroutine
from typing import Any, TypeVar

import httpx
import jsonpatch
import orjson
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from webhook.admission.handler import Handler
from webhook.admission.wire import AdmissionReview
from webhook.app import Readiness, create_app
from webhook.policy.images import InvalidReference, parse_image
from webhook.policy.matching import load_policy
from webhook.policy.model import PolicyError, parse_policy

POLICY = load_policy(
    """
rules:
  - {name: hub, registries: [docker.io], secret: hub}
  - {name: gar, registries: ["*-docker.pkg.dev"], repositories: ["p/*"], secret: gar}
  - {name: port, registries: ["reg.example.com:5000"], secret: port}
  - {name: ns, registries: [quay.io], namespaces: {include: ["team-*"]}, secret: quay}
  - {name: any, registries: ["*"], secret: fallback}
"""
)
HANDLER = Handler(policy=lambda: POLICY)
T = TypeVar("T")
_READINESS = Readiness()
_READINESS.started = True
# One loop and one client for all HTTP examples: a new event loop per example costs more than the request.
LOOP = asyncio.new_event_loop()
CLIENT = httpx.AsyncClient(
    transport=httpx.ASGITransport(app=create_app(handler=HANDLER, readiness=_READINESS)), base_url="http://w"
)

# ------------------------------------------------------------------ strategies

# Drawn from small alphabets of realistic parts (cheap to generate), then mutated below.
label = st.sampled_from(["a", "b0", "docker", "pkg", "io", "com", "example", "my-reg", "x1y", "eu", "gcr", "quay"])
host = st.one_of(
    st.sampled_from(
        [
            "docker.io",
            "quay.io",
            "europe-docker.pkg.dev",
            "reg.example.com:5000",
            "localhost:5000",
            "[fc00::1]:5000",
            "index.docker.io",
            "registry.io.evil.com",
            "localhost",
            "Reg.Example.com",
        ]
    ),
    st.builds(
        lambda a, b, port: f"{a}.{b}" + (f":{port}" if port else ""),
        label,
        label,
        st.one_of(st.none(), st.integers(1, 65535)),
    ),
)
segment = st.sampled_from(["p", "app", "library", "nginx", "team", "a.b", "x_y", "web-app", "v2", "0", "my-project"])
path = st.lists(segment, min_size=1, max_size=4).map("/".join)
tag = st.sampled_from(["latest", "1.27", "v1.0.0-rc1", "_x", "A.b-C", "t" * 128])
digest = st.sampled_from(["0" * 64, "0123456789abcdef" * 4, "f" * 64]).map(lambda h: f"sha256:{h}")


@st.composite
def image(draw: st.DrawFn) -> str:
    text = draw(path)
    if draw(st.booleans()):
        text = f"{draw(host)}/{text}"
    if draw(st.booleans()):
        text += f":{draw(tag)}"
    if draw(st.booleans()):
        text += f"@{draw(digest)}"
    if draw(st.integers(0, 9)) == 0:  # mutate: break it somewhere
        position = draw(st.integers(0, len(text)))
        text = text[:position] + draw(st.sampled_from(["A", " ", "@", ":", "//", "..", "-", "ß", ""])) + text[position:]
    return text


junk: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=5),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=5,
)


@st.composite
def container(draw: st.DrawFn, index: int) -> dict[str, Any]:
    item: dict[str, Any] = {"name": f"c{index}"}
    choice = draw(st.integers(0, 19))
    if choice == 0:
        item["image"] = draw(junk)
    elif choice != 1:
        item["image"] = draw(image())
    return item


@st.composite
def pod(draw: st.DrawFn) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    for kind in ("initContainers", "containers", "ephemeralContainers"):
        if kind == "containers" or draw(st.booleans()):
            count = draw(st.integers(0, 4))
            spec[kind] = [draw(container(i)) for i in range(count)]
    secrets = draw(st.one_of(st.none(), st.lists(st.sampled_from(["hub", "gar", "other", "quay"]), max_size=3)))
    if secrets is not None:
        spec["imagePullSecrets"] = [{"name": n} for n in secrets]
    elif draw(st.booleans()):
        spec["imagePullSecrets"] = None
    metadata: dict[str, Any] = {}
    if draw(st.booleans()):
        metadata["name"] = "p"
    else:
        metadata["generateName"] = "p-"
    if draw(st.booleans()):
        metadata["annotations"] = draw(
            st.dictionaries(
                st.sampled_from(["a", "b/c", "pullsecret-injector.io/injected"]), st.text(max_size=10), max_size=3
            )
        )
    if draw(st.booleans()):
        metadata["labels"] = {"pullsecret-injector.io/skip": draw(st.sampled_from(["true", "false", ""]))}
    result: dict[str, Any] = {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}
    if draw(st.integers(0, 19)) == 0:  # mutate: a hostile shape somewhere
        target = draw(st.sampled_from(["metadata", "spec", "containers", "imagePullSecrets"]))
        if target in ("metadata", "spec"):
            result[target] = draw(junk)
        else:
            spec[target] = draw(junk)
    return result


@st.composite
def review(draw: st.DrawFn) -> AdmissionReview:
    request: dict[str, Any] = {
        "uid": draw(st.uuids()).hex,
        "kind": {"group": "", "version": "v1", "kind": draw(st.sampled_from(["Pod", "Pod", "Pod", "Secret"]))},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "operation": draw(st.sampled_from(["CREATE", "CREATE", "CREATE", "UPDATE", "DELETE"])),
        "namespace": draw(st.sampled_from(["team-a", "default", "kube-system", "x"])),
        "object": draw(pod()),
        "dryRun": draw(st.booleans()),
    }
    if draw(st.integers(0, 9)) == 0:
        request["subResource"] = "ephemeralcontainers"
    if draw(st.integers(0, 9)) == 0:
        del request["namespace"]
    version = draw(st.sampled_from(["admission.k8s.io/v1", "admission.k8s.io/v1beta1"]))
    return {"apiVersion": version, "kind": "AdmissionReview", "request": request}  # type: ignore[typeddict-item]


def run_now(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends (an offline handler) without an event loop per example."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coroutine.close()
    raise AssertionError("the offline handler awaited something")


def check_answer(sent: AdmissionReview, answer: dict[str, Any]) -> None:
    assert answer["apiVersion"] == sent["apiVersion"]
    assert answer["kind"] == "AdmissionReview"
    response = answer["response"]
    assert response["uid"] == sent["request"]["uid"]
    assert response["allowed"] is True
    for warning in response.get("warnings", []):
        assert len(warning) <= 120
    if "patch" not in response:
        return
    assert response["patchType"] == "JSONPatch"
    ops = json.loads(base64.b64decode(response["patch"]))
    original = sent["request"].get("object") or {}
    patched = jsonpatch.apply_patch(original, ops)  # raises if the patch does not apply
    before = original["spec"].get("imagePullSecrets") or []
    after = patched["spec"]["imagePullSecrets"]
    assert after[: len(before)] == before, "existing entries were changed"
    added = [e["name"] for e in after[len(before) :]]
    present = {e.get("name") for e in before if isinstance(e, dict)}
    assert added, "a patch that adds nothing"
    assert len(added) == len(set(added)), "a name was added twice"
    assert not present & set(added), "a name already present was added again"
    again = copy.deepcopy(sent)
    again["request"]["object"] = patched
    second = run_now(HANDLER.handle(again))
    assert "patch" not in second["response"], "the patch is not idempotent"


# ------------------------------------------------------------------ properties


@settings(max_examples=4000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(review())
def test_handler_answers_every_review(sent: AdmissionReview) -> None:
    answer = run_now(HANDLER.handle(copy.deepcopy(sent)))
    check_answer(sent, dict(answer))


@st.composite
def http_body(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 5))
    if kind == 0:
        return draw(st.binary(max_size=200))
    if kind == 1:
        return orjson.dumps(draw(junk))
    data: dict[str, Any] = dict(draw(review()))
    if kind == 2:  # mutate the envelope
        key = draw(st.sampled_from(["apiVersion", "kind", "request"]))
        data[key] = draw(junk)
    return orjson.dumps(data)


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(http_body())
def test_http_app_never_answers_5xx(body: bytes) -> None:
    response = LOOP.run_until_complete(
        CLIENT.post("/mutate", content=body, headers={"content-type": "application/json"})
    )
    assert response.status_code in (200, 400)
    if response.status_code == 200:
        check_answer(json.loads(body), response.json())
    else:
        assert response.text.strip()
        assert "\n" not in response.text.strip()


@settings(max_examples=3000, deadline=None)
@given(image())
def test_image_parsing_never_raises_anything_else(text: str) -> None:
    try:
        ref = parse_image(text)
    except InvalidReference as exc:
        assert str(exc)
        return
    # A parsed reference is stable: its canonical form parses to the same thing (with the
    # implied ":latest" made explicit).
    again = parse_image(str(ref))
    assert (again.registry, again.repository, again.digest) == (ref.registry, ref.repository, ref.digest)
    assert again.tag == (ref.tag if ref.tag is not None or ref.digest is not None else "latest")


policy_doc: st.SearchStrategy[Any] = st.fixed_dictionaries(
    {},
    optional={
        "excludeNamespaces": st.one_of(st.lists(label, max_size=2), junk),
        "rules": st.lists(
            st.fixed_dictionaries(
                {
                    "name": label,
                    "registries": st.lists(st.one_of(host, st.just("*"), st.just("*.io"), junk), max_size=2),
                    "secret": st.one_of(label, junk),
                },
                optional={
                    "repositories": st.lists(path, max_size=2),
                    "bogus": junk,
                    "namespaces": st.fixed_dictionaries({}, optional={"include": st.lists(label, max_size=2)}),
                },
            ),
            max_size=3,
        ),
    },
)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policy_doc, st.lists(image(), min_size=1, max_size=3))
def test_policies_validate_or_explain_and_then_match(doc: Any, images: list[str]) -> None:
    try:
        policy = load_policy(yaml.safe_dump(doc))
    except PolicyError as exc:
        assert exc.errors
        assert all(isinstance(e, str) and e for e in exc.errors)
        return
    assert parse_policy(yaml.safe_dump(doc)).rules == policy.policy.rules
    for text in images:
        try:
            ref = parse_image(text)
        except InvalidReference:
            continue
        decision = policy.decide(ref, "team-a", None)
        if decision.rule is not None:
            assert decision.rule in policy.policy.rules
