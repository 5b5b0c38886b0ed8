"""Which ``auths`` entry of a pull secret the kubelet would use for an image: its keyring, transcribed.

``doctor`` must answer "would the node find a credential in this Secret for this image?"
exactly as the kubelet does, not as our own policy matcher does, because the two differ on
purpose:

* the policy (:class:`webhook.policy.patterns.RegistryPattern`) folds the Docker Hub aliases
  (``index.docker.io``, ``registry-1.docker.io``) into ``docker.io`` and has no paths;
* the kubelet's ``BasicDockerKeyring`` (``pkg/credentialprovider/keyring.go``) keeps keys
  as written, strips a scheme and a leading ``/v1/`` or ``/v2/``, matches the host label by
  label with ``filepath.Match`` globs, requires the *same* port (absent only matches absent)
  and the key's path to be a plain string prefix of the image's path; Docker Hub images
  fall back to the key ``index.docker.io`` only when no key matched.

So an entry ``registry-1.docker.io`` is kept by our filter but never used by the kubelet,
and ``registry.example.com`` never serves ``registry.example.com:5000/app``. What is reused
from the policy package is the image grammar (:func:`webhook.policy.images.parse_image`,
which yields the ``docker.io/library/nginx`` form the kubelet looks up) and the per-label
``fnmatch`` glob (the kubelet's ``filepath.Match`` on one label, which holds no ``/``).

Pure: no I/O, no logging.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass

DEFAULT_REGISTRY_HOST = "index.docker.io"


@dataclass(frozen=True, slots=True)
class KeyringKey:
    """One ``auths`` key as the kubelet indexes it."""

    server: str  # the key as written in the Secret
    key: str  # the kubelet's index key: host[:port][/path], no scheme, no /v1/ or /v2/


def keyring_key(server: str) -> str | None:
    """``BasicDockerKeyring.Add``: the index key of one ``auths`` key, ``None`` if Go's URL parser rejects it."""
    value = server if server.startswith(("https://", "http://")) else "https://" + server
    rest = value.split("://", 1)[1]
    host, slash, path = rest.partition("/")
    path = slash + path
    for separator in ("?", "#"):
        path = path.split(separator, 1)[0]
    if not host or " " in host or "@" in host:
        return None
    if path.startswith(("/v2/", "/v1/")):
        path = path[3:]
    return host + path if path and path != "/" else host


def _split(url: str) -> tuple[list[str], str, str]:
    """``ParseSchemelessURL`` + ``SplitURL``: (host labels, port, path) of a schemeless URL."""
    host, slash, path = url.partition("/")
    port = ""
    if host.startswith("["):
        end = host.find("]")
        if end != -1 and host[end + 1 : end + 2] == ":":
            host, port = host[1:end], host[end + 2 :]
    elif host.count(":") == 1:
        host, port = host.split(":")
    return host.split("."), port, slash + path


def urls_match(glob: str, target: str) -> bool:
    """``URLsMatchStr(glob, target)``: same port, same number of labels, path prefix, globs per label."""
    glob_labels, glob_port, glob_path = _split(glob)
    target_labels, target_port, target_path = _split(target)
    if glob_port != target_port or len(glob_labels) != len(target_labels):
        return False
    if not target_path.startswith(glob_path):
        return False
    return all(fnmatch.fnmatchcase(t, _go_class(g)) for g, t in zip(glob_labels, target_labels, strict=True))


def _go_class(pattern: str) -> str:
    """Go's ``filepath.Match`` negates a class with ``[^...]``, ``fnmatch`` with ``[!...]``."""
    return pattern.replace("[^", "[!")


def is_default_registry_match(image: str) -> bool:
    """``isDefaultRegistryMatch``: whether ``image`` is pulled from Docker Hub."""
    first, sep, _ = image.partition("/")
    if not first:
        return False
    if not sep or first in ("docker.io", "index.docker.io"):
        return True
    return not any(c in first for c in ".:")


def lookup(servers: Iterable[str], image: str) -> list[KeyringKey]:
    """The ``auths`` keys the kubelet tries for ``image`` (``registry/repository``), in its order.

    The kubelet sorts its index in reverse string order and returns the credentials of
    every key that matches; the container runtime tries them in that order. An empty
    result means the kubelet pulls anonymously.
    """
    index: dict[str, list[str]] = {}
    for server in servers:
        key = keyring_key(server)
        if key is not None:
            index.setdefault(key, []).append(server)
    found = [
        KeyringKey(server=server, key=key)
        for key in sorted(index, reverse=True)
        if urls_match(key, image)
        for server in index[key]
    ]
    if not found and is_default_registry_match(image) and DEFAULT_REGISTRY_HOST in index:
        found = [KeyringKey(server=server, key=DEFAULT_REGISTRY_HOST) for server in index[DEFAULT_REGISTRY_HOST]]
    return found
