"""Logging: structured JSON (or text) with one redaction point for secret material.

The code never formats credentials into messages in the first place; this module is the
safety net behind that rule. Every credential the process reads is registered with
:func:`register_secret` (by the code that decodes it), and every log record, warning and
error text that leaves the process passes through :func:`redact`, which replaces those
values (and their base64 forms) and anything shaped like a docker-config credential
field. One place to redact means one place to audit.
"""

from __future__ import annotations

import base64
import logging
import re
import sys
import threading
from typing import Any

import orjson

REDACTED = "[REDACTED]"

_FIELD_RE = re.compile(
    r"""(?P<key>["']?(?:auth|password|identitytoken|registrytoken|token|\.dockerconfigjson|\.dockercfg)["']?\s*[:=]\s*)"""
    r"""(?P<value>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|[^\s,}]+)""",
    re.IGNORECASE,
)
_MIN_SECRET_LENGTH = 4


class _SecretRegistry:
    """Known secret values, longest first, so a value is never half-replaced."""

    def __init__(self) -> None:
        self._values: set[str] = set()
        self._ordered: list[str] = []
        self._lock = threading.Lock()

    def add(self, value: str) -> None:
        if len(value) < _MIN_SECRET_LENGTH or value in self._values:
            return
        with self._lock:
            forms = {value, base64.b64encode(value.encode()).decode()}
            # Each line of a multi-line secret (a JSON key file) is a secret too.
            forms.update(line.strip() for line in value.splitlines() if len(line.strip()) >= 12)
            self._values.update(forms)
            self._ordered = sorted(self._values, key=len, reverse=True)

    def scrub(self, text: str) -> str:
        for value in self._ordered:
            if value in text:
                text = text.replace(value, REDACTED)
        return text


_registry = _SecretRegistry()


def register_secret(value: str | bytes) -> None:
    """Remember a credential so that it can never appear in a log line or a message."""
    if isinstance(value, bytes):
        try:
            value = value.decode()
        except UnicodeDecodeError:
            return
    _registry.add(value)


def redact(text: str) -> str:
    """Remove registered secrets and credential-shaped fields from ``text``."""
    text = _registry.scrub(text)
    return _FIELD_RE.sub(lambda m: m.group("key") + REDACTED, text)


class RedactingFilter(logging.Filter):
    """Renders each record's message once, redacted, so no formatter sees raw arguments."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        record.msg = redact(message)
        record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


_STANDARD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "color_message"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                payload[key] = redact(str(value)) if not isinstance(value, int | float | bool) else value
        if record.exc_text:
            payload["exception"] = record.exc_text
        return orjson.dumps(payload, default=str).decode()


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extras = {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS and not k.startswith("_")}
        if extras:
            text += " " + " ".join(f"{k}={redact(str(v))}" for k, v in extras.items())
        return text


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time of the record, not at set-up.

    A handler bound to the stream object of the moment breaks ("I/O operation on closed
    file") when that object is swapped and closed later, as test runners and embedding
    programs do; the process's real stderr is unaffected either way.
    """

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        del value


def configure(*, level: str = "INFO", fmt: str = "json") -> None:
    """Route all logging (ours, uvicorn's, the Kubernetes client's) through the redactor."""
    handler = _StderrHandler()
    handler.addFilter(RedactingFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    # The Kubernetes client logs request and response bodies at DEBUG: Secrets included.
    logging.getLogger("kubernetes").setLevel(max(logging.INFO, root.level))
    logging.getLogger("urllib3").setLevel(max(logging.INFO, root.level))
