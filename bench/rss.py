"""Resident memory of a server process that has seen 10,000 namespaces.

Run in a fresh interpreter (``python -m bench.rss``; :func:`measure` does that) so that
nothing else the benchmark did is counted. The process imports what ``serve`` imports,
loads the policy, then for every namespace: keeps its labels (as the Namespace watch
cache does), keeps one managed Secret-copy record (as the Secret-copy cache does:
name, namespace, labels, annotations with a sha256, resourceVersion) and answers one
3-container Pod review from it through the real handler, which fills the policy's
per-namespace caches. RSS is ``VmRSS`` from ``/proc/self/status``.

Until ``webhook/kube.py`` (the watch-fed caches) lands, the two caches are plain dicts of
the same shape; see ``CACHE_MODEL`` in the output.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

CACHE_MODEL = "stand-in dicts (webhook/kube.py not available yet)"


def vm_rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


class _Labels:
    def __init__(self, labels: Mapping[str, Mapping[str, str]]) -> None:
        self._labels = labels

    async def labels(self, namespace: str) -> Mapping[str, str] | None:
        return self._labels.get(namespace)


def populate(namespaces: int, rules: int) -> dict[str, Any]:
    """Fill the caches in this process and report RSS at each step (kB)."""
    importlib.import_module("webhook.server")  # what serve imports: uvicorn, fastapi, uvloop, ...
    from bench.inproc import run_sync
    from bench.reviews import make_policy, make_review, namespace_labels, namespace_name, secret_copy_record
    from webhook.handler import Handler
    from webhook.wire import parse_review

    gc.collect()
    steps: dict[str, int] = {"imports": vm_rss_kb()}
    policy = make_policy(rules)
    gc.collect()
    steps["policy"] = vm_rss_kb()

    labels_cache: dict[str, dict[str, str]] = {}
    secret_cache: dict[tuple[str, str], dict[str, Any]] = {}
    handler = Handler(policy=lambda: policy, namespaces=_Labels(labels_cache))
    template = orjson.dumps(make_review(3, namespace="NAMESPACE-PLACEHOLDER"))
    started = time.perf_counter()
    for i in range(namespaces):
        name = namespace_name(i)
        labels_cache[name] = namespace_labels(i)
        secret_cache[(name, "platform-pull")] = secret_copy_record(name, "platform-pull", 1_000_000 + i)
        body = template.replace(b"NAMESPACE-PLACEHOLDER", name.encode())
        run_sync(handler.handle(parse_review(body)))
    elapsed = time.perf_counter() - started
    gc.collect()
    steps["cached"] = vm_rss_kb()
    return {
        "namespaces": namespaces,
        "rules": rules,
        "cache_model": CACHE_MODEL,
        "rss_kb": steps,
        "rss_mb": round(steps["cached"] / 1024, 1),
        "growth_mb": round((steps["cached"] - steps["policy"]) / 1024, 1),
        "per_namespace_bytes": round((steps["cached"] - steps["policy"]) * 1024 / max(namespaces, 1)),
        "populate_s": round(elapsed, 2),
        "policy_ns_cache_entries": len(policy._ns_cache),
    }


def measure(namespaces: int, rules: int, timeout: float = 600) -> dict[str, Any]:
    """Run :func:`populate` in a fresh interpreter and return its report."""
    repo = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")]))}
    out = subprocess.run(
        [sys.executable, "-m", "bench.rss", "--namespaces", str(namespaces), "--rules", str(rules)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
        cwd=repo,
        env=env,
    ).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rss", description=__doc__)
    parser.add_argument("--namespaces", type=int, default=10000)
    parser.add_argument("--rules", type=int, default=100)
    args = parser.parse_args(argv)
    print(json.dumps(populate(args.namespaces, args.rules)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
