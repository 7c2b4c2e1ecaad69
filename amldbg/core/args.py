"""The ``--remote_debug*`` flags on an ``argparse`` parser.

:func:`add_args` adds one option per entry of :data:`amldbg.core.settings.FLAGS`; each
option's default is its ``AMLDBG_*`` environment variable (parsed by the same parser, an
invalid value warned about once), so an explicit flag wins over the environment.
"""

from __future__ import annotations

import argparse
import os
from typing import Any, Callable, Mapping

from amldbg.core import settings

_GROUP_TITLE = "remote debugging (amldbg)"


def _argparse_type(flag: settings.Flag) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return flag.parse(text)
        except ValueError as error:
            # argparse reports ArgumentTypeError's text after the flag's name.
            raise argparse.ArgumentTypeError(str(error)) from None

    convert.__name__ = flag.name
    return convert


def _existing_group(parser: argparse.ArgumentParser) -> Any:
    for group in parser._action_groups:
        if group.title == _GROUP_TITLE:
            return group
    return parser


def add_args(
    parser: argparse.ArgumentParser, env: Mapping[str, str] | None = None
) -> argparse._ArgumentGroup | argparse.ArgumentParser:
    """Add the ``--remote_debug*`` flags to ``parser`` and return their argument group.

    One option per row of :data:`amldbg.core.settings.FLAGS` (the fields of
    :class:`~amldbg.core.settings.DebugSettings`, which give each flag's default and help):
    the flags the Azure ML debugging guides use (``--remote_debug``,
    ``--remote_debug_connection_timeout``, ``--remote_debug_client_ip``,
    ``--remote_debug_port``) and amldbg's own. Each one's default comes from its ``AMLDBG_*``
    environment variable when set, so an explicit flag wins over the environment. Values may
    arrive as strings; an invalid port or timeout is an argparse error naming the flag.
    Calling it again on the same parser returns the existing group.
    """
    if "--remote_debug" in parser._option_string_actions:
        return _existing_group(parser)
    env = os.environ if env is None else env
    group = parser.add_argument_group(
        _GROUP_TITLE,
        "Attach VS Code to this script on remote compute. Every flag can also be set by the "
        "environment variable AMLDBG_<FLAG> (e.g. AMLDBG_REMOTE_DEBUG_PORT); a flag wins.",
    )
    for flag in settings.FLAGS:
        default = settings.env_default(flag, env)
        help_text = f"{flag.help} [env: {flag.env_var}]"
        if flag.is_switch:
            group.add_argument(
                flag.option, dest=flag.name, action="store_true", default=default, help=help_text
            )
        else:
            group.add_argument(
                flag.option,
                dest=flag.name,
                type=_argparse_type(flag),
                default=default,
                metavar=flag.metavar,
                help=help_text,
            )
    return group


class RemoteDebugArgsMixin:
    """Give an ``argparse.ArgumentParser`` subclass the ``--remote_debug*`` flags.

    Put it before ``ArgumentParser`` in the bases::

        class TrainParser(amldbg.RemoteDebugArgsMixin, argparse.ArgumentParser):
            pass
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if isinstance(self, argparse.ArgumentParser):
            add_args(self)
