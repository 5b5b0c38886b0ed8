"""Matching images against a compiled policy, the kubelet's way, with one decide path that explains."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

from webhook.bounded import BoundedCache
from webhook.config import CacheLimits
from webhook.policy.images import ImageRef, Registry
from webhook.policy.model import LabelSelector, Policy, Rule, parse_policy
from webhook.policy.patterns import (
    RegistryPattern,
    namespace_glob_matches,
    registry_labels,
    repository_matches,
)

NamespaceVerdict = Literal["admitted", "excluded", "not-included", "selector-mismatch", "labels-unknown"]


def namespace_verdict(rule: Rule, namespace: str, labels: Mapping[str, str] | None) -> NamespaceVerdict:
    """Whether ``rule`` serves ``namespace``; ``labels`` is ``None`` when unknown (offline)."""
    scope = rule.namespaces
    if scope.include and not namespace_glob_matches(scope.include, namespace):
        return "not-included"
    if namespace_glob_matches(scope.exclude, namespace):
        return "excluded"
    if scope.selector is not None:
        if labels is None:
            return "labels-unknown"
        if not scope.selector.matches(labels):
            return "selector-mismatch"
    return "admitted"


@dataclass(frozen=True, slots=True)
class Candidate:
    """A (rule, registry pattern) pair that matched a host, with its rank."""

    index: int
    rule: Rule
    pattern: RegistryPattern


@dataclass(frozen=True, slots=True)
class Decision:
    """Which rule serves one image in one namespace, and why; ``rule`` is ``None`` for none."""

    rule: Rule | None
    reason: str


def _globs_matcher(patterns: Sequence[str]) -> Callable[[str], re.Match[str] | None] | None:
    """One compiled ``match`` for "any of these ``fnmatchcase`` globs" (``None`` for no globs)."""
    if not patterns:
        return None
    return re.compile("|".join(fnmatch.translate(p) for p in patterns)).match


class NamespaceDecisions:
    """The policy's decisions for one namespace: which rules it admits, or why it is excluded.

    Which rule wins depends only on the image and on which rules the namespace admits, so
    every namespace admitting the same rules shares one of these (an excluded namespace,
    whose reason names it, has its own). Callers that derive something per image can
    cache it keyed by this object (the admission layer does, in its container-plan cache).
    """

    __slots__ = ("_excluded", "_policy", "admitted")

    def __init__(self, policy: CompiledPolicy, admitted: frozenset[int], excluded_reason: str | None) -> None:
        self._policy = policy
        self.admitted = admitted
        self._excluded = None if excluded_reason is None else Decision(rule=None, reason=excluded_reason)

    def decide(self, image: ImageRef) -> Decision:
        """Same answer as ``policy.decide(image, namespace, labels)`` for this namespace."""
        if self._excluded is not None:
            return self._excluded
        return self._policy._decide(image, self.admitted, None)


@dataclass(frozen=True, slots=True)
class _Explanation:
    """What ``decide(explain=True)`` needs on top of the decision: why each closer rule was passed over."""

    policy: CompiledPolicy
    namespace: str
    labels: Mapping[str, str] | None
    skipped: list[str] = field(default_factory=list)

    def passed_over(self, rule: Rule, image: ImageRef, repository_rank: tuple[int, int] | None) -> None:
        """``rule`` did not apply: its repositories first (what the image itself decides), else its scope."""
        if repository_rank is None:
            self.skipped.append(f"{rule.name}: repository {image.repository!r} not in its repositories")
        else:
            self.skipped.append(f"{rule.name}: {self.policy._namespace_reason(rule, self.namespace, self.labels)}")


def _reason(image: ImageRef, winner: Candidate | None, skipped: Sequence[str]) -> str:
    """The one text of a decision; ``skipped`` is empty unless explaining."""
    if winner is None:
        if skipped:
            return "no rule applies: " + "; ".join(skipped)
        return f"no rule names registry {image.registry}"
    reason = f"registry {image.registry} matches {winner.pattern.text!r}"
    if winner.rule.repositories:
        reason += f", repository {image.repository!r} matches its repositories"
    if skipped:
        reason += "; passed over: " + "; ".join(skipped)
    return reason


@dataclass
class CompiledPolicy:
    """A validated policy with its host index and caches; build one per policy version."""

    policy: Policy
    _exact: dict[tuple[str, int | None], list[Candidate]] = field(default_factory=dict, init=False)
    _wildcards: dict[int, list[Candidate]] = field(default_factory=dict, init=False)
    _catch_all: list[Candidate] = field(default_factory=list, init=False)
    limits: CacheLimits = field(default_factory=CacheLimits)
    #: Candidates per registry host: with many wildcard rules, finding and ranking them is
    #: most of the cost of a decision (3.9 ms uncached for one image with 1,000 rules).
    _host_cache: BoundedCache[Registry, tuple[Candidate, ...]] = field(init=False)
    _ns_cache: BoundedCache[tuple[str, tuple[str | None, ...] | None], NamespaceDecisions] = field(init=False)
    #: Every label key a selector reads (matchLabels and matchExpressions), sorted.
    _selector_keys: tuple[str, ...] = field(default=(), init=False)
    #: One NamespaceDecisions per distinct set of admitted rules (namespaces share them).
    _by_admitted: BoundedCache[frozenset[int], NamespaceDecisions] = field(init=False)
    #: Rules with no namespace scope at all: admitted wherever the namespace is not excluded.
    _unscoped: frozenset[int] = field(default=frozenset(), init=False)
    #: (index, include matcher, exclude matcher, selector) of the rules with a namespace scope.
    _scoped: list[
        tuple[
            int,
            Callable[[str], re.Match[str] | None] | None,
            Callable[[str], re.Match[str] | None] | None,
            LabelSelector | None,
        ]
    ] = field(default_factory=list, init=False)
    _excluded_match: Callable[[str], re.Match[str] | None] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self._host_cache = BoundedCache(self.limits.registries)
        self._ns_cache = BoundedCache(self.limits.namespaces)
        self._by_admitted = BoundedCache(self.limits.namespaces)
        self._excluded_match = _globs_matcher(self.policy.exclude_namespaces)
        unscoped: list[int] = []
        for index, rule in enumerate(self.policy.rules):
            scope = rule.namespaces
            if scope.include or scope.exclude or scope.selector is not None:
                self._scoped.append(
                    (index, _globs_matcher(scope.include), _globs_matcher(scope.exclude), scope.selector)
                )
            else:
                unscoped.append(index)
        self._unscoped = frozenset(unscoped)
        self._selector_keys = tuple(
            sorted(
                {
                    key
                    for rule in self.policy.rules
                    if (selector := rule.namespaces.selector) is not None
                    for key in (*selector.match_labels, *(req.key for req in selector.match_expressions))
                }
            )
        )
        for index, rule in enumerate(self.policy.rules):
            for text in rule.registries:
                pattern = RegistryPattern.parse(text)
                candidate = Candidate(index=index, rule=rule, pattern=pattern)
                if pattern.labels is None:
                    self._catch_all.append(candidate)
                elif pattern.wildcard:
                    self._wildcards.setdefault(len(pattern.labels), []).append(candidate)
                else:
                    key = (".".join(pattern.labels), pattern.port)
                    self._exact.setdefault(key, []).append(candidate)

    @cached_property
    def rules_by_name(self) -> dict[str, Rule]:
        return {rule.name: rule for rule in self.policy.rules}

    def namespace_excluded(self, namespace: str) -> bool:
        return self._excluded_match is not None and self._excluded_match(namespace) is not None

    def candidates(self, registry: Registry) -> tuple[Candidate, ...]:
        """Every rule entry whose registry pattern matches, most specific host first."""
        cached = self._host_cache.get(registry)
        if cached is not None:
            return cached
        found = list(self._exact.get((registry.host, registry.port), ()))
        found.extend(
            c for c in self._wildcards.get(len(registry_labels(registry.host)), ()) if c.pattern.matches(registry)
        )
        found.extend(self._catch_all)
        found.sort(key=lambda c: (c.pattern.specificity, -c.index), reverse=True)
        result = self._host_cache[registry] = tuple(found)
        return result

    def admitted_rules(self, namespace: str, labels: Mapping[str, str] | None) -> frozenset[int]:
        """Indexes of the rules that serve ``namespace`` (cached per namespace and labels)."""
        return self.namespace_decisions(namespace, labels).admitted

    def namespace_decisions(self, namespace: str, labels: Mapping[str, str] | None) -> NamespaceDecisions:
        """The (cached) decisions for ``namespace``; ``labels`` is ``None`` when unknown.

        Of the labels, only the values (or absence) of the keys some selector looks at are
        part of the cache key: no decision depends on any other label.
        """
        # Known labels (even none of the keys, or an empty selector's no keys) differ from unknown ones.
        selector_labels = (
            tuple([labels.get(k) for k in self._selector_keys]) if labels is not None and self.uses_selectors else None
        )
        key = (namespace, selector_labels)
        found = self._ns_cache.get(key)
        if found is not None:
            return found
        if self.namespace_excluded(namespace):
            found = NamespaceDecisions(self, frozenset(), f"namespace {namespace!r} is excluded by excludeNamespaces")
        else:
            admitted = self._admit(namespace, labels)
            found = self._by_admitted.get(admitted)
            if found is None:
                found = NamespaceDecisions(self, admitted, None)
                self._by_admitted[admitted] = found
        self._ns_cache[key] = found
        return found

    def _admit(self, namespace: str, labels: Mapping[str, str] | None) -> frozenset[int]:
        """Rules whose namespace scope admits ``namespace`` (:func:`namespace_verdict` is "admitted")."""
        scoped = [
            index
            for index, include, exclude, selector in self._scoped
            if (include is None or include(namespace) is not None)
            and (exclude is None or exclude(namespace) is None)
            and (selector is None or (labels is not None and selector.matches(labels)))
        ]
        return self._unscoped.union(scoped) if scoped else self._unscoped

    def decide(
        self, image: ImageRef, namespace: str, labels: Mapping[str, str] | None, *, explain: bool = False
    ) -> Decision:
        """The most specific applicable rule for ``image`` in ``namespace``.

        Applicable: the registry pattern, a repository pattern (if any) and the namespace
        scope all match. Most specific: exact host, then the longest wildcard, then ``"*"``;
        then the longest repository pattern; then the earlier rule in the file. With
        ``explain`` the reason also says why closer rules did not apply (for the CLI); the
        decision itself is the same, made by the same code.
        """
        decisions = self.namespace_decisions(namespace, labels)
        if not explain or decisions._excluded is not None:
            return decisions.decide(image)
        return self._decide(image, decisions.admitted, _Explanation(self, namespace, labels))

    def _decide(self, image: ImageRef, admitted: frozenset[int], explanation: _Explanation | None) -> Decision:
        """The one decide path (``admitted``: the rules of a namespace that is not excluded).

        Explaining costs nothing when not asked for: the passed-over reasons are only
        formatted when ``explanation`` is given.
        """
        best: tuple[tuple[int, int], tuple[int, int], int] | None = None
        best_candidate: Candidate | None = None
        for candidate in self.candidates(image.registry):
            if best is not None and candidate.pattern.specificity < best[0]:
                break  # sorted by host specificity: nothing further can win
            # Membership first: a set lookup, where ranking the repository runs its patterns.
            if candidate.index not in admitted:
                if explanation is not None:
                    explanation.passed_over(
                        candidate.rule, image, self._repository_rank(candidate.rule, image.repository)
                    )
                continue
            repo_rank = self._repository_rank(candidate.rule, image.repository)
            if repo_rank is None:
                if explanation is not None:
                    explanation.passed_over(candidate.rule, image, None)
                continue
            key = (candidate.pattern.specificity, repo_rank, -candidate.index)
            if best is None or key > best:
                best, best_candidate = key, candidate
        skipped = explanation.skipped if explanation is not None else ()
        return Decision(
            rule=None if best_candidate is None else best_candidate.rule,
            reason=_reason(image, best_candidate, skipped),
        )

    @staticmethod
    def _repository_rank(rule: Rule, repository: str) -> tuple[int, int] | None:
        if not rule.repositories:
            return (0, 0)
        ranks = [
            (pattern.count("/") + 1, len(pattern))
            for pattern in rule.repositories
            if repository_matches(pattern, repository)
        ]
        return max(ranks) if ranks else None

    def _namespace_reason(self, rule: Rule, namespace: str, labels: Mapping[str, str] | None) -> str:
        if self.namespace_excluded(namespace):
            return f"namespace {namespace!r} is excluded by excludeNamespaces"
        verdict = namespace_verdict(rule, namespace, labels)
        return {
            "not-included": f"namespace {namespace!r} not in namespaces.include",
            "excluded": f"namespace {namespace!r} is in namespaces.exclude",
            "selector-mismatch": f"namespace {namespace!r} labels do not match namespaces.selector",
            "labels-unknown": f"namespace {namespace!r} labels are unknown (no cluster), selector not evaluated",
            "admitted": "admitted",
        }[verdict]

    @cached_property
    def uses_selectors(self) -> bool:
        """Whether any rule needs Namespace labels (so the server must know them)."""
        return any(rule.namespaces.selector is not None for rule in self.policy.rules)


def compile_policy(policy: Policy, limits: CacheLimits | None = None) -> CompiledPolicy:
    return CompiledPolicy(policy=policy, limits=limits or CacheLimits())


def load_policy(text: str | bytes) -> CompiledPolicy:
    """Parse, validate and compile in one step."""
    return compile_policy(parse_policy(text))
