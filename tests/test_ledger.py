"""The ownership ledger's logic (webhook.secrets.ledger): pure, table-tested."""

from __future__ import annotations

import json

import pytest

from webhook.secrets import ledger as lg

A, B, C = ("team-a", "gar-pull"), ("team-b", "gar-pull"), ("team-a", "old-pull")


@pytest.mark.parametrize(
    ("start", "changes", "copies", "pending"),
    [
        pytest.param(lg.Ledger(), [lg.copied([A, C])], {A, C}, set(), id="copy"),
        pytest.param(
            lg.Ledger(copies=frozenset({A, B, C})), [lg.observe("gar-pull", [B])], {B, C}, set(), id="observe"
        ),
        pytest.param(lg.Ledger(copies=frozenset({A, C})), [lg.observe("old-pull", [])], {A}, set(), id="observe-none"),
        pytest.param(lg.Ledger(), [lg.observe("gar-pull", [A, C])], {A}, set(), id="observe-ignores-other-names"),
        pytest.param(lg.Ledger(), [lg.owe([A]), lg.owe([B])], set(), {A, B}, id="owe"),
        pytest.param(lg.Ledger(pending=frozenset({A, B})), [lg.settle([A])], set(), {B}, id="settle"),
        pytest.param(lg.Ledger(), [lg.owe([A]), lg.settle([A])], set(), set(), id="owe-then-settle"),
        pytest.param(lg.Ledger(), [lg.settle([A])], set(), set(), id="settle-unknown"),
    ],
)
def test_apply(start: lg.Ledger, changes: list[lg.Change], copies: set[lg.Key], pending: set[lg.Key]) -> None:
    result = lg.apply(start, changes)
    assert result.copies == copies
    assert result.pending == pending


def test_changes_reapply_to_a_ledger_someone_else_wrote_meanwhile() -> None:
    """The point of a journal: a 409 re-reads, and our changes land on top of theirs."""
    mine = [lg.owe([A])]
    theirs = lg.apply(lg.Ledger(), [lg.copied([B]), lg.owe([C])])
    merged = lg.apply(theirs, mine)
    assert merged.copies == {B}
    assert merged.pending == {A, C}


def test_names_cover_copies_and_debts() -> None:
    ledger = lg.Ledger(copies=frozenset({A, B}), pending=frozenset({C}))
    assert ledger.names == ["gar-pull", "old-pull"]
    assert ledger.copies_named("gar-pull") == {A, B}


def test_encode_decode_round_trip_and_what_the_chart_reads() -> None:
    ledger = lg.apply(lg.Ledger(), [lg.copied([A, B]), lg.owe([C]), lg.remember_policy("sha256:abc", "rules: []\n")])
    data = ledger.encode()
    assert json.loads(data["names"]) == ["gar-pull", "old-pull"]  # _ledger.tpl: fromJsonArray
    assert json.loads(data["copies"]) == {"gar-pull": ["team-a", "team-b"]}
    assert lg.Ledger.decode(data) == ledger
    assert lg.Ledger.decode(lg.Ledger().encode()) == lg.Ledger()


@pytest.mark.parametrize(
    ("data", "copies", "pending"),
    [
        pytest.param(None, set(), set(), id="none"),
        pytest.param({"copies": "{not json", "pending": '[["team-a","gar-pull"]]'}, set(), {A}, id="bad-copies"),
        pytest.param({"copies": '{"gar-pull":["team-a"]}', "pending": "nope"}, {A}, set(), id="bad-pending"),
        pytest.param(
            {"copies": '["wrong shape"]', "pending": '[["only-one"], 3, ["", "x"]]'}, set(), set(), id="shapes"
        ),
        pytest.param({"copies": '{"gar-pull":["team-a", 7, ""]}'}, {A}, set(), id="bad-items-skipped"),
    ],
)
def test_decode_is_lenient(data: dict[str, str] | None, copies: set[lg.Key], pending: set[lg.Key]) -> None:
    ledger = lg.Ledger.decode(data)
    assert ledger.copies == copies
    assert ledger.pending == pending


def test_unknown_operation_is_a_bug() -> None:
    with pytest.raises(ValueError, match="unknown ledger operation"):
        lg.apply(lg.Ledger(), [lg.Change("frobnicate")])


def test_journal_take_and_restore_keep_order() -> None:
    journal = lg.Journal()
    journal.add(lg.owe([A]))
    taken = journal.take()
    assert not journal
    journal.add(lg.settle([A]))
    journal.restore(taken)
    assert [c.op for c in journal.changes] == ["owe", "settle"]


# --------------------------------------------------------------------------- fail-open recovery's budget

RS, JOB = "rs-uid-1", "job-uid-2"
T = 1_764_547_200  # 2025-12-01T00:00:00Z
HOUR = 3600.0


def deleted(owner: str, at: float) -> lg.Change:
    return lg.pod_deleted(owner, at, window=HOUR, keep=3)


