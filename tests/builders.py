"""What tests build and wait with, written once: AdmissionReviews, Pods, patches read back, polling.

* :func:`review` builds a Pod CREATE review from images (the unit tests, the emulator tests,
  the hygiene suite); :func:`golden_review` reads one of the recorded reviews in ``tests/golden``,
  :func:`golden_answer` checks a handler's answer against its ``response.json`` (:func:`readable`:
  the patch decoded) and :func:`reinvocation` feeds our own output back.
* :func:`rule` and :func:`policy_yaml` write a policy as an operator would (``QUAY_POLICY``: the
  smallest one with a copy); :func:`copy_of` is the copy ``build_copy`` makes of a source.
* :func:`kubeconfig` points a client at a test API; :func:`kubectl_secret` is what the real
  kubectl makes of a registry credential; :func:`require_program` skips (or, in CI, fails) without a tool.
* :func:`pod_body` is the one Pod factory and :func:`deployment_body` the one Deployment (unit
  tests, ``check`` manifests and the e2e suite).
* :func:`injected` and :func:`warnings` read an answer back; :func:`pull_secrets` a created Pod.
* :func:`b64`, :func:`auth_entry` and :func:`api_secret` build Secret data.
* :func:`wait_for` polls from a thread (the e2e suite, live servers); :func:`eventually` polls
  on the event loop without blocking it. Both wait generously: a bound on a wait for an event,
  never a measurement of how fast it came (no test asserts a duration).

Nothing here talks to a cluster or starts a server: that is ``kube_fixtures``, ``scenario``,
``servers`` and ``e2e/``.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import http.server
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from webhook.admission.handler import Handler
from webhook.admission.wire import AdmissionReview, parse_review
from webhook.policy.model import SecretRef, Source
from webhook.secrets.desired import DesiredCopy, build_copy

T = TypeVar("T")
#: One folder per recorded AdmissionReview: ``request.json``, ``response.json``, optional ``policy.yaml``.
GOLDEN = Path(__file__).resolve().parent / "golden"


def b64(text: str | bytes) -> str:
    """Base64 of ``text`` (UTF-8 encoded when a str), as a str: what a Secret's ``data`` holds."""
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


def auth_entry(username: str, password: str) -> dict[str, str]:
    """One registry's entry in a Docker config, as ``docker login`` writes it."""
    return {"username": username, "password": password, "auth": b64(f"{username}:{password}")}


def api_secret(secret_type: str | None, data: dict[str, str], **metadata: Any) -> dict[str, Any]:
    """The Secret ``ops/src`` as the API returns it: data values base64-encoded; no ``type`` when None."""
    obj: dict[str, Any] = {
        "metadata": {"name": "src", "namespace": "ops", **metadata},
        "data": {k: b64(v) for k, v in data.items()},
    }
    if secret_type is not None:
        obj["type"] = secret_type
    return obj


def rule(
    name: str, registries: str | list[str], secret: str, *, source: str | dict[str, Any] | None = None, **fields: Any
) -> dict[str, Any]:
    """One policy rule; ``source="ns/name"`` copies that Secret (a dict: the source as written); ``fields``
    as the policy spells them.

    (``namespaces=...``, ``repositories=[...]``, ``failurePolicy="Fail"``, ...: the keys are the
    policy's own, so a rule reads as the YAML an operator writes.)
    """
    built: dict[str, Any] = {
        "name": name,
        "registries": [registries] if isinstance(registries, str) else list(registries),
        **fields,
        "secret": secret,
    }
    if isinstance(source, str):
        namespace, _, source_name = source.partition("/")
        built["source"] = {"secret": {"namespace": namespace, "name": source_name}}
    elif source is not None:
        built["source"] = source
    return built


def policy_yaml(*rules: dict[str, Any], exclude: list[str] | None = None, **fields: Any) -> str:
    """A ``policy.yaml`` of ``rules`` (``exclude``: its ``excludeNamespaces``; ``fields``: other top-level keys)."""
    document: dict[str, Any] = {**({"excludeNamespaces": exclude} if exclude is not None else {}), **fields}
    document["rules"] = list(rules)
    return yaml.safe_dump(document, sort_keys=False)


