r"""Settings: the flag table, one parser per value type, and the resolved, immutable settings.

Every ``AMLDBG_*`` variable amldbg reads is declared here or in :mod:`amldbg.logs.settings`,
once: a ``--remote_debug*`` flag as a field of :class:`DebugSettings` (whose fields are the
flag table, :data:`FLAGS`), any other variable as a row of :data:`VARIABLES`, read with
:func:`env_value`. :func:`judge_env` is the one judgement of a variable's text; the
warning of :func:`read_env` and the report of ``amldbg doctor`` both come from it.

A remote-debug setting resolves as: a keyword override, else the flag given on the command
line (or the key of a mapping), else the environment variable ``AMLDBG_<FLAG NAME IN UPPER
CASE>``, else the built-in default. Pipeline steps pass their arguments as strings
(``'--remote_debug_port', 5678`` arrives as ``"5678"``), so every value is parsed from text
by the same parser whichever route it came by.

Each public entry point of amldbg resolves the settings once into a :class:`DebugSettings`
and passes that object down; the first one that enables something :func:`remember`\ s it,
so helpers called later without arguments (``amldbg.process_group_timeout()``) follow the
flags the script was started with.

Invalid values fail closed: a value that cannot be parsed gives one warning line per
process and the default, and every switch whose "on" opens a port or waits defaults to off.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import math
import os
from typing import Any, Callable, Generic, Mapping, NamedTuple, Sequence, TypeVar

from amldbg.core import announce, forksafe

T = TypeVar("T")

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


def parse_number(text: Any) -> float:
    """Parse a finite number (``"2.5"``, ``3``)."""
    if isinstance(text, bool):
        raise ValueError(f"expected a number, got {text!r}")
    try:
        number = float(str(text).strip())
    except ValueError:
        raise ValueError(f"expected a number, got {text!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"expected a finite number, got {text!r}")
    return number


def parse_positive_int(text: Any) -> int:
    """Parse a whole number above 0 (``"20000"``)."""
    number = parse_number(text)
    if not number.is_integer() or number < 1:
        raise ValueError(f"expected a whole number above 0, got {text!r}")
    return int(number)


def parse_index(text: Any) -> int:
    """Parse a 0-based index: a whole number from 0 (``"3"``)."""
    try:
        number = int(str(text).strip())
    except ValueError:
        raise ValueError(f"expected a whole number from 0, got {text!r}") from None
    if number < 0:
        raise ValueError(f"expected a whole number from 0, got {text!r}")
    return number


def parse_text(text: Any) -> str:
    """Parse free text (a path, a host name given by the user): surrounding blanks removed."""
    return str(text).strip()


def parse_choice(choices: Sequence[str]) -> Callable[[Any], str]:
    """A parser that accepts one of ``choices`` (any case, surrounding blanks ignored)."""

    def parse(text: Any) -> str:
        value = str(text).strip().lower()
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {text!r}")
        return value

    parse.__name__ = "parse_choice"
    return parse


@dataclasses.dataclass(frozen=True)
class Flag:
    """One ``--remote_debug*`` flag: its name, parser, default and help text.

    ``env_var`` is the ``AMLDBG_*`` variable that sets it when the flag is not given;
    ``alias`` the keyword the public functions accept for it (``port=``). ``nullable``
    says that ``None`` is a value of its own (the client IP: listen; the ranks: all)
    rather than "use the default".
    """

    name: str
    parse: Callable[[Any], Any]
    default: Any
    help: str
    metavar: str | None = None
    is_switch: bool = False
    keyword: str | None = None
    nullable: bool = False
    # Derived from the fields above, never declared; worked out once, when the row is made,
    # because every resolve_settings reads them (and a lazy cache would take a lock that a
    # fork could copy held).
    #: The environment variable, ``AMLDBG_REMOTE_DEBUG_PORT``.
    env_var: str = dataclasses.field(init=False, repr=False, compare=False)
    #: A blank variable means "not set", except for a switch: there it means off.
    blank_is_default: bool = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "env_var", ENV_PREFIX + self.name.upper())  # frozen
        object.__setattr__(self, "blank_is_default", not self.is_switch)

    @property
    def option(self) -> str:
        """The command-line option, ``--remote_debug_port``."""
        return "--" + self.name

    @property
    def alias(self) -> str:
        """The short keyword: the row's own ``keyword``, else the name without ``remote_debug_``."""
        return self.keyword or self.name.removeprefix("remote_debug_")

    def verdict(self, env: Mapping[str, str] | None = None) -> Verdict:
        """What the flag's variable in ``env`` gives, without a warning (see :func:`judge_env`)."""
        return judge_env(self.env_var, self.parse, self.default, env, blank_is_default=self.blank_is_default)


_FLAG = "amldbg.flag"


