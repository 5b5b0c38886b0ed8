"""The live policy: loaded from a file, re-read when it changes, never replaced by a bad one.

A ConfigMap mounted as a volume is updated by the kubelet swapping a symlink, so the
file is compared by content, not by inotify events on one inode. An invalid new policy
keeps the last good one serving: a typo in a ConfigMap must not switch injection off
across the cluster. Listeners (metrics, Kubernetes Events) hear about every outcome.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from pathlib import Path

from webhook.policy.matching import CompiledPolicy, load_policy
from webhook.policy.model import PolicyError

log = logging.getLogger(__name__)

#: Called with (accepted, errors) after every attempt to load a changed policy.
ReloadListener = Callable[[bool, list[str]], None]


class PolicyHolder:
    """Holds the current compiled policy; ``current()`` is what the handler calls."""

    def __init__(self, policy: CompiledPolicy, *, path: Path | None = None, digest: str | None = None) -> None:
        self._policy = policy
        self._path = path
        self._digest = digest
        self.listeners: list[ReloadListener] = []
        #: The version being served (``sha256:`` + 12 hex digits of the document), for logs and metrics.
        self.version = "sha256:" + digest[:12] if digest else ""

    @classmethod
    def from_file(cls, path: Path) -> PolicyHolder:
        """Load the first policy; an invalid one here is fatal (there is no last good one)."""
        data = path.read_bytes()
        return cls(load_policy(data), path=path, digest=hashlib.sha256(data).hexdigest())

    def current(self) -> CompiledPolicy:
        return self._policy

    def replace(self, policy: CompiledPolicy) -> None:
        self._policy = policy

    def accept(self, policy: CompiledPolicy, *, version: str) -> None:
        """Serve ``policy`` (checked by the caller: :mod:`webhook.kube.livepolicy`) and tell the listeners."""
        self._policy, self.version = policy, version
        self._notify(True, [])

    def refuse(self, errors: list[str]) -> None:
        """A new policy was rejected; the current one keeps serving. Tell the listeners."""
        self._notify(False, errors)

    def check(self) -> bool | None:
        """Re-read the file; returns True when a new policy was taken, False when rejected,
        None when nothing changed (or the file is momentarily unreadable)."""
        if self._path is None:
            return None
        try:
            data = self._path.read_bytes()
        except OSError as exc:
            log.warning("policy file %s unreadable, keeping the current policy: %s", self._path, exc.strerror)
            return None
        digest = hashlib.sha256(data).hexdigest()
        if digest == self._digest:
            return None
        self._digest = digest
        try:
            policy = load_policy(data)
        except PolicyError as exc:
            log.error("new policy rejected, keeping the last good one: %s", "; ".join(exc.errors))
            self._notify(False, exc.errors)
            return False
        self._policy = policy
        self.version = "sha256:" + digest[:12]
        log.info("policy reloaded: %d rule(s), version %s", len(policy.policy.rules), self.version)
        self._notify(True, [])
        return True

    def _notify(self, accepted: bool, errors: list[str]) -> None:
        for listener in self.listeners:
            try:
                listener(accepted, errors)
            except Exception:
                log.exception("policy reload listener failed")

    async def watch(self, interval: float = 2.0) -> None:
        """Poll the file until cancelled."""
        while True:
            await asyncio.sleep(interval)
            self.check()
