"""What a test does when something it needs is not installed here: skip with one line, or fail in CI.

``PSI_REQUIRE_E2E=1`` (``.ci/run`` sets it) turns every such skip into a failure, so that a
suite needing real binaries (the control plane, a node, the registries, HAProxy) can never
silently vanish from CI.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

REQUIRE_ENV = "PSI_REQUIRE_E2E"


def required() -> bool:
    """True under ``PSI_REQUIRE_E2E=1``: what is missing fails the run."""
    return os.environ.get(REQUIRE_ENV) == "1"


def unavailable(message: str, *, module_level: bool = False) -> NoReturn:
    """Skip with ``message`` (one line), or fail with it under ``PSI_REQUIRE_E2E=1``."""
    if required():
        pytest.fail(f"{message} ({REQUIRE_ENV}=1)", pytrace=False)
    pytest.skip(message, allow_module_level=module_level)


__all__ = ["REQUIRE_ENV", "required", "unavailable"]
