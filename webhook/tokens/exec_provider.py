"""Any kubelet credential-provider plugin, spoken to exactly as the kubelet does.

The protocol is ``credentialprovider.kubelet.k8s.io/v1``: the kubelet writes one
``CredentialProviderRequest`` (``{"kind", "apiVersion", "image"}``) on the plugin's stdin
and reads one ``CredentialProviderResponse`` from its stdout: ``cacheKeyType`` (required:
``Image``, ``Registry`` or ``Global``), ``cacheDuration`` (optional, a Go duration; absent
or ``null`` means the provider config's ``defaultCacheDuration``; ``"0"`` means do not
cache) and ``auth``, a map from registry pattern to ``{username, password}``. The plugin
inherits the process environment plus the configured ``env`` (the kubelet merges them the
same way), and is killed if it runs past the timeout.

Here the response's lifetime is the token's: ``cacheDuration`` is the only expiry a
plugin gives, so a ``"0"`` answer is a token that expires at once and the schedule's
floor decides when to run the plugin again.

The plugin's output is never quoted in an error: it holds the credential.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from webhook.observability.logs import register_secret
from webhook.policy.images import InvalidReference, parse_registry
from webhook.policy.patterns import RegistryPattern
from webhook.tokens.base import Token
from webhook.tokens.errors import ExecPluginError, MintTimeout

API_VERSION = "credentialprovider.kubelet.k8s.io/v1"
CACHE_KEY_TYPES = ("Image", "Registry", "Global")

# Go's time.ParseDuration units; U+00B5 (micro sign) and U+03BC (Greek mu) both mean microseconds.
_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "\u00b5s": 1e-6,
    "\u03bcs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_COMPONENT = re.compile(r"(\d*)(?:\.(\d*))?([a-z\u00b5\u03bc]+)")


class DurationError(ValueError):
    """Not a Go duration string."""


def parse_go_duration(text: str) -> float:
    """Seconds in a Go ``time.Duration`` string, as ``time.ParseDuration`` reads it.

    ``"0"`` is the only unitless value; otherwise a signed sequence of decimal numbers
    each with a unit: ``"6h0m0s"``, ``"1.5h"``, ``"21.6µs"``, ``"-1m"``.
    """
    original = text
    sign = 1.0
    if text[:1] in ("+", "-"):
        sign = -1.0 if text[0] == "-" else 1.0
        text = text[1:]
    if text == "0":
        return 0.0
    if not text:
        raise DurationError(f"invalid duration {original!r}")
    total = 0.0
    position = 0
    while position < len(text):
        match = _COMPONENT.match(text, position)
        if match is None or match.end() == position:
            raise DurationError(f"invalid duration {original!r}")
        whole, fraction, unit = match.groups()
        if not whole and not fraction:
            raise DurationError(f"invalid duration {original!r}")
        if unit not in _UNITS:
            raise DurationError(f"unknown unit {unit!r} in duration {original!r}")
        total += float(f"{whole or '0'}.{fraction or '0'}") * _UNITS[unit]
        position = match.end()
    return sign * total


@dataclass(frozen=True, slots=True)
class PluginResponse:
    """A validated ``CredentialProviderResponse`` (``cache_duration`` ``None``: not given)."""

    cache_key_type: str
    cache_duration: float | None
    auth: Mapping[str, tuple[str, str]] = field(repr=False)


def parse_response(raw: bytes) -> PluginResponse:
    """Validate a plugin's stdout the way the kubelet does (without ever quoting it)."""
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ExecPluginError("the plugin's output is not JSON") from None
    if not isinstance(doc, dict):
        raise ExecPluginError("the plugin's output is not a JSON object")
    if doc.get("kind") != "CredentialProviderResponse":
        raise ExecPluginError(f"the plugin answered kind {str(doc.get('kind'))[:64]!r}, not CredentialProviderResponse")
    if doc.get("apiVersion") != API_VERSION:
        raise ExecPluginError(f"the plugin answered apiVersion {str(doc.get('apiVersion'))[:64]!r}, not {API_VERSION}")
    key_type = doc.get("cacheKeyType")
    if key_type not in CACHE_KEY_TYPES:
        raise ExecPluginError(f"the plugin's cacheKeyType must be one of {', '.join(CACHE_KEY_TYPES)}")
    duration_text = doc.get("cacheDuration")
    duration: float | None = None
    if duration_text is not None:
        if not isinstance(duration_text, str):
            raise ExecPluginError("the plugin's cacheDuration is not a duration string")
        try:
            duration = parse_go_duration(duration_text)
        except DurationError:
            raise ExecPluginError("the plugin's cacheDuration is not a Go duration") from None
    auth_doc = doc.get("auth") or {}
    if not isinstance(auth_doc, dict):
        raise ExecPluginError("the plugin's auth is not a map")
    auth: dict[str, tuple[str, str]] = {}
    for pattern, entry in auth_doc.items():
        if not isinstance(entry, dict):
            raise ExecPluginError(f"the plugin's auth entry for {str(pattern)[:253]!r} is not an object")
        username, password = entry.get("username", ""), entry.get("password", "")
        if not isinstance(username, str) or not isinstance(password, str):
            raise ExecPluginError(f"the plugin's auth entry for {str(pattern)[:253]!r} is malformed")
        register_secret(password)
        auth[str(pattern)] = (username, password)
    return PluginResponse(cache_key_type=str(key_type), cache_duration=duration, auth=auth)


