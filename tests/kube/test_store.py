"""The Store: objects by key, filled by lists and watch events, changes reported once each."""

from __future__ import annotations

from typing import Any

import pytest

from webhook.kube.objects import Key, KubeObject
from webhook.kube.store import Store


def secret(namespace: str, name: str, version: str = "1") -> KubeObject:
    return {"metadata": {"namespace": namespace, "name": name, "resourceVersion": version}, "data": {"k": "dg=="}}


def version(obj: KubeObject | None) -> str | None:
    return None if obj is None else str(obj["metadata"]["resourceVersion"])


class Changes:
    """An ``on_change`` that remembers ``(key, version before, version after)``."""

    def __init__(self) -> None:
        self.seen: list[tuple[Key, str | None, str | None]] = []

    def __call__(self, key: Key, before: KubeObject | None, after: KubeObject | None) -> None:
        self.seen.append((key, version(before), version(after)))


def test_a_list_replaces_everything_and_reports_only_the_differences() -> None:
    changes = Changes()
    store = Store(on_change=changes)
    store.replace([secret("a", "x"), secret("b", "x")])
    assert store.synced.is_set()
    changes.seen.clear()

    store.replace([secret("a", "x"), secret("b", "x", "2"), secret("c", "x")])

    assert sorted(changes.seen) == [(("b", "x"), "1", "2"), (("c", "x"), None, "1")]
    store.replace([secret("c", "x")])
    assert sorted(changes.seen[2:]) == [(("a", "x"), "1", None), (("b", "x"), "2", None)]
    assert [key for key, _ in store.items()] == [("c", "x")]


def test_watch_events_add_modify_and_delete() -> None:
    changes = Changes()
    store = Store(on_change=changes)
    store.apply("ADDED", secret("a", "x"))
    store.apply("MODIFIED", secret("a", "x"))  # the same object again: no change
    store.apply("MODIFIED", secret("a", "x", "2"))
    assert store.get(("a", "x")) == secret("a", "x", "2")
    store.apply("DELETED", secret("a", "x", "2"))
    assert store.get(("a", "x")) is None
    assert changes.seen == [(("a", "x"), None, "1"), (("a", "x"), "1", "2"), (("a", "x"), "2", None)]


def test_put_and_forget_write_through_ahead_of_the_watch() -> None:
    store = Store()
    assert store.put(secret("a", "x"), since=store.mark())
    assert store.get(("a", "x")) == secret("a", "x")
    assert store.forget(("a", "x"), since=store.mark())
    assert store.get(("a", "x")) is None


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        ([("MODIFIED", "2"), ("DELETED", "3")], None),
        ([("MODIFIED", "2"), ("MODIFIED", "3")], "3"),
        ([("DELETED", "2"), ("ADDED", "3")], "3"),
    ],
    ids=["own-event-then-deleted", "own-event-then-changed-again", "deleted-and-recreated"],
)
def test_a_write_through_never_overwrites_what_the_watch_showed_after_the_call_began(
    events: list[tuple[str, str]], expected: str | None
) -> None:
    """The answer to our write (version 2) comes back after the watch has moved on: the watch wins."""
    store = Store()
    store.apply("ADDED", secret("a", "x"))
    since = store.mark()  # the write starts
    for event_type, rv in events:
        store.apply(event_type, secret("a", "x", rv))
    assert not store.put(secret("a", "x", "2"), since=since)  # its answer arrives late
    assert version(store.get(("a", "x"))) == expected


def test_a_late_forget_does_not_remove_a_recreated_object() -> None:
    store = Store()
    store.apply("ADDED", secret("a", "x"))
    since = store.mark()
    store.apply("DELETED", secret("a", "x", "2"))
    store.apply("ADDED", secret("a", "x", "3"))
    assert not store.forget(("a", "x"), since=since)
    assert version(store.get(("a", "x"))) == "3"


def test_a_mark_of_another_store_or_of_before_a_list_does_not_count() -> None:
    store, other = Store(), Store()
    assert not store.put(secret("a", "x"), since=other.mark())
    since = store.mark()
    store.replace([secret("b", "y")])
    assert not store.put(secret("a", "x"), since=since)
    assert store.get(("a", "x")) is None


def test_only_the_selected_name_is_kept_whatever_the_server_sends() -> None:
    store = Store(only_name="quay-pull")
    store.replace([secret("a", "quay-pull"), secret("a", "db-password")])
    store.apply("ADDED", secret("b", "db-password"))
    assert [key for key, _ in store.items()] == [("a", "quay-pull")]


def test_only_the_slim_form_is_kept() -> None:
    def slim(obj: KubeObject) -> KubeObject:
        return {"metadata": obj["metadata"]}

    store = Store(slim=slim)
    store.replace([secret("a", "x")])
    store.apply("ADDED", secret("b", "x"))
    assert all("data" not in obj for _, obj in store.items())


def test_a_failing_change_handler_does_not_break_the_store() -> None:
    def broken(*args: Any) -> None:
        raise RuntimeError("handler bug")

    store = Store(on_change=broken)
    store.replace([secret("a", "x")])
    store.apply("MODIFIED", secret("a", "x", "2"))
    assert store.get(("a", "x")) == secret("a", "x", "2")
