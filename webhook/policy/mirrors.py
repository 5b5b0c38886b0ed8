"""Registry mirrors: the ``mirrors`` section of the policy and the pure image rewriting it implies.

k3s (``/etc/rancher/k3s/registries.yaml``) configures mirrors per node: containerd tries the
mirror endpoints for a registry in order and falls back to the registry itself. A webhook
cannot fall back per pull, so it does the next best thing: it rewrites the image reference
once, at Pod creation, to the first endpoint that should serve it (optionally confirmed by a
manifest HEAD, see :mod:`webhook.registry.probe`), and records the original. The keys and
fields are those of registries.yaml so a file reads across (``pullsecret-injector import k3s``).

Semantics, each chosen to match what the node would do with the same file:

* the image is normalised first, exactly as the kubelet does (:func:`parse_image`: ``docker.io``,
  ``library/``, ports, tag, digest), so ``nginx``, ``docker.io/nginx`` and
  ``index.docker.io/library/nginx`` all use the ``docker.io`` entry and reach the mirror as
  ``library/nginx`` (the repository containerd asks a Docker Hub mirror for);
* an entry for the registry beats the quoted ``"*"`` entry, which serves every registry
  without its own entry;
* ``rewrite`` applies to the repository path only (never the registry, tag or digest), first
  matching pattern in file order; patterns are anchored at the start of the path (as every
  k3s example writes them with ``^``) and the replacement expands ``$1``, ``${1}``, ``$name``
  and ``$$`` as Go's ``Regexp.Expand`` does;
* the tag and the digest are copied byte for byte (``@sha256:...`` never becomes ``:sha256``;
  tag+digest stays tag+digest; no tag stays no tag);
* an image already on an endpoint of any mirror is left alone, which makes rewriting
  idempotent (reinvocation, a second pass, a Pod re-created from a rewritten manifest).

Everything here is pure; the models validate the way the rest of the policy does.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

from webhook.policy.images import DOCKER_HUB, ImageRef, InvalidReference, Registry, parse_image, parse_registry
from webhook.policy.patterns import namespace_glob_matches
from webhook.policy.scope import NamespaceScope

#: The key of the entry that serves every registry without its own entry (as in k3s).
WILDCARD = "*"
#: The Pod annotation that records the references as written before any rewrite.
ORIGINAL_IMAGES_ANNOTATION = "pullsecret-injector.io/original-images"

_PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*")
#: Python-only regex constructs: RE2 (Go, hence k3s) has no lookaround and no backreferences,
#: so a pattern using them would not mean the same thing in a registries.yaml.
_NON_RE2 = re.compile(r"\(\?<?[=!]|\(\?P=|\(\?>|\\[1-9]|[*+?}][+]")


class MirrorError(ValueError):
    """A mirror setting that cannot be used (raised as a validation error by the models)."""


class InvalidEndpoint(MirrorError):
    """An endpoint that is not a registry an image name can point at."""


class InvalidRewrite(MirrorError):
    """A rewrite pattern that does not compile, or uses what RE2 (k3s) does not have."""


# --------------------------------------------------------------------------- endpoints


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One mirror endpoint: where a rewritten image name points.

    ``prefix`` is a repository prefix (``harbor.example.com/dockerhub`` serves ``library/nginx``
    as ``dockerhub/library/nginx``). ``scheme`` only matters to the manifest check: the node
    pulls the rewritten name over HTTPS unless its own runtime is configured otherwise.
    """

    text: str
    scheme: Literal["https", "http"]
    registry: Registry
    prefix: str = ""

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.registry}"

    @property
    def name(self) -> str:
        """``registry[/prefix]``, as it appears at the start of a rewritten image."""
        return f"{self.registry}/{self.prefix}" if self.prefix else str(self.registry)

    def repository_for(self, repository: str) -> str:
        return f"{self.prefix}/{repository}" if self.prefix else repository

    def holds(self, ref: ImageRef) -> bool:
        """Whether ``ref`` already names this endpoint (so rewriting it again must not happen)."""
        if ref.registry != self.registry:
            return False
        return not self.prefix or ref.repository.startswith(self.prefix + "/")


