"""The one way to add an `amldbg` command: each module in `cli.COMMANDS` registers itself."""

from __future__ import annotations

import argparse

import pytest

from amldbg import cli


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def test_every_command_module_registers_a_command_that_runs() -> None:
    parser = cli.build_parser()
    commands = _subcommands(parser)
    assert list(commands) == ["find", "stacks", "signal", "launch-config", "env", "doctor"]
    leaves = []
    for name, command in commands.items():
        actions = _subcommands(command)
        leaves += [(f"{name} {a}", p) for a, p in actions.items()] if actions else [(name, command)]
    for name, command in leaves:
        assert callable(command.get_default("run")), name


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], "amldbg: error: choose one of: find, stacks, signal, launch-config, env, doctor "
             "(see 'amldbg --help')"),
        (["env"], "amldbg env: error: choose one of: snapshot, diff (see 'amldbg env --help')"),
    ],
)
def test_a_missing_command_names_the_choices(
    argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(argv) == 2
    assert capsys.readouterr().err.strip() == expected


def test_bad_input_is_reported_under_the_full_command_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["env", "diff", "/nonexistent/a.json", "/nonexistent/b.json"]) == 2
    assert capsys.readouterr().err.startswith("amldbg env diff: error: ")
