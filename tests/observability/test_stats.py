"""Stats: counters, the callbacks that feed the metrics, and the reconcile lag."""

from __future__ import annotations

import time

from webhook.observability.stats import Stats


def test_stats_count_report_to_callbacks_and_measure_lag() -> None:
    seen: list[tuple[str, ...]] = []
    stats = Stats(
        on_write=lambda operation, result: seen.append(("write", operation, result)),
        on_error=lambda kind: seen.append(("error", kind)),
        on_sync=lambda at: seen.append(("sync",)),
    )
    stats.write("create", "ok")
    stats.error("timeout")
    stats.reconciled(lag=0.25, clean=False)
    stats.reconciled(lag=None, clean=True)
    assert seen == [("write", "create", "ok"), ("error", "timeout"), ("sync",)]
    assert stats.current_lag() == 0.0
    stats.behind(time.monotonic() - 5)
    assert 4.9 < stats.current_lag() < 6
    snapshot = stats.snapshot()
    assert snapshot["secret_writes"] == {("create", "ok"): 1}
    assert snapshot["reconcile_lag_seconds"] == 0.25
    assert snapshot["last_sync_timestamp"] is not None
