"""The docker credential-helper protocol, client side: ``docker-credential-<name> get``.

On Docker Desktop, Rancher Desktop, minikube and most Linux desktops the password is not in
``config.json`` at all: ``credsStore`` (every registry) or ``credHelpers`` (one registry)
names a helper program that keeps it in the OS keychain, ``pass``, ``secretservice`` or a
cloud provider. The protocol (github.com/docker/docker-credential-helpers) is tiny: run
``docker-credential-<name> get``, write the server URL to stdin, read
``{"ServerURL", "Username", "Secret"}`` from stdout; a ``Username`` of ``<token>`` means the
``Secret`` is an identity token, not a password. On failure the helper exits non-zero
with its error text on stdout; ``credentials not found in native keychain`` is "no such
entry", anything else is a real failure (a locked keychain, a missing GPG key).

The credential is registered with the log redactor as soon as it is read, and errors
quote the helper's message only after redaction and truncation: a helper's error text is
not supposed to hold the secret, but this code does not rely on it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field

from webhook.observability.logs import redact, register_secret

NOT_FOUND_MESSAGE = "credentials not found in native keychain"
TOKEN_USERNAME = "<token>"
TIMEOUT = 30.0


class CredentialHelperError(Exception):
    """A helper that failed (not installed, crashed, locked, bad output); the message names it and why."""

    def __init__(self, helper: str, reason: str) -> None:
        self.helper = helper
        self.reason = reason
        super().__init__(f"credential helper docker-credential-{helper}: {reason}")


@dataclass(frozen=True, slots=True)
class HelperCredential:
    """What a helper returned. ``identity_token`` is true for the ``<token>`` username convention."""

    server_url: str
    username: str
    secret: str = field(repr=False)

    @property
    def identity_token(self) -> bool:
        return self.username == TOKEN_USERNAME


def _message(raw: bytes) -> str:
    text = raw.decode("utf-8", "replace").strip().splitlines()
    first = text[0] if text else "(no message)"
    first = redact(first)
    return first if len(first) <= 200 else first[:197] + "..."


def helper_get(
    helper: str, server_url: str, *, env: Mapping[str, str] | None = None, timeout: float = TIMEOUT
) -> HelperCredential | None:
    """Ask ``docker-credential-<helper>`` for ``server_url``; ``None`` when it has no entry for it."""
    program = f"docker-credential-{helper}"
    environment = dict(os.environ if env is None else env)
    path = shutil.which(program, path=environment.get("PATH"))
    if path is None:
        raise CredentialHelperError(helper, f"{program} not found on PATH")
    try:
        result = subprocess.run(
            [path, "get"],
            input=server_url.encode(),
            capture_output=True,
            env=environment,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise CredentialHelperError(helper, f"no answer within {timeout:g}s (waiting for a passphrase?)") from None
    except OSError as exc:
        raise CredentialHelperError(helper, f"cannot run {path}: {exc.strerror}") from None
    if result.returncode != 0:
        message = _message(result.stdout or result.stderr)
        if NOT_FOUND_MESSAGE in message:
            return None
        raise CredentialHelperError(helper, f"'get {server_url}' exited with code {result.returncode}: {message}")
    try:
        answer = json.loads(result.stdout)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CredentialHelperError(helper, f"'get {server_url}' printed no JSON") from None
    if not isinstance(answer, dict):
        raise CredentialHelperError(helper, f"'get {server_url}' printed no JSON object")
    secret = answer.get("Secret")
    username = answer.get("Username")
    if isinstance(secret, str):
        register_secret(secret)
    if not isinstance(secret, str) or not isinstance(username, str):
        raise CredentialHelperError(helper, f"'get {server_url}' answer lacks Username or Secret")
    if not secret:
        return None
    return HelperCredential(server_url=str(answer.get("ServerURL") or server_url), username=username, secret=secret)
