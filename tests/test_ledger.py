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
