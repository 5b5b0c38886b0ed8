"""Which namespace may hold which copy: the policy seen from the Secret side."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping

from webhook.kube.objects import SecretTarget
from webhook.policy.matching import CompiledPolicy
from webhook.policy.model import Rule, Source

PolicyFn = Callable[[], CompiledPolicy]


@dataclasses.dataclass(frozen=True, slots=True)
class Grant:
    """The rules that give Secret ``name`` to one namespace (all share one source)."""

    rules: tuple[Rule, ...]

    @property
    def source(self) -> Source:
        source = self.rules[0].source
        assert source is not None
        return source

    @property
    def registries(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(pattern for rule in self.rules for pattern in rule.registries))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(rule.name for rule in self.rules)


class GrantIndex:
    """Rules with a source, by Secret name, for the policy object last seen.

    One instance lives on :class:`~webhook.secrets.sync.SecretSync`, shared by the ensurer,
    the reconciler and the runtime. It rebuilds itself when it is handed a different
    policy object, so it needs no notification when the policy is reloaded.
    """

    _GRANTS_LIMIT = 4096

    def __init__(self) -> None:
        self._policy: CompiledPolicy | None = None
        self._by_name: dict[str, list[tuple[int, Rule]]] = {}
        self._grants: dict[tuple[str, frozenset[int]], Grant | None] = {}

    def by_name(self, policy: CompiledPolicy) -> dict[str, list[tuple[int, Rule]]]:
        if policy is not self._policy:
            by_name: dict[str, list[tuple[int, Rule]]] = {}
            for index, rule in enumerate(policy.policy.rules):
                if rule.source is not None:
                    by_name.setdefault(rule.secret, []).append((index, rule))
            self._policy, self._by_name, self._grants = policy, by_name, {}
        return self._by_name

    def _grant(self, policy: CompiledPolicy, name: str, admitted: frozenset[int]) -> Grant | None:
        """The :class:`Grant` of ``name`` for the rules ``admitted``, one object per distinct answer.

        Namespaces admitted by the same rules share a Grant: the desired copy is memoized
        on its identity (:class:`SecretSync`), so it is built once, not once per admission.
        """
        candidates = self.by_name(policy).get(name)
        if not candidates:
            return None
        key = (name, admitted)
        try:
            return self._grants[key]
        except KeyError:
            pass
        rules = tuple(rule for index, rule in candidates if index in admitted)
        grant = Grant(rules) if rules else None
        if len(self._grants) >= self._GRANTS_LIMIT:
            self._grants.clear()
        self._grants[key] = grant
        return grant

    def managed_names(self, policy: CompiledPolicy) -> set[str]:
        """The Secret names this policy writes (rules with a ``source``)."""
        return set(self.by_name(policy))

    def grant_for(
        self, policy: CompiledPolicy, namespace: str, name: str, labels: Mapping[str, str] | None
    ) -> Grant | None:
        """Whether ``namespace`` may hold a copy of ``name``, and from which rules. The security boundary.

        ``labels`` ``None`` means unknown: rules with a namespace selector then do not apply.
        """
        if name not in self.by_name(policy):
            return None
        return self._grant(policy, name, policy.admitted_rules(namespace, labels))

    def watch_targets(self, policy: CompiledPolicy, *, extra_names: Iterable[str] = ()) -> set[SecretTarget]:
        """What to watch for ``policy``: each copy name cluster-wide, each source Secret in its namespace."""
        targets: set[SecretTarget] = {(None, name) for name in self.managed_names(policy) | set(extra_names)}
        for entries in self.by_name(policy).values():
            source = entries[0][1].source
            assert source is not None
            if source.token is not None:  # issue 13: a minted token reads at most its credentialsFrom
                from webhook.tokens.minter import token_watch_target

                target = token_watch_target(source.token)
                if target is not None:
                    targets.add(target)
                continue
            targets.add(source_target(source))
        return targets


def source_target(source: Source) -> tuple[str, str]:
    """``(namespace, name)`` of the Secret a source reads."""
    if source.secret is not None:
        return source.secret.namespace, source.secret.name
    assert source.credentials is not None
    ref = source.credentials.password_from
    return ref.namespace, ref.name
