"""The bundled example: a policy and workloads to try ``check`` and ``serve --dev`` on.

A module of its own so that the CLI (``check`` without arguments) and the server (``--dev``
without ``--policy``) both find the files without importing each other.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

#: The example policy (``serve --dev`` and ``check`` use it when given none).
POLICY = "policy.yaml"
#: The example workloads ``check`` explains when given no manifests.
WORKLOADS = "workloads.yaml"


def bundled_example(name: str) -> Path:
    """The path of a bundled example file (installed as package data next to this module)."""
    return Path(str(resources.files(__name__).joinpath(name)))


__all__ = ["POLICY", "WORKLOADS", "bundled_example"]
