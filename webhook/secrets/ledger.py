"""The ownership ledger: what the webhook has made and still owes, as data that outlives a replica.

Every copy the webhook creates carries credentials. Knowing which ones exist only in the
memory of the process meant that a rule removed while the webhook was down (or by a
``helm upgrade`` that also dropped the RBAC) left every copy behind, for good. And work
handed off at admission (a Pod admitted while its source was missing) lived only in the
replica that admitted it: killed, nobody finished it.

The ledger is a ConfigMap the webhook owns in its namespace (no credentials in it, only
names), holding:

* ``copies``: ``{"<secret name>": ["<namespace>", ...]}``, every managed copy seen;
* ``pending``: ``[["<namespace>", "<secret name>"], ...]``, copies owed to admitted Pods;
* ``names``: the sorted copy names of both, which the chart reads with ``lookup`` to keep
  RBAC for names still pending cleanup;
* ``policy.yaml`` and ``policy-version``: the last accepted policy, so a replica that
  starts while the ConfigMap holds a rejected one serves the last good one;
* ``recovery-deletions``: ``{"<controller uid>": [<unix seconds>, ...]}``, when fail-open
  recovery deleted Pods of each controller, so that its budget (``max_per_owner`` per
  ``window_seconds``) is not refilled by a restart or a new leader.

Writers never overwrite each other: a change is a list of :class:`Change` operations
re-applied to the freshest ledger on every attempt of a resourceVersion-guarded patch
(:mod:`webhook.kube.ledger`). Pure: no I/O here.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Final

Key = tuple[str, str]

log = logging.getLogger(__name__)

COPIES: Final = "copies"
PENDING: Final = "pending"
NAMES: Final = "names"
POLICY: Final = "policy.yaml"
POLICY_VERSION: Final = "policy-version"
DELETIONS: Final = "recovery-deletions"

#: At most this many deletions kept in all (the oldest go first). Each costs about 50 bytes
#: (a uid and a time); a ConfigMap holds 1 MiB, and the copies must still fit beside them.
MAX_DELETIONS: Final = 4096

#: ``(controller uid, unix seconds)``: one Pod of that controller deleted by fail-open recovery.
Deletion = tuple[str, int]


@dataclass(frozen=True, slots=True)
class Ledger:
    """One state of the ledger; ``copies`` and ``pending`` are ``(namespace, name)`` keys."""

    copies: frozenset[Key] = frozenset()
    pending: frozenset[Key] = frozenset()
    policy_yaml: str = ""
    policy_version: str = ""
    #: Sorted; one entry per deleted Pod (a controller's several Pods deleted in one second repeat it).
    deletions: tuple[Deletion, ...] = ()

    @property
    def names(self) -> list[str]:
        """Copy names with a copy or a debt somewhere: what RBAC must keep covering."""
        return sorted({name for _, name in self.copies | self.pending})

    def copies_named(self, name: str) -> frozenset[Key]:
        return frozenset(key for key in self.copies if key[1] == name)

    def deletions_of(self, owner: str) -> tuple[int, ...]:
        """When Pods of controller ``owner`` were deleted (unix seconds, oldest first)."""
        return tuple(at for uid, at in self.deletions if uid == owner)

    def encode(self) -> dict[str, str]:
        by_name: dict[str, list[str]] = {}
        for namespace, name in sorted(self.copies):
            by_name.setdefault(name, []).append(namespace)
        by_owner: dict[str, list[int]] = {}
        for owner, at in self.deletions:
            by_owner.setdefault(owner, []).append(at)
        data = {
            COPIES: json.dumps(by_name, sort_keys=True, separators=(",", ":")),
            PENDING: json.dumps(sorted([list(key) for key in self.pending]), separators=(",", ":")),
            NAMES: json.dumps(self.names, separators=(",", ":")),
            # Always written, "{}" when empty: a merge patch leaves out a key it does not name,
            # so leaving it out would keep the last non-empty value in the ConfigMap for ever.
            DELETIONS: json.dumps(by_owner, sort_keys=True, separators=(",", ":")),
        }
        if self.policy_yaml:
            data[POLICY] = self.policy_yaml
            data[POLICY_VERSION] = self.policy_version
        return data

    @classmethod
    def decode(cls, data: Mapping[str, str] | None) -> Ledger:
        """Read a ledger leniently: a damaged part is logged and read as empty, never fatal."""
        data = data or {}
        copies: set[Key] = set()
        pending: set[Key] = set()
        try:
            raw = json.loads(data.get(COPIES) or "{}")
            if isinstance(raw, dict):
                for name, namespaces in raw.items():
                    if isinstance(namespaces, list):
                        copies.update((str(ns), str(name)) for ns in namespaces if isinstance(ns, str) and ns)
        except ValueError:
            log.warning("ledger: %s unreadable, read as empty", COPIES)
        try:
            raw = json.loads(data.get(PENDING) or "[]")
            if isinstance(raw, list):
                for item in raw:
                    if isinstance(item, list) and len(item) == 2 and all(isinstance(x, str) and x for x in item):
                        pending.add((item[0], item[1]))
        except ValueError:
            log.warning("ledger: %s unreadable, read as empty", PENDING)
        deletions: list[Deletion] = []
        try:  # absent in a ledger written before fail-open recovery kept its budget here
            raw = json.loads(data.get(DELETIONS) or "{}")
            if isinstance(raw, dict):
                for owner, times in raw.items():
                    if owner and isinstance(times, list):
                        deletions.extend((str(owner), int(at)) for at in times if _is_time(at))
        except ValueError:
            log.warning("ledger: %s unreadable, read as empty", DELETIONS)
        return cls(
            copies=frozenset(copies),
            pending=frozenset(pending),
            policy_yaml=str(data.get(POLICY) or ""),
            policy_version=str(data.get(POLICY_VERSION) or ""),
            deletions=tuple(sorted(deletions)),
        )


def _is_time(value: object) -> bool:
    # json reads NaN and Infinity too; a bool is an int to Python.
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True, slots=True)
class Change:
    """One operation on the ledger, re-applicable to whatever the ledger is by then.

    ``op``: ``observe`` (the copies named ``name`` are exactly ``keys``), ``copy`` (add
    ``keys``), ``owe`` (add ``keys`` to pending), ``settle`` (drop ``keys`` from pending),
    ``policy`` (remember ``text`` as the last accepted policy, version ``name``),
    ``deleted`` (a Pod of controller ``name`` deleted at ``at``; prunes, see
    :func:`pod_deleted`), ``undeleted`` (take that one entry back), ``prune`` (forget the
    deletions not within ``window`` of ``at``).
    """

    op: str
    name: str = ""
    keys: frozenset[Key] = frozenset()
    text: str = ""
    #: Unix seconds, ``window`` seconds and ``keep`` (a count) of the recovery operations.
    at: int = 0
    window: float = 0.0
    keep: int = 0


def observe(name: str, keys: Iterable[Key]) -> Change:
    return Change("observe", name, frozenset(keys))


def copied(keys: Iterable[Key]) -> Change:
    return Change("copy", keys=frozenset(keys))


def owe(keys: Iterable[Key]) -> Change:
    return Change("owe", keys=frozenset(keys))


def settle(keys: Iterable[Key]) -> Change:
    return Change("settle", keys=frozenset(keys))


def remember_policy(version: str, text: str) -> Change:
    return Change("policy", name=version, text=text)


def pod_deleted(owner: str, at: float, *, window: float, keep: int) -> Change:
    """A Pod of controller ``owner`` deleted at wall-clock ``at`` (whole seconds are stored: ``change.at``).

    Applying it also prunes, so the ledger stays bounded with no separate clean-up: every
    deletion not within ``window`` of ``at`` goes, and ``owner`` keeps its ``keep`` newest
    (the budget never needs more to be spent), and at most :data:`MAX_DELETIONS` in all.
    """
    return Change("deleted", name=owner, at=int(at), window=window, keep=keep)


def undo_deleted(owner: str, at: int) -> Change:
    """The deletion recorded as ``pod_deleted(owner, at)`` did not happen after all."""
    return Change("undeleted", name=owner, at=at)


def prune_deletions(now: float, window: float) -> Change:
    return Change("prune", at=int(now), window=window)


def _within(deletions: Iterable[Deletion], now: int, window: float) -> list[Deletion]:
    """Deletions within ``window`` of ``now``, either way: one far in the future is a clock gone wrong."""
    return [(owner, at) for owner, at in deletions if abs(now - at) < window]


def apply(ledger: Ledger, changes: Iterable[Change]) -> Ledger:
    """``ledger`` with ``changes`` applied in order."""
    copies, pending = set(ledger.copies), set(ledger.pending)
    policy_yaml, policy_version = ledger.policy_yaml, ledger.policy_version
    deletions = list(ledger.deletions)
    for change in changes:
        if change.op == "observe":
            copies = {key for key in copies if key[1] != change.name} | {k for k in change.keys if k[1] == change.name}
        elif change.op == "copy":
            copies |= change.keys
        elif change.op == "owe":
            pending |= change.keys
        elif change.op == "settle":
            pending -= change.keys
        elif change.op == "policy":
            policy_yaml, policy_version = change.text, change.name
        elif change.op == "deleted":
            kept = _within(deletions, change.at, change.window)
            mine = sorted([at for owner, at in kept if owner == change.name] + [change.at])
            others = [entry for entry in kept if entry[0] != change.name]
            deletions = others + [(change.name, at) for at in mine[-change.keep or None :]]
            if len(deletions) > MAX_DELETIONS:
                deletions = sorted(deletions, key=lambda entry: entry[1])[-MAX_DELETIONS:]
        elif change.op == "undeleted":
            if (change.name, change.at) in deletions:
                deletions.remove((change.name, change.at))
        elif change.op == "prune":
            deletions = _within(deletions, change.at, change.window)
        else:
            raise ValueError(f"unknown ledger operation {change.op!r}")
    return replace(
        ledger,
        copies=frozenset(copies),
        pending=frozenset(pending),
        policy_yaml=policy_yaml,
        policy_version=policy_version,
        deletions=tuple(sorted(deletions)),
    )


@dataclass
class Journal:
    """Changes not yet written; ``take`` hands them to a write, ``restore`` puts back a failed one."""

    changes: list[Change] = field(default_factory=list)

    def add(self, change: Change) -> None:
        self.changes.append(change)

    def take(self) -> list[Change]:
        taken, self.changes = self.changes, []
        return taken

    def restore(self, taken: list[Change]) -> None:
        self.changes = taken + self.changes

    def __bool__(self) -> bool:
        return bool(self.changes)


__all__ = [
    "MAX_DELETIONS",
    "Change",
    "Deletion",
    "Journal",
    "Ledger",
    "apply",
    "copied",
    "observe",
    "owe",
    "pod_deleted",
    "prune_deletions",
    "remember_policy",
    "settle",
    "undo_deleted",
]
