"""The status a user reads on the policy ConfigMap (webhook.policy.status): pure, table-tested."""

from __future__ import annotations

import pytest

from webhook.policy import status as st

OK = st.accepted("sha256:aaaaaaaaaaaa", "41", 3, checked_at="2026-12-01T21:00:00Z")
BAD = st.rejected(
    "sha256:bbbbbbbbbbbb",
    "42",
    "sha256:aaaaaaaaaaaa",
    ["missing permission to get Secrets named 'x'", "second problem"],
    checked_at="2026-12-01T21:00:01Z",
)


def test_digest_is_the_content_version() -> None:
    assert st.digest("rules: []\n") == st.digest(b"rules: []\n")
    assert st.digest("rules: []\n") != st.digest("rules: []\n\n")
    assert st.digest("").startswith("sha256:")
    assert len(st.digest("x")) == len("sha256:") + 12


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        pytest.param(
            OK,
            {
                st.STATUS: "Accepted",
                st.VERSION: "sha256:aaaaaaaaaaaa (resourceVersion 41)",
                st.SERVING: "sha256:aaaaaaaaaaaa",
                st.CHECKED_AT: "2026-12-01T21:00:00Z",
                st.MESSAGE: "3 rule(s), all permitted",
            },
            id="accepted",
        ),
        pytest.param(
            BAD,
            {
                st.STATUS: "Rejected",
                st.VERSION: "sha256:bbbbbbbbbbbb (resourceVersion 42)",
                st.SERVING: "sha256:aaaaaaaaaaaa",
                st.CHECKED_AT: "2026-12-01T21:00:01Z",
                st.MESSAGE: "missing permission to get Secrets named 'x' (and 1 more: see the Events)",
            },
            id="rejected-first-error-first",
        ),
    ],
)
def test_annotations(status: st.PolicyStatus, expected: dict[str, str]) -> None:
    assert status.annotations() == expected


@pytest.mark.parametrize(
    ("status", "kind", "reason", "words"),
    [
        pytest.param(OK, "Normal", "PolicyAccepted", ["sha256:aaaaaaaaaaaa", "3 rule(s)"], id="accepted"),
        pytest.param(
            BAD,
            "Warning",
            "PolicyRejected",
            ["sha256:bbbbbbbbbbbb", "still serving sha256:aaaaaaaaaaaa", "named 'x'", "second problem"],
            id="rejected-all-errors",
        ),
        pytest.param(
            st.rejected("sha256:cccccccccccc", "", "", ["bad"]), "Warning", "PolicyRejected", ["nothing"], id="none-yet"
        ),
        pytest.param(
            st.accepted("sha256:dddddddddddd", "1", 1, warnings=["copies of 'old' await cleanup"]),
            "Normal",
            "PolicyAccepted",
            ["await cleanup"],
            id="accepted-with-warning",
        ),
    ],
)
def test_event(status: st.PolicyStatus, kind: str, reason: str, words: list[str]) -> None:
    got_kind, got_reason, message = status.event()
    assert (got_kind, got_reason) == (kind, reason)
    for word in words:
        assert word in message


@pytest.mark.parametrize(
    ("live", "status", "write"),
    [
        pytest.param(None, OK, True, id="nothing-written-yet"),
        pytest.param(OK.annotations(), OK, False, id="same"),
        pytest.param({**OK.annotations(), st.CHECKED_AT: "later"}, OK, False, id="only-the-time-differs"),
        pytest.param(OK.annotations(), BAD, True, id="outcome-changed"),
        pytest.param({**OK.annotations(), "other": "kept"}, OK, False, id="foreign-annotations-ignored"),
        pytest.param({k: v for k, v in OK.annotations().items() if k != st.MESSAGE}, OK, True, id="one-removed"),
    ],
)
def test_needs_write(live: dict[str, str] | None, status: st.PolicyStatus, write: bool) -> None:
    assert st.needs_write(live, status) is write


@pytest.mark.parametrize(
    ("live", "expected"),
    [
        pytest.param(None, None, id="none"),
        pytest.param({}, None, id="empty"),
        pytest.param(OK.annotations(), ("Accepted", "sha256:aaaaaaaaaaaa"), id="accepted"),
        pytest.param(BAD.annotations(), ("Rejected", "sha256:bbbbbbbbbbbb"), id="rejected"),
    ],
)
def test_written(live: dict[str, str] | None, expected: tuple[str, str] | None) -> None:
    assert st.written(live) == expected


def test_annotation_patch_is_resource_version_guarded_and_annotations_only() -> None:
    patch = st.annotation_patch(OK, "41")
    assert set(patch) == {"metadata"}
    assert patch["metadata"] == {"annotations": OK.annotations(), "resourceVersion": "41"}
    assert st.annotation_patch(OK, "") == {"metadata": {"annotations": OK.annotations()}}


def test_a_long_message_is_bounded() -> None:
    long = st.rejected("sha256:eeeeeeeeeeee", "1", "", ["x" * 5000])
    assert len(long.annotations()[st.MESSAGE]) <= st.MESSAGE_LIMIT
