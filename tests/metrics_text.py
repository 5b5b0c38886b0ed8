"""Reading Prometheus exposition text in tests."""

from __future__ import annotations

import re


def value(text: str, name: str, **labels: str) -> float:
    """The sample ``name{labels}`` in ``text``; fails the test when it is not exposed."""
    label_text = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.escape(name + (f"{{{label_text}}}" if labels else "")) + r" ([0-9.e+-]+)"
    match = re.search(r"^" + pattern + "$", text, re.MULTILINE)
    assert match, f"{name} {labels} not exposed"
    return float(match.group(1))
