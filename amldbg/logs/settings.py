"""Process-wide logging settings and the environment variables behind them.

The values are parsed by the same parsers as the ``--remote_debug*`` flags
(:mod:`amldbg.core.settings`): an invalid value gives one warning line per process and the
default. :class:`LogSettings` is immutable; :func:`amldbg.configure_logging` replaces the
process's settings with a changed copy.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Mapping

from amldbg.core import settings as core_settings
from amldbg.logs.connection import CONNECTION_STRING_ENV

BACKEND_ENV = "AMLDBG_APPINSIGHTS_BACKEND"
GRACE_ENV = "AMLDBG_LOG_GRACE_PERIOD"
QUEUE_ENV = "AMLDBG_LOG_QUEUE_SIZE"
ALL_RANKS_ENV = "AMLDBG_LOG_ALL_RANKS"
METRICS_ENV = "AMLDBG_METRICS"

BACKENDS = ("opencensus", "otel")
METRIC_DESTINATIONS = ("auto", "azureml", "mlflow", "driver-log")

#: Defaults, documented in docs/telemetry.md.
DEFAULT_GRACE_PERIOD = 3.0
DEFAULT_QUEUE_SIZE = 40_000
DEFAULT_BACKEND = "opencensus"

_parse_backend = core_settings.parse_choice(BACKENDS)
_parse_metrics = core_settings.parse_choice(METRIC_DESTINATIONS)

_ROW = "amldbg.log_setting"


def _setting(default: Any, env_var: str | None = None, parse: Callable[[Any], Any] | None = None) -> Any:
    """A field of :class:`LogSettings` and, read from it, its row of :data:`LOG_SETTINGS`."""
    return dataclasses.field(default=default, metadata={_ROW: (env_var, parse)})


@dataclasses.dataclass(frozen=True)
class LogSettings:
    """Process-wide choices for amldbg's logging and metrics, filled from the environment.

    ``connection_string`` is the raw text (``None``: no Application Insights);
    ``backend`` is ``"opencensus"`` (default) or ``"otel"``; ``grace_period`` bounds the
    flush at exit in seconds; ``queue_size`` bounds each background queue (when full, the
    oldest record is dropped); ``all_ranks`` lets every rank of a distributed job send
    metrics and Application Insights records (default: rank 0 only);
    ``metrics_to_appinsights`` also sends each metric as a trace; ``metrics`` picks the
    metric destination (``"auto"``, ``"azureml"``, ``"mlflow"``, ``"driver-log"``);
    ``run`` is an explicit azureml-core ``Run`` to log metrics to.

    The fields are the table of log settings: each one names its environment variable and
    parser, and :func:`from_environment`, :func:`update` and ``amldbg doctor`` read them.
    """

    connection_string: str | None = _setting(None, CONNECTION_STRING_ENV)
    backend: str = _setting(DEFAULT_BACKEND, BACKEND_ENV, _parse_backend)
    grace_period: float = _setting(DEFAULT_GRACE_PERIOD, GRACE_ENV, core_settings.parse_timeout)
    queue_size: int = _setting(DEFAULT_QUEUE_SIZE, QUEUE_ENV, core_settings.parse_positive_int)
    all_ranks: bool = _setting(False, ALL_RANKS_ENV, core_settings.parse_bool)
    metrics_to_appinsights: bool = _setting(False, parse=core_settings.parse_bool)
    metrics: str = _setting("auto", METRICS_ENV, _parse_metrics)
    run: Any = _setting(None)

    def __repr__(self) -> str:  # never show the connection string
        shown = dataclasses.replace(self, connection_string="****" if self.connection_string else None)
        fields = ", ".join(f"{f.name}={getattr(shown, f.name)!r}" for f in dataclasses.fields(shown))
        return f"LogSettings({fields})"


@dataclasses.dataclass(frozen=True)
class LogSetting:
    """One log setting: its field of :class:`LogSettings`, its default, the environment
    variable that sets it (``None``: only :func:`amldbg.configure_logging` does) and its
    parser (``None``: the value is taken as given; from the environment, trimmed)."""

    name: str
    default: Any
    env_var: str | None
    parse: Callable[[Any], Any] | None

    def verdict(self, env: Mapping[str, str] | None = None) -> core_settings.Verdict:
        """What the variable in ``env`` gives, without a warning (see ``core.settings.judge_env``)."""
        assert self.env_var is not None, f"{self.name} has no environment variable"
        return core_settings.judge_env(self.env_var, self.parse or core_settings.parse_text, self.default, env)

    def from_env(self, env: Mapping[str, str] | None = None) -> Any:
        """The value in ``env``, else the default; an invalid value warns once (``read_env``)."""
        assert self.env_var is not None, f"{self.name} has no environment variable"
        return core_settings.read_env(self.env_var, self.parse or core_settings.parse_text, self.default, env)


#: Every log setting, in :class:`LogSettings`' field order (read from its fields).
LOG_SETTINGS: tuple[LogSetting, ...] = tuple(
    LogSetting(field.name, field.default, *field.metadata[_ROW]) for field in dataclasses.fields(LogSettings)
)
#: The log settings an environment variable sets.
ENV_SETTINGS: tuple[LogSetting, ...] = tuple(row for row in LOG_SETTINGS if row.env_var is not None)
SETTINGS_BY_NAME = {row.name: row for row in LOG_SETTINGS}


def from_environment(env: Mapping[str, str] | None = None) -> LogSettings:
    """Settings as the environment variables give them (documented in docs/telemetry.md)."""
    env = os.environ if env is None else env
    return LogSettings(**{row.name: row.from_env(env) for row in ENV_SETTINGS})


_current: LogSettings | None = None


def current() -> LogSettings:
    """The settings in force: those of :func:`update`, else the environment's."""
    global _current
    if _current is None:
        _current = from_environment()
    return _current


def update(**changes: Any) -> LogSettings:
    """Replace some settings (``None`` values keep the current ones) and return the result.

    Raises ``ValueError`` for a value the matching environment variable would not accept.
    """
    global _current
    base = current()
    given = {k: v for k, v in changes.items() if v is not None}
    for name, value in given.items():
        row = SETTINGS_BY_NAME.get(name)  # an unknown name is dataclasses.replace's TypeError
        if row is not None and row.parse is not None:
            given[name] = row.parse(value)
    _current = dataclasses.replace(base, **given)
    return _current


def reset() -> None:
    """Forget the settings in force, so the environment is read again (tests use it)."""
    global _current
    _current = None
