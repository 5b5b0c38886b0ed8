"""The live policy: re-read by content, a bad one never replaces the last good one, listeners hear it all."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

import pytest

from tests.builders import eventually
from webhook.policy.holder import PolicyHolder
from webhook.policy.matching import load_policy

GOOD = "rules: [{name: hub, registries: [docker.io], secret: hub-pull}]\n"
OTHER = "rules: [{name: quay, registries: [quay.io], secret: quay-pull}]\n"
BAD = "rules: [{name: hub, registries: [docker.io], secrets: typo}]\n"


def secrets(holder: PolicyHolder) -> list[str]:
    return [rule.secret for rule in holder.current().policy.rules]


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(GOOD)
    return path


def test_unchanged_content_is_not_a_reload(policy_file: Path) -> None:
    holder = PolicyHolder.from_file(policy_file)
    heard: list[tuple[bool, list[str]]] = []
    holder.listeners.append(lambda accepted, errors: heard.append((accepted, errors)))
    policy_file.write_text(GOOD)  # rewritten, same bytes
    assert holder.check() is None
    assert heard == []


def test_a_changed_file_is_taken_and_a_bad_one_rejected(policy_file: Path) -> None:
    holder = PolicyHolder.from_file(policy_file)
    heard: list[tuple[bool, list[str]]] = []
    holder.listeners.append(lambda accepted, errors: heard.append((accepted, errors)))

    policy_file.write_text(OTHER)
    assert holder.check() is True
    assert secrets(holder) == ["quay-pull"]

    policy_file.write_text(BAD)
    assert holder.check() is False
    assert secrets(holder) == ["quay-pull"]  # the last good one keeps serving
    assert holder.check() is None  # the same bad bytes are not re-reported
    assert heard[0] == (True, [])
    assert heard[1][0] is False
    assert any("rules[0].secrets: unknown field" in e for e in heard[1][1])
    assert len(heard) == 2


def test_a_kubelet_style_symlink_swap_is_seen(tmp_path: Path) -> None:
    """A ConfigMap volume: ``policy.yaml -> ..data/policy.yaml``, ``..data`` re-pointed atomically."""
    for name, text in (("v1", GOOD), ("v2", OTHER)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "policy.yaml").write_text(text)
    os.symlink("v1", tmp_path / "..data")
    os.symlink("..data/policy.yaml", tmp_path / "policy.yaml")
    holder = PolicyHolder.from_file(tmp_path / "policy.yaml")
    os.symlink("v2", tmp_path / "..data_tmp")
    os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
    assert holder.check() is True
    assert secrets(holder) == ["quay-pull"]


def test_an_unreadable_file_keeps_the_current_policy(policy_file: Path) -> None:
    holder = PolicyHolder.from_file(policy_file)
    policy_file.unlink()
    assert holder.check() is None
    assert secrets(holder) == ["hub-pull"]


def test_a_failing_listener_does_not_stop_the_others(policy_file: Path) -> None:
    holder = PolicyHolder.from_file(policy_file)
    heard: list[bool] = []

    def broken(accepted: bool, errors: list[str]) -> None:
        raise RuntimeError("listener bug")

    holder.listeners += [broken, lambda accepted, errors: heard.append(accepted)]
    policy_file.write_text(OTHER)
    assert holder.check() is True
    assert heard == [True]


def test_a_holder_without_a_file_only_changes_by_replace() -> None:
    holder = PolicyHolder(load_policy(GOOD))
    assert holder.check() is None
    holder.replace(load_policy(OTHER))
    assert secrets(holder) == ["quay-pull"]


def test_an_invalid_first_policy_is_fatal(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(BAD)
    with pytest.raises(ValueError, match="unknown field"):
        PolicyHolder.from_file(path)


async def test_watch_polls_the_file(policy_file: Path) -> None:
    holder = PolicyHolder.from_file(policy_file)
    task = asyncio.create_task(holder.watch(interval=0.01))
    try:
        policy_file.write_text(OTHER)
        await eventually(lambda: secrets(holder) == ["quay-pull"])
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
