"""The injection policy: its YAML schema, and a compiled matcher for the hot path.

The policy is what an operator edits (the ConfigMap key ``policy.yaml``), so it is
validated strictly with pydantic: unknown keys are rejected and every error names the
field. Matching follows the kubelet's credential-provider rules rather than string
prefixes, because a matcher looser than the kubelet's would hand a registry password to
a lookalike host (``registry.io`` must never match ``registry.io.evil.com``).

:class:`CompiledPolicy` is built once per policy version and indexes rules by host so
that a thousand rules cost about what one does.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

from webhook.images import ImageRef, InvalidReference, Registry, parse_registry

DEFAULT_EXCLUDED_NAMESPACES = ("kube-system", "kube-public", "kube-node-lease")
CATCH_ALL = "*"

_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_LABEL_GLOB = re.compile(r"[a-zA-Z0-9*?-]+")
_REPO_SEGMENT_GLOB = re.compile(r"[a-z0-9._*?-]+")


class PolicyError(ValueError):
    """A policy document that cannot be used; ``errors`` lists one line per problem."""

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors = list(errors)
        super().__init__("invalid policy: " + "; ".join(self.errors))


class _Model(BaseModel):
    """Strict base: camelCase on the wire, unknown keys are an error, immutable."""

    model_config = ConfigDict(
        extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True, str_strip_whitespace=True
    )


class LabelSelectorRequirement(_Model):
    key: str
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _values_fit_operator(self) -> LabelSelectorRequirement:
        if self.operator in ("In", "NotIn") and not self.values:
            raise ValueError(f"operator {self.operator} needs at least one value")
        if self.operator in ("Exists", "DoesNotExist") and self.values:
            raise ValueError(f"operator {self.operator} takes no values")
        return self


class LabelSelector(_Model):
    """A Kubernetes ``metav1.LabelSelector``; all terms must hold."""

    match_labels: dict[str, str] = Field(default_factory=dict)
    match_expressions: tuple[LabelSelectorRequirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        for key, value in self.match_labels.items():
            if labels.get(key) != value:
                return False
        for req in self.match_expressions:
            present = req.key in labels
            if req.operator == "In" and (not present or labels[req.key] not in req.values):
                return False
            if req.operator == "NotIn" and present and labels[req.key] in req.values:
                return False
            if req.operator == "Exists" and not present:
                return False
            if req.operator == "DoesNotExist" and present:
                return False
        return True


class NamespaceScope(_Model):
    """Which namespaces a rule serves. Omitted parts do not restrict."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    selector: LabelSelector | None = None


class SecretRef(_Model):
    namespace: str
    name: str


class SecretKeyRef(_Model):
    namespace: str
    name: str
    key: str


class Credentials(_Model):
    """Build a ``.dockerconfigjson`` as ``kubectl create secret docker-registry`` would."""

    registry: str
    username: str
    password_from: SecretKeyRef
    email: str | None = None

    @field_validator("registry")
    @classmethod
    def _registry_is_host(cls, value: str) -> str:
        try:
            parse_registry(value)
        except InvalidReference as exc:
            raise ValueError(str(exc)) from None
        return value


class Source(_Model):
    """Where a managed Secret's content comes from: exactly one of ``secret``, ``credentials``."""

    secret: SecretRef | None = None
    credentials: Credentials | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Source:
        if (self.secret is None) == (self.credentials is None):
            raise ValueError("set exactly one of 'secret' or 'credentials'")
        return self