def _flag(
    parse: Callable[[Any], Any],
    default: Any,
    help: str,
    metavar: str | None = None,
    *,
    is_switch: bool = False,
    keyword: str | None = None,
    nullable: bool = False,
) -> Any:
    """A field of :class:`DebugSettings` and, read from it, its row of :data:`FLAGS`."""
    row = {"parse": parse, "help": help, "metavar": metavar, "is_switch": is_switch,
           "keyword": keyword, "nullable": nullable}
    return dataclasses.field(default=default, metadata={_FLAG: row})


@dataclasses.dataclass(frozen=True)
class DebugSettings:
    """The resolved remote-debug settings, one field per flag.

    The fields are the flag table: each one declares its flag (parser, default, help),
    and :data:`FLAGS`, :data:`ALIASES` and :func:`amldbg.add_args` are read from them.
    Build it with :func:`resolve_settings`; every field has been validated.
    """

    remote_debug: bool = _flag(
        parse_bool,
        False,
        "start the debugger (debugpy) and wait for VS Code to attach",
        is_switch=True,
        keyword="enabled",
    )
    remote_debug_connection_timeout: float = _flag(
        parse_timeout,
        DEFAULT_TIMEOUT,
        "seconds to wait for a debugger client; 0 listens without waiting (default: %(default)s)",
        "SECONDS",
        keyword="timeout",
    )
    remote_debug_client_ip: str | None = _flag(
        parse_optional_host,
        None,
        "IP address of a VS Code that listens for the script (reverse connect); "
        "without it, the script listens for VS Code",
        "IP",
        nullable=True,
    )
    remote_debug_port: int = _flag(
        parse_port,
        DEFAULT_PORT,
        "debug port; the next free one is used when it is taken (default: %(default)s)",
        "PORT",
    )
    remote_debug_listen_host: str = _flag(
        parse_host,
        DEFAULT_LISTEN_HOST,
        "address to listen on; 0.0.0.0 accepts clients from the compute's network, "
        "127.0.0.1 only local ones (default: %(default)s)",
        "HOST",
    )
    remote_debug_ranks: tuple[int, ...] | None = _flag(
        parse_ranks,
        (0,),
        "which ranks of a distributed job debug: 'all' or a list like 0,3 (default: 0)",
        "RANKS",
        nullable=True,
    )
    remote_debug_subprocess: bool = _flag(
        parse_bool,
        False,
        "also debug child processes (each child then starts about a second slower)",
        is_switch=True,
    )
    remote_debug_keep_tracing: bool = _flag(
        parse_bool,
        False,
        "after the wait times out, keep debugpy tracing every thread (its own behaviour; "
        "pure-Python code runs 2-4x slower)",
        is_switch=True,
    )
    remote_debug_post_mortem: bool = _flag(
        parse_bool,
        False,
        "on an uncaught exception, start the debugger if needed, wait at most the timeout "
        "for a client, stop at the frame that raised, then fail as the script would have",
        is_switch=True,
    )
    remote_debug_route_breakpoint: bool = _flag(
        parse_bool,
        False,
        "make plain breakpoint() calls pause in the remote debugger when a client is attached "
        "(and do nothing otherwise) instead of starting pdb",
        is_switch=True,
    )
    remote_debug_watchdog_timeout: float = _flag(
        parse_timeout,
        0.0,
        "while debugging, lengthen the timeouts passed through amldbg.watchdog_timeout() and "
        "amldbg.process_group_timeout() to at least this many seconds; 0 leaves them alone "
        "(default: %(default)s)",
        "SECONDS",
    )
    remote_debug_stall_timeout: float = _flag(
        parse_timeout,
        0.0,
        "when the main thread makes no progress for this many seconds, every rank writes the "
        "stacks of its threads to the log and outputs/amldbg/ (once per stall); 0 is off "
        "(default: %(default)s)",
        "SECONDS",
    )
    remote_debug_on_demand: bool = _flag(
        parse_bool,
        False,
        "let signals act on the running script: SIGUSR1 writes the stacks of its threads, "
        "SIGUSR2 starts the debugger without waiting (kill -USR1 PID)",
        is_switch=True,
    )

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

    def debugs_rank(self, rank: int) -> bool:
        """True when ``--remote_debug_ranks`` selects ``rank``."""
        ranks = self.remote_debug_ranks
        return ranks is None or rank in ranks


#: The ``--remote_debug*`` flags, in :class:`DebugSettings`' field order (read from its fields).
FLAGS: tuple[Flag, ...] = tuple(
    Flag(field.name, default=field.default, **field.metadata[_FLAG])
    for field in dataclasses.fields(DebugSettings)
)

FLAGS_BY_NAME = {flag.name: flag for flag in FLAGS}

#: Short keyword names accepted by the public functions (``timeout=``, ``port=``...).
ALIASES = {flag.alias: flag.name for flag in FLAGS}


