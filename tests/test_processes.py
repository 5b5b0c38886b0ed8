"""The suites' port picker: ports outside the kernel's ephemeral range, bindable, never given twice."""

from __future__ import annotations

import random
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.processes import LOOPBACK, PortPicker, ephemeral_range, free_port


class Scripted(random.Random):
    """A Random whose randint answers a fixed list in turn: which port the picker tries is the test's to say."""

    def __init__(self, answers: list[int]) -> None:
        super().__init__(0)
        self.answers: Iterator[int] = iter(answers)

    def randint(self, a: int, b: int) -> int:
        return next(self.answers)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("32768\t60999\n", (32768, 60999)),
        ("40000 50000", (40000, 50000)),
        ("garbled", (32768, 60999)),
        (None, (32768, 60999)),
    ],
    ids=["linux-default", "narrowed", "garbled-file", "no-file"],
)
def test_the_ephemeral_range_is_read_from_the_kernel_or_defaults_to_linux(
    tmp_path: Path, text: str | None, expected: tuple[int, int]
) -> None:
    path = tmp_path / "ip_local_port_range"
    if text is not None:
        path.write_text(text)
    assert ephemeral_range(path) == expected


def test_free_ports_are_below_the_ephemeral_range_bindable_and_never_repeated() -> None:
    low, _ = ephemeral_range()
    ports = [free_port() for _ in range(500)]
    assert len(set(ports)) == len(ports)
    if low > 10200:  # room below the range on this machine: none is one the kernel hands out by itself
        assert all(port < low for port in ports)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, ports[-1]))


def test_a_port_something_listens_on_is_skipped() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind((LOOPBACK, free_port()))
        held.listen()
        taken = int(held.getsockname()[1])
        spare = free_port()
        picker = PortPicker(low=0, high=1000, rng=Scripted([taken, spare]))
        assert picker.pick() == spare


def test_a_port_already_given_is_not_given_again() -> None:
    first, second = free_port(), free_port()
    picker = PortPicker(low=0, high=1000, rng=Scripted([first, first, second]))
    assert picker.pick() == first
    assert picker.pick() == second


def test_without_room_below_the_ephemeral_range_the_kernel_chooses() -> None:
    picker = PortPicker(low=20000, high=20010, rng=Scripted([]))  # Scripted([]) would raise if asked
    port = picker.pick(attempts=200)
    assert port > 0
    assert port in picker.given
