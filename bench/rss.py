"""Resident memory of a server process that has seen 10,000 namespaces.

Run in a fresh interpreter (``python -m bench.rss``; :func:`measure` does that) so that
nothing else the benchmark did is counted. The process imports what ``serve`` imports
(the Kubernetes side included), loads the policy, and fills the real caches of
:mod:`webhook.kube.caches` the way they fill in production, with no API server: a stand-in
:class:`~webhook.kube.client.KubeApi` answers the first *list* with 10,000 Namespaces and 10,000
managed Secret copies shaped as the API server returns them (``managedFields``,
``.dockerconfigjson`` data, our label and annotations with the content hash), and then a
watch that stays quiet. The real :class:`~webhook.kube.informer.ListWatch` threads list them into the
real :class:`~webhook.kube.caches.NamespaceCache` and :class:`~webhook.kube.caches.SecretCache` stores.
Then every namespace sends one 3-container Pod review through the real handler, whose
Namespace labels come from that cache, which fills the policy's per-namespace caches.

RSS is ``VmRSS`` from ``/proc/self/status`` (no psutil); the peak is ``VmHWM``.
"""

from __future__ import annotations

import argparse
import base64
import gc
import importlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson

from webhook.config import KubeSettings
from webhook.kube.caches import NamespaceCache, SecretCache
from webhook.kube.client import KubeApi
from webhook.kube.objects import KubeObject
from webhook.kube.runner import Runner
from webhook.observability.stats import Stats

CACHE_MODEL = "webhook.kube.caches NamespaceCache + SecretCache (real ListWatch/Store, paged lists), stand-in API"
SECRET_NAME = "platform-pull"
#: The real watches' page size (``limit``); the stand-in serves its lists in pages of it.
PAGE_SIZE = KubeSettings().list_page_size
LIST_VERSION = "9000000"


def proc_status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def vm_rss_kb() -> int:
    return proc_status_kb("VmRSS")


# --------------------------------------------------------------------------- a quiet API server


class _QuietWatch:
    """A watch response with no events, open until ``shutdown()`` (as a quiet cluster's is)."""

    def __init__(self) -> None:
        self._closed = threading.Event()

    def stream(self, amt: int | None = None, decode_content: bool = True) -> Iterator[bytes]:
        del amt, decode_content
        self._closed.wait()
        return iter(())

    def shutdown(self) -> None:
        self._closed.set()

    def release_conn(self) -> None:
        pass


class ListOnlyApi(KubeApi):
    """Answers lists from prepared JSON files and watches with silence; nothing else.

    Each list page is its own file (``<kind>-<n>.json``, written by :func:`write_lists`),
    read and decoded only when asked for, like a response body: a paged list (``limit``,
    the default of the real watches) never has more than one page decoded at a time, an
    unpaged one (``limit`` ``None``) gets every page merged into one body.
    """

    def __init__(self, *, namespaces: Path, secrets: Path) -> None:
        self._namespaces = namespaces
        self._secrets = secrets

    @staticmethod
    def _page(directory: Path, limit: int | None, continue_: str | None) -> KubeObject:
        pages = sorted(directory.glob("page-*.json"))
        if limit is None:
            items: list[Any] = []
            for page in pages:
                items.extend(orjson.loads(page.read_bytes())["items"])
            return {"metadata": {"resourceVersion": LIST_VERSION}, "items": items}
        if limit != PAGE_SIZE:
            raise ValueError(f"the prepared lists are in pages of {PAGE_SIZE}, not {limit}")
        listing: KubeObject = orjson.loads(pages[int(continue_ or 0)].read_bytes())
        return listing

    def list_namespaces(self, *, timeout: float, limit: int | None = None, continue_: str | None = None) -> KubeObject:
        return self._page(self._namespaces, limit, continue_)

    def list_secrets(
        self,
        name: str,
        namespace: str | None,
        *,
        timeout: float,
        limit: int | None = None,
        continue_: str | None = None,
    ) -> KubeObject:
        if name != SECRET_NAME:
            return {"metadata": {"resourceVersion": LIST_VERSION}, "items": []}
        return self._page(self._secrets, limit, continue_)

    def watch_namespaces(self, *, resource_version: str, server_timeout: int, timeout: tuple[float, float]) -> Any:
        return _QuietWatch()

    def watch_secrets(
        self,
        name: str,
        namespace: str | None,
        *,
        resource_version: str,
        server_timeout: int,
        timeout: tuple[float, float],
    ) -> Any:
        return _QuietWatch()

    def get_namespace(self, name: str, *, timeout: float) -> KubeObject | None:
        return None