def parse_endpoint(text: str) -> Endpoint:
    """``https://host[:port][/v2]``, ``http://...`` or ``host[:port][/prefix]``.

    A URL path other than the API root ``/v2`` is refused: containerd would use it as the API
    root, which no image name can express (``host/p/repo`` is fetched from ``/v2/p/repo``).
    Write the repository prefix without a scheme instead.
    """
    value = text.strip()
    scheme: Literal["https", "http"] = "https"
    if "://" in value:
        raw_scheme, value = value.split("://", 1)
        if raw_scheme.lower() not in ("http", "https"):
            raise InvalidEndpoint(f"endpoint {text!r}: scheme must be https or http")
        scheme = "http" if raw_scheme.lower() == "http" else "https"
        hostport, _, path = value.partition("/")
        path = path.strip("/")
        if path not in ("", "v2"):
            raise InvalidEndpoint(
                f"endpoint {text!r}: a URL path other than /v2 cannot be expressed in an image name; "
                "write the repository prefix as host[:port]/prefix"
            )
        prefix = ""
    else:
        hostport, _, prefix = value.partition("/")
        prefix = prefix.strip("/")
        if prefix and not all(_PATH_COMPONENT.fullmatch(part) for part in prefix.split("/")):
            raise InvalidEndpoint(f"endpoint {text!r}: prefix {prefix!r} is not a lowercase repository path")
    try:
        registry = parse_registry(hostport)
    except InvalidReference:
        raise InvalidEndpoint(f"endpoint {text!r}: {hostport!r} is not a registry host[:port]") from None
    if "." not in hostport and ":" not in hostport and registry.host != "localhost":
        raise InvalidEndpoint(
            f"endpoint {text!r}: an image name starting with {hostport!r} is read as a Docker Hub "
            "namespace, not a registry; use a host with a '.' or a port"
        )
    return Endpoint(text=text, scheme=scheme, registry=registry, prefix=prefix)


# --------------------------------------------------------------------------- rewrites


def go_expand(template: str, match: re.Match[str]) -> str:
    """``template`` expanded as Go's ``Regexp.Expand`` does (what k3s's rewrite uses).

    ``$name`` takes the longest run of letters, digits and ``_`` (``$1x`` is group ``1x``);
    ``${name}`` delimits it; a number is a group index (no leading zeros); an unknown or
    unmatched group expands to nothing; ``$$`` is a ``$``; a malformed ``$`` stays literal.
    """
    out: list[str] = []
    i = 0
    while i < len(template):
        char = template[i]
        if char != "$":
            out.append(char)
            i += 1
            continue
        if template.startswith("$$", i):
            out.append("$")
            i += 2
            continue
        name, end = _template_name(template, i + 1)
        if name is None:
            out.append("$")
            i += 1
            continue
        i = end
        out.append(_group(match, name))
    return "".join(out)


def _template_name(template: str, start: int) -> tuple[str | None, int]:
    braced = template.startswith("{", start)
    j = start + 1 if braced else start
    k = j
    while k < len(template) and (template[k].isascii() and (template[k].isalnum() or template[k] == "_")):
        k += 1
    if k == j:
        return None, start
    if braced:
        if not template.startswith("}", k):
            return None, start
        return template[j:k], k + 1
    return template[j:k], k


def _group(match: re.Match[str], name: str) -> str:
    if name.isdigit() and not (name.startswith("0") and len(name) > 1):
        index = int(name)
        if index <= (match.re.groups):
            return match.group(index) or ""
        return ""
    if name in match.re.groupindex:
        return match.group(name) or ""
    return ""


@dataclass(frozen=True, slots=True)
class RewriteRule:
    pattern: str
    replacement: str
    regex: re.Pattern[str]

    def apply(self, repository: str) -> str | None:
        """The rewritten repository, or ``None`` when the pattern does not match its start."""
        found = self.regex.match(repository)
        if found is None:
            return None
        return go_expand(self.replacement, found) + repository[found.end() :]


def compile_rewrite(pattern: str, replacement: str) -> RewriteRule:
    if _NON_RE2.search(pattern):
        raise InvalidRewrite(
            f"rewrite {pattern!r}: lookaround, backreferences and possessive quantifiers are not RE2 "
            "(k3s would reject or read it differently)"
        )
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise InvalidRewrite(f"rewrite {pattern!r}: {exc}") from None
    return RewriteRule(pattern=pattern, replacement=replacement, regex=regex)


# --------------------------------------------------------------------------- the policy model


def validate_mirror_key(key: str) -> str:
    """``"*"`` or a registry ``host[:port]`` as images name it (no scheme, no path)."""
    if key == WILDCARD:
        return key
    if "://" in key or "/" in key:
        raise ValueError(f"mirror key {key!r} must be a registry host[:port] as images name it, or '*'")
    try:
        parse_registry(key)
    except InvalidReference as exc:
        raise ValueError(str(exc)) from None
    return key


def _distinct_keys(mirrors: dict[str, Mirror]) -> dict[str, Mirror]:
    seen: dict[Registry | None, str] = {}
    for key in mirrors:
        identity = None if key == WILDCARD else parse_registry(key)
        if identity in seen:
            raise ValueError(f"mirror keys {seen[identity]!r} and {key!r} name the same registry")
        seen[identity] = key
    return mirrors


