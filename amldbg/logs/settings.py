"""Process-wide logging settings and the environment variables behind them.

The values are parsed by the same parsers as the ``--remote_debug*`` flags
(:mod:`amldbg.core.settings`): an invalid value gives one warning line per process and the
default. :class:`LogSettings` is immutable; :func:`amldbg.configure_logging` replaces the
process's settings with a changed copy.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

from amldbg.core import settings as core_settings
from amldbg.logs.connection import CONNECTION_STRING_ENV

BACKEND_ENV = "AMLDBG_APPINSIGHTS_BACKEND"
GRACE_ENV = "AMLDBG_LOG_GRACE_PERIOD"
QUEUE_ENV = "AMLDBG_LOG_QUEUE_SIZE"
ALL_RANKS_ENV = "AMLDBG_LOG_ALL_RANKS"
METRICS_ENV = "AMLDBG_METRICS"

BACKENDS = ("opencensus", "otel")
METRIC_DESTINATIONS = ("auto", "azureml", "mlflow", "driver-log")

#: Defaults, documented in the README.
DEFAULT_GRACE_PERIOD = 3.0
DEFAULT_QUEUE_SIZE = 40_000
DEFAULT_BACKEND = "opencensus"

_parse_backend = core_settings.parse_choice(BACKENDS)
_parse_metrics = core_settings.parse_choice(METRIC_DESTINATIONS)


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
    """

    connection_string: str | None = None
    backend: str = DEFAULT_BACKEND
    grace_period: float = DEFAULT_GRACE_PERIOD
    queue_size: int = DEFAULT_QUEUE_SIZE
    all_ranks: bool = False
    metrics_to_appinsights: bool = False
    metrics: str = "auto"
    run: Any = None

    def __repr__(self) -> str:  # never show the connection string
        shown = dataclasses.replace(self, connection_string="****" if self.connection_string else None)
        fields = ", ".join(f"{f.name}={getattr(shown, f.name)!r}" for f in dataclasses.fields(shown))
        return f"LogSettings({fields})"


def from_environment(env: Mapping[str, str] | None = None) -> LogSettings:
    """Settings as the environment variables give them (documented in the README)."""
    env = os.environ if env is None else env
    read = core_settings.read_env
    return LogSettings(
        connection_string=env.get(CONNECTION_STRING_ENV, "").strip() or None,
        backend=read(BACKEND_ENV, _parse_backend, DEFAULT_BACKEND, env),
        grace_period=read(GRACE_ENV, core_settings.parse_timeout, DEFAULT_GRACE_PERIOD, env),
        queue_size=read(QUEUE_ENV, core_settings.parse_positive_int, DEFAULT_QUEUE_SIZE, env),
        all_ranks=read(ALL_RANKS_ENV, core_settings.parse_bool, False, env),
        metrics=read(METRICS_ENV, _parse_metrics, "auto", env),
    )


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
    if "backend" in given:
        given["backend"] = _parse_backend(given["backend"])
    if "metrics" in given:
        given["metrics"] = _parse_metrics(given["metrics"])
    if "grace_period" in given:
        given["grace_period"] = core_settings.parse_timeout(given["grace_period"])
    if "queue_size" in given:
        given["queue_size"] = core_settings.parse_positive_int(given["queue_size"])
    if "all_ranks" in given:
        given["all_ranks"] = core_settings.parse_bool(given["all_ranks"])
    if "metrics_to_appinsights" in given:
        given["metrics_to_appinsights"] = core_settings.parse_bool(given["metrics_to_appinsights"])
    _current = dataclasses.replace(base, **given)
    return _current


def reset() -> None:
    """Forget the settings in force, so the environment is read again (tests use it)."""
    global _current
    _current = None