class Rule(_Model):
    name: str = Field(min_length=1, max_length=63)
    registries: tuple[str, ...] = Field(min_length=1)
    repositories: tuple[str, ...] = ()
    namespaces: NamespaceScope = Field(default_factory=NamespaceScope)
    secret: str
    source: Source | None = None
    #: What to do when the Secret cannot be provided in time: ``Ignore`` admits the Pod with
    #: a warning (fail open, the default), ``Fail`` denies it.
    failure_policy: Literal["Ignore", "Fail"] = "Ignore"

    @field_validator("registries")
    @classmethod
    def _registries_are_patterns(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        for value in values:
            RegistryPattern.parse(value)
        return values

    @field_validator("repositories")
    @classmethod
    def _repositories_are_globs(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        for value in values:
            segments = value.split("/")
            if not value or not all(s and _REPO_SEGMENT_GLOB.fullmatch(s) for s in segments):
                raise ValueError(
                    f"repository pattern {value!r} must be lowercase path segments separated by '/', "
                    "with '*' or '?' globs inside a segment"
                )
        return values

    @field_validator("secret")
    @classmethod
    def _secret_is_a_name(cls, value: str) -> str:
        if len(value) > 253 or not _DNS1123_SUBDOMAIN.fullmatch(value):
            raise ValueError(f"{value!r} is not a valid Secret name (lowercase DNS-1123 subdomain)")
        return value


class Policy(_Model):
    exclude_namespaces: tuple[str, ...] = DEFAULT_EXCLUDED_NAMESPACES
    rules: tuple[Rule, ...] = ()

    @model_validator(mode="after")
    def _names_are_unique(self) -> Policy:
        seen: dict[str, int] = {}
        for index, rule in enumerate(self.rules):
            if rule.name in seen:
                raise ValueError(f"rules[{index}].name {rule.name!r} repeats rules[{seen[rule.name]}].name")
            seen[rule.name] = index
        by_secret: dict[str, Rule] = {}
        for index, rule in enumerate(self.rules):
            other = by_secret.setdefault(rule.secret, rule)
            if other is not rule and other.source != rule.source:
                raise ValueError(
                    f"rules[{index}] ({rule.name}) writes Secret {rule.secret!r} from a different source "
                    f"than rule {other.name!r}: one Secret name, one source"
                )
        return self


def parse_policy(text: str | bytes) -> Policy:
    """Parse and validate a policy document, raising :class:`PolicyError` with field paths."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PolicyError([f"not valid YAML: {exc}"]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PolicyError([f"the policy must be a mapping, not {type(data).__name__}"])
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        raise PolicyError([_format_error(err) for err in exc.errors()]) from None


def _format_error(err: Mapping[str, object]) -> str:
    loc = err.get("loc", ())
    path = ""
    for part in loc if isinstance(loc, tuple) else ():
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    message = str(err.get("msg", "invalid"))
    message = message.removeprefix("Value error, ")
    if err.get("type") == "extra_forbidden":
        message = "unknown field"
    return f"{path or '(document)'}: {message}"


# --------------------------------------------------------------------------- matching


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
            return self.labels == _host_labels(registry.host)
        host_labels = _host_labels(registry.host)
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


def _host_labels(host: str) -> tuple[str, ...]:
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
    """The policy's decisions for one namespace, with the winning rule cached per image.

    Without ``explain``, which rule wins depends only on the image and on which rules the
    namespace admits, so every namespace admitting the same rules shares one of these (an
    excluded namespace, whose reason names it, has its own). After the first Pod of such a
    group, deciding an image costs a dict lookup, however many rules the policy has.
    """

    __slots__ = ("_excluded", "_policy", "_winners", "admitted", "memo")

    _LIMIT = 4096

    def __init__(self, policy: CompiledPolicy, admitted: frozenset[int], excluded_reason: str | None) -> None:
        self._policy = policy
        self.admitted = admitted
        self._excluded = None if excluded_reason is None else Decision(rule=None, reason=excluded_reason)
        self._winners: dict[ImageRef, Candidate | None] = {}
        #: Scratch space for callers that cache what they derive from these decisions
        #: (``plan_pod`` keeps its per-container plans here); it lives and dies with them.
        self.memo: dict[Any, Any] = {}

    def decide(self, image: ImageRef) -> Decision:
        """Same answer as ``policy.decide(image, namespace, labels)`` for this namespace."""
        if self._excluded is not None:
            return self._excluded
        try:
            winner = self._winners[image]
        except KeyError:
            winner = self._policy._winner(image, self.admitted)
            if len(self._winners) >= self._LIMIT:
                self._winners.clear()
            self._winners[image] = winner
        return _decision(image, winner)


def _decision(image: ImageRef, winner: Candidate | None) -> Decision:
    """The non-explaining decision for ``image`` in a namespace that is not excluded."""
    if winner is None:
        return Decision(rule=None, reason=f"no rule names registry {image.registry}")
    reason = f"registry {image.registry} matches {winner.pattern.text!r}"
    if winner.rule.repositories:
        reason += f", repository {image.repository!r} matches its repositories"
    return Decision(rule=winner.rule, reason=reason)


@dataclass
class CompiledPolicy:
    """A validated policy with its host index and caches; build one per policy version."""

    policy: Policy
    _exact: dict[tuple[str, int | None], list[Candidate]] = field(default_factory=dict, init=False)
    _wildcards: dict[int, list[Candidate]] = field(default_factory=dict, init=False)
    _catch_all: list[Candidate] = field(default_factory=list, init=False)
    _host_cache: dict[Registry, tuple[Candidate, ...]] = field(default_factory=dict, init=False)
    _ns_cache: dict[tuple[str, tuple[str | None, ...] | None], NamespaceDecisions] = field(
        default_factory=dict, init=False
    )
    #: Every label key a selector reads (matchLabels and matchExpressions), sorted.
    _selector_keys: tuple[str, ...] = field(default=(), init=False)
    #: One NamespaceDecisions per distinct set of admitted rules (namespaces share them).
    _by_admitted: dict[frozenset[int], NamespaceDecisions] = field(default_factory=dict, init=False)
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

    _CACHE_LIMIT = 65536

    def __post_init__(self) -> None:
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
            c for c in self._wildcards.get(len(_host_labels(registry.host)), ()) if c.pattern.matches(registry)
        )
        found.extend(self._catch_all)
        found.sort(key=lambda c: (c.pattern.specificity, -c.index), reverse=True)
        result = tuple(found)
        if len(self._host_cache) >= self._CACHE_LIMIT:
            self._host_cache.clear()
        self._host_cache[registry] = result
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
                found = self._by_admitted[admitted] = NamespaceDecisions(self, admitted, None)
        if len(self._ns_cache) >= self._CACHE_LIMIT:
            self._ns_cache.clear()
            self._by_admitted.clear()
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
        ``explain`` the reason also says why closer rules did not apply (slower; for the CLI).
        """
        if not explain:
            return self.namespace_decisions(namespace, labels).decide(image)
        admitted = self.admitted_rules(namespace, labels)
        best: tuple[tuple[int, int], tuple[int, int], int] | None = None
        best_candidate: Candidate | None = None
        skipped: list[str] = []
        for candidate in self.candidates(image.registry):
            if best is not None and candidate.pattern.specificity < best[0]:
                break  # sorted by host specificity: nothing further can win
            repo_rank = self._repository_rank(candidate.rule, image.repository)
            if repo_rank is None:
                if explain:
                    skipped.append(f"{candidate.rule.name}: repository {image.repository!r} not in its repositories")
                continue
            if candidate.index not in admitted:
                if explain:
                    skipped.append(
                        f"{candidate.rule.name}: {self._namespace_reason(candidate.rule, namespace, labels)}"
                    )
                continue
            key = (candidate.pattern.specificity, repo_rank, -candidate.index)
            if best is None or key > best:
                best, best_candidate = key, candidate
        if best_candidate is not None:
            reason = f"registry {image.registry} matches {best_candidate.pattern.text!r}"
            if best_candidate.rule.repositories:
                reason += f", repository {image.repository!r} matches its repositories"
            if skipped:
                reason += "; passed over: " + "; ".join(skipped)
            return Decision(rule=best_candidate.rule, reason=reason)
        if self.namespace_excluded(namespace):
            return Decision(rule=None, reason=f"namespace {namespace!r} is excluded by excludeNamespaces")
        if skipped:
            return Decision(rule=None, reason="no rule applies: " + "; ".join(skipped))
        return Decision(rule=None, reason=f"no rule names registry {image.registry}")

    def _winner(self, image: ImageRef, admitted: frozenset[int]) -> Candidate | None:
        """The candidate :meth:`decide` picks when not explaining (``admitted``: a namespace not excluded)."""
        best: tuple[tuple[int, int], tuple[int, int], int] | None = None
        best_candidate: Candidate | None = None
        for candidate in self.candidates(image.registry):
            if best is not None and candidate.pattern.specificity < best[0]:
                break  # sorted by host specificity: nothing further can win
            if candidate.index not in admitted:
                continue
            repo_rank = self._repository_rank(candidate.rule, image.repository)
            if repo_rank is None:
                continue
            key = (candidate.pattern.specificity, repo_rank, -candidate.index)
            if best is None or key > best:
                best, best_candidate = key, candidate
        return best_candidate

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


def compile_policy(policy: Policy) -> CompiledPolicy:
    return CompiledPolicy(policy=policy)


def load_policy(text: str | bytes) -> CompiledPolicy:
    """Parse, validate and compile in one step."""
    return compile_policy(parse_policy(text))
