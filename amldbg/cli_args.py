"""The ``--remote_debug`` flags, their ``AMLDBG_*`` environment variables, and their resolution.

A setting resolves as: the flag given on the command line, else the environment variable
``AMLDBG_<FLAG NAME IN UPPER CASE>``, else the built-in default. Pipeline steps pass their
arguments as strings (``'--remote_debug_port', 5678`` arrives as ``"5678"``), so every value
is parsed from text the same way whichever route it came by.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Any, Callable, Mapping

from amldbg._announce import warn

ENV_PREFIX = "AMLDBG_"

DEFAULT_TIMEOUT = 300.0
DEFAULT_PORT = 5678
# Listen on every interface by default: the guides' workflow attaches from another machine
# on the compute's network (VNet or VPN), which cannot reach a loopback-only listener.
DEFAULT_LISTEN_HOST = "0.0.0.0"

_TRUE = {"1", "true", "yes", "on", "y", "t"}
_FALSE = {"0", "false", "no", "off", "n", "f", ""}


def parse_bool(text: Any) -> bool:
    """Parse ``1/true/yes/on`` and ``0/false/no/off`` (any case); anything else is an error."""
    if isinstance(text, bool):
        return text
    value = str(text).strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"expected a boolean (1/0, true/false, yes/no, on/off), got {text!r}")


def parse_port(text: Any) -> int:
    """Parse a TCP port: an integer from 0 to 65535 (0 lets the system choose)."""
    try:
        number = float(str(text).strip())
    except ValueError:
        raise ValueError(f"expected a port number, got {text!r}") from None
    if not number.is_integer() or not 0 <= number <= 65535:
        raise ValueError(f"expected a port number from 0 to 65535, got {text!r}")
    return int(number)


def parse_timeout(text: Any) -> float:
    """Parse a non-negative number of seconds (``"300"``, ``300``, ``"2.5"``)."""
    try:
        number = float(str(text).strip())
    except ValueError:
        raise ValueError(f"expected a number of seconds, got {text!r}") from None
    if number != number or number < 0 or number == float("inf"):
        raise ValueError(f"expected a non-negative number of seconds, got {text!r}")
    return number


def parse_host(text: Any) -> str:
    """Parse a host name or IP address (surrounding brackets of an IPv6 literal are removed)."""
    value = str(text).strip().strip("[]")
    if not value or any(c.isspace() for c in value):
        raise ValueError(f"expected a host name or IP address, got {text!r}")
    return value


def parse_optional_host(text: Any) -> str | None:
    """Like :func:`parse_host`, but an empty value means "not set"."""
    if text is None or str(text).strip() == "":
        return None
    return parse_host(text)


def parse_ranks(text: Any) -> tuple[int, ...] | None:
    """Parse which ranks debug: ``"all"`` (``None``) or a comma list of ranks like ``"0,3"``."""
    if isinstance(text, int) and not isinstance(text, bool):
        text = str(text)
    elif isinstance(text, (list, tuple, set, frozenset)):
        text = ",".join(str(part) for part in text)
    value = str(text).strip().lower()
    if value in {"all", "*"}:
        return None
    try:
        ranks = tuple(sorted({int(part) for part in value.split(",") if part.strip()}))
    except ValueError:
        raise ValueError(f"expected 'all' or a comma-separated list of ranks, got {text!r}") from None
    if not ranks or any(rank < 0 for rank in ranks):
        raise ValueError(f"expected 'all' or a comma-separated list of ranks, got {text!r}")
    return ranks


@dataclasses.dataclass(frozen=True)
class _Flag:
    name: str
    parse: Callable[[Any], Any]
    default: Any
    help: str
    metavar: str | None = None
    is_switch: bool = False

    @property
    def option(self) -> str:
        return "--" + self.name

    @property
    def env_var(self) -> str:
        return ENV_PREFIX + self.name.upper()


FLAGS: tuple[_Flag, ...] = (
    _Flag(
        "remote_debug",
        parse_bool,
        False,
        "start the debugger (debugpy) and wait for VS Code to attach",
        is_switch=True,
    ),
    _Flag(
        "remote_debug_connection_timeout",
        parse_timeout,
        DEFAULT_TIMEOUT,
        "seconds to wait for a debugger client; 0 listens without waiting (default: %(default)s)",
        "SECONDS",
    ),
    _Flag(
        "remote_debug_client_ip",
        parse_optional_host,
        None,
        "IP address of a VS Code that listens for the script (reverse connect); "
        "without it, the script listens for VS Code",
        "IP",
    ),
    _Flag(
        "remote_debug_port",
        parse_port,
        DEFAULT_PORT,
        "debug port; the next free one is used when it is taken (default: %(default)s)",
        "PORT",
    ),
    _Flag(
        "remote_debug_listen_host",
        parse_host,
        DEFAULT_LISTEN_HOST,
        "address to listen on; 0.0.0.0 accepts clients from the compute's network, "
        "127.0.0.1 only local ones (default: %(default)s)",
        "HOST",
    ),
    _Flag(
        "remote_debug_ranks",
        parse_ranks,
        (0,),
        "which ranks of a distributed job debug: 'all' or a list like 0,3 (default: 0)",
        "RANKS",
    ),
    _Flag(
        "remote_debug_subprocess",
        parse_bool,
        False,
        "also debug child processes (each child then starts about a second slower)",
        is_switch=True,
    ),
    _Flag(
        "remote_debug_keep_tracing",
        parse_bool,
        False,
        "after the wait times out, keep the idle debugger tracing so that a client attaching "
        "later stops at breakpoints in already running code (pure-Python code runs ~2x slower)",
        is_switch=True,
    ),
    _Flag(
        "remote_debug_post_mortem",
        parse_bool,
        False,
        "on an uncaught exception, start the debugger if needed, wait at most the timeout "
        "for a client, stop at the frame that raised, then fail as the script would have",
        is_switch=True,
    ),
    _Flag(
        "remote_debug_route_breakpoint",
        parse_bool,
        False,
        "make plain breakpoint() calls pause in the remote debugger when a client is attached "
        "(and do nothing otherwise) instead of starting pdb",
        is_switch=True,
    ),
    _Flag(
        "remote_debug_watchdog_timeout",
        parse_timeout,
        0.0,
        "while debugging, lengthen the timeouts passed through amldbg.watchdog_timeout() and "
        "amldbg.process_group_timeout() to at least this many seconds; 0 leaves them alone "
        "(default: %(default)s)",
        "SECONDS",
    ),
)

_FLAGS_BY_NAME = {flag.name: flag for flag in FLAGS}
_GROUP_TITLE = "remote debugging (amldbg)"


@dataclasses.dataclass(frozen=True)
class DebugSettings:
    """The resolved remote-debug settings, one field per flag.

    Build it with :func:`resolve_settings`; every field has been validated.
    """

    remote_debug: bool = False
    remote_debug_connection_timeout: float = DEFAULT_TIMEOUT
    remote_debug_client_ip: str | None = None
    remote_debug_port: int = DEFAULT_PORT
    remote_debug_listen_host: str = DEFAULT_LISTEN_HOST
    remote_debug_ranks: tuple[int, ...] | None = (0,)
    remote_debug_subprocess: bool = False
    remote_debug_keep_tracing: bool = False
    remote_debug_post_mortem: bool = False
    remote_debug_route_breakpoint: bool = False
    remote_debug_watchdog_timeout: float = 0.0

    @property
    def enabled(self) -> bool:
        """True when debugging was asked for."""
        return self.remote_debug

    @property
    def timeout(self) -> float:
        """Seconds to wait for a client."""
        return self.remote_debug_connection_timeout

    @property
    def port(self) -> int:
        """The base debug port."""
        return self.remote_debug_port


def _env_value(flag: _Flag, env: Mapping[str, str]) -> Any:
    raw = env.get(flag.env_var)
    if raw is None:
        return flag.default
    try:
        return flag.parse(raw)
    except ValueError as error:
        warn(f"ignoring {flag.env_var}={raw!r}: {error}; using {flag.default!r}")
        return flag.default


def _argparse_type(flag: _Flag) -> Callable[[str], Any]:
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

    The flags are the ones the Azure ML debugging guides use (``--remote_debug``,
    ``--remote_debug_connection_timeout`` default 300, ``--remote_debug_client_ip``,
    ``--remote_debug_port`` default 5678) plus ``--remote_debug_listen_host``,
    ``--remote_debug_ranks``, ``--remote_debug_subprocess``,
    ``--remote_debug_keep_tracing``, ``--remote_debug_post_mortem``,
    ``--remote_debug_route_breakpoint`` and ``--remote_debug_watchdog_timeout``. Each one's default comes from its ``AMLDBG_*``
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
    for flag in FLAGS:
        default = _env_value(flag, env)
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


def resolve_settings(
    args: Any = None, env: Mapping[str, str] | None = None, **overrides: Any
) -> DebugSettings:
    """Resolve the remote-debug settings.

    ``args`` may be the ``argparse.Namespace`` from a parser given :func:`add_args`, a
    mapping, or ``None``. For each setting the first of these wins: a keyword override
    (``timeout=``, ``port=`` or the full flag name), the value in ``args``, the ``AMLDBG_*``
    environment variable, the default. Invalid environment values give one warning line and
    the default; invalid explicit values raise ``ValueError``.
    """
    env = os.environ if env is None else env
    aliases = {
        "enabled": "remote_debug",
        "timeout": "remote_debug_connection_timeout",
        "client_ip": "remote_debug_client_ip",
        "port": "remote_debug_port",
        "listen_host": "remote_debug_listen_host",
        "ranks": "remote_debug_ranks",
        "subprocess": "remote_debug_subprocess",
        "keep_tracing": "remote_debug_keep_tracing",
        "post_mortem": "remote_debug_post_mortem",
        "route_breakpoint": "remote_debug_route_breakpoint",
        "watchdog_timeout": "remote_debug_watchdog_timeout",
    }
    explicit: dict[str, Any] = {}
    for key, value in overrides.items():
        name = aliases.get(key, key)
        if name not in _FLAGS_BY_NAME:
            raise TypeError(f"unknown remote-debug setting {key!r}")
        if value is not None:
            explicit[name] = value
    values: dict[str, Any] = {}
    for flag in FLAGS:
        if flag.name in explicit:
            raw = explicit[flag.name]
        elif isinstance(args, Mapping) and flag.name in args:
            raw = args[flag.name]
        elif args is not None and not isinstance(args, Mapping) and hasattr(args, flag.name):
            raw = getattr(args, flag.name)
        else:
            values[flag.name] = _env_value(flag, env)
            continue
        if raw is None:
            # None is a real value for the client IP (listen) and the ranks ("all").
            nullable = flag.default is None or flag.name == "remote_debug_ranks"
            values[flag.name] = None if nullable else flag.default
        else:
            values[flag.name] = flag.parse(raw)
    return DebugSettings(**values)