#: The namespaces a rule admits by label, as the README's examples write it.
PULL_SECRETS_ENABLED = {"selector": {"matchLabels": {"pull-secrets": "enabled"}}}
#: The smallest policy with a copy: quay.io Pods get ``quay-pull``, copied from ``ops/shared``.
QUAY_POLICY = policy_yaml(rule("quay", "quay.io", "quay-pull", source="ops/shared"))


def copy_of(
    source_secret: Mapping[str, Any] | None,
    *,
    source: Source | str,
    registries: list[str],
    name: str = "pull",
    namespace: str = "team",
    rules: tuple[str, ...] = ("r",),
) -> DesiredCopy:
    """The copy ``build_copy`` makes of ``source_secret`` (``source``: the rule's, or ``"ns/name"`` of a Secret)."""
    if isinstance(source, str):
        source_namespace, _, source_name = source.partition("/")
        source = Source(secret=SecretRef(namespace=source_namespace, name=source_name))
    return build_copy(
        name=name,
        namespace=namespace,
        source=source,
        rules=list(rules),
        registries=registries,
        source_secret=dict(source_secret) if source_secret is not None else None,
    )


def kubeconfig(path: Path, server: str) -> Path:
    """A kubeconfig at ``path`` for ``server`` with a bearer token nobody checks (the emulator, a closed port)."""
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "emulator", "cluster": {"server": server}}],
                "users": [{"name": "webhook", "user": {"token": "not-checked"}}],
                "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "webhook"}}],
                "current-context": "emulator",
            }
        )
    )
    return path


class JsonHandler(http.server.BaseHTTPRequestHandler):
    """The handler of a quiet stand-in HTTP server that answers JSON (the fake APIs of the chart and token tests)."""

    def log_message(self, format: str, *args: Any) -> None:
        del format, args

    def send_json(self, status: int, payload: object, *, headers: Mapping[str, str] | None = None) -> None:
        """Answer ``payload`` (JSON-encoded unless already bytes) with its length, and ``headers`` besides."""
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""


def require_program(program: str, install: str) -> str:
    """The path of ``program``; else the test is skipped (failed under ``PSI_REQUIRE_E2E=1``, as in CI)."""
    path = shutil.which(program)
    if path is None:
        message = f"{program} not installed ({install})"
        if os.environ.get("PSI_REQUIRE_E2E") == "1":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return path


