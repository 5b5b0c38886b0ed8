"""Which provider needs which optional extra; import-free so the policy model can ask cheaply.

A policy that names a provider whose SDK is missing is rejected at validation with the
line to run, rather than accepted and failing at the first mint in production.
"""

from __future__ import annotations

import importlib.util

#: provider -> (a module its SDK provides, the extra that installs it)
EXTRAS: dict[str, tuple[str, str]] = {
    "gcp": ("google.auth", "gcp"),
    "ecr": ("boto3", "aws"),
    "acr": ("azure.identity", "azure"),
}


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing
        return False


def missing_extra(provider: str) -> str | None:
    """``None`` when ``provider`` can run here, else the message with the ``pip install`` line."""
    entry = EXTRAS.get(provider)
    if entry is None or _installed(entry[0]):
        return None
    module, extra = entry
    return (
        f"token provider {provider!r} needs the {module} package, which is not installed: "
        f"pip install 'pullsecret-injector[{extra}]'"
    )