@pytest.mark.parametrize(
    ("start", "changes", "expected"),
    [
        pytest.param((), [deleted(RS, T)], [(RS, T)], id="first"),
        pytest.param((), [deleted(RS, T + 0.9)], [(RS, T)], id="whole-seconds"),
        pytest.param(((RS, T),), [deleted(RS, T)], [(RS, T), (RS, T)], id="two-pods-in-one-second-are-two-deletions"),
        pytest.param(((RS, T - 3600),), [deleted(RS, T)], [(RS, T)], id="out-of-the-window-is-pruned"),
        pytest.param(((RS, T - 3599),), [deleted(RS, T)], [(RS, T - 3599), (RS, T)], id="just-within-is-kept"),
        pytest.param(
            ((JOB, T - 4000), (JOB, T - 10)), [deleted(RS, T)], [(JOB, T - 10), (RS, T)], id="prunes-every-controller"
        ),
        pytest.param(
            ((RS, T - 30), (RS, T - 20), (RS, T - 10)),
            [deleted(RS, T)],
            [(RS, T - 20), (RS, T - 10), (RS, T)],
            id="at-most-max-per-owner-the-newest-kept",
        ),
        pytest.param(((JOB, T + 10_000),), [deleted(RS, T)], [(RS, T)], id="far-future-is-a-clock-gone-wrong"),
        pytest.param(((JOB, T + 5),), [deleted(RS, T)], [(JOB, T + 5), (RS, T)], id="skewed-a-little-is-kept"),
        pytest.param(((RS, T - 10),), [deleted(RS, T), lg.undo_deleted(RS, T)], [(RS, T - 10)], id="undo"),
        pytest.param(((RS, T), (RS, T)), [lg.undo_deleted(RS, T)], [(RS, T)], id="undo-takes-back-one-entry-only"),
        pytest.param(((RS, T),), [lg.undo_deleted(RS, T - 1)], [(RS, T)], id="undo-unknown-is-a-no-op"),
        pytest.param(((RS, T - 4000), (JOB, T - 100)), [lg.prune_deletions(T, HOUR)], [(JOB, T - 100)], id="prune"),
    ],
)
def test_deletions_apply(start: tuple[lg.Deletion, ...], changes: list[lg.Change], expected: list[lg.Deletion]) -> None:
    result = lg.apply(lg.Ledger(deletions=start, copies=frozenset({A})), changes)
    assert list(result.deletions) == sorted(expected)
    assert result.copies == {A}  # nothing else touched


def test_deletions_stay_bounded_in_all() -> None:
    """Many controllers within one window (a cluster-wide outage): the ConfigMap must still fit in 1 MiB."""
    ledger = lg.Ledger()
    for i in range(lg.MAX_DELETIONS + 50):
        ledger = lg.apply(ledger, [deleted(f"{i:08d}-0000-0000-0000-000000000000", T + i / 100)])
    assert len(ledger.deletions) == lg.MAX_DELETIONS
    assert ledger.deletions_of("00000000-0000-0000-0000-000000000000") == ()  # the oldest went first
    assert len(ledger.deletions_of(f"{lg.MAX_DELETIONS + 49:08d}-0000-0000-0000-000000000000")) == 1
    assert len(json.dumps(ledger.encode())) < 256 * 1024


def test_deletions_reapply_to_a_ledger_another_replica_wrote_meanwhile() -> None:
    theirs = lg.apply(lg.Ledger(), [deleted(RS, T - 60), lg.copied([B])])
    merged = lg.apply(theirs, [deleted(RS, T)])
    assert merged.deletions_of(RS) == (T - 60, T)
    assert merged.copies == {B}


def test_deletions_encode_decode_and_an_old_ledger() -> None:
    ledger = lg.apply(lg.Ledger(), [lg.copied([A]), deleted(RS, T - 60), deleted(RS, T), deleted(JOB, T)])
    data = ledger.encode()
    assert json.loads(data["recovery-deletions"]) == {JOB: [T], RS: [T - 60, T]}
    assert lg.Ledger.decode(data) == ledger
    assert ledger.deletions_of(RS) == (T - 60, T)
    # Names only: nothing in it but the controllers' uids and times.
    assert set(data) == {"copies", "pending", "names", "recovery-deletions"}
    # Written before this key existed: decodes, without deletions, the rest intact.
    old = {k: v for k, v in data.items() if k != "recovery-deletions"}
    assert lg.Ledger.decode(old) == lg.Ledger(copies=frozenset({A}))
    # Emptied by pruning, the key is still written (a merge patch must replace the old value).
    assert lg.apply(ledger, [lg.prune_deletions(T + 2 * HOUR, HOUR)]).encode()["recovery-deletions"] == "{}"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param("{not json", (), id="unreadable"),
        pytest.param('["wrong shape"]', (), id="not-an-object"),
        pytest.param('{"rs":"nope"}', (), id="times-not-a-list"),
        pytest.param('{"rs":[1.5, "2", true, null, NaN, Infinity, 7]}', (("rs", 1), ("rs", 7)), id="bad-times-skipped"),
        pytest.param('{"":[5]}', (), id="no-uid"),
    ],
)
def test_deletions_decode_leniently(raw: str, expected: tuple[lg.Deletion, ...]) -> None:
    ledger = lg.Ledger.decode({"copies": '{"gar-pull":["team-a"]}', "recovery-deletions": raw})
    assert ledger.deletions == expected
    assert ledger.copies == {A}
