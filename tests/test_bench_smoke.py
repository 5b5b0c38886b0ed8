"""Smoke test of the benchmark: ``python -m bench.run --quick`` runs and writes a sane result file.

No timing thresholds (CI machines vary); only that every part ran, the numbers are
positive and consistent, and the answer the benchmark checks is the expected one.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    output = tmp_path_factory.mktemp("bench") / "quick.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--output", str(output)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| target | goal | measured |" in proc.stdout
    data: dict[str, Any] = json.loads(output.read_text())
    return data


def test_in_process_scenarios(quick_results: dict[str, Any]) -> None:
    scenarios = quick_results["inproc"]["scenarios"]
    assert {(s["containers"], s["rules"]) for s in scenarios} == {(c, r) for c in (1, 3, 10) for r in (1, 100, 1000)}
    for s in scenarios:
        assert s["secrets"] == ["platform-pull"]
        for key in ("handle", "bytes_to_bytes", "cold_namespace"):
            timing = s[key]
            assert timing["iterations"] > 0
            assert 0 < timing["min_us"] <= timing["median_us"] <= timing["p99_us"]
        assert s["bytes_to_bytes"]["median_us"] > 0
    assert set(quick_results["inproc"]["rules_1000_vs_1_median_ratio"]) == {"1", "3", "10"}


def test_http_part_ran_against_both_servers(quick_results: dict[str, Any]) -> None:
    http = quick_results["http"]
    assert http["tool"] == "python"
    assert http["note"]
    # One row per review size (the full ~14 KB review and the compact ~6.6 KB one).
    assert [row["review"] for row in http["summary"]] == ["full", "compact"]
    sizes = {review["name"]: review["body_bytes"] for review in http["reviews"]}
    assert 12_000 < sizes["full"] < 16_000
    assert 6_000 < sizes["compact"] < 7_200
    for row in http["summary"]:
        assert row["body_bytes"] == sizes[row["review"]]
        for name in ("ours", "baseline"):
            assert row[name]["requests_per_s"] > 0
            assert row[name]["errors"] == 0
            assert row[name]["p50_ms"] > 0
        assert row["throughput_ratio"] > 0
    assert {r["server"] for r in http["runs"]} == {"ours", "baseline"}
    assert {r["extra"]["review"] for r in http["runs"]} == {"full", "compact"}


def test_rss_part(quick_results: dict[str, Any]) -> None:
    (run,) = quick_results["rss"]["runs"]
    assert run["namespaces"] == 1000
    kb = run["rss_kb"]
    assert 0 < kb["imports"] <= kb["cached"]
    assert run["rss_mb"] > 10


def test_report(quick_results: dict[str, Any]) -> None:
    assert quick_results["quick"] is True
    assert quick_results["machine"]["cpus"] >= 1
    assert quick_results["apiserver"]["status"] == "skipped"
    targets = {row["target"] for row in quick_results["targets"]}
    assert "handler median, 3 containers, 100 rules" in targets
    assert "1,000 rules vs 1 rule (median, 3 containers)" in targets
    assert "| containers | rules |" in quick_results["table"]
