"""The benchmark: ``python -m bench.run [--quick]``.

Full run (needs ``wrk``: ``apt-get install wrk``; it installs nothing itself), a few minutes:

1. in-process handler timings per review for 1, 3 and 10 containers x 1, 100 and 1,000 rules;
2. the real server (``pullsecret-injector serve``) and the bare ASGI + orjson baseline
   (:mod:`bench.baseline`) over TLS on 127.0.0.1, one worker each, loaded by wrk at 16 and 64
   connections, alternating servers for ``--rounds`` rounds (medians reported);
3. RSS of a fresh process that has seen 10,000 namespaces (100 and 1,000 rules);
4. Pod-create latency through a real kube-apiserver, when the e2e harness and its binaries exist.

Writes ``bench/results/latest.json`` and prints a markdown table. ``--quick`` is the CI
smoke run: seconds, fewer iterations, the HTTP part with a small Python client (no wrk
needed), 1,000 namespaces for RSS, no thresholds; it writes ``bench/results/quick.json``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from bench import inproc, load, rss
from bench.reviews import PLATFORM_SECRET, policy_yaml, review_bodies

RESULTS = Path(__file__).resolve().parent / "results"

# The targets.
TARGET_HANDLER_MEDIAN_US = 60.0
TARGET_HANDLER_P99_US = 200.0
TARGET_RULES_RATIO = 1.5
TARGET_THROUGHPUT_RATIO = 0.65
TARGET_COMPACT_THROUGHPUT_RATIO = 0.75
TARGET_HTTP_P99_MS = 10.0
TARGET_RSS_MB = 150.0
TARGET_POD_CREATE_ADDED_MS = 2.0

HTTP_CONTAINERS = 3
HTTP_RULES = 100


@dataclass(frozen=True)
class HttpReview:
    """One review size of the HTTP part, and the throughput ratio it must reach."""

    name: str
    compact: bool
    target_ratio: float


#: The full 3-container review (about 14 KB, where decoding JSON dominates both servers) and
#: the compact one (about 6.6 KB, where the per-request cost of the HTTP layer shows most).
HTTP_REVIEWS = (
    HttpReview("full", compact=False, target_ratio=TARGET_THROUGHPUT_RATIO),
    HttpReview("compact", compact=True, target_ratio=TARGET_COMPACT_THROUGHPUT_RATIO),
)


@dataclass(frozen=True)
class Settings:
    quick: bool
    iterations: int
    cold_iterations: int
    http_duration_s: int
    http_warmup_s: int
    rounds: int
    connections: tuple[int, ...]
    rss_namespaces: int
    rss_rules: tuple[int, ...]
    python_requests_per_connection: int
    apiserver: bool


def settings(args: argparse.Namespace) -> Settings:
    if args.quick:
        return Settings(
            quick=True,
            iterations=300,
            cold_iterations=20,
            http_duration_s=0,
            http_warmup_s=0,
            rounds=1,
            connections=(4,),
            rss_namespaces=1000,
            rss_rules=(100,),
            python_requests_per_connection=25,
            apiserver=False,
        )
    return Settings(
        quick=False,
        iterations=args.iterations,
        cold_iterations=300,
        http_duration_s=args.duration,
        http_warmup_s=2,
        rounds=args.rounds,
        connections=(16, 64),
        rss_namespaces=10000,
        rss_rules=(100, 1000),
        python_requests_per_connection=0,
        apiserver=not args.skip_apiserver,
    )


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kb = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    except OSError:
        pass
    return {
        "cpu": model or platform.processor() or "unknown",
        "cpus": os.cpu_count(),
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def _log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- parts


def part_inproc(s: Settings) -> dict[str, Any]:
    _log(f"in-process handler: {s.iterations} iterations per scenario")
    scenarios = inproc.run(iterations=s.iterations, cold_iterations=s.cold_iterations)
    secrets = {tuple(sc.secrets) for sc in scenarios}
    if secrets != {(PLATFORM_SECRET,)}:
        raise load.BenchError(f"the benchmark reviews got {secrets}, expected only {PLATFORM_SECRET}")
    by_key = {(sc.containers, sc.rules): sc for sc in scenarios}
    ratios = {
        str(n): round(by_key[(n, 1000)].handle.median_us / by_key[(n, 1)].handle.median_us, 2)
        for n in (1, 3, 10)
        if (n, 1000) in by_key and (n, 1) in by_key
    }
    return {"scenarios": [sc.as_dict() for sc in scenarios], "rules_1000_vs_1_median_ratio": ratios}


def part_http(s: Settings, workdir: Path) -> dict[str, Any]:
    from webhook.tls.certs import write_local_certs

    files = write_local_certs(service="pullsecret-injector", namespace="bench", out_dir=workdir / "certs")
    policy_file = workdir / "policy.yaml"
    policy_file.write_text(policy_yaml(HTTP_RULES))
    bodies = {review.name: review_bodies(HTTP_CONTAINERS, 32, compact=review.compact) for review in HTTP_REVIEWS}
    scripts: dict[str, Path] = {}
    for review in HTTP_REVIEWS:
        scripts[review.name] = workdir / f"mutate-{review.name}.lua"
        scripts[review.name].write_text(load.lua_script(bodies[review.name]))
    server_cpus, load_cpus = load.cpu_plan()
    use_wrk = not s.quick
    if use_wrk and load.wrk_path() is None:
        raise load.BenchError("the full run needs wrk: apt-get install wrk (or run with --quick)")

    ours_port, base_port = load.free_port(), load.free_port()
    ours_cmd = load.our_server_command(port=ours_port, cert=files["tls.crt"], key=files["tls.key"], policy=policy_file)
    base_cmd = load.baseline_command(port=base_port, cert=files["tls.crt"], key=files["tls.key"])
    runs: list[load.LoadResult] = []
    _log(
        f"HTTP: {HTTP_CONTAINERS}-container reviews of "
        + " and ".join(f"{len(bodies[r.name][0])} bytes" for r in HTTP_REVIEWS)
        + f", {HTTP_RULES} rules, "
        + (f"wrk {s.http_duration_s}s x {s.rounds} round(s)" if use_wrk else "Python client")
        + f", connections {list(s.connections)}, server CPUs {server_cpus}, load CPUs {load_cpus}"
    )
    with (
        load.running_server(
            "ours", ours_cmd, port=ours_port, ca_file=files["ca.crt"], log_file=workdir / "ours.log", cpus=server_cpus
        ) as ours,
        load.running_server(
            "baseline",
            base_cmd,
            port=base_port,
            ca_file=files["ca.crt"],
            log_file=workdir / "baseline.log",
            cpus=server_cpus,
        ) as base,
    ):
        for review in HTTP_REVIEWS:
            answer = load.post_once(ours, bodies[review.name][0])
            secrets = inproc.check_answer(answer)
            if secrets != [PLATFORM_SECRET]:
                raise load.BenchError(f"the server answered {answer} (secrets {secrets})")
            load.post_once(base, bodies[review.name][0])
        for round_index in range(s.rounds):
            for review in HTTP_REVIEWS:
                for connections in s.connections:
                    # Alternate: whatever else the machine does then hits both servers alike.
                    pair = (ours, base) if round_index % 2 == 0 else (base, ours)
                    for server in pair:
                        if use_wrk:
                            result = load.run_wrk(
                                server,
                                scripts[review.name],
                                connections=connections,
                                duration_s=s.http_duration_s,
                                warmup_s=s.http_warmup_s,
                                cpus=load_cpus,
                                server_cpus=server_cpus,
                            )
                        else:
                            result = load.run_python_client(
                                server,
                                bodies[review.name],
                                connections=connections,
                                requests_per_connection=s.python_requests_per_connection,
                            )
                        result.extra["review"] = review.name
                        _log(
                            f"  round {round_index + 1} {review.name:7} {server.name:8} c={connections:<3} "
                            f"{result.requests_per_s:8.1f} req/s p50 {result.p50_ms:6.2f} ms "
                            f"p99 {result.p99_ms:6.2f} ms cpu/req {result.server_cpu_us_per_request:6.1f} us "
                            f"errors {result.errors}"
                            + (
                                f" (other processes on the server's CPU: {other}%)"
                                if (other := result.extra.get("other_processes_on_server_cpu_pct")) is not None
                                else ""
                            )
                        )
                        runs.append(result)
    summary = []
    for review in HTTP_REVIEWS:
        for connections in s.connections:
            row: dict[str, Any] = {
                "review": review.name,
                "body_bytes": len(bodies[review.name][0]),
                "connections": connections,
            }
            for name in ("ours", "baseline"):
                mine = [
                    r
                    for r in runs
                    if r.server == name and r.connections == connections and r.extra["review"] == review.name
                ]
                row[name] = {
                    "requests_per_s": round(statistics.median(r.requests_per_s for r in mine), 1),
                    "p50_ms": round(statistics.median(r.p50_ms for r in mine), 3),
                    "p99_ms": round(statistics.median(r.p99_ms for r in mine), 3),
                    "server_cpu_us_per_request": round(statistics.median(r.server_cpu_us_per_request for r in mine), 1),
                    "errors": sum(r.errors for r in mine),
                    "other_processes_on_server_cpu_pct": _median_or_none(
                        [r.extra.get("other_processes_on_server_cpu_pct") for r in mine]
                    ),
                }
            base_rps = row["baseline"]["requests_per_s"]
            row["throughput_ratio"] = round(row["ours"]["requests_per_s"] / base_rps, 3) if base_rps else None
            base_cpu = row["baseline"]["server_cpu_us_per_request"]
            row["cpu_per_request_ratio"] = (
                round(row["ours"]["server_cpu_us_per_request"] / base_cpu, 3) if base_cpu else None
            )
            summary.append(row)
    return {
        "tool": "wrk" if use_wrk else "python",
        "note": None if use_wrk else "smoke run: small Python client, numbers are not comparable with wrk's",
        "review_containers": HTTP_CONTAINERS,
        "policy_rules": HTTP_RULES,
        "reviews": [
            {"name": r.name, "compact": r.compact, "body_bytes": len(bodies[r.name][0]), "target_ratio": r.target_ratio}
            for r in HTTP_REVIEWS
        ],
        "server_cpus": sorted(server_cpus) if server_cpus else None,
        "load_cpus": sorted(load_cpus) if load_cpus else None,
        "duration_s": s.http_duration_s,
        "rounds": s.rounds,
        "summary": summary,
        "runs": [asdict(r) for r in runs],
    }


def _median_or_none(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 1) if present else None


def part_rss(s: Settings) -> dict[str, Any]:
    results = []
    for rules in s.rss_rules:
        _log(f"RSS: fresh process, {s.rss_namespaces} namespaces, {rules} rules")
        results.append(rss.measure(s.rss_namespaces, rules))
    return {"runs": results}


def part_apiserver(s: Settings) -> dict[str, Any]:
    if not s.apiserver:
        return {"status": "skipped", "reason": "--quick or --skip-apiserver"}
    from bench import apiserver

    _log("kube-apiserver: Pod-create latency with and without the webhook (starts a control plane)")
    return apiserver.run()


# --------------------------------------------------------------------------- report


def _fmt(value: float | None, unit: str = "", digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}{unit}"


def _kb(size: int) -> str:
    """A body size as the issue writes it (decimal kilobytes: 14 KB, 6.6 KB)."""
    kb = size / 1000
    return f"{kb:.0f} KB" if kb >= 10 else f"{kb:.1f} KB"


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "**missed**")


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    scenarios = {(sc["containers"], sc["rules"]): sc for sc in results["inproc"]["scenarios"]}
    target_sc = scenarios.get((3, 100))
    if target_sc:
        median, p99 = target_sc["handle"]["median_us"], target_sc["handle"]["p99_us"]
        rows.append(
            {
                "target": "handler median, 3 containers, 100 rules",
                "goal": f"<= {TARGET_HANDLER_MEDIAN_US:.0f} us",
                "measured": f"{median:.1f} us",
                "met": median <= TARGET_HANDLER_MEDIAN_US,
            }
        )
        rows.append(
            {
                "target": "handler p99, 3 containers, 100 rules",
                "goal": f"<= {TARGET_HANDLER_P99_US:.0f} us",
                "measured": f"{p99:.1f} us",
                "met": p99 <= TARGET_HANDLER_P99_US,
            }
        )
    ratio = results["inproc"]["rules_1000_vs_1_median_ratio"].get("3")
    if ratio is not None:
        rows.append(
            {
                "target": "1,000 rules vs 1 rule (median, 3 containers)",
                "goal": f"<= {TARGET_RULES_RATIO}x",
                "measured": f"{ratio:.2f}x",
                "met": ratio <= TARGET_RULES_RATIO,
            }
        )
    http_part = results.get("http", {})
    goals = {review["name"]: review["target_ratio"] for review in http_part.get("reviews", [])}
    for row in http_part.get("summary", []):
        if row["connections"] != 16 or http_part.get("tool") != "wrk":
            continue
        tr = row["throughput_ratio"]
        goal = goals.get(row["review"], TARGET_THROUGHPUT_RATIO)
        # The CPU time per request (baseline's over ours) next to it: on a busy machine it
        # moves much less than requests/s do.
        cpu = row.get("cpu_per_request_ratio")
        rows.append(
            {
                "target": f"TLS throughput vs bare ASGI baseline, {_kb(row['body_bytes'])} review, 16 connections",
                "goal": f">= {goal:.0%}",
                "measured": ("n/a" if tr is None else f"{tr:.0%}") + (f" (CPU/request {1 / cpu:.0%})" if cpu else ""),
                "met": None if tr is None else tr >= goal,
            }
        )
        if row["review"] != "full":
            continue
        p99 = row["ours"]["p99_ms"]
        rows.append(
            {
                "target": "TLS p99, 16 connections",
                "goal": f"<= {TARGET_HTTP_P99_MS:.0f} ms",
                "measured": f"{p99:.2f} ms",
                "met": p99 <= TARGET_HTTP_P99_MS,
            }
        )
    for run in results.get("rss", {}).get("runs", []):
        if run["namespaces"] < 10000:
            continue
        rows.append(
            {
                "target": f"RSS, 10,000 namespaces cached, {run['rules']} rules",
                "goal": f"<= {TARGET_RSS_MB:.0f} MB",
                "measured": f"{run['rss_mb']:.1f} MB",
                "met": run["rss_mb"] <= TARGET_RSS_MB,
            }
        )
    api = results.get("apiserver", {})
    if api.get("status") == "measured":
        added = api["warm_overhead_p50_ms"]
        rows.append(
            {
                "target": "added Pod-create latency via kube-apiserver, warm namespace (p50)",
                "goal": f"<= {TARGET_POD_CREATE_ADDED_MS:.0f} ms",
                "measured": f"{added:.1f} ms",
                "met": added <= TARGET_POD_CREATE_ADDED_MS,
            }
        )
    return rows


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        f"Measured {results['date']} on {m['cpu']}, {m['cpus']} CPUs, {m['memory_gb']} GB, "
        f"Linux {m['kernel']}, Python {m['python']}"
        + (" (quick smoke run: not representative)" if results["quick"] else "")
        + ".",
        "",
        "| target | goal | measured | |",
        "|---|---|---|---|",
    ]
    for row in results["targets"]:
        lines.append(f"| {row['target']} | {row['goal']} | {row['measured']} | {_verdict(row['met'])} |")
    lines += (
        []
        if not results["inproc"]["scenarios"]
        else [
            "",
            "In-process, per review (`Handler.handle` on a decoded review; *bytes* is body in, answer out as the "
            "transport does it: the view and `answer_now`, else the whole decode and `handle`; *cold* = first Pod of a "
            "namespace):",
            "",
            "| containers | rules | body | handle median | handle p99 | bytes median | bytes p99 | cold median |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
    )
    for sc in results["inproc"]["scenarios"]:
        lines.append(
            f"| {sc['containers']} | {sc['rules']} | {sc['body_bytes'] / 1024:.1f} KiB "
            f"| {sc['handle']['median_us']:.1f} us | {sc['handle']['p99_us']:.1f} us "
            f"| {sc['bytes_to_bytes']['median_us']:.1f} us | {sc['bytes_to_bytes']['p99_us']:.1f} us "
            f"| {sc['cold_namespace']['median_us']:.1f} us |"
        )
    http_part = results.get("http")
    if http_part and http_part.get("summary"):
        lines += [
            "",
            f"Over TLS on loopback ({http_part['tool']}, {http_part['review_containers']}-container reviews, "
            f"{http_part['policy_rules']} rules, one uvicorn worker; median of {http_part['rounds']} alternating "
            f"round(s) of {http_part['duration_s']} s; server CPU time per request from /proc):",
            "",
            "| review | connections | server | req/s | p50 | p99 | server CPU/req | req/s ratio | CPU/req ratio "
            "| other processes on the server's CPU |",
            "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row in http_part["summary"]:
            for name in ("ours", "baseline"):
                r = row[name]
                ours = name == "ours"
                ratio = f"{row['throughput_ratio']:.0%}" if ours and row["throughput_ratio"] else ""
                cpu_ratio = f"{1 / row['cpu_per_request_ratio']:.0%}" if ours and row["cpu_per_request_ratio"] else ""
                others = r.get("other_processes_on_server_cpu_pct")
                lines.append(
                    f"| {_kb(row['body_bytes'])} | {row['connections']} | {name} | {r['requests_per_s']:.0f} "
                    f"| {r['p50_ms']:.2f} ms "
                    f"| {r['p99_ms']:.2f} ms | {r['server_cpu_us_per_request']:.0f} us | {ratio} | {cpu_ratio} "
                    f"| {'n/a' if others is None else f'{others:.0f} %'} |"
                )
    rss_part = results.get("rss", {}).get("runs", [])
    if rss_part:
        lines += [
            "",
            "| RSS | namespaces | rules | after imports | after policy | with caches |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for run in rss_part:
            kb = run["rss_kb"]
            lines.append(
                f"| fresh process | {run['namespaces']} | {run['rules']} | {kb['imports'] / 1024:.0f} MB "
                f"| {kb['policy'] / 1024:.0f} MB | {run['rss_mb']:.0f} MB |"
            )
    api = results.get("apiserver", {})
    if api:
        lines += ["", *_api_lines(api)]
    return "\n".join(lines)


def _api_lines(api: dict[str, Any]) -> list[str]:
    if api.get("status") != "measured":
        why = api.get("reason") or api.get("error") or ""
        return [f"Pod-create latency through kube-apiserver: {api.get('status')} ({why})."]
    lines = [
        f"Pod-create latency through a real kube-apiserver ({api['kube_version']}, etcd, all on this machine; "
        f"client-side, one keep-alive connection, {api['containers']}-container Pod, {api['policy_rules']} rules; "
        f"the webhook's own handler time per review: {_fmt(api.get('warm_webhook_handler_mean_ms'), ' ms', 2)}):",
        "",
        "| case | Pods | p50 | p90 | p99 | max |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in api.get("summary", []):
        lines.append(
            f"| {row['case']} | {row['count']} | {row['p50_ms']:.1f} ms | {row['p90_ms']:.1f} ms "
            f"| {row['p99_ms']:.1f} ms | {row['max_ms']:.1f} ms |"
        )
    if "bare_patch_webhook_overhead_p50_ms" in api:
        lines += [
            "",
            f"Added p50 (warm cases interleaved, one Pod of each in turn): {api['warm_overhead_p50_ms']:.1f} ms "
            f"with our webhook; a bare webhook (decode, answer allowed, no patch) adds "
            f"{api['bare_webhook_overhead_p50_ms']:.1f} ms, the same answering our patch "
            f"{api['bare_patch_webhook_overhead_p50_ms']:.1f} ms (with reinvocationPolicy Never: "
            f"{api['bare_patch_never_webhook_overhead_p50_ms']:.1f} ms); ours on top of the bare one answering "
            "the same patch: "
            f"{api['warm_overhead_vs_bare_patch_webhook_p50_ms']:.1f} ms.",
        ]
    if api.get("connections"):
        lines.append("")
    for case, conn in (api.get("connections") or {}).items():
        lines.append(
            f"- Connections to the webhook ({case}): {conn['connections_opened']} opened "
            f"during the measured Pods ({conn['connections_seen']} in use)."
        )
    return lines


def run_all(s: Settings, output: Path, parts: Sequence[str]) -> dict[str, Any]:
    started = time.monotonic()
    results: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "quick": s.quick,
        "machine": machine(),
        "settings": asdict(s),
    }
    steps: dict[str, Callable[[], dict[str, Any]]] = {
        "inproc": lambda: part_inproc(s),
        "rss": lambda: part_rss(s),
        "apiserver": lambda: part_apiserver(s),
    }
    failed: list[str] = []
    with tempfile.TemporaryDirectory(prefix="pullsecret-bench-") as tmp:
        steps["http"] = lambda: part_http(s, Path(tmp))
        for name in ("inproc", "http", "rss", "apiserver"):
            if name in parts:
                try:
                    results[name] = steps[name]()
                except Exception as exc:  # one broken part must not lose the others' numbers
                    _log(f"{name} failed: {exc}")
                    results[name] = {"status": "failed", "error": str(exc)[-2000:]}
                    failed.append(name)
    results["failed_parts"] = failed
    if "scenarios" not in results.get("inproc", {}):
        results["inproc"] = {"scenarios": [], "rules_1000_vs_1_median_ratio": {}, **results.get("inproc", {})}
    results["targets"] = targets(results)
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    results["table"] = markdown(results)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2) + b"\n")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke run: seconds, no wrk, no thresholds")
    parser.add_argument("--output", type=Path, help="result file (default: bench/results/latest.json or quick.json)")
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating wrk rounds (default: %(default)s)")
    parser.add_argument("--iterations", type=int, default=20000, help="in-process reviews per scenario")
    parser.add_argument("--skip-apiserver", action="store_true", help="leave out the kube-apiserver part")
    parser.add_argument(
        "--only", action="append", choices=("inproc", "http", "rss", "apiserver"), help="run only these parts"
    )
    args = parser.parse_args(argv)
    s = settings(args)
    output = args.output or RESULTS / ("quick.json" if s.quick else "latest.json")
    parts = args.only or ["inproc", "http", "rss", "apiserver"]
    results = run_all(s, output, parts)
    print(results["table"])
    print(f"\n(results in {output}, {results['elapsed_s']} s)")
    if results["failed_parts"]:
        print("failed: " + ", ".join(results["failed_parts"]) + " (see the log above and the result file)")
        return 1
    if not s.quick:
        missed = [row["target"] for row in results["targets"] if row["met"] is False]
        if missed:
            print("missed: " + "; ".join(missed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
