"""``bench/harness.py``'s machine-wide RabbitMQ figure: the CPU the machine's nodes used
while the benchmark watched them, which never goes down when one of them exits (a
neighbour's test node stopping mid-run once made the column negative)."""

from __future__ import annotations

from types import ModuleType

import pytest

from tests.fixtures.bench_modules import load_bench


@pytest.fixture(scope="module")
def harness() -> ModuleType:
    return load_bench("harness")


def test_a_node_that_exits_keeps_what_it_used_and_a_new_one_counts_from_first_sight(
        harness: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    machine: dict[int, float] = {101: 50.0, 202: 7.0}
    monkeypatch.setattr(harness, "pids_of", lambda command: list(machine))
    monkeypatch.setattr(harness, "proc_stats", lambda pid: (machine.get(pid, 0.0), 0))
    broker = harness.Broker("shared", "t")

    start = broker.stats()[0]
    machine.update({101: 53.0, 202: 9.5})
    middle = broker.stats()[0]
    del machine[202]  # a neighbour's node stops
    machine.update({101: 54.0, 303: 400.0})  # another starts, with its own past
    end = broker.stats()[0]

    assert (start, middle, end) == (0.0, 5.5, 6.5)
