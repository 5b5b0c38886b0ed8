"""Pod-create latency through a real kube-apiserver, with and without the webhook registered.

Uses the e2e harness (``tests/e2e/controlplane.py``: etcd + kube-apiserver +
kube-controller-manager on 127.0.0.1; binaries from ``bash hack/build-kube-assets.sh``).
The webhook is the real ``pullsecret-injector serve`` in a subprocess, connected to that
API server (Namespace and Secret watches, the ensurer that creates Secret copies), with
the same 100-rule policy as the HTTP benchmark, registered as a MutatingWebhookConfiguration
calling ``https://127.0.0.1:PORT/mutate``.

Latency is the client's: one keep-alive HTTPS connection, ``POST .../pods`` of the
3-container benchmark Pod, timed until the response is read. Four cases, in this order:

* ``no webhook, warm namespace`` and ``no webhook, new namespace`` (the API server alone);
* ``webhook, warm namespace``: the Secret copy is already there (the common case);
* ``webhook, new namespace``: the first Pod of a namespace created moments before, so the
  webhook creates the Secret copy during admission.

Every Pod created with the webhook is checked to carry ``platform-pull``. There is no
kubelet, so Pods stay Pending; the control plane is thrown away at the end.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from bench import load
from bench.reviews import PLATFORM_SECRET, make_pod, policy_yaml
from tests.e2e.controlplane import ControlPlane, find_assets, register_webhook, unregister_webhook

WEBHOOK_NAME = "pullsecret-injector-bench"
SOURCE_NAMESPACE = "pullsecret-system"
RULES = 100
CONTAINERS = 3


class ApiServer:
    """A minimal keep-alive HTTPS client for the API server (admin token)."""

    def __init__(self, cp: ControlPlane) -> None:
        self._cp = cp
        self._conn = http.client.HTTPSConnection("127.0.0.1", cp.apiserver_port, context=cp.ssl_context(), timeout=30)
        self._headers = {
            "Authorization": f"Bearer {cp.token}",
            "Content-Type": "application/json",
            "Accept": "application/json",
        }

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, dict[str, Any], float]:
        """``(status, decoded body, seconds)``; the time covers sending and reading the response."""
        data = None if body is None else orjson.dumps(body)
        start = time.perf_counter()
        self._conn.request(method, path, body=data, headers=self._headers)
        response = self._conn.getresponse()
        raw = response.read()
        elapsed = time.perf_counter() - start
        decoded: dict[str, Any] = orjson.loads(raw) if raw else {}
        return response.status, decoded, elapsed

    def create(self, path: str, body: Any) -> dict[str, Any]:
        status, decoded, _ = self.request("POST", path, body)
        if status not in (200, 201):
            raise load.BenchError(f"POST {path}: {status} {decoded.get('message', decoded)}")
        return decoded

    def close(self) -> None:
        self._conn.close()


def pod_manifest(name: str) -> dict[str, Any]:
    """The benchmark Pod without what the API server sets itself (or would refuse)."""
    pod = make_pod(CONTAINERS)
    metadata = pod["metadata"]
    for key in ("generateName", "namespace", "uid", "creationTimestamp", "ownerReferences", "managedFields"):
        metadata.pop(key, None)
    metadata["name"] = name
    spec = pod["spec"]
    spec["serviceAccountName"] = spec["serviceAccount"] = "default"
    for key in ("priority", "preemptionPolicy"):
        spec.pop(key, None)
    pod.pop("status", None)
    return pod


def _pull_secrets(pod: dict[str, Any]) -> list[str]:
    return [entry.get("name", "") for entry in (pod.get("spec") or {}).get("imagePullSecrets") or []]


def _summary(case: str, seconds: list[float]) -> dict[str, Any]:
    ordered = sorted(seconds)
    n = len(ordered)

    def pct(p: float) -> float:
        return round(ordered[min(n - 1, max(0, round(p * n) - 1))] * 1000, 2)

    return {
        "case": case,
        "count": n,
        "p50_ms": round(statistics.median(ordered) * 1000, 2),
        "p90_ms": pct(0.90),
        "p99_ms": pct(0.99),
        "max_ms": round(ordered[-1] * 1000, 2),
        "mean_ms": round(statistics.fmean(ordered) * 1000, 2),
    }


def _namespaces(cp: ControlPlane, api: ApiServer, names: list[str]) -> None:
    for name in names:
        api.create("/api/v1/namespaces", {"metadata": {"name": name}})
    for name in names:
        cp.wait_for_default_service_account(name)


def _create_pods(api: ApiServer, namespace: str, count: int, prefix: str, *, expect_secret: bool) -> list[float]:
    timings: list[float] = []
    for i in range(count):
        status, pod, seconds = api.request(
            "POST", f"/api/v1/namespaces/{namespace}/pods", pod_manifest(f"{prefix}-{i}")
        )
        if status != 201:
            raise load.BenchError(f"Pod create in {namespace}: {status} {pod.get('message', pod)}")
        injected = PLATFORM_SECRET in _pull_secrets(pod)
        if injected != expect_secret:
            raise load.BenchError(f"Pod {prefix}-{i} in {namespace}: imagePullSecrets {_pull_secrets(pod)}")
        timings.append(seconds)
    return timings


def _source_secret() -> dict[str, Any]:
    from bench.rss import dockerconfig

    return {
        "metadata": {"name": "platform-credentials", "namespace": SOURCE_NAMESPACE},
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": base64.b64encode(dockerconfig()).decode()},
    }


def _handler_seconds(metrics_port: int) -> tuple[float, float]:
    """``(sum, count)`` of the webhook's own admission-duration histogram (handler time)."""
    conn = http.client.HTTPConnection("127.0.0.1", metrics_port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    values: dict[str, float] = {}
    for line in text.splitlines():
        for suffix in ("_sum", "_count"):
            if line.startswith(f"pullsecret_injector_admission_duration_seconds{suffix} "):
                values[suffix] = float(line.split()[1])
    return values.get("_sum", 0.0), values.get("_count", 0.0)


@contextlib.contextmanager
def _webhook(cp: ControlPlane, workdir: Path, metrics_port: int) -> Iterator[str]:
    """Our server against the control plane, registered; yields its URL."""
    from webhook.certs import write_local_certs

    files = write_local_certs(service="pullsecret-injector", namespace=SOURCE_NAMESPACE, out_dir=workdir / "certs")
    policy = workdir / "policy.yaml"
    policy.write_text(policy_yaml(RULES))
    port = load.free_port()
    command = load.our_server_command(port=port, cert=files["tls.crt"], key=files["tls.key"], policy=policy)
    command = [c for c in command if c != "--no-kube"]
    command[command.index("--metrics-port") + 1] = str(metrics_port)
    command += ["--kubeconfig", str(cp.kubeconfig_path), "--namespace", SOURCE_NAMESPACE]
    with load.running_server(
        "webhook", command, port=port, ca_file=files["ca.crt"], log_file=workdir / "webhook.log", cpus=None
    ) as server:
        client = cp.api_client()
        try:
            url = f"{server.url}/mutate"
            register_webhook(client, WEBHOOK_NAME, url, files["ca.crt"].read_bytes(), timeout_seconds=10, replace=True)
            try:
                yield url
            finally:
                unregister_webhook(client, WEBHOOK_NAME)
        finally:
            client.close()


def _wait_active(api: ApiServer, namespace: str, timeout: float = 30.0) -> None:
    """Dry-run creates until the API server calls the new webhook."""
    deadline = time.monotonic() + timeout
    while True:
        status, pod, _ = api.request("POST", f"/api/v1/namespaces/{namespace}/pods?dryRun=All", pod_manifest("probe"))
        if status == 201 and PLATFORM_SECRET in _pull_secrets(pod):
            return
        if time.monotonic() > deadline:
            raise load.BenchError(f"the webhook did not become active: {status} {_pull_secrets(pod)}")
        time.sleep(0.2)


def run(*, warm_pods: int = 200, new_namespaces: int = 10) -> dict[str, Any]:
    """Start a control plane, measure the four cases, tear everything down."""
    assets = find_assets()
    if assets is None:
        return {
            "status": "pending",
            "reason": "no kube-apiserver/etcd binaries (bash hack/build-kube-assets.sh, or KUBE_ASSETS)",
        }
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="pullsecret-bench-api-") as tmp, ControlPlane(assets) as cp:
        workdir = Path(tmp)
        api = ApiServer(cp)
        try:
            api.create("/api/v1/namespaces", {"metadata": {"name": SOURCE_NAMESPACE}})
            api.create(f"/api/v1/namespaces/{SOURCE_NAMESPACE}/secrets", _source_secret())
            fresh_plain = [f"bench-plain-{i}" for i in range(new_namespaces)]
            fresh_hook = [f"bench-new-{i}" for i in range(new_namespaces)]
            _namespaces(cp, api, ["bench-warm", *fresh_plain, *fresh_hook])
            results = [
                _summary(
                    "no webhook, warm namespace",
                    _create_pods(api, "bench-warm", warm_pods, "plain", expect_secret=False),
                ),
                _summary(
                    "no webhook, new namespace",
                    [_create_pods(api, ns, 1, "first", expect_secret=False)[0] for ns in fresh_plain],
                ),
            ]
            metrics_port = load.free_port()
            with _webhook(cp, workdir, metrics_port):
                _wait_active(api, "bench-warm")
                _create_pods(api, "bench-warm", 5, "warmup", expect_secret=True)  # the copy now exists
                before = _handler_seconds(metrics_port)
                results.append(
                    _summary(
                        "webhook, warm namespace",
                        _create_pods(api, "bench-warm", warm_pods, "hooked", expect_secret=True),
                    )
                )
                after = _handler_seconds(metrics_port)
                calls = after[1] - before[1]
                handler_ms = round((after[0] - before[0]) / calls * 1000, 2) if calls else None
                results.append(
                    _summary(
                        "webhook, new namespace (Secret created during admission)",
                        [_create_pods(api, ns, 1, "first", expect_secret=True)[0] for ns in fresh_hook],
                    )
                )
                for ns in fresh_hook:
                    status, _, _ = api.request("GET", f"/api/v1/namespaces/{ns}/secrets/{PLATFORM_SECRET}")
                    if status != 200:
                        raise load.BenchError(f"no {PLATFORM_SECRET} copy in {ns} after its first Pod ({status})")
        finally:
            api.close()
    by_case = {row["case"]: row for row in results}
    plain, hooked = by_case["no webhook, warm namespace"], by_case["webhook, warm namespace"]
    return {
        "status": "measured",
        "kube_version": _version(assets.kube_apiserver),
        "policy_rules": RULES,
        "containers": CONTAINERS,
        "summary": results,
        "warm_overhead_p50_ms": round(hooked["p50_ms"] - plain["p50_ms"], 2),
        "warm_overhead_p99_ms": round(hooked["p99_ms"] - plain["p99_ms"], 2),
        # The webhook's own time per review (Handler.handle, Secret check included), from its metrics.
        "warm_webhook_handler_mean_ms": handler_ms,
        "warm_webhook_calls_per_pod": round(calls / warm_pods, 2) if warm_pods else None,
        "elapsed_s": round(time.monotonic() - started, 1),
    }


def _version(binary: Path) -> str:
    import subprocess

    try:
        out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "unknown"
    return out.stdout.strip() or "unknown"


if __name__ == "__main__":  # pragma: no cover - manual use
    print(orjson.dumps(run(), option=orjson.OPT_INDENT_2).decode())
    sys.exit(0)
