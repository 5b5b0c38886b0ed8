"""Table tests for the mirrors: validation, normalisation, rewrites, precedence, idempotence, every image kind."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from typing import Any

import jsonpatch
import pytest

from webhook.admission.mirroring import apply_mirrors_offline
from webhook.admission.rewrite import iter_pod_images
from webhook.policy.mirrors import (
    ORIGINAL_IMAGES_ANNOTATION,
    InvalidEndpoint,
    MirrorSet,
    go_expand,
    parse_endpoint,
)
from webhook.policy.model import PolicyError, parse_policy

DIGEST = "sha256:" + "0123456789abcdef" * 4

POLICY = """
mirrors:
  docker.io:
    endpoint: ["https://registry.example.com:5000"]
    rewrite:
      "^rancher/(.*)": "mirrorproject/rancher-images/$1"
      "^bitnami/(?P<rest>.*)": "bn/${rest}"
      "^library/alpine$": "base/alpine"
  quay.io:
    endpoint: ["quay-cache.example.com/quay", "https://quay-fallback.example.com/v2"]
  "registry.k8s.io":
    endpoint: ["k8s-mirror.example.com"]
    namespaces: {exclude: ["legacy-*"]}
  "*":
    endpoint: ["http://everything.example.com:8080"]
  "[fd00::1]:5000":
    endpoint: ["localhost:5001"]
