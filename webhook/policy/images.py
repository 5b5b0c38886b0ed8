"""Container image references, parsed and normalised the way the kubelet sees them.

The kubelet and containerd resolve an image string with the grammar of
``github.com/distribution/reference``; a webhook that parses differently would inject a
secret for one registry while the node pulls from another. So this module follows that
grammar exactly (the first path component is a registry only if it has a ``.`` or a ``:``
or is ``localhost``; Docker Hub names get ``docker.io`` and, for one component,
``library/``), and it adds the two Docker Hub aliases the registry itself answers to.

Everything here is pure and cached: the same dozen image strings come back on every Pod.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from types import MappingProxyType

DOCKER_HUB = "docker.io"
#: Hostnames that are the same registry as ``docker.io`` (the legacy index and the API host).
DOCKER_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})

_NAME_TOTAL_MAX = 255

# distribution/reference regexp.go, transcribed.
_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_IPV6 = r"\[(?:[a-fA-F0-9:]+)\]"
_HOST = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|{_IPV6})"
_PORT = r"[0-9]+"
_DOMAIN = rf"{_HOST}(?::{_PORT})?"

_PATH_RE = re.compile(rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*")
_DOMAIN_RE = re.compile(_DOMAIN)
_TAG_RE = re.compile(r"[\w][\w.-]{0,127}")
_DIGEST_RE = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}")
_ANCHORED_HEX64 = re.compile(r"[a-f0-9]{64}")
#: Known digest algorithms and the length of their hex encoding (opencontainers/go-digest).
_DIGEST_HEX_LENGTHS = MappingProxyType({"sha256": 64, "sha384": 96, "sha512": 128})


class InvalidReference(ValueError):
    """The string is not an image reference the kubelet would accept."""


@dataclass(frozen=True, slots=True)
class Registry:
    """A registry host as the kubelet's credential matching sees it.

    ``host`` is lower-cased (DNS is case-insensitive) and keeps IPv6 brackets;
    ``port`` is ``None`` when the reference names none, which is not the same as 443.
    """

    host: str
    port: int | None = None
    #: The host as written, kept only for display: ``Foo/bar`` names registry ``foo`` (DNS is
    #: case-insensitive) but must be printed as ``Foo`` to still read as a registry.
    written: str | None = field(default=None, compare=False, repr=False)

    def __str__(self) -> str:
        host = self.host
        if self.written and "." not in host and host != "localhost" and self.port is None:
            host = self.written
        return host if self.port is None else f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class ImageRef:
    """A fully normalised image reference."""

    registry: Registry
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """``registry/repository``, the fully qualified name without tag or digest."""
        return f"{self.registry}/{self.repository}"

    def __str__(self) -> str:
        """The canonical form; a bare name gets ``:latest`` as the runtime would pull it."""
        text = self.name
        if self.tag is not None:
            text += f":{self.tag}"
        elif self.digest is None:
            text += ":latest"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text


def parse_registry(text: str) -> Registry:
    """Parse ``host[:port]`` (IPv6 in brackets) and fold the Docker Hub aliases.

    Also used for the keys of Docker ``config.json`` files, which are often written as URLs
    (``https://index.docker.io/v1/``): a scheme and a path are dropped.
    """
    value = text.strip()
    if "://" in value:
        value = value.split("://", 1)[1]
    value = value.split("/", 1)[0]
    if not value or _DOMAIN_RE.fullmatch(value) is None:
        raise InvalidReference(f"invalid registry host {text!r}")
    written, port = _split_port(value)
    host = written.lower()
    if host in DOCKER_HUB_ALIASES and port is None:
        host = DOCKER_HUB
    return Registry(host=host, port=port, written=written if written != host else None)


def _split_port(domain: str) -> tuple[str, int | None]:
    if domain.startswith("["):
        end = domain.index("]")
        host, rest = domain[: end + 1], domain[end + 1 :]
        if not rest:
            return host, None
        return host, _port(rest[1:], domain)
    if ":" in domain:
        host, port = domain.rsplit(":", 1)
        return host, _port(port, domain)
    return domain, None


def _port(text: str, domain: str) -> int:
    port = int(text)
    if not 0 < port < 65536:
        raise InvalidReference(f"invalid port in registry {domain!r}")
    return port


def _split_domain(name: str) -> tuple[str, str]:
    """``splitDockerDomain``: decide whether the first component is a registry."""
    first, sep, rest = name.partition("/")
    if not sep or ("." not in first and ":" not in first and first != "localhost" and first.lower() == first):
        return DOCKER_HUB, name
    return first, rest


def parse_image(reference: str) -> ImageRef:
    """Parse and normalise one image reference (``ParseNormalizedNamed`` semantics).

    Raises :class:`InvalidReference` with a message fit to show a user. Not cached here:
    the admission layer's container-plan cache answers repeated Pods without parsing.
    """
    if not isinstance(reference, str) or not reference:
        raise InvalidReference("image reference is empty")
    if reference != reference.strip():
        raise InvalidReference(f"image reference {reference!r} has surrounding whitespace")
    if _ANCHORED_HEX64.fullmatch(reference):
        raise InvalidReference(
            f"invalid repository name {reference!r}: a 64-character hex string is an image ID, not a name"
        )
    remainder, digest = _split_digest(reference)
    name, tag = _split_tag(remainder)
    if not name:
        raise InvalidReference(f"image reference {reference!r} has no repository name")
    domain, path = _split_domain(name)
    if domain != DOCKER_HUB and _DOMAIN_RE.fullmatch(domain) is None:
        raise InvalidReference(f"invalid registry {domain!r} in image reference {reference!r}")
    if path.lower() != path:
        raise InvalidReference(f"repository name {path!r} must be lowercase (image {reference!r})")
    if _PATH_RE.fullmatch(path) is None:
        raise InvalidReference(f"invalid repository name {path!r} in image reference {reference!r}")
    if len(name) > _NAME_TOTAL_MAX:
        raise InvalidReference(f"repository name in {reference!r} is longer than {_NAME_TOTAL_MAX} characters")
    registry = parse_registry(domain)
    if registry.host == DOCKER_HUB and registry.port is None and "/" not in path:
        path = f"library/{path}"
    return ImageRef(registry=registry, repository=path, tag=tag, digest=digest)


def _split_digest(reference: str) -> tuple[str, str | None]:
    if "@" not in reference:
        return reference, None
    remainder, digest = reference.rsplit("@", 1)
    if "@" in remainder or _DIGEST_RE.fullmatch(digest) is None:
        raise InvalidReference(f"invalid digest {digest!r} in image reference {reference!r}")
    algorithm, encoded = digest.split(":", 1)
    expected = _DIGEST_HEX_LENGTHS.get(algorithm)
    if expected is None:
        raise InvalidReference(f"unsupported digest algorithm {algorithm!r} in image reference {reference!r}")
    if len(encoded) != expected or encoded.lower() != encoded:
        raise InvalidReference(
            f"invalid {algorithm} digest in image reference {reference!r}: expected {expected} lowercase hex characters"
        )
    return remainder, digest


def _split_tag(remainder: str) -> tuple[str, str | None]:
    # A ':' after the last '/' separates the tag; one before it belongs to a registry port.
    slash = remainder.rfind("/")
    colon = remainder.rfind(":")
    if colon <= slash:
        return remainder, None
    name, tag = remainder[:colon], remainder[colon + 1 :]
    if _TAG_RE.fullmatch(tag) is None:
        raise InvalidReference(f"invalid tag {tag!r} in image reference {remainder!r}")
    return name, tag
