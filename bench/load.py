"""The real server over TLS on loopback, loaded by wrk (or, for the smoke run, a small Python client).

Each server runs in its own subprocess, one worker, uvloop + httptools, exactly as
``pullsecret-injector serve`` runs (it *is* ``python -m webhook serve``); the baseline is
:mod:`bench.baseline` served the same way. With two or more CPUs the server is pinned to
one CPU and wrk to another, so the load generator does not steal the server's core (it
still shares the machine: see the README). Besides wrk's numbers, the server's own CPU
time (``/proc/PID/stat``) per request is recorded: it does not depend on what else the
machine is doing, while requests per second does.

All traffic goes to 127.0.0.1, for a bounded time (wrk) or number of requests (Python).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from bench.inproc import summarize

LOOPBACK = "127.0.0.1"
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_WRK_MARKER = "BENCH_JSON "


class BenchError(RuntimeError):
    """A server did not start or the load generator failed (the message says why)."""


def free_port() -> int:
    """A free port on 127.0.0.1 *outside* the ephemeral range when possible.

    A port from ``bind(0)`` is an ephemeral one: between picking it and the server binding
    it, an outgoing connection (the webhook opens dozens of watches) can take it.
    """
    low = 32768
    with contextlib.suppress(OSError, ValueError):
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    rng = random.Random()
    for _ in range(200):
        candidate = rng.randrange(10000, max(10001, low))
        with socket.socket() as sock:
            try:
                sock.bind((LOOPBACK, candidate))
            except OSError:
                continue
            return candidate
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def cpu_plan() -> tuple[set[int] | None, set[int] | None]:
    """CPUs for (server, load generator): separate ones when there are at least two."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None
    return {cpus[0]}, set(cpus[1:])


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from ``/proc/PID/stat``."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def cpu_busy_seconds(cpus: set[int] | None) -> float:
    """Busy time (all processes) of ``cpus`` (every CPU when ``None``), from ``/proc/stat``."""
    total = 0
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if not name.startswith("cpu") or name == "cpu":
            continue
        if cpus is not None and int(name[3:]) not in cpus:
            continue
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in values[:8])
        total += user + nice + system + irq + softirq + steal
    return total / _CLK_TCK


def our_server_command(*, port: int, cert: Path, key: Path, policy: Path) -> list[str]:
    """``pullsecret-injector serve`` without a cluster, on loopback, quiet."""
    return [
        sys.executable,
        "-m",
        "webhook",
        "serve",
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        "--cert-mode",
        "files",
        "--tls-cert",
        str(cert),
        "--tls-key",
        str(key),
        "--policy",
        str(policy),
        "--no-kube",
        "--metrics-port",
        "0",
        "--log-level",
        "WARNING",
    ]


def baseline_command(*, port: int, cert: Path, key: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "bench.baseline",
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        "--tls-cert",
        str(cert),
        "--tls-key",
        str(key),
    ]


@dataclass
class Server:
    name: str
    url: str
    pid: int
    ca_file: Path


def _https(url: str, ca_file: Path, timeout: float = 5.0) -> http.client.HTTPSConnection:
    context = ssl.create_default_context(cafile=str(ca_file))
    host_port = url.removeprefix("https://")
    host, _, port = host_port.partition(":")
    return http.client.HTTPSConnection(host, int(port), context=context, timeout=timeout)


