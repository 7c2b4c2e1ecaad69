"""What every ``amldbg`` command shares: exit statuses, the one-line error, argument types,
and how a command module adds itself (:data:`Commands`)."""

from __future__ import annotations

import argparse
from typing import NoReturn, TypeAlias

from amldbg.core import safetext, settings

EXIT_OK = 0
EXIT_NEGATIVE = 1
EXIT_USAGE = 2

#: The subcommands of a parser (what ``add_subparsers`` returns, each a :class:`Parser`).
#: Every command module has ``register(commands: Commands) -> None``, which adds its parser
#: with ``commands.add_parser(NAME, help=..., formatter_class=formatter, ...)``, its options,
#: and ``set_defaults(run=cmd_NAME)``: ``cmd_NAME(args, out) -> int`` runs the command,
#: writes its answer to ``out`` and returns the exit status.
Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def printable(text: object) -> str:
    """``text`` safe to print on one line: :func:`amldbg.core.safetext.escape`, the one rule
    (control, bidi and line-separator characters written as visible escapes).

    Use it for everything read from logs, snapshots or file names before it is printed:
    ``"\\x1b]0;owned\\x07"`` stays on the screen as text instead of retitling the terminal.
    """
    return safetext.escape(text)


class CliError(Exception):
    """Bad input: reported as one line on stderr, exit status 2.

    The message is escaped with :func:`printable` (it often quotes a file name or a value
    read from a log), so it is always one safe line.
    """

    def __str__(self) -> str:
        return printable(super().__str__())


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (usage stays in ``--help``)."""

    def error(self, message: str) -> NoReturn:
        # The message quotes the user's arguments, which may hold anything.
        message = printable(message)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def formatter(prog: str) -> argparse.HelpFormatter:
    """The help formatter of every command: keeps the epilogs' line breaks."""
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


def port(text: str) -> int:
    """An argparse type: a TCP port."""
    try:
        return settings.parse_port(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def host(text: str) -> str:
    """An argparse type: a host name or IP address."""
    try:
        return settings.parse_host(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