# --------------------------------------------------------------------------- objects as the API returns them


def _managed_fields(manager: str, fields: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "manager": manager,
            "operation": "Update",
            "apiVersion": "v1",
            "time": "2026-11-20T09:12:44Z",
            "fieldsType": "FieldsV1",
            "fieldsV1": fields,
        }
    ]


def namespace_object(index: int) -> dict[str, Any]:
    from bench.reviews import namespace_labels, namespace_name

    labels = namespace_labels(index)
    return {
        "metadata": {
            "name": namespace_name(index),
            "uid": f"6b1d8a2c-{index:04x}-4e6f-9a51-0d5b1f7e9a21",
            "resourceVersion": str(2_000_000 + index),
            "creationTimestamp": "2026-11-01T10:00:00Z",
            "labels": labels,
            "managedFields": _managed_fields(
                "argocd-controller", {"f:metadata": {"f:labels": {".": {}, **{f"f:{k}": {} for k in labels}}}}
            ),
        },
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    }


def dockerconfig() -> bytes:
    """What the platform rule's copy holds: one entry per registry, a robot token each."""
    from bench.reviews import PLATFORM_REGISTRIES

    auths = {}
    for i, pattern in enumerate(PLATFORM_REGISTRIES):
        registry = pattern.replace("*", "europe")
        username, password = f"robot$platform-{i}", f"{i:02d}" + "tK9vQ2mX7pL4sN8rW1yB6cF3hJ5dG0aZ" * 2
        auths[registry] = {
            "username": username,
            "password": password,
            "auth": base64.b64encode(f"{username}:{password}".encode()).decode(),
        }
    return orjson.dumps({"auths": auths})


def secret_copy_object(index: int, config: bytes) -> dict[str, Any]:
    """A managed copy as the API server returns it (built with :class:`webhook.secrets.desired.DesiredCopy`)."""
    from bench.reviews import namespace_name
    from webhook.secrets.desired import DesiredCopy
    from webhook.secrets.dockerconfig import content_hash

    copy = DesiredCopy(
        name=SECRET_NAME,
        namespace=namespace_name(index),
        config=config,
        rules=("platform",),
        source="pullsecret-system/platform-credentials",
        digest=content_hash(config),
    )
    manifest = copy.manifest()
    manifest["metadata"].update(
        {
            "uid": f"9c2e7f1a-{index:04x}-4b3d-8e0e-5d6c2b7e4f11",
            "resourceVersion": str(3_000_000 + index),
            "creationTimestamp": "2026-11-01T10:00:05Z",
            "managedFields": _managed_fields(
                "pullsecret-injector",
                {
                    "f:data": {".": {}, "f:.dockerconfigjson": {}},
                    "f:metadata": {"f:annotations": {".": {}}, "f:labels": {".": {}}},
                    "f:type": {},
                },
            ),
        }
    )
    return manifest