@contextlib.contextmanager
def running_server(
    name: str, command: Sequence[str], *, port: int, ca_file: Path, log_file: Path, cpus: set[int] | None
) -> Iterator[Server]:
    """Start ``command``, wait until ``GET /readyz`` answers 200 over TLS, stop it afterwards."""
    repo = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")]))}
    with log_file.open("wb") as log:
        proc = subprocess.Popen(list(command), stdout=log, stderr=subprocess.STDOUT, env=env, cwd=repo)
    try:
        if cpus is not None:
            os.sched_setaffinity(proc.pid, cpus)
        url = f"https://{LOOPBACK}:{port}"
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise BenchError(f"{name} server exited with {proc.returncode}: {_tail(log_file)}")
            try:
                conn = _https(url, ca_file, timeout=2)
                conn.request("GET", "/readyz")
                if conn.getresponse().status == 200:
                    conn.close()
                    break
                conn.close()
            except (OSError, http.client.HTTPException):
                pass
            if time.monotonic() > deadline:
                raise BenchError(f"{name} server not ready after 60 s: {_tail(log_file)}")
            time.sleep(0.1)
        yield Server(name=name, url=url, pid=proc.pid, ca_file=ca_file)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def _tail(path: Path, lines: int = 15) -> str:
    """The log's error lines (or its last lines when there are none)."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    errors = [line for line in text if "ERROR" in line or "Error" in line or "error:" in line]
    return "\n".join((errors or text)[-lines:])


def post_once(server: Server, body: bytes) -> dict[str, Any]:
    """One ``POST /mutate`` (checks the server answers a well-formed AdmissionReview)."""
    conn = _https(server.url, server.ca_file)
    try:
        conn.request("POST", "/mutate", body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        data = response.read()
        if response.status != 200:
            raise BenchError(f"{server.name}: POST /mutate answered {response.status}: {data[:200]!r}")
        answer: dict[str, Any] = orjson.loads(data)
        return answer
    finally:
        conn.close()


# --------------------------------------------------------------------------- wrk


@dataclass
class LoadResult:
    """One load run against one server."""

    server: str
    tool: str
    connections: int
    duration_s: float
    requests: int
    requests_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: int
    server_cpu_s: float
    server_cpu_us_per_request: float
    extra: dict[str, Any] = field(default_factory=dict)


def lua_script(bodies: Sequence[bytes], path: str = "/mutate") -> str:
    """A wrk script cycling through ``bodies`` and printing its summary as one JSON line."""
    literals = []
    for body in bodies:
        text = body.decode()
        level = "=" * 4
        if f"]{level}]" in text:
            raise ValueError("body contains the Lua long-bracket terminator")
        literals.append(f"[{level}[{text}]{level}]")
    table = ",\n".join(literals)
    return f"""-- generated by bench/load.py: POST the benchmark AdmissionReviews, cycling through them
local bodies = {{
{table}
}}
local prepared = {{}}
local next_index = 0

function init(args)
  for k, body in ipairs(bodies) do
    prepared[k] = wrk.format("POST", "{path}", {{["Content-Type"] = "application/json"}}, body)
  end
end

function request()
  next_index = next_index % #prepared + 1
  return prepared[next_index]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "{_WRK_MARKER}{{\\"requests\\":%d,\\"duration_us\\":%d,\\"p50_us\\":%d,\\"p90_us\\":%d,\\"p99_us\\":%d," ..
    "\\"max_us\\":%d,\\"connect\\":%d,\\"read\\":%d,\\"write\\":%d,\\"status\\":%d,\\"timeout\\":%d}}\\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
