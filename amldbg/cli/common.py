"""What every ``amldbg`` command shares: exit statuses, the one-line error, argument types."""

from __future__ import annotations

import argparse
import re
from typing import NoReturn

from amldbg.core import settings

EXIT_OK = 0
EXIT_NEGATIVE = 1
EXIT_USAGE = 2


# What must never reach a terminal raw: C0 controls (ESC starts CSI, OSC and DCS sequences,
# which can retitle a window, rewrite the screen or set the clipboard), DEL, C1 controls
# (U+0080..U+009F, single-character CSI/OSC/DCS), line and paragraph separators, the
# bidirectional overrides that reorder what is shown, and lone surrogates (from JSON
# "\ud800" or undecodable file names), which cannot even be encoded for output.
_UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069\ufeff\ud800-\udfff]"
)


def _escape(found: re.Match[str]) -> str:
    code = ord(found.group(0))
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def printable(text: object) -> str:
    """``text`` safe to print: every control character written as a visible escape.

    Use it for everything read from logs, snapshots or file names before it is printed:
    ``"\\x1b]0;owned\\x07"`` stays on the screen as text instead of retitling the terminal.
    Tabs and line breaks are escaped too, so that one field stays on one line.
    """
    return _UNSAFE.sub(_escape, str(text))


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