def env_var(name: str) -> str:
    """The ``AMLDBG_*`` variable of the flag ``name`` (``"remote_debug_port"``)."""
    return FLAGS_BY_NAME[ALIASES.get(name, name)].env_var


def describe_value(value: Any) -> str:
    """A setting's value as the messages show it: ``on``/``off``, ``0,3``, ``300``, ``all``."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return "all" if value is None else str(value)


class Verdict(NamedTuple):
    """What the environment variable ``name`` gives: the value in force, why its text was
    rejected (``error``, ``None`` when it was not), and the text itself (``None``: unset)."""

    name: str
    value: Any
    error: str | None
    raw: str | None


def judge_env(
    name: str,
    parse: Callable[[Any], Any],
    default: Any,
    env: Mapping[str, str] | None = None,
    *,
    blank_is_default: bool = True,
) -> Verdict:
    """The parser's verdict on the environment variable ``name``, without any warning.

    Unset (or blank, with ``blank_is_default``) gives ``default``; text the parser rejects
    gives ``default`` and the parser's reason. :func:`read_env` and ``amldbg doctor`` both
    judge by it, so that doctor reports exactly what the script falls back to.
    """
    env = os.environ if env is None else env
    raw = env.get(name)
    if raw is None or (blank_is_default and not str(raw).strip()):
        return Verdict(name, default, None, raw)
    try:
        return Verdict(name, parse(raw), None, raw)
    except ValueError as error:
        return Verdict(name, default, str(error), raw)


def read_env(
    name: str,
    parse: Callable[[Any], T],
    default: T,
    env: Mapping[str, str] | None = None,
    *,
    blank_is_default: bool = True,
) -> T:
    """The parsed value of the environment variable ``name``, else ``default``.

    An unparsable value gives one warning line per process (naming the variable, the
    problem and the value used instead) and ``default``: for a switch that opens a port or
    waits, the default is off, so a typo never turns it on.
    """
    if (os.environ if env is None else env).get(name) is None:
        return default  # the common case, decided without building a verdict
    _, value, error, raw = judge_env(name, parse, default, env, blank_is_default=blank_is_default)
    if error is not None:
        shown = str(raw)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        announce.warn_once(
            f"env:{name}={raw}",
            f"ignoring {name}={shown!r}: {error}; using {describe_value(default)}",
        )
    return value


def _flag_env(flag: Flag, env: Mapping[str, str]) -> Any:
    return read_env(flag.env_var, flag.parse, flag.default, env, blank_is_default=flag.blank_is_default)


def env_default(flag: Flag, env: Mapping[str, str] | None = None) -> Any:
    """The value of ``flag`` when it is not given: its environment variable, else its default."""
    return _flag_env(flag, os.environ if env is None else env)


def resolve_settings(
    args: Any = None, env: Mapping[str, str] | None = None, **overrides: Any
) -> DebugSettings:
    """Resolve the remote-debug settings.

    ``args`` may be the ``argparse.Namespace`` from a parser given :func:`amldbg.add_args`,
    a mapping, or ``None``. For each setting the first of these wins: a keyword override
    (``timeout=``, ``port=`` or the full flag name), the value in ``args``, the ``AMLDBG_*``
    environment variable, the default. Invalid environment values give one warning line
    per process and the default (off, for every switch); invalid explicit values raise
    ``ValueError``.
    """
    env = os.environ if env is None else env
    explicit: dict[str, Any] = {}
    for key, value in overrides.items():
        name = ALIASES.get(key, key)
        if name not in FLAGS_BY_NAME:
            raise TypeError(f"unknown remote-debug setting {key!r}")
        if value is not None:
            explicit[name] = value
    values: dict[str, Any] = {}
    # Checked once: an isinstance against an abstract class is slow, and a script with
    # debugging off calls this on every start.
    is_mapping = isinstance(args, collections.abc.Mapping)
    for flag in FLAGS:
        if flag.name in explicit:
            raw = explicit[flag.name]
        elif is_mapping and flag.name in args:
            raw = args[flag.name]
        elif args is not None and not is_mapping and hasattr(args, flag.name):
            raw = getattr(args, flag.name)
        else:
            values[flag.name] = _flag_env(flag, env)
            continue
        if raw is None:
            values[flag.name] = None if flag.nullable else flag.default
        else:
            try:
                values[flag.name] = flag.parse(raw)
            except ValueError as error:
                raise ValueError(f"{flag.option}: {error}") from None
    return DebugSettings(**values)


_remembered: DebugSettings | None = None
_lock = forksafe.lock()


def remember(settings: DebugSettings) -> DebugSettings:
    """Keep ``settings`` as the ones this process was enabled with; returns them."""
    global _remembered
    with _lock:
        _remembered = settings
    return settings


def remembered() -> DebugSettings | None:
    """The settings this process was enabled with, or ``None``.

    A forked child inherits its parent's: it runs the same script with the same flags.
    """
    return _remembered


def settings_for(args: Any = None, env: Mapping[str, str] | None = None, **overrides: Any) -> DebugSettings:
    """What a helper called later uses: with no ``args`` and no overrides, the remembered
    settings (else the environment's); otherwise :func:`resolve_settings` of what is given."""
    given = {k: v for k, v in overrides.items() if v is not None}
    if args is None and not given:
        found = remembered()
        if found is not None:
            return found
    return resolve_settings(args, env=env, **given)


def env_text(setting: Flag | Variable[Any], env: Mapping[str, str] | None = None) -> str | None:
    """The raw text of ``setting``'s ``AMLDBG_*`` variable in ``env``, unparsed (``None``: unset).

    For the cheap "is it set at all" checks that decide whether anything needs resolving; a
    value is only ever taken through :func:`resolve_settings` or :func:`env_value`.
    """
    return (os.environ if env is None else env).get(setting.env_var)


# -- process variables ---------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Variable(Generic[T]):
    """An ``AMLDBG_*`` variable that is not a ``--remote_debug*`` flag: a part of amldbg reads
    it, through :func:`env_value`, at the moment it needs it.

    ``invalid`` says what text the parser rejects does: ``"warn"`` (one warning line per
    process, then ``default``), ``"raise"`` (``ValueError``: the reader words its own
    warning) or ``"ignore"`` (``default``, silently). With ``blank_is_default`` a blank value
    is "not set"; without it, the parser gets the blank text.
    """

    env_var: str
    parse: Callable[[Any], T]
    default: T
    help: str
    invalid: str = "warn"
    blank_is_default: bool = True

    def verdict(self, env: Mapping[str, str] | None = None) -> Verdict:
        """What the variable in ``env`` gives, without a warning (see :func:`judge_env`)."""
        return judge_env(self.env_var, self.parse, self.default, env, blank_is_default=self.blank_is_default)


LOG_CALLS: Variable[bool | None] = Variable(
    "AMLDBG_LOG_CALLS", parse_bool, None,
    "1/0: log (or not) one line per run() call of an entry script; unset, the runtime decides "
    "(per mini-batch in ParallelRunStep, not under the inference server, which logs its own)",
)
REMOTE_DEBUG_PROCESSES: Variable[tuple[int, ...] | None] = Variable(
    "AMLDBG_REMOTE_DEBUG_PROCESSES", parse_ranks, (0,),
    "which worker processes of a parallel job's node listen for a debugger: 'all' or a list "
    "like 0,2 (default: 0)",
    invalid="raise",
)
PROCESS_INDEX: Variable[int | None] = Variable(
    "AMLDBG_PROCESS_INDEX", parse_index, None,
    "this worker process's index on its node, when the parallel runtime's agent name does not "
    "carry it (a local driver sets it); an invalid value is ignored",
    invalid="ignore",
)
DIAGNOSTICS_DIR: Variable[str | None] = Variable(
    "AMLDBG_DIAGNOSTICS_DIR", str, None,
    "the folder for stack dumps and crash reports (default: outputs/amldbg)",
    # The folder's name is taken as given, blanks included.
    blank_is_default=False,
)
REGISTRY_DIR: Variable[str | None] = Variable(
    "AMLDBG_REGISTRY_DIR", parse_text, None,
    "the folder of the registry of running scripts that amldbg signal reads "
    "(default: $XDG_RUNTIME_DIR/amldbg, else /tmp/amldbg-<uid>)",
)
NODE_ADDRESS: Variable[str | None] = Variable(
    "AMLDBG_NODE_ADDRESS", parse_text, None,
    "the address announced for this node (default: the default-route interface's)",
)

#: Every process variable; with :data:`FLAGS` and the log settings
#: (:mod:`amldbg.logs.settings`), every ``AMLDBG_*`` variable amldbg reads.
VARIABLES: tuple[Variable[Any], ...] = (
    LOG_CALLS, REMOTE_DEBUG_PROCESSES, PROCESS_INDEX, DIAGNOSTICS_DIR, REGISTRY_DIR, NODE_ADDRESS,
)


def env_value(variable: Variable[T], env: Mapping[str, str] | None = None) -> T:
    """The value of ``variable`` in ``env`` (default: this process's environment): its parsed
    text, else its default; text the parser rejects is handled as ``variable.invalid`` says."""
    if variable.invalid == "warn":
        return read_env(variable.env_var, variable.parse, variable.default, env,
                        blank_is_default=variable.blank_is_default)
    _, value, error, _ = variable.verdict(env)
    if error is not None and variable.invalid == "raise":
        raise ValueError(error)
    return value
