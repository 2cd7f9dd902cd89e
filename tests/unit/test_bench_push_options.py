"""``bench/push.py``'s pass options: named pairs, each key's default taken from the pass's
own delay (issue 13: ``--delays 50`` alone ran with the 0 ms pass's handlers and
pushers), and the command each pass and each figure is printed beside reads back as
the same pass."""

from __future__ import annotations

import argparse
from types import ModuleType

import pytest

from tests.fixtures.bench_modules import load_bench


@pytest.fixture(scope="module")
def push() -> ModuleType:
    return load_bench("push")


def test_a_pass_takes_the_defaults_of_its_own_delay(push: ModuleType) -> None:
    assert push.parse_pass("delay=50") == push.Pass(50, 128, 1)
    assert push.parse_pass("delay=0") == push.Pass(0, 64, 2)
    assert push.parse_pass("delay=50,pushers=2") == push.Pass(50, 128, 2)
    assert push.parse_pass(" delay=5 , concurrency=32") == push.Pass(5, 32, 1)
    assert push.legacy_passes("50", None, None) == [push.Pass(50, 128, 1)]
    assert push.legacy_passes("0,50", "32", None) == [push.Pass(0, 32, 2), push.Pass(50, 128, 1)]


def test_the_printed_option_reads_back_as_the_same_pass(push: ModuleType) -> None:
    for setting in (push.Pass(0, 64, 2), push.Pass(50, 128, 1), push.Pass(7, 3, 4)):
        flag, value = setting.option().split(" ")
        assert flag == "--pass" and push.parse_pass(value) == setting


@pytest.mark.parametrize(("text", "says"), [
    ("concurrency=128", "delay=… is required"),
    ("delay=50,handlers=3", "'handlers=3' is not one of"),
    ("delay=fast", "delay must be a whole number, not 'fast'"),
    ("delay=5,delay=6", "delay is given twice"),
    ("delay=0,pushers=0", "pushers is too small"),
    ("delay=-1", "delay is too small"),
])
def test_a_bad_pass_is_refused_with_what_is_wrong(push: ModuleType, text: str, says: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="--pass") as caught:
        push.parse_pass(text)
    assert says in str(caught.value)


def test_scaling_sizes(push: ModuleType) -> None:
    assert push.parse_sizes("2000,10000") == [2000, 10000]
    for bad in ("2000,x", "50", ""):
        with pytest.raises(argparse.ArgumentTypeError, match="--scaling"):
            push.parse_sizes(bad)


def test_the_command_a_figure_is_printed_beside_runs_the_same_pass_again(
        push: ModuleType) -> None:
    setting = push.Pass(50, 128, 1)
    command = push.reproduce(2000, setting, "shared")
    assert command == (".venv/bin/python bench/push.py --records 2000 "
                       "--pass delay=50,concurrency=128,pushers=1 --broker shared")
    words = command.split()
    assert push.parse_pass(words[words.index("--pass") + 1]) == setting


def test_each_figure_is_summed_up_by_its_own_name_beside_its_command(push: ModuleType) -> None:
    setting = push.Pass(0, 64, 2)
    command = push.reproduce(1000, setting, "own")
    figures = [(setting, push.Figure("drain", 990, 2.0, command)),
               (setting, push.Figure("end to end", 1000, 20.0, command))]
    assert push.summary(figures) == [
        f"delay=0 ms, 2 pusher(s) x 64: drain 495 records/s (990 created, 2.00 s)   $ {command}",
        f"delay=0 ms, 2 pusher(s) x 64: end to end 50 records/s (1000 created, 20.00 s)   "
        f"$ {command}"]


def test_scaling_compares_each_size_by_its_median_run(push: ModuleType) -> None:
    row = push.ScalingRow
    rows = [row(10_000, 1500.0, {"pusher": 0.40}), row(100_000, 1300.0, {"pusher": 0.44}),
            row(10_000, 750.0, {"pusher": 0.45}), row(100_000, 1350.0, {"pusher": 0.42}),
            row(10_000, 1400.0, {"pusher": 0.41}), row(100_000, 1250.0, {"pusher": 0.43})]
    for r, control in zip(rows, (0.060, 0.066, 0.080, 0.062, 0.061, 0.070), strict=True):
        r.cpu[push.STANDIN] = control
    lines = push.scaling_report(rows)
    assert len([line for line in lines if line.lstrip().startswith(("10,000 ", "100,000 "))]) == 6
    # medians: 1,400 at 10,000 (the noisy 750 does not count), 1,300 at 100,000
    assert ("  10,000: median of 3 run(s): 1,400 records/s, +0 % against 10,000; 0.471 ms "
            "CPU per record in all, +0 %; control (third-party, the same work per record at "
            "any size): +0 %") in lines
    assert ("  100,000: median of 3 run(s): 1,300 records/s, -7 % against 10,000; 0.500 ms "
            "CPU per record in all, +6 %; control (third-party, the same work per record at "
            "any size): +8 %") in lines


def test_scaling_without_10000_compares_with_the_first_size(push: ModuleType) -> None:
    lines = push.scaling_report([push.ScalingRow(2000, 1000.0, {"pusher": 0.5}),
                                 push.ScalingRow(40_000, 900.0, {"pusher": 0.5})])
    assert lines[-1].startswith("  40,000: 1 run(s): 900 records/s, -10 % against 2,000;")


@pytest.mark.parametrize(("argv", "says"), [
    (["--rounds", "0"], "--rounds takes a whole number of at least 1"),
    (["--rounds", "2"], "--rounds goes with --scaling"),
])
def test_rounds_are_refused_where_they_mean_nothing(
        push: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        argv: list[str], says: str) -> None:
    monkeypatch.setattr("sys.argv", ["push.py", *argv])
    monkeypatch.setattr(push, "exit_on_sigterm", lambda: None)
    with pytest.raises(SystemExit) as exited:
        push.main()
    assert exited.value.code == 2 and says in capsys.readouterr().err