MirrorKey = Annotated[str, AfterValidator(validate_mirror_key)]


class Mirror(BaseModel):
    """One ``mirrors`` entry: a k3s mirror (``endpoint``, ``rewrite``) plus what a webhook adds."""

    model_config = ConfigDict(
        extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True, str_strip_whitespace=True
    )

    #: Tried in order: a URL (``https://host:5000``, ``http://...``) or ``host[:port][/prefix]``.
    endpoint: tuple[str, ...] = Field(min_length=1)
    #: Regex on the repository path -> replacement (``$1``), first match in file order wins.
    rewrite: dict[str, str] = Field(default_factory=dict)
    #: Which namespaces get the rewrite, as in rules.
    namespaces: NamespaceScope = Field(default_factory=NamespaceScope)
    #: Confirm with a manifest HEAD that the endpoint has the image before rewriting to it.
    check: bool = False
    #: When no endpoint (checked) has it: keep the original (k3s's default endpoint), or deny.
    fallback: Literal["original", "deny"] = "original"

    @field_validator("endpoint")
    @classmethod
    def _endpoints_parse(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        for value in values:
            try:
                parse_endpoint(value)
            except MirrorError as exc:
                raise ValueError(str(exc)) from None
        return values

    @field_validator("rewrite")
    @classmethod
    def _rewrites_compile(cls, values: dict[str, str]) -> dict[str, str]:
        for pattern, replacement in values.items():
            try:
                compile_rewrite(pattern, replacement)
            except MirrorError as exc:
                raise ValueError(str(exc)) from None
        return values


#: The type of ``Policy.mirrors``: registry (or ``"*"``) -> entry, no two keys for one registry.
Mirrors = Annotated[dict[MirrorKey, Mirror], AfterValidator(_distinct_keys)]


# --------------------------------------------------------------------------- deciding


@dataclass(frozen=True, slots=True)
class CompiledMirror:
    key: str
    mirror: Mirror
    endpoints: tuple[Endpoint, ...]
    rewrites: tuple[RewriteRule, ...]

    def namespace_reason(self, namespace: str, labels: Mapping[str, str] | None) -> str | None:
        """``None`` when the entry serves ``namespace``, else why not."""
        scope = self.mirror.namespaces
        if scope.include and not namespace_glob_matches(scope.include, namespace):
            return f"namespace {namespace!r} not in namespaces.include of mirror {self.key}"
        if namespace_glob_matches(scope.exclude, namespace):
            return f"namespace {namespace!r} is in namespaces.exclude of mirror {self.key}"
        if scope.selector is not None:
            if labels is None:
                return f"namespace {namespace!r} labels are unknown, selector of mirror {self.key} not evaluated"
            if not scope.selector.matches(labels):
                return f"namespace {namespace!r} labels do not match namespaces.selector of mirror {self.key}"
        return None


@dataclass(frozen=True, slots=True)
class Target:
    """One candidate rewrite of an image: to ``endpoint``, as ``image``."""

    endpoint: Endpoint
    ref: ImageRef
    image: str
    rewrite: RewriteRule | None

    def explain(self, original: ImageRef, mirror: str) -> str:
        text = f"{original} -> {self.image} by mirror {mirror}"
        if self.rewrite is not None:
            text += f", rewrite {self.rewrite.pattern}"
        return text


@dataclass(frozen=True, slots=True)
class MirrorDecision:
    """What the mirrors say about one image: candidates in endpoint order (empty: leave it)."""

    image: str
    ref: ImageRef | None
    mirror: CompiledMirror | None
    targets: tuple[Target, ...]
    reason: str
    #: Candidates that could not be built (a rewrite producing an invalid name), with why.
    problems: tuple[str, ...] = ()

    @property
    def fallback(self) -> Literal["original", "deny"]:
        return self.mirror.mirror.fallback if self.mirror is not None else "original"


def render_image(endpoint: Endpoint, repository: str, ref: ImageRef) -> str:
    """``endpoint/repository`` with the tag and the digest of ``ref`` exactly as they were."""
    text = f"{endpoint.registry}/{endpoint.repository_for(repository)}"
    if ref.tag is not None:
        text += f":{ref.tag}"
    if ref.digest is not None:
        text += f"@{ref.digest}"
    return text


class MirrorSet:
    """The compiled ``mirrors`` of one policy version."""

    def __init__(self, mirrors: Mapping[str, Mirror], exclude_namespaces: Sequence[str] = ()) -> None:
        self._exclude = tuple(exclude_namespaces)
        self._memo: dict[tuple[str, str, object], MirrorDecision] = {}
        self._by_registry: dict[Registry, CompiledMirror] = {}
        self._wildcard: CompiledMirror | None = None
        self.entries: list[CompiledMirror] = []
        for key, mirror in mirrors.items():
            compiled = CompiledMirror(
                key=key,
                mirror=mirror,
                endpoints=tuple(parse_endpoint(text) for text in mirror.endpoint),
                rewrites=tuple(compile_rewrite(p, r) for p, r in mirror.rewrite.items()),
            )
            self.entries.append(compiled)
            if key == WILDCARD:
                self._wildcard = compiled
            else:
                self._by_registry[parse_registry(key)] = compiled
        self.endpoints = tuple(e for entry in self.entries for e in entry.endpoints)
        self.uses_selectors = any(e.mirror.namespaces.selector is not None for e in self.entries)
        self.checks = any(e.mirror.check for e in self.entries)

    def __bool__(self) -> bool:
        return bool(self.entries)

    def entry_for(self, registry: Registry) -> CompiledMirror | None:
        """The registry's own entry, else ``"*"``, else ``None``."""
        return self._by_registry.get(registry, self._wildcard)

    def holding_endpoint(self, ref: ImageRef) -> Endpoint | None:
        return next((e for e in self.endpoints if e.holds(ref)), None)

    _MEMO_LIMIT = 8192

    def decide(self, image: str, namespace: str, labels: Mapping[str, str] | None) -> MirrorDecision:
        """Where ``image`` may be rewritten to in ``namespace`` (``labels``: ``None`` if unknown).

        Memoised (bounded) per image and namespace, and per labels when a selector reads them:
        the same few images come back on every Pod.
        """
        key = (image, namespace, tuple(sorted(labels.items())) if self.uses_selectors and labels else labels is None)
        found = self._memo.get(key)
        if found is None:
            found = self._decide(image, namespace, labels)
            if len(self._memo) >= self._MEMO_LIMIT:
                self._memo.clear()
            self._memo[key] = found
        return found

    def _decide(self, image: str, namespace: str, labels: Mapping[str, str] | None) -> MirrorDecision:
        try:
            ref = parse_image(image)
        except InvalidReference as exc:
            return MirrorDecision(image, None, None, (), f"not rewritten: {exc}")
        holder = self.holding_endpoint(ref)
        if holder is not None:
            return MirrorDecision(image, ref, None, (), f"already on mirror endpoint {holder.name}")
        entry = self.entry_for(ref.registry)
        if entry is None:
            return MirrorDecision(image, ref, None, (), f"no mirror for registry {ref.registry}")
        if namespace_glob_matches(self._exclude, namespace):
            return MirrorDecision(image, ref, None, (), f"namespace {namespace!r} is excluded by excludeNamespaces")
        why_not = entry.namespace_reason(namespace, labels)
        if why_not is not None:
            return MirrorDecision(image, ref, None, (), f"not rewritten: {why_not}")
        repository, rewrite = ref.repository, None
        for rule in entry.rewrites:
            rewritten = rule.apply(ref.repository)
            if rewritten is not None:
                repository, rewrite = rewritten, rule
                break
        targets: list[Target] = []
        problems: list[str] = []
        for endpoint in entry.endpoints:
            text = render_image(endpoint, repository, ref)
            try:
                new_ref = parse_image(text)
            except InvalidReference as exc:
                problems.append(f"{endpoint.name}: {exc}")
                continue
            if new_ref.registry != endpoint.registry or (
                endpoint.registry.host == DOCKER_HUB and new_ref.repository != endpoint.repository_for(repository)
            ):
                problems.append(f"{endpoint.name}: {text!r} would not name that endpoint")
                continue
            targets.append(Target(endpoint=endpoint, ref=new_ref, image=text, rewrite=rewrite))
        if not targets:
            reason = f"mirror {entry.key}: no usable endpoint ({'; '.join(problems)})"
            return MirrorDecision(image, ref, entry, (), reason, tuple(problems))
        if targets[0].image == image:
            return MirrorDecision(image, ref, None, (), f"mirror {entry.key} names the image as written")
        return MirrorDecision(image, ref, entry, tuple(targets), targets[0].explain(ref, entry.key), tuple(problems))


def describe_mirrors(mirrors: Mapping[str, Mirror]) -> list[str]:
    """One line per entry, for ``validate``: where its images go and how."""
    lines = []
    for key, mirror in mirrors.items():
        text = f"mirror {key} -> {', '.join(mirror.endpoint)}"
        if mirror.rewrite:
            text += "; rewrite " + ", ".join(f"{p} -> {r}" for p, r in mirror.rewrite.items())
        text += f"; check {'on' if mirror.check else 'off'}, fallback {mirror.fallback}"
        lines.append(text)
    return lines