"""


def wrk_path() -> str | None:
    return shutil.which("wrk")


def run_wrk(
    server: Server,
    script: Path,
    *,
    connections: int,
    duration_s: int,
    warmup_s: int,
    cpus: set[int] | None,
    server_cpus: set[int] | None = None,
    threads: int = 1,
) -> LoadResult:
    """``wrk --latency`` for ``duration_s`` after a ``warmup_s`` run whose numbers are dropped."""
    wrk = wrk_path()
    if wrk is None:
        raise BenchError("wrk is not installed (apt-get install wrk)")

    def call(seconds: int) -> tuple[dict[str, Any], str]:
        command = [
            wrk,
            f"-t{threads}",
            f"-c{connections}",
            f"-d{seconds}s",
            "--timeout",
            "10s",
            "--latency",
            "-s",
            str(script),
            server.url,
        ]
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if cpus is not None:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(proc.pid, cpus)
        out, _ = proc.communicate(timeout=seconds + 60)
        if proc.returncode != 0:
            raise BenchError(f"wrk failed ({proc.returncode}): {out[-500:]}")
        for line in out.splitlines():
            if line.startswith(_WRK_MARKER):
                data: dict[str, Any] = json.loads(line.removeprefix(_WRK_MARKER))
                return data, out
        raise BenchError(f"wrk printed no summary: {out[-500:]}")

    if warmup_s > 0:
        call(warmup_s)
    cpu_before = process_cpu_seconds(server.pid)
    busy_before = cpu_busy_seconds(server_cpus)
    data, text = call(duration_s)
    cpu = process_cpu_seconds(server.pid) - cpu_before
    # What else ran on the server's CPU meanwhile (other processes on a shared machine).
    others = max(0.0, cpu_busy_seconds(server_cpus) - busy_before - cpu)
    requests = int(data["requests"])
    seconds = data["duration_us"] / 1e6
    errors = sum(int(data[k]) for k in ("connect", "read", "write", "status", "timeout"))
    return LoadResult(
        server=server.name,
        tool="wrk",
        connections=connections,
        duration_s=round(seconds, 2),
        requests=requests,
        requests_per_s=round(requests / seconds, 1) if seconds else 0.0,
        p50_ms=round(data["p50_us"] / 1000, 3),
        p90_ms=round(data["p90_us"] / 1000, 3),
        p99_ms=round(data["p99_us"] / 1000, 3),
        max_ms=round(data["max_us"] / 1000, 3),
        errors=errors,
        server_cpu_s=round(cpu, 3),
        server_cpu_us_per_request=round(cpu / requests * 1e6, 1) if requests else 0.0,
        extra={
            "threads": threads,
            "wrk_latency_text": _latency_block(text),
            "other_processes_on_server_cpu_pct": round(100 * others / seconds / max(len(server_cpus or ()), 1), 1)
            if seconds and server_cpus
            else None,
        },
    )


def _latency_block(text: str) -> list[str]:
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.strip() == "Latency Distribution":
            return [item.strip() for item in lines[i + 1 : i + 5]]
    return []


# --------------------------------------------------------------------------- Python fallback


def run_python_client(
    server: Server, bodies: Sequence[bytes], *, connections: int, requests_per_connection: int
) -> LoadResult:
    """A small keep-alive client (threads, one connection each) for the smoke run without wrk.

    Its numbers are a sanity check only: the client shares the GIL with itself and, on a
    small machine, the CPU with the server.
    """
    latencies: list[int] = []
    errors: list[str] = []
    lock = threading.Lock()

    def worker(offset: int) -> None:
        conn = _https(server.url, server.ca_file, timeout=10)
        mine: list[int] = []
        try:
            for i in range(requests_per_connection):
                body = bodies[(offset + i) % len(bodies)]
                start = time.perf_counter_ns()
                conn.request("POST", "/mutate", body=body, headers={"Content-Type": "application/json"})
                response = conn.getresponse()
                response.read()
                mine.append(time.perf_counter_ns() - start)
                if response.status != 200:
                    raise BenchError(f"status {response.status}")
        except (OSError, http.client.HTTPException, BenchError) as exc:
            with lock:
                errors.append(str(exc))
        finally:
            conn.close()
            with lock:
                latencies.extend(mine)

    cpu_before = process_cpu_seconds(server.pid)
    started = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    elapsed = time.perf_counter() - started
    cpu = process_cpu_seconds(server.pid) - cpu_before
    timing = summarize(latencies) if latencies else None
    count = len(latencies)
    return LoadResult(
        server=server.name,
        tool="python",
        connections=connections,
        duration_s=round(elapsed, 2),
        requests=count,
        requests_per_s=round(count / elapsed, 1) if elapsed else 0.0,
        p50_ms=round(timing.median_us / 1000, 3) if timing else 0.0,
        p90_ms=0.0,
        p99_ms=round(timing.p99_us / 1000, 3) if timing else 0.0,
        max_ms=0.0,
        errors=len(errors),
        server_cpu_s=round(cpu, 3),
        server_cpu_us_per_request=round(cpu / count * 1e6, 1) if count else 0.0,
        extra={"error_samples": errors[:3]},
    )
