"""Measurements the e2e modules print: each under its own title after pytest's summary.

A module's fixture registers one :class:`Measurements` plugin (:meth:`Measurements.register`)
and hands its tests ``note(key, text)`` (:meth:`Measurements.noter`): the line is printed
(``-s`` shows it at once), recorded as a property of the test (junit XML) and listed again
at the end of the run, where it is not lost among the test output.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

#: ``note(key, text)``
Note = Callable[[str, str], None]


class Measurements:
    """A pytest plugin registered at run time: prints its lines after the test summary."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.lines: list[str] = []

    @classmethod
    def register(cls, request: pytest.FixtureRequest, title: str, name: str) -> Measurements:
        """A new plugin ``name`` listing its lines under ``title`` at the end of the run."""
        plugin = cls(title)
        request.config.pluginmanager.register(plugin, name)
        return plugin

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.lines:
            terminalreporter.write_sep("-", self.title)
            for line in self.lines:
                terminalreporter.write_line(line)

    def noter(self, request: pytest.FixtureRequest, record_property: Callable[[str, object], None]) -> Note:
        """``note(key, text)`` for the test of ``request``: print it, record it, list it at the end."""

        def add(key: str, text: str) -> None:
            line = f"{request.node.name}: {key}: {text}"
            print(line)
            record_property(key, text)
            self.lines.append(line)

        return add


__all__ = ["Measurements", "Note"]
