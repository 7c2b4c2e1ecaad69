"""The ``amldbg`` command (also ``python -m amldbg``): the developer's side of the workflow.

One module per command:

* ``amldbg find LOG...`` (:mod:`.find`): list the debug endpoints announced in driver logs;
* ``amldbg launch-config`` (:mod:`.launch_config`): VS Code attach configurations, printed
  or merged into launch.json (:mod:`.launch_json`);
* ``amldbg env snapshot`` / ``amldbg env diff`` (:mod:`.env`): what differs between two
  environments;
* ``amldbg doctor`` (:mod:`.doctor`): check, where the script will run, what remote
  debugging needs;
* ``amldbg stacks PATH...`` (:mod:`.stacks`): compare the stacks the ranks of a hung job
  dumped, name the outliers, list crash reports;
* ``amldbg signal`` (:mod:`.signal_ranks`): make the armed ranks of this node dump their
  stacks or start the debugger, never signalling the launcher.

Every subcommand exits 0 on success, 1 for a negative answer (nothing found, snapshots
differ, a check failed) and 2 for bad input, with a one-line reason on stderr. Nothing in
the runtime (what a script imports) imports this package.

To add a command: write its module with ``register(commands)`` (it adds the command's
parser, options and ``run``, see :data:`amldbg.cli.common.Commands`) and name the module in
:data:`COMMANDS`.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from amldbg._version import __version__
from amldbg.cli import doctor, env, find, launch_config, signal_ranks, stacks
from amldbg.cli.common import EXIT_OK, EXIT_USAGE, CliError, Commands, Parser, formatter

__all__ = ["build_parser", "main"]

#: The command modules, in the order ``amldbg --help`` lists their commands.
COMMANDS = (find, stacks, signal_ranks, launch_config, env, doctor)


def build_parser() -> argparse.ArgumentParser:
    """The ``amldbg`` argument parser with its subcommands."""
    parser = Parser(
        prog="amldbg",
        description="The developer's side of amldbg: find debug endpoints in Azure ML logs, "
        "write VS Code launch.json entries, compare the stacks of a hung job, compare "
        "environments, check a machine.",
        formatter_class=formatter,
        epilog="run 'amldbg COMMAND --help' for a command's options and examples",
    )
    parser.add_argument("--version", action="version", version=f"amldbg {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for command in COMMANDS:
        command.register(commands)
    return parser


def _subcommands(parser: argparse.ArgumentParser) -> Commands | None:
    """The subcommands of ``parser``, if it has any."""
    return next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)


def _chosen(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The parser of the (sub)command that ``args`` chose: ``amldbg env diff``'s for
    ``amldbg env diff A B``, ``amldbg env``'s for ``amldbg env``."""
    while True:
        commands = _subcommands(parser)
        name = getattr(args, commands.dest, None) if commands is not None else None
        if commands is None or name is None:
            return parser
        parser = commands.choices[name]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``amldbg`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    run = getattr(args, "run", None)
    if run is None:
        # No command, or a command with actions (`amldbg env`) without one: name the choices.
        chosen = _chosen(parser, args)
        commands = _subcommands(chosen)
        choices = ", ".join(commands.choices) if commands is not None else ""
        print(
            f"{chosen.prog}: error: choose one of: {choices} (see '{chosen.prog} --help')",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        return int(run(args, sys.stdout))
    except CliError as error:
        print(f"{_chosen(parser, args).prog}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `amldbg find ... | head`: the reader left. Point stdout at devnull so that the
        # interpreter's final flush does not raise again (the Python docs' recipe).
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
