"""One token refresh reaching N copies on a real kube-apiserver, and the API calls it made.

``python -m bench.tokens --copies 1000`` starts the e2e control plane (etcd +
kube-apiserver + kube-controller-manager on 127.0.0.1), a loopback GCE metadata server
issuing tokens that live ``--lifetime`` seconds, creates N namespaces each holding a managed
copy of ``gar-token-pull`` (as earlier admissions would have left them), and starts the real
``pullsecret-injector serve`` with a ``token`` rule, its Google identity found by
google-auth through ``GCE_METADATA_HOST``. Then it measures two refreshes:

* the first pass: the leader's reconciler finds N stale copies and a cold minter: one
  mint, then N patches;
* the scheduled refresh, about half the lifetime later: one mint, N patches.

For each, the time from the metadata server issuing the token to the last copy holding it
(polled with a label-selected list every 0.25 s), and the webhook's own counters of writes
(``pullsecret_injector_secret_writes_total`` by operation and result) and mints before and
after. Every copy's uid is checked unchanged: patched in place.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tests.e2e.controlplane import ControlPlane, find_assets, free_port
from tests.e2e.webhook import WebhookProcess
from tests.tokens.google_servers import GoogleServers

SECRET = "gar-token-pull"
REGISTRY = "europe-docker.pkg.dev"
SYSTEM_NS = "psi-bench-tokens"
LABEL = "app.kubernetes.io/managed-by=pullsecret-injector"
POLICY = {
    "rules": [
        {
            "name": "gar-token",
            "registries": [REGISTRY],
            "secret": SECRET,
            "namespaces": {"include": ["bench-tok-*"]},
            "source": {"token": {"provider": "gcp", "registry": REGISTRY}},
        }
    ]
}


def _placeholder(namespace: str) -> dict[str, Any]:
    config = json.dumps({"auths": {REGISTRY: {"username": "oauth2accesstoken", "password": "stale"}}}).encode()
    return {
        "metadata": {
            "name": SECRET,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": "pullsecret-injector"},
            "annotations": {"pullsecret-injector.io/rule": "gar-token"},
        },
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": base64.b64encode(config).decode()},
    }


def _populate(core: Any, count: int) -> list[str]:
    names = [f"bench-tok-{i:04d}" for i in range(count)]

    def one(name: str) -> None:
        core.create_namespace({"metadata": {"name": name}})
        core.create_namespaced_secret(name, _placeholder(name))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, names))
    return names


def _copies(core: Any) -> dict[str, tuple[str, str]]:
    """namespace -> (uid, token) of every managed copy."""
    found: dict[str, tuple[str, str]] = {}
    for secret in core.list_secret_for_all_namespaces(label_selector=LABEL, limit=5000).items:
        if secret.metadata.name != SECRET or not secret.metadata.namespace.startswith("bench-tok-"):
            continue
        config = json.loads(base64.b64decode(secret.data[".dockerconfigjson"]))
        found[secret.metadata.namespace] = (secret.metadata.uid, config["auths"][REGISTRY]["password"])
    return found


def _counters(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    counters: dict[str, float] = {}
    for line in text.splitlines():
        match = re.match(r"pullsecret_injector_(secret_writes|token_mints|secret_errors)_total\{(.*)\} (\S+)$", line)
        if match:
            counters[f"{match.group(1)}{{{match.group(2)}}}"] = float(match.group(3))
    return counters


def _delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {key: after[key] - before.get(key, 0.0) for key in after if after[key] != before.get(key, 0.0)}


def _wait_all(
    core: Any, names: list[str], token: Callable[[], str | None], timeout: float
) -> tuple[float, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        wanted = token()
        if wanted is not None:
            copies = _copies(core)
            if len(copies) == len(names) and all(t == wanted for _, t in copies.values()):
                return time.time(), copies
        time.sleep(0.25)
    raise TimeoutError(f"not every copy got the token within {timeout:g}s")


def run(*, copies: int, lifetime: int) -> dict[str, Any]:
    assets = find_assets()
    if assets is None:
        return {"status": "pending", "reason": "no kube-apiserver/etcd binaries (bash hack/build-kube-assets.sh)"}
    from kubernetes import client

    google = GoogleServers(lifetime=lifetime, prefix="ya29.bench-").start()
    issued_at: dict[str, float] = {}
    original_issue = google.issue

    def issue() -> str:  # the test server's own hook: remember when each token was issued
        token = original_issue()
        issued_at[token] = time.time()
        return token

    google.issue = issue  # type: ignore[method-assign]
    result: dict[str, Any] = {"copies": copies, "lifetime_seconds": lifetime}
    with tempfile.TemporaryDirectory(prefix="psi-bench-tokens-") as tmp, ControlPlane(assets) as cp:
        core: Any = client.CoreV1Api(cp.api_client())
        core.create_namespace({"metadata": {"name": SYSTEM_NS}})
        t0 = time.monotonic()
        names = _populate(core, copies)
        result["populate_seconds"] = round(time.monotonic() - t0, 1)
        metrics_port = free_port()
        os.environ.update(GCE_METADATA_HOST=google.host, GCE_METADATA_IP=google.host, CLOUDSDK_CONFIG=tmp)
        hook = WebhookProcess(
            control_plane=cp,
            name="psi-bench-tokens",
            namespace=SYSTEM_NS,
            policy=POLICY,
            extra_args=("--metrics-port", str(metrics_port), "--resync-seconds", "600", "--log-level", "INFO"),
            workdir=Path(tmp),
        )
        hook.start(timeout=120)
        try:
            before = {k: 0.0 for k in _counters(metrics_port)}
            reached, first = _wait_all(core, names, lambda: google.issued[-1] if google.issued else None, 300)
            after_first = _counters(metrics_port)
            token_one = google.issued[-1]
            result["first_pass"] = {
                "seconds_from_mint_to_last_copy": round(reached - issued_at[token_one], 2),
                "webhook_counters": _delta(before, after_first),
            }
            uids = {ns: uid for ns, (uid, _) in first.items()}

            def next_token() -> str | None:
                return google.issued[-1] if google.issued[-1] != token_one else None

            reached, second = _wait_all(core, names, next_token, lifetime + 30)
            token_two = google.issued[-1]
            expires = issued_at[token_one] + lifetime
            after_second = _counters(metrics_port)
            result["scheduled_refresh"] = {
                "minted_after_seconds": round(issued_at[token_two] - issued_at[token_one], 1),
                "seconds_from_mint_to_last_copy": round(reached - issued_at[token_two], 2),
                "seconds_before_old_token_expired": round(expires - reached, 1),
                "webhook_counters": _delta(after_first, after_second),
                "uids_unchanged": {ns: uid for ns, (uid, _) in second.items()} == uids,
            }
            result["tokens_minted"] = len(google.issued)
        finally:
            hook.stop()
            google.stop()
    result["status"] = "ok"
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--copies", type=int, default=1000)
    parser.add_argument("--lifetime", type=int, default=120)
    args = parser.parse_args(argv)
    result = run(copies=args.copies, lifetime=args.lifetime)
    print(json.dumps(result, indent=2))
    return 0 if result.get("status") in ("ok", "pending") else 1


if __name__ == "__main__":
    sys.exit(main())
