"""Pod-create latency through a real kube-apiserver, with and without the webhook registered.

Uses the e2e harness (``tests/e2e/controlplane.py``: etcd + kube-apiserver +
kube-controller-manager on 127.0.0.1; binaries from ``bash hack/build-kube-assets.sh``).
The webhook is the real ``pullsecret-injector serve`` in a subprocess, connected to that
API server (Namespace and Secret watches, the ensurer that creates Secret copies), with
the same 100-rule policy as the HTTP benchmark, registered as a MutatingWebhookConfiguration
calling ``https://127.0.0.1:PORT/mutate``.

Latency is the client's: one keep-alive HTTPS connection, ``POST .../pods`` of the
3-container benchmark Pod, timed until the response is read. Every webhook is registered
for the namespaces of one label (``bench-webhook=<kind>``), so the warm cases run
interleaved, one Pod of each in turn:

* ``no webhook, warm namespace`` and ``no webhook, new namespace`` (the API server alone);
* ``bare webhook answering our patch``: the same, but answering the patch ours gives (adding
  ``platform-pull``): what applying a patch costs the API server; once more registered with
  ``reinvocationPolicy: Never`` instead of ``IfNeeded`` (a mutation by an ``IfNeeded`` webhook
  makes the API server run the in-tree mutating plugins again);
* ``bare webhook, warm namespace``: :mod:`bench.baseline` registered in the same way (decode
  the review, answer ``allowed`` with no patch): what any webhook costs the API server
  (serializing the review, the HTTPS call, reading the answer), ours or not;
* ``webhook, warm namespace``: the Secret copy is already there (the common case);
* ``webhook, new namespace``: the first Pod of a namespace created moments before, so the
  webhook creates the Secret copy during admission.

For each webhook case the TCP connections to the webhook's port are counted from
``/proc/net/tcp`` (every socket with the port at either end, TIME_WAIT included, sampled
while the Pods are created): with keep-alive the API server makes all its calls on one or
two connections, without it one connection (and one TLS handshake) per Pod.

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
import threading
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


def _tcp_peers(port: int) -> set[tuple[int, int]]:
    """``(local port, remote port)`` of every loopback TCP socket with ``port`` at one end (any state)."""
    found: set[tuple[int, int]] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, remote = int(fields[1].rsplit(":", 1)[1], 16), int(fields[2].rsplit(":", 1)[1], 16)
            if port in (local, remote) and 0 not in (local, remote):
                # Name a connection by its ephemeral (client) port, whichever end this socket is.
                found.add((port, remote if local == port else local))
    return found


class ConnectionCounter:
    """The connections made to ``port`` while a block runs, sampled from ``/proc/net/tcp``."""

    def __init__(self, port: int, interval: float = 0.005) -> None:
        self._port = port
        self._interval = interval
        self._stop = threading.Event()
        self._seen: set[tuple[int, int]] = set()
        self._before: set[tuple[int, int]] = set()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self._interval):
            self._seen |= _tcp_peers(self._port)

    def __enter__(self) -> ConnectionCounter:
        self._before = _tcp_peers(self._port)
        self._seen = set(self._before)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._seen |= _tcp_peers(self._port)  # closed ones linger in TIME_WAIT

    def report(self, requests: int) -> dict[str, Any]:
        opened = len(self._seen - self._before)
        used = len(self._seen)
        return {
            "connections_opened": opened,
            "connections_seen": used,
            "pods_per_new_connection": round(requests / opened, 1) if opened else None,
        }


def _certs(workdir: Path) -> dict[str, Path]:
    from webhook.tls.certs import write_local_certs

    files: dict[str, Path] = write_local_certs(
        service="pullsecret-injector", namespace=SOURCE_NAMESPACE, out_dir=workdir / "certs"
    )
    return files


#: Label on the benchmark's namespaces saying which webhook, if any, sees their Pods.
SELECTOR_LABEL = "bench-webhook"


@contextlib.contextmanager
def _registered(
    cp: ControlPlane, kind: str, command: list[str], port: int, files: dict[str, Path], log: Path, **options: Any
) -> Iterator[int]:
    """Run ``command`` (a server on ``port``), registered as the webhook of the namespaces
    labelled ``bench-webhook=<kind>``; yields the port."""
    with load.running_server(kind, command, port=port, ca_file=files["ca.crt"], log_file=log, cpus=None) as server:
        client = cp.api_client()
        name = f"{WEBHOOK_NAME}-{kind}"
        try:
            register_webhook(
                client,
                name,
                f"{server.url}/mutate",
                files["ca.crt"].read_bytes(),
                timeout_seconds=10,
                replace=True,
                namespace_selector={"matchLabels": {SELECTOR_LABEL: kind}},
                **options,
            )
            try:
                yield port
            finally:
                unregister_webhook(client, name)
        finally:
            client.close()


@contextlib.contextmanager
def _webhook(cp: ControlPlane, workdir: Path, files: dict[str, Path], metrics_port: int) -> Iterator[int]:
    """Our server against the control plane, registered for ``bench-webhook=ours``; yields its port."""
    policy = workdir / "policy.yaml"
    policy.write_text(policy_yaml(RULES))
    port = load.free_port()
    command = load.our_server_command(port=port, cert=files["tls.crt"], key=files["tls.key"], policy=policy)
    command = [c for c in command if c != "--no-kube"]
    command[command.index("--metrics-port") + 1] = str(metrics_port)
    command += ["--kubeconfig", str(cp.kubeconfig_path), "--namespace", SOURCE_NAMESPACE]
    with _registered(cp, "ours", command, port, files, workdir / "webhook.log") as registered:
        yield registered


@contextlib.contextmanager
def _bare_webhook(cp: ControlPlane, workdir: Path, files: dict[str, Path], kind: str) -> Iterator[int]:
    """:mod:`bench.baseline` registered for ``bench-webhook=<kind>``: ``bare`` answers no patch,
    ``bare-patch`` the patch ours gives, ``bare-patch-never`` too, with ``reinvocationPolicy:
    Never`` (the default here is ``IfNeeded``, as in the chart); yields its port."""
    port = load.free_port()
    command = load.baseline_command(port=port, cert=files["tls.crt"], key=files["tls.key"])
    options: dict[str, Any] = {}
    if kind != "bare":
        command += ["--patch-secret", PLATFORM_SECRET]
    if kind == "bare-patch-never":
        options["reinvocation_policy"] = "Never"
    with _registered(cp, kind, command, port, files, workdir / f"{kind}.log", **options) as registered:
        yield registered


def _wait_active(api: ApiServer, namespace: str, *, port: int | None = None, timeout: float = 30.0) -> None:
    """Dry-run creates until the API server calls the new webhook: seen injecting, or (``port``,
    for the bare one that answers no patch) seen connecting to it."""
    deadline = time.monotonic() + timeout
    while True:
        before = _tcp_peers(port) if port is not None else set()
        status, pod, _ = api.request("POST", f"/api/v1/namespaces/{namespace}/pods?dryRun=All", pod_manifest("probe"))
        if port is None and status == 201 and PLATFORM_SECRET in _pull_secrets(pod):
            return
        if port is not None and status == 201 and _tcp_peers(port) - before:
            return
        if time.monotonic() > deadline:
            raise load.BenchError(f"the webhook of {namespace} did not become active: {status}")
        time.sleep(0.2)


#: The warm cases, measured interleaved (one Pod of each in turn, the order rotating), so that
#: the machine's drift (a 2-CPU machine shared with etcd and the API server) hits them alike.
#: ``(case, namespace, webhook kind or None, whether the Pod gets the pull secret)``.
WARM_CASES: tuple[tuple[str, str, str | None, bool], ...] = (
    ("no webhook, warm namespace", "bench-warm", None, False),
    ("bare webhook (allowed, no patch), warm namespace", "bench-bare", "bare", False),
    ("bare webhook answering our patch, warm namespace", "bench-bare-patch", "bare-patch", True),
    ("same, reinvocationPolicy Never, warm namespace", "bench-bare-never", "bare-patch-never", True),
    ("webhook, warm namespace", "bench-hooked", "ours", True),
)


def _labelled_namespaces(cp: ControlPlane, api: ApiServer, names: dict[str, str | None]) -> None:
    for name, kind in names.items():
        labels = {SELECTOR_LABEL: kind} if kind else {}
        api.create("/api/v1/namespaces", {"metadata": {"name": name, "labels": labels}})
    for name in names:
        cp.wait_for_default_service_account(name)


def run(*, warm_pods: int = 200, new_namespaces: int = 10) -> dict[str, Any]:
    """Start a control plane, measure every case, tear everything down."""
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
            namespaces: dict[str, str | None] = {namespace: kind for _, namespace, kind, _ in WARM_CASES}
            namespaces |= dict.fromkeys(fresh_plain) | dict.fromkeys(fresh_hook, "ours")
            _labelled_namespaces(cp, api, namespaces)
            results = [
                _summary(
                    "no webhook, new namespace",
                    [_create_pods(api, ns, 1, "first", expect_secret=False)[0] for ns in fresh_plain],
                )
            ]
            files = _certs(workdir)
            metrics_port = load.free_port()
            with (
                _bare_webhook(cp, workdir, files, "bare") as bare_port,
                _bare_webhook(cp, workdir, files, "bare-patch") as bare_patch_port,
                _bare_webhook(cp, workdir, files, "bare-patch-never") as bare_never_port,
                _webhook(cp, workdir, files, metrics_port) as port,
            ):
                _wait_active(api, "bench-bare", port=bare_port)
                for namespace in ("bench-bare-patch", "bench-bare-never", "bench-hooked"):
                    _wait_active(api, namespace)
                ports = {"bare": bare_port, "bare-patch": bare_patch_port, "bare-patch-never": bare_never_port}
                ports["ours"] = port
                for _, namespace, _, injects in WARM_CASES:  # warm up; our copy now exists
                    _create_pods(api, namespace, 5, "warmup", expect_secret=injects)
                before = _handler_seconds(metrics_port)
                timings: dict[str, list[float]] = {case: [] for case, *_ in WARM_CASES}
                with contextlib.ExitStack() as stack:
                    counters = {kind: stack.enter_context(ConnectionCounter(p)) for kind, p in ports.items()}
                    for i in range(warm_pods):
                        shift = i % len(WARM_CASES)
                        for case, namespace, _, injects in WARM_CASES[shift:] + WARM_CASES[:shift]:
                            timings[case] += _create_pods(api, namespace, 1, f"pod-{i}", expect_secret=injects)
                after = _handler_seconds(metrics_port)
                results += [_summary(case, timings[case]) for case, *_ in WARM_CASES]
                connections = {
                    case: counters[kind].report(warm_pods) for case, _, kind, _ in WARM_CASES if kind is not None
                }
                calls = after[1] - before[1]
                handler_ms = round((after[0] - before[0]) / calls * 1000, 3) if calls else None
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
    plain, hooked = by_case[WARM_CASES[0][0]], by_case[WARM_CASES[4][0]]
    bare, bare_patch, bare_never = (by_case[case[0]] for case in WARM_CASES[1:4])
    return {
        "status": "measured",
        "kube_version": _version(assets.kube_apiserver),
        "policy_rules": RULES,
        "containers": CONTAINERS,
        "interleaved": True,
        "summary": results,
        "warm_overhead_p50_ms": round(hooked["p50_ms"] - plain["p50_ms"], 2),
        "warm_overhead_p99_ms": round(hooked["p99_ms"] - plain["p99_ms"], 2),
        # What any webhook costs the API server (the bare one), what applying our patch adds
        # to that (the bare one answering it), and what is left for ours.
        "bare_webhook_overhead_p50_ms": round(bare["p50_ms"] - plain["p50_ms"], 2),
        "bare_patch_webhook_overhead_p50_ms": round(bare_patch["p50_ms"] - plain["p50_ms"], 2),
        "bare_patch_never_webhook_overhead_p50_ms": round(bare_never["p50_ms"] - plain["p50_ms"], 2),
        "warm_overhead_vs_bare_patch_webhook_p50_ms": round(hooked["p50_ms"] - bare_patch["p50_ms"], 2),
        "connections": connections,
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