def write_pages(items: list[dict[str, Any]], directory: Path) -> Path:
    """A list as the API server pages it (``limit`` :data:`PAGE_SIZE`), one file per page."""
    directory.mkdir(parents=True, exist_ok=True)
    count = max(1, -(-len(items) // PAGE_SIZE))
    for index in range(count):
        metadata: dict[str, Any] = {"resourceVersion": LIST_VERSION}
        if index + 1 < count:
            metadata["continue"] = str(index + 1)
        page = items[index * PAGE_SIZE : (index + 1) * PAGE_SIZE]
        body = {"kind": "List", "apiVersion": "v1", "metadata": metadata, "items": page}
        (directory / f"page-{index:05d}.json").write_bytes(orjson.dumps(body))
    return directory


# --------------------------------------------------------------------------- the measurement


def _wait(predicate: Any, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not sync within {timeout:.0f} s")
        time.sleep(0.02)


def write_lists(namespaces: int, directory: Path) -> tuple[Path, Path]:
    """The API server's list answers for ``namespaces`` Namespaces and their Secret copies, as page files."""
    config = dockerconfig()
    ns_pages = write_pages([namespace_object(i) for i in range(namespaces)], directory / "namespaces")
    secret_pages = write_pages([secret_copy_object(i, config) for i in range(namespaces)], directory / "secrets")
    return ns_pages, secret_pages


def _size(directory: Path) -> int:
    return sum(page.stat().st_size for page in directory.glob("page-*.json"))


def populate(namespaces: int, rules: int, namespace_list: Path, secret_list: Path) -> dict[str, Any]:
    """Fill the caches in this process and report RSS at each step (kB)."""
    importlib.import_module("webhook.server")  # what serve imports: uvicorn, fastapi, uvloop, ...
    importlib.import_module("webhook.runtime")
    from bench.inproc import run_sync
    from bench.reviews import make_policy, make_review, namespace_name
    from webhook.admission.handler import Handler
    from webhook.admission.wire import parse_review

    gc.collect()
    steps: dict[str, int] = {"imports": vm_rss_kb()}
    policy = make_policy(rules)
    gc.collect()
    steps["policy"] = vm_rss_kb()

    api = ListOnlyApi(namespaces=namespace_list, secrets=secret_list)
    settings = KubeSettings()
    stats = Stats()
    runner = Runner(workers=1)
    namespace_cache = NamespaceCache(api=api, runner=runner, settings=settings, stats=stats, on_change=None)
    secret_cache = SecretCache(api=api, settings=settings, stats=stats, on_change=None)
    started = time.perf_counter()
    namespace_cache.start()
    secret_cache.sync_targets({(None, SECRET_NAME)})
    _wait(lambda: namespace_cache.synced and secret_cache.synced(), "the caches")
    sync_s = time.perf_counter() - started
    gc.collect()
    steps["kube_caches"] = vm_rss_kb()

    handler = Handler(policy=lambda: policy, namespaces=namespace_cache)
    template = orjson.dumps(make_review(3, namespace="NAMESPACE-PLACEHOLDER"))
    started = time.perf_counter()
    found_copies = 0
    for i in range(namespaces):
        name = namespace_name(i)
        known, secret = secret_cache.lookup(name, SECRET_NAME)
        found_copies += known and secret is not None
        body = template.replace(b"NAMESPACE-PLACEHOLDER", name.encode())
        run_sync(handler.handle(parse_review(body)))
    reviews_s = time.perf_counter() - started
    gc.collect()
    steps["cached"] = vm_rss_kb()
    peak_kb = proc_status_kb("VmHWM")
    cached_namespaces = len(policy._ns_cache)
    distinct_scopes = len(policy._by_admitted)
    for watch in [*namespace_cache.stop(), *secret_cache.stop()]:
        watch.join(5)
    runner.shutdown()
    if found_copies != namespaces:
        raise RuntimeError(f"only {found_copies} of {namespaces} Secret copies were in the cache")
    return {
        "namespaces": namespaces,
        "rules": rules,
        "cache_model": CACHE_MODEL,
        "rss_kb": steps,
        "rss_mb": round(steps["cached"] / 1024, 1),
        "peak_mb": round(peak_kb / 1024, 1),
        "kube_caches_mb": round((steps["kube_caches"] - steps["policy"]) / 1024, 1),
        "policy_caches_mb": round((steps["cached"] - steps["kube_caches"]) / 1024, 1),
        "api_list_bodies_kb": (_size(namespace_list) + _size(secret_list)) // 1024,
        "list_page_size": PAGE_SIZE,
        "secret_config_bytes": len(dockerconfig()),
        "sync_s": round(sync_s, 2),
        "reviews_s": round(reviews_s, 2),
        "policy_cached_namespaces": cached_namespaces,
        "policy_distinct_scopes": distinct_scopes,
    }


def measure(namespaces: int, rules: int, timeout: float = 600) -> dict[str, Any]:
    """Run :func:`populate` in a fresh interpreter and return its report."""
    repo = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")]))}
    with tempfile.TemporaryDirectory(prefix="pullsecret-bench-rss-") as tmp:
        ns_file, secret_file = write_lists(namespaces, Path(tmp))
        command = [sys.executable, "-m", "bench.rss", "--namespaces", str(namespaces), "--rules", str(rules)]
        command += ["--namespace-list", str(ns_file), "--secret-list", str(secret_file)]
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False, cwd=repo, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"bench.rss failed ({proc.returncode}): {proc.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rss", description=__doc__)
    parser.add_argument("--namespaces", type=int, default=10000)
    parser.add_argument("--rules", type=int, default=100)
    parser.add_argument("--namespace-list", type=Path, help="(internal) the Namespace list pages to serve")
    parser.add_argument("--secret-list", type=Path, help="(internal) the Secret list pages to serve")
    args = parser.parse_args(argv)
    if args.namespace_list is None or args.secret_list is None:
        # Prepare the API answers here, measure in a fresh interpreter that only reads them.
        print(json.dumps(measure(args.namespaces, args.rules)))
    else:
        print(json.dumps(populate(args.namespaces, args.rules, args.namespace_list, args.secret_list)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