def kubectl_secret(name: str, namespace: str, server: str, username: str, password: str, *, output: str) -> str:
    """What the real ``kubectl create secret docker-registry --dry-run=client -o <output>`` prints (no cluster)."""
    kubectl = require_program("kubectl", "apt-get install kubectl")
    result = subprocess.run(
        [
            kubectl,
            "create",
            "secret",
            "docker-registry",
            name,
            "--namespace",
            namespace,
            f"--docker-server={server}",
            f"--docker-username={username}",
            f"--docker-password={password}",
            "--dry-run=client",
            "-o",
            output,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={"PATH": os.environ["PATH"], "HOME": tempfile.gettempdir(), "KUBECONFIG": os.devnull},
    )
    return result.stdout


def pod_body(
    *images: str,
    name: str | None = "app",
    generate_name: str = "pod-",
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A Pod with one container per image (``c0``, ``c1`` ...); ``name=None`` uses ``generateName``."""
    metadata: dict[str, Any] = {"name": name} if name else {"generateName": generate_name}
    if labels:
        metadata["labels"] = dict(labels)
    if annotations:
        metadata["annotations"] = dict(annotations)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {"containers": [{"name": f"c{i}", "image": image} for i, image in enumerate(images)]},
    }


def deployment_body(
    name: str,
    *images: str,
    replicas: int = 1,
    labels: Mapping[str, str] | None = None,
    namespace: str | None = None,
) -> dict[str, Any]:
    """An ``apps/v1`` Deployment of ``pod_body(*images)``; ``labels`` are the template's and the selector's."""
    selected = dict(labels or {"app": name})
    metadata: dict[str, Any] = {"name": name}
    if namespace is not None:
        metadata["namespace"] = namespace
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata,
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selected},
            "template": {"metadata": {"labels": selected}, "spec": pod_body(*images)["spec"]},
        },
    }


def review(
    namespace: str | None,
    *images: str,
    dry_run: bool = False,
    uid: str = "0000-1111",
    operation: str = "CREATE",
    obj: Mapping[str, Any] | None = None,
    api_version: str = "admission.k8s.io/v1",
) -> AdmissionReview:
    """An AdmissionReview of a Pod ``operation`` in ``namespace`` (None: no namespace field).

    The Pod is ``pod_body(*images)`` unless ``obj`` is given.
    """
    request: dict[str, Any] = {
        "uid": uid,
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "operation": operation,
        "dryRun": dry_run,
        "object": dict(obj) if obj is not None else pod_body(*images),
    }
    if namespace is not None:
        request["namespace"] = namespace
    built: AdmissionReview = {"apiVersion": api_version, "kind": "AdmissionReview", "request": request}  # type: ignore[typeddict-item]
    return built


def golden_review(name: str) -> AdmissionReview:
    """The recorded ``tests/golden/<name>/request.json``, parsed afresh on every call."""
    loaded: AdmissionReview = json.loads((GOLDEN / name / "request.json").read_text())
    return loaded


def golden_cases(*, mirrors: bool) -> list[str]:
    """The recorded reviews: the ``mirror-*`` ones (images rewritten too) or all the others."""
    return sorted(
        p.name for p in GOLDEN.iterdir() if (p / "request.json").is_file() and p.name.startswith("mirror-") is mirrors
    )


def readable(response: Mapping[str, Any]) -> dict[str, Any]:
    """An AdmissionReview answer as the golden files hold it: its patch decoded (a JSON list, base64 on the wire)."""
    result = copy.deepcopy(dict(response))
    inner = result["response"]
    if "patch" in inner:
        inner["patch"] = json.loads(base64.b64decode(inner["patch"]))
    return result


async def golden_answer(name: str, handler: Handler) -> tuple[AdmissionReview, dict[str, Any]]:
    """``tests/golden/<name>``'s review and ``handler``'s answer to it (readable), which must be its ``response.json``.

    With ``UPDATE_GOLDEN=1`` the answer is written there first: review the diff by eye.
    """
    case = GOLDEN / name
    review = parse_review((case / "request.json").read_bytes())
    actual = readable(await handler.handle(review))
    expected_file = case / "response.json"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        expected_file.write_text(json.dumps(actual, indent=2) + "\n")
    assert actual == json.loads(expected_file.read_text())
    assert actual["response"]["uid"] == review["request"]["uid"], "the answer is about this request"
    return review, actual


def reinvocation(review: AdmissionReview, patched: Mapping[str, Any]) -> AdmissionReview:
    """``review`` again with our own patched Pod as its object (``reinvocationPolicy: IfNeeded``)."""
    again: AdmissionReview = copy.deepcopy(review)
    again["request"]["object"] = dict(patched)
    return again


def injected(response: Mapping[str, Any]) -> list[str]:
    """The Secret names the review response's patch adds to imagePullSecrets (``[]`` without a patch).

    Decoded here, not with the code under test's ``decode_patch``.
    """
    patch = response["response"].get("patch")
    if not patch:
        return []
    for op in json.loads(base64.b64decode(patch)):
        if op["path"] == "/spec/imagePullSecrets":
            return [ref["name"] for ref in op["value"]]
    return []


def pull_secrets(pod: Any) -> list[str]:
    """The imagePullSecrets names of a Pod the ``kubernetes`` client returned (a ``V1Pod``)."""
    return [ref.name for ref in (pod.spec.image_pull_secrets or [])]


def warnings(response: Mapping[str, Any]) -> list[str]:
    found: list[str] = response["response"].get("warnings", [])
    return found


def wait_for(fn: Callable[[], T | None], what: str, timeout: float = 30.0, interval: float = 0.1) -> T:
    """Call ``fn`` until it returns something truthy, and return that; AssertionError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


#: How long :func:`eventually` waits by default: generous, a bound on a wait for an event (a
#: loaded machine makes a test slower, never failing), not a measurement of how fast it came.
EVENTUALLY = 60.0


async def eventually(condition: Callable[[], Any], *, timeout: float = EVENTUALLY, interval: float = 0.02) -> None:
    """Wait on the loop until ``condition()`` is truthy; fail with its last value after ``timeout`` s."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        value = condition()
        if value:
            return
        if loop.time() > end:
            raise AssertionError(f"condition still false after {timeout}s: {value!r}")
        await asyncio.sleep(interval)
