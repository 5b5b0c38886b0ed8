"""Registry, repository and namespace patterns, matched the way the kubelet matches credentials.

Matching is on parsed hosts, never string prefixes: a matcher looser than the kubelet's would
hand a registry password to a lookalike host (``registry.io`` must never match
``registry.io.evil.com``).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass

from webhook.policy.images import Registry, parse_registry

CATCH_ALL = "*"
_LABEL_GLOB = re.compile(r"[a-zA-Z0-9*?-]+")


@dataclass(frozen=True, slots=True)
class RegistryPattern:
    """One entry of ``registries``, parsed.

    kubelet semantics: the host is compared label by label (same number of labels, each
    label an ``fnmatch`` glob, so ``*`` never crosses a dot); the port must be equal
    (absent matches only absent); the lone ``"*"`` matches every registry.
    """

    text: str
    labels: tuple[str, ...] | None  # None: the catch-all
    port: int | None
    wildcard: bool

    @classmethod
    def parse(cls, text: str) -> RegistryPattern:
        if text == CATCH_ALL:
            return cls(text=text, labels=None, port=None, wildcard=True)
        if "/" in text:
            raise ValueError(f"registry pattern {text!r} must be host[:port]; put paths in 'repositories'")
        host, _, port_text = text.rpartition(":") if _has_port(text) else (text, "", "")
        port = None
        if port_text:
            if not port_text.isdigit() or not 0 < int(port_text) < 65536:
                raise ValueError(f"registry pattern {text!r} has an invalid port")
            port = int(port_text)
        if host.startswith("["):
            if not host.endswith("]") or "*" in host:
                raise ValueError(f"registry pattern {text!r}: IPv6 hosts are matched exactly, without globs")
            return cls(text=text, labels=(host.lower(),), port=port, wildcard=False)
        labels = tuple(host.lower().split("."))
        if not all(label and _LABEL_GLOB.fullmatch(label) for label in labels):
            raise ValueError(f"registry pattern {text!r} is not a hostname with optional '*' globs per label")
        wildcard = any("*" in label or "?" in label for label in labels)
        if not wildcard:
            registry = parse_registry(text)  # folds the Docker Hub aliases
            return cls(text=text, labels=tuple(registry.host.split(".")), port=registry.port, wildcard=False)
        return cls(text=text, labels=labels, port=port, wildcard=True)

    @property
    def is_catch_all(self) -> bool:
        return self.labels is None

    def matches(self, registry: Registry) -> bool:
        if self.labels is None:
            return True
        if self.port != registry.port:
            return False
        if not self.wildcard:
            return self.labels == registry_labels(registry.host)
        host_labels = registry_labels(registry.host)
        if len(host_labels) != len(self.labels):
            return False
        return all(fnmatch.fnmatchcase(h, p) for h, p in zip(host_labels, self.labels, strict=True))

    @property
    def specificity(self) -> tuple[int, int]:
        """Exact host beats the longest wildcard, which beats the catch-all."""
        if self.labels is None:
            return (0, 0)
        if not self.wildcard:
            return (2, 0)  # every exact pattern that matches names the same (normalised) host
        return (1, len(self.text) - self.text.count("*") - self.text.count("?"))


def _has_port(text: str) -> bool:
    if text.startswith("["):
        return "]:" in text
    return ":" in text


def registry_labels(host: str) -> tuple[str, ...]:
    return (host,) if host.startswith("[") else tuple(host.split("."))


def repository_matches(pattern: str, repository: str) -> bool:
    """Glob per path segment, matching the repository or a leading part of it.

    ``my-project/*`` serves ``my-project/app`` and ``my-project/team/app`` alike, the
    kubelet's path-prefix semantics with globs confined to one segment.
    """
    pattern_segments = pattern.split("/")
    repo_segments = repository.split("/")
    if len(pattern_segments) > len(repo_segments):
        return False
    return all(fnmatch.fnmatchcase(r, p) for r, p in zip(repo_segments, pattern_segments, strict=False))


def namespace_glob_matches(patterns: Iterable[str], namespace: str) -> bool:
    return any(fnmatch.fnmatchcase(namespace, pattern) for pattern in patterns)


