"""Opt-in recovery of Pods admitted fail-open (``--recover-fail-open``; docs/reliability.md)."""