"""


def mirrors() -> MirrorSet:
    policy = parse_policy(POLICY)
    return MirrorSet(policy.mirrors, policy.exclude_namespaces)


def rewritten(image: str, namespace: str = "default") -> str | None:
    decision = mirrors().decide(image, namespace, None)
    return decision.targets[0].image if decision.targets else None


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("nginx", "registry.example.com:5000/library/nginx"),
        ("nginx:1.27", "registry.example.com:5000/library/nginx:1.27"),
        ("library/nginx:1.27", "registry.example.com:5000/library/nginx:1.27"),
        ("docker.io/nginx:1.27", "registry.example.com:5000/library/nginx:1.27"),
        ("docker.io/library/nginx:1.27", "registry.example.com:5000/library/nginx:1.27"),
        ("index.docker.io/library/nginx:1.27", "registry.example.com:5000/library/nginx:1.27"),
        ("registry-1.docker.io/bitnami/redis:7", "registry.example.com:5000/bn/redis:7"),
        ("rancher/pause:3.6", "registry.example.com:5000/mirrorproject/rancher-images/pause:3.6"),
        (
            "docker.io/rancher/mirrored-coredns-coredns:1.10.1",
            "registry.example.com:5000/mirrorproject/rancher-images/mirrored-coredns-coredns:1.10.1",
        ),
        ("nginx@" + DIGEST, "registry.example.com:5000/library/nginx@" + DIGEST),
        ("nginx:1.27@" + DIGEST, "registry.example.com:5000/library/nginx:1.27@" + DIGEST),
        ("rancher/pause:3.6@" + DIGEST, "registry.example.com:5000/mirrorproject/rancher-images/pause:3.6@" + DIGEST),
        ("someone/rancher/x:1", "registry.example.com:5000/someone/rancher/x:1"),
        ("alpine:3.20", "registry.example.com:5000/base/alpine:3.20"),  # a rewrite without captures
        ("alpine/git:2", "registry.example.com:5000/alpine/git:2"),  # anchored at the end too: no match
        ("quay.io/prometheus/node-exporter:v1", "quay-cache.example.com/quay/prometheus/node-exporter:v1"),
        ("registry.k8s.io/pause:3.9", "k8s-mirror.example.com/pause:3.9"),
        ("ghcr.io/org/app:2", "everything.example.com:8080/org/app:2"),
        ("localhost:5000/app", "everything.example.com:8080/app"),
        ("my.registry:5000/team/app:1", "everything.example.com:8080/team/app:1"),
        ("[fd00::1]:5000/app:1", "localhost:5001/app:1"),
        ("registry.example.com:5000/library/nginx:1.27", None),
        ("registry.example.com:5000/anything/else", None),
        ("quay-cache.example.com/quay/prometheus/node-exporter:v1", None),
        ("everything.example.com:8080/org/app:2", None),
        ("localhost:5001/app:1", None),
        ("UPPER/case", "everything.example.com:8080/case"),  # an upper-case first component is a registry host
        ("nginx@sha256:short", None),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_rewrite_table(image: str, expected: str | None) -> None:
    assert rewritten(image) == expected


@pytest.mark.parametrize(
    ("image", "kept"),
    [
        ("nginx@" + DIGEST, "@" + DIGEST),
        ("nginx:1.27@" + DIGEST, ":1.27@" + DIGEST),
        ("quay.io/a/b:v1@" + DIGEST, ":v1@" + DIGEST),
    ],
    ids=["digest", "tag-and-digest", "tag-and-digest-prefix-endpoint"],
)
def test_the_digest_is_kept_byte_for_byte(image: str, kept: str) -> None:
    target = rewritten(image)
    assert target is not None
    assert target.endswith(kept)
    assert ":sha256" not in target.replace("@sha256", "")


@pytest.mark.parametrize(
    "image",
    [
        "nginx",
        "rancher/pause:3.6",
        "nginx:1.27@" + DIGEST,
        "quay.io/prometheus/node-exporter:v1",
        "ghcr.io/org/app:2",
        "registry.k8s.io/pause:3.9",
    ],
)
def test_rewriting_is_idempotent(image: str) -> None:
    once = rewritten(image)
    assert once is not None
    assert rewritten(once) is None, "a second pass must leave a mirrored image alone"


@pytest.mark.parametrize(
    ("namespace", "expected"),
    [
        ("default", "k8s-mirror.example.com/pause:3.9"),
        ("legacy-a", None),
        ("kube-system", None),
    ],
    ids=["admitted", "mirror-excludes", "policy-excludes"],
)
def test_namespace_scope(namespace: str, expected: str | None) -> None:
    assert rewritten("registry.k8s.io/pause:3.9", namespace) == expected


def test_a_specific_entry_beats_the_wildcard_and_reasons_explain() -> None:
    decision = mirrors().decide("docker.io/rancher/pause:3.6", "default", None)
    assert decision.mirror is not None
    assert decision.mirror.key == "docker.io"
    assert decision.reason == (
        "docker.io/rancher/pause:3.6 -> registry.example.com:5000/mirrorproject/rancher-images/pause:3.6 "
        "by mirror docker.io, rewrite ^rancher/(.*)"
    )
    assert [t.image for t in mirrors().decide("quay.io/a/b:1", "default", None).targets] == [
        "quay-cache.example.com/quay/a/b:1",
        "quay-fallback.example.com/a/b:1",
    ]


def test_selector_needs_labels() -> None:
    policy = parse_policy(
        "mirrors:\n  docker.io:\n    endpoint: [m.example.com]\n"
        "    namespaces: {selector: {matchLabels: {mirror: 'yes'}}}\n"
    )
    ms = MirrorSet(policy.mirrors)
    assert ms.uses_selectors
    assert not ms.decide("nginx", "a", None).targets
    assert not ms.decide("nginx", "a", {"mirror": "no"}).targets
    assert ms.decide("nginx", "a", {"mirror": "yes"}).targets[0].image == "m.example.com/library/nginx"


@pytest.mark.parametrize(
    ("template", "text", "pattern", "expected"),
    [
        ("x/$1", "rancher/pause", r"^rancher/(.*)", "x/pause"),
        ("x/${1}y", "rancher/pause", r"^rancher/(.*)", "x/pausey"),
        ("x/$1y", "rancher/pause", r"^rancher/(.*)", "x/"),  # Go: $1y is the group named 1y
        ("$$1", "rancher/pause", r"^rancher/(.*)", "$1"),
        ("a/$name", "n/v", r"^n/(?P<name>.*)", "a/v"),
        ("a/$2", "n/v", r"^n/(.*)", "a/"),
        ("a/$01", "n/v", r"^n/(.*)", "a/"),
        ("a/$-", "n/v", r"^n/(.*)", "a/$-"),
        ("a/${1", "n/v", r"^n/(.*)", "a/${1"),
        ("fixed", "n/v", r"^n/.*", "fixed"),
    ],
    ids=[
        "dollar-1",
        "braced",
        "longest-name",
        "escaped",
        "named",
        "out-of-range",
        "leading-zero",
        "malformed",
        "unclosed",
        "no-captures",
    ],
)
def test_go_expand(template: str, text: str, pattern: str, expected: str) -> None:
    match = re.match(pattern, text)
    assert match is not None
    assert go_expand(template, match) == expected


@pytest.mark.parametrize(
    ("endpoint", "base_url", "name"),
    [
        ("https://registry.example.com:5000", "https://registry.example.com:5000", "registry.example.com:5000"),
        ("https://registry.example.com/v2", "https://registry.example.com", "registry.example.com"),
        ("https://registry.example.com/v2/", "https://registry.example.com", "registry.example.com"),
        ("http://registry.example.com:5000", "http://registry.example.com:5000", "registry.example.com:5000"),
        ("harbor.example.com/dockerhub", "https://harbor.example.com", "harbor.example.com/dockerhub"),
        ("localhost:5000", "https://localhost:5000", "localhost:5000"),
        ("127.0.0.1:5000", "https://127.0.0.1:5000", "127.0.0.1:5000"),
        ("[::1]:5000", "https://[::1]:5000", "[::1]:5000"),
    ],
)
def test_endpoints(endpoint: str, base_url: str, name: str) -> None:
    parsed = parse_endpoint(endpoint)
    assert (parsed.base_url, parsed.name) == (base_url, name)


@pytest.mark.parametrize(
    "endpoint",
    ["ftp://x.example.com", "https://x.example.com/prefix/v2", "mirror", "mirror/prefix", "x.example.com/UP", ""],
    ids=["scheme", "api-path", "no-dot", "no-dot-prefix", "uppercase-prefix", "empty"],
)
def test_bad_endpoints(endpoint: str) -> None:
    with pytest.raises(InvalidEndpoint):
        parse_endpoint(endpoint)


@pytest.mark.parametrize(
    ("document", "error"),
    [
        ("mirrors: {docker.io: {endpoint: []}}", "mirrors.docker.io.endpoint"),
        ("mirrors: {docker.io: {endpoint: [mirror]}}", "read as a Docker Hub namespace"),
        ("mirrors: {'https://docker.io': {endpoint: [m.example.com]}}", "must be a registry host"),
        (
            "mirrors: {docker.io: {endpoint: [m.example.com]}, index.docker.io: {endpoint: [n.example.com]}}",
            "name the same registry",
        ),
        ("mirrors: {docker.io: {endpoint: [m.example.com], rewrite: {'^(?=a)': b}}}", "not RE2"),
        ("mirrors: {docker.io: {endpoint: [m.example.com], rewrite: {'^(a': b}}}", "missing ), unterminated"),
        ("mirrors: {docker.io: {endpoint: [m.example.com], fallback: maybe}}", "fallback"),
        ("mirrors: {docker.io: {endpoint: [m.example.com], tls: {}}}", "unknown field"),
    ],
    ids=["no-endpoint", "host-without-dot", "url-key", "alias-keys", "lookahead", "bad-regex", "fallback", "tls"],
)
def test_invalid_mirrors_are_rejected(document: str, error: str) -> None:
    with pytest.raises(PolicyError) as excinfo:
        parse_policy(document)
    assert error in str(excinfo.value)


@pytest.mark.parametrize(
    "first", ["webhook.policy.mirrors", "webhook.policy.model"], ids=["mirrors-first", "model-first"]
)
def test_either_module_can_be_imported_first(first: str) -> None:
    """mirrors.py and model.py refer to each other; a fresh interpreter must work in both orders."""
    code = (
        f"import {first}\n"
        "from webhook.policy.mirrors import Mirror\n"
        "from webhook.policy.model import Policy\n"
        "assert Mirror(endpoint=['m.example.com']).namespaces.include == ()\n"
        "p = Policy.model_validate({'mirrors': {'*': {'endpoint': ['m.example.com']}}})\n"
        "assert p.mirrors['*'].check is False\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# --------------------------------------------------------------------------- every image in the Pod


def full_pod() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p"},
        "spec": {
            "initContainers": [
                {"name": "init", "image": "busybox:1.36"},
                {"name": "sidecar", "image": "rancher/pause:3.6", "restartPolicy": "Always"},
            ],
            "containers": [
                {"name": "app", "image": "nginx@" + DIGEST},
                {"name": "mirrored", "image": "registry.example.com:5000/library/nginx:1"},
            ],
            "ephemeralContainers": [{"name": "debug", "image": "quay.io/org/tools:1"}],
            "volumes": [
                {"name": "data", "image": {"reference": "ghcr.io/org/data:1", "pullPolicy": "IfNotPresent"}},
                {"name": "cfg", "configMap": {"name": "c"}},
            ],
        },
    }


def test_every_image_kind_is_rewritten_and_recorded() -> None:
    pod = full_pod()
    before = copy.deepcopy(pod)
    policy = parse_policy(POLICY)
    outcome = apply_mirrors_offline(pod=pod, namespace="default", labels=None, policy=policy)
    assert pod == before, "the request's Pod is never modified (copy-on-write)"
    patched = jsonpatch.apply_patch(pod, outcome.ops)
    assert patched == outcome.pod
    images = {f"{i.kind}/{i.name}": i.image for i in iter_pod_images(patched["spec"])}
    assert images == {
        "initContainers/init": "registry.example.com:5000/library/busybox:1.36",
        "initContainers/sidecar": "registry.example.com:5000/mirrorproject/rancher-images/pause:3.6",
        "containers/app": "registry.example.com:5000/library/nginx@" + DIGEST,
        "containers/mirrored": "registry.example.com:5000/library/nginx:1",
        "ephemeralContainers/debug": "quay-cache.example.com/quay/org/tools:1",
        "volumes/data": "everything.example.com:8080/org/data:1",
    }
    assert json.loads(patched["metadata"]["annotations"][ORIGINAL_IMAGES_ANNOTATION]) == {
        "initContainers/init": "busybox:1.36",
        "initContainers/sidecar": "rancher/pause:3.6",
        "containers/app": "nginx@" + DIGEST,
        "ephemeralContainers/debug": "quay.io/org/tools:1",
        "volumes/data": "ghcr.io/org/data:1",
    }
    # Nothing else changed.
    stripped = copy.deepcopy(patched)
    del stripped["metadata"]["annotations"]
    for kind in ("initContainers", "containers", "ephemeralContainers"):
        for original, now in zip(pod["spec"][kind], stripped["spec"][kind], strict=True):
            now["image"] = original["image"]
    stripped["spec"]["volumes"][0]["image"]["reference"] = pod["spec"]["volumes"][0]["image"]["reference"]
    assert stripped == pod
    # A second pass changes nothing.
    again = apply_mirrors_offline(pod=patched, namespace="default", labels=None, policy=policy)
    assert again.ops == []


@pytest.mark.parametrize(
    ("metadata", "path"),
    [
        (None, "/metadata"),
        ({"name": "p"}, "/metadata/annotations"),
        ({"name": "p", "annotations": {"a": "b"}}, "/metadata/annotations/pullsecret-injector.io~1original-images"),
    ],
    ids=["no-metadata", "no-annotations", "annotations"],
)
def test_annotation_patch_shapes(metadata: dict[str, Any] | None, path: str) -> None:
    pod: dict[str, Any] = {"spec": {"containers": [{"name": "c", "image": "nginx"}]}}
    if metadata is not None:
        pod["metadata"] = metadata
    outcome = apply_mirrors_offline(pod=pod, namespace="default", labels=None, policy=parse_policy(POLICY))
    assert [op["path"] for op in outcome.ops] == ["/spec/containers/0/image", path]
    jsonpatch.apply_patch(pod, outcome.ops)


def test_a_recorded_original_is_never_overwritten() -> None:
    pod = {
        "metadata": {"annotations": {ORIGINAL_IMAGES_ANNOTATION: json.dumps({"containers/c": "first"})}},
        "spec": {"containers": [{"name": "c", "image": "nginx"}, {"name": "d", "image": "redis"}]},
    }
    outcome = apply_mirrors_offline(pod=pod, namespace="default", labels=None, policy=parse_policy(POLICY))
    record = json.loads(outcome.pod["metadata"]["annotations"][ORIGINAL_IMAGES_ANNOTATION])
    assert record == {"containers/c": "first", "containers/d": "redis"}


@pytest.mark.parametrize("fallback", ["original", "deny"])
def test_a_rewrite_that_makes_no_valid_name_falls_back(fallback: str) -> None:
    policy = parse_policy(
        "mirrors:\n  docker.io:\n    endpoint: [m.example.com]\n"
        f"    rewrite: {{'^(.*)': 'UPPER/$1'}}\n    fallback: {fallback}\n"
    )
    pod = {"spec": {"containers": [{"name": "c", "image": "nginx"}]}}
    outcome = apply_mirrors_offline(pod=pod, namespace="default", labels=None, policy=policy)
    assert outcome.ops == []
    if fallback == "deny":
        assert outcome.denied is not None
        assert "'nginx'" in outcome.denied
    else:
        assert outcome.denied is None
        assert outcome.warnings[0].startswith("nginx kept as written: mirror docker.io: no usable endpoint")


@pytest.mark.parametrize(
    "ops",
    [
        [{"op": "replace", "path": "/spec/containers/0/image", "value": "x.example.com/a"}],
        [{"op": "add", "path": "/metadata/annotations/a~1b", "value": "v"}],
        [{"op": "remove", "path": "/spec/containers/0"}],
        [{"op": "add", "path": "/spec/containers/-", "value": {"name": "d", "image": "e"}}],
    ],
    ids=["replace", "add-escaped", "remove-falls-back", "append-falls-back"],
)
def test_apply_ops_is_jsonpatch_without_the_deep_copy(ops: list[Any]) -> None:
    from webhook.admission.rewrite import apply_ops

    pod = {"metadata": {"annotations": {}}, "spec": {"containers": [{"name": "c", "image": "nginx"}]}}
    before = copy.deepcopy(pod)
    assert apply_ops(pod, ops) == jsonpatch.apply_patch(pod, ops)
    assert pod == before
