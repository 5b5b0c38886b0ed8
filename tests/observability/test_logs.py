"""Logging: one redaction point for credentials, JSON or text records, every logger routed through it."""

from __future__ import annotations

import base64
import json
import logging
import sys
from collections.abc import Iterator

import pytest

from webhook.observability.logs import (
    REDACTED,
    JsonFormatter,
    RedactingFilter,
    TextFormatter,
    configure,
    redact,
    register_secret,
)

SECRET = "logs-canary-Pa55w0rd-91c2"


def record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    made = logging.LogRecord("webhook.test", logging.WARNING, __file__, 1, msg, args, None)
    for key, value in extra.items():
        setattr(made, key, value)
    return made


def test_registered_secrets_and_their_base64_are_redacted() -> None:
    register_secret(SECRET.encode())
    encoded = base64.b64encode(SECRET.encode()).decode()
    assert redact(f"a {SECRET} b {encoded} c") == f"a {REDACTED} b {REDACTED} c"


def test_each_long_line_of_a_multi_line_secret_is_a_secret_too() -> None:
    key_file = '{\n  "private_key": "-----BEGIN-logs-test-7d1e-----"\n}'
    register_secret(key_file)
    assert '"private_key": "-----BEGIN-logs-test-7d1e-----"' not in redact(
        'one line: "private_key": "-----BEGIN-logs-test-7d1e-----"'
    )


def test_values_too_short_to_be_credentials_are_not_registered() -> None:
    register_secret("abc")
    assert redact("abc") == "abc"


def test_bytes_that_are_not_text_are_ignored() -> None:
    register_secret(b"\xff\xfe\xfd\xfc")  # must not raise
    assert redact("plain") == "plain"


@pytest.mark.parametrize(
    "text",
    [
        '{"password": "hunter2-unregistered"}',
        "auth=aHVudGVyMjp1bnJlZ2lzdGVyZWQ=",
        "'.dockerconfigjson': 'eyJhdXRocyI6e319'",
        'identitytoken: "tok-unregistered"',
    ],
)
def test_credential_shaped_fields_are_redacted_even_if_never_registered(text: str) -> None:
    redacted = redact(text)
    assert REDACTED in redacted
    assert "unregistered" not in redacted
    assert "eyJhdXRocyI6e319" not in redacted


def test_the_filter_renders_the_message_once_redacted_with_its_traceback() -> None:
    register_secret(SECRET)
    try:
        raise ValueError(f"bad {SECRET}")
    except ValueError:
        made = record("source %s failed", SECRET)
        made.exc_info = sys.exc_info()
    assert RedactingFilter().filter(made) is True
    assert made.msg == f"source {REDACTED} failed"
    assert made.args is None
    assert made.exc_info is None
    assert made.exc_text is not None
    assert "ValueError" in made.exc_text
    assert SECRET not in made.exc_text


def test_json_records_carry_extras_redacted_and_numbers_as_numbers() -> None:
    register_secret(SECRET)
    made = record("copied", namespace="team-a", attempts=3, detail=f"with {SECRET}")
    payload = json.loads(JsonFormatter().format(made))
    assert payload["level"] == "WARNING"
    assert payload["logger"] == "webhook.test"
    assert payload["message"] == "copied"
    assert payload["namespace"] == "team-a"
    assert payload["attempts"] == 3
    assert payload["detail"] == f"with {REDACTED}"


def test_text_records_end_with_their_extras() -> None:
    line = TextFormatter().format(record("copied %s", "quay-pull", namespace="team-a"))
    assert "WARNING" in line
    assert "webhook.test: copied quay-pull namespace=team-a" in line


@pytest.fixture
def restored_logging() -> Iterator[None]:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    levels = {name: logging.getLogger(name).level for name in ("kubernetes", "urllib3")}
    yield
    root.handlers[:], level = saved
    root.setLevel(level)
    for name, old in levels.items():
        logging.getLogger(name).setLevel(old)


@pytest.mark.usefixtures("restored_logging")
def test_configure_routes_everything_through_the_redactor_to_the_current_stderr(
    capsys: pytest.CaptureFixture[str],
) -> None:
    register_secret(SECRET)
    configure(level="debug", fmt="json")
    assert logging.getLogger("kubernetes").level == logging.INFO  # never the client's DEBUG bodies
    logging.getLogger("uvicorn.error").warning("leaked %s", SECRET)
    [line] = capsys.readouterr().err.splitlines()
    assert json.loads(line)["message"] == f"leaked {REDACTED}"
