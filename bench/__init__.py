"""Benchmarks for pullsecret-injector: ``python -m bench.run [--quick]`` (see README, Performance)."""