def pick_auth(auth: Mapping[str, tuple[str, str]], registry: str) -> tuple[str, str] | None:
    """The entry the kubelet would use for an image on ``registry``: the most specific matching pattern."""
    try:
        target = parse_registry(registry)
    except InvalidReference:
        return None
    best: tuple[tuple[int, int], tuple[str, str]] | None = None
    for text, entry in auth.items():
        try:
            pattern = RegistryPattern.parse(text)
        except ValueError:
            continue
        if pattern.matches(target) and (best is None or pattern.specificity > best[0]):
            best = (pattern.specificity, entry)
    return None if best is None else best[1]


@dataclass
class ExecProvider:
    """Runs one plugin per mint. ``default_cache_duration`` applies when the response gives none."""

    command: Sequence[str]
    registry: str
    args: Sequence[str] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    default_cache_duration: float = 0.0
    timeout: float = 10.0
    name: str = "exec"

    def request(self) -> bytes:
        """The ``CredentialProviderRequest`` for an image on our registry (the kubelet sends the image)."""
        return json.dumps(
            {"kind": "CredentialProviderRequest", "apiVersion": API_VERSION, "image": self.registry}
        ).encode()

    def mint(self) -> Token:
        minted_at = time.time()
        stdout = self._run()
        response = parse_response(stdout)
        entry = pick_auth(response.auth, self.registry)
        if entry is None:
            raise ExecPluginError(f"the plugin returned no credential matching {self.registry}")
        duration = response.cache_duration if response.cache_duration is not None else self.default_cache_duration
        return Token(
            username=entry[0], password=entry[1], minted_at=minted_at, expires_at=minted_at + max(0.0, duration)
        )

    def _run(self) -> bytes:
        """Run the plugin in its own process group; on timeout, kill that group (by the child's PID)."""
        env = {**os.environ, **self.env}
        argv = [*self.command, *self.args]
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                start_new_session=True,
            )
        except OSError as exc:
            raise ExecPluginError(f"cannot run plugin {argv[0]}: {exc.strerror}") from None
        try:
            stdout, _stderr = proc.communicate(self.request(), timeout=self.timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            raise MintTimeout(f"plugin {argv[0]} did not answer within {self.timeout:g}s: killed") from None
        finally:
            if proc.poll() is None:
                _kill_group(proc)
        if proc.returncode != 0:
            # stderr is not quoted: a plugin may print what it was about to return.
            raise ExecPluginError(f"plugin {argv[0]} exited with status {proc.returncode}")
        return stdout


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the plugin's process group (its id is the plugin's PID), then reap it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.communicate(timeout=5)
