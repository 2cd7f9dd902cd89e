"""The conventions of every ``bss-sync`` command (shared.cli.parser), checked on the whole
parser tree so that a command added later follows them too. Parsing only: nothing here
opens a file or a connection."""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator

import pytest

from shared.cli.main import build_parser, main
from shared.cli.parser import package_version
from shared.cli.service import parse_service_args

#: Every leaf command with its required arguments filled in.
COMMAND_LINES = {
    ("validate",): ["c.json"],
    ("preview",): ["c.json", "--object", "Account", "--direction", "push", "--record", "r.json"],
    ("bundle",): ["c.json"],
    ("db", "upgrade"): [],
    ("apply",): ["installation.json"],
    ("orgs", "list"): [],
    ("instances", "list"): [],
    ("instances", "show"): ["acme-crm-prod"],
    ("audit", "search"): [],
    ("topology", "declare"): [],
    ("dead", "list"): [],
    ("dlq", "list"): [],
    ("dlq", "show"): ["9a6f6b1e-0000-4000-8000-000000000000"],
    ("dlq", "replay"): ["--all"],
    ("dlq", "redeliver"): [],
    ("dlq", "purge"): ["--filter", "entity=contact"],
    ("pull",): ["--instance", "inst-1"],
    ("sync",): ["--instance", "inst-1"],
    ("runs", "list"): [],
    ("runs", "show"): ["9a6f6b1e-0000-4000-8000-000000000000"],
}


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction | None:
    return next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)


def commands(parser: argparse.ArgumentParser | None = None, path: tuple[str, ...] = ()
             ) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser, str]]:
    """(path, parser, one-line summary) of every command and group, depth first."""
    parser = parser or build_parser()
    sub = _subparsers(parser)
    if sub is None:
        return
    summaries = {a.dest: a.help for a in sub._choices_actions}
    for name, child in sub.choices.items():
        yield (*path, name), child, summaries.get(name) or ""
        yield from commands(child, (*path, name))


def leaves() -> list[tuple[str, ...]]:
    return [path for path, parser, _ in commands() if _subparsers(parser) is None]


def test_the_command_lines_here_cover_every_command() -> None:
    assert sorted(leaves()) == sorted(COMMAND_LINES)


@pytest.mark.parametrize(("path", "parser", "summary"),
                         [pytest.param(*command, id=" ".join(command[0]))
                          for command in commands()])
def test_every_command_has_a_summary_a_description_and_help_on_each_option(
        path: tuple[str, ...], parser: argparse.ArgumentParser, summary: str) -> None:
    assert summary and "\n" not in summary, f"bss-sync {' '.join(path)} has no summary"
    assert parser.description, f"bss-sync {' '.join(path)} has no description"
    rendered = " ".join(parser.format_help().split())
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
            continue
        name = "/".join(action.option_strings) or action.dest
        assert action.help, f"bss-sync {' '.join(path)} {name} has no help"
        if action.option_strings and not action.required:
            assert "(default: " in action.help or "default: " in action.help, (
                f"bss-sync {' '.join(path)} {name}: the help does not say the default")
        if action.default not in (None, False, [], argparse.SUPPRESS):
            assert f"default: {action.default}" in rendered, (
                f"bss-sync {' '.join(path)} {name}: the default {action.default!r} is not shown")
        if "--json" in action.option_strings:
            assert "JSON Lines" in action.help


@pytest.mark.parametrize("path", sorted(COMMAND_LINES), ids=" ".join)
def test_a_bad_option_shows_that_commands_usage(path: tuple[str, ...],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*path, *COMMAND_LINES[path], "--no-such-option"])
    assert exited.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    prog = "bss-sync " + " ".join(path)
    assert captured.err.startswith(f"usage: {prog} ")
    assert f"{prog}: error: unrecognized arguments: --no-such-option" in captured.err


def test_a_bad_value_shows_that_commands_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["dead", "list", "--limit", "0"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: bss-sync dead list ")
    assert "argument --limit: must be at least 1, not 0" in err


@pytest.mark.parametrize("group", ["db", "orgs", "instances", "audit", "topology", "dead",
                                   "dlq"])
def test_a_group_without_its_command_shows_its_help(group: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert main([group]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"usage: bss-sync {group} [-h] COMMAND ...")


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"bss-sync {package_version()}\n"
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", package_version())


@pytest.mark.parametrize("service", ["dispatcher", "pusher"])
def test_a_services_help_lists_its_environment(service: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_service_args(service, "What it does.", ["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: python -m services.{service} [-h] [--version]")
    assert "AMQP_URL  (default: amqp://guest:guest@127.0.0.1:5672/%2F)" in out
    assert ("BSS_API_URL" in out) == (service == "pusher")


def test_a_service_refuses_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_service_args("pusher", "What it does.", ["--concurrency", "4"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: python -m services.pusher")
    assert "unrecognized arguments: --concurrency 4" in err
