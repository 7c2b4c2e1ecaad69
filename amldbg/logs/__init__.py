"""Logs and metrics to where people look: the driver log, run metrics, Application Insights.

::

    import amldbg
    log = amldbg.get_logger(__name__)        # driver log (+ Application Insights if configured)
    log.info("loaded %d rows", n, extra={"custom_dimensions": {"table": "train"}})
    amldbg.log_metric("accuracy", 0.95)      # run.log / MLflow / a driver-log line offline

One module per destination: :mod:`.driver_log` (stdout), :mod:`.appinsights` with
:mod:`.opencensus_sink` and :mod:`.otel_sink`, :mod:`.run_metrics` (azureml-core),
:mod:`.mlflow_metrics`, fed through the background export queue :mod:`.export` (whose
SIGTERM flush is :mod:`.termination`); the
sinks share :mod:`.envelopes`, and settings live in :mod:`.settings` and
:mod:`.connection`. This package imports only :mod:`amldbg.core`, never the debugger. Importing this
package imports no exporter, azureml or mlflow; they are imported on the export thread
when a sink that needs them is first used.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from amldbg.core import announce
from amldbg.core.guard import guard, quietly
from amldbg.logs import connection as connections
from amldbg.logs import driver_log, export
from amldbg.logs import settings as log_settings
from amldbg.logs import termination as _termination  # noqa: F401 - flushes on SIGTERM
from amldbg.logs.metrics import log_metric, log_metrics
from amldbg.logs.settings import LogSettings

__all__ = [
    "LogSettings",
    "configure_logging",
    "flush",
    "flush_logs",
    "get_logger",
    "log_metric",
    "log_metrics",
]


def _connection(explicit: str | None, settings: LogSettings) -> connections.ConnectionString | None:
    text = explicit if explicit is not None else settings.connection_string
    if not text:
        return None
    try:
        return connections.parse_connection_string(text)
    except connections.ConnectionStringError as error:
        source = "the connection string given" if explicit is not None else connections.CONNECTION_STRING_ENV
        announce.warn_once(
            f"connection-string:{source}:{error}",
            f"Application Insights is off: {source} is malformed ({error}); "
            "expected InstrumentationKey=<guid>;IngestionEndpoint=https://...  "
            "Logging to the driver log continues.",
        )
        return None


def _handlers(
    settings: LogSettings,
    connection_string: str | None,
    backend: str | None,
    appinsights: bool,
) -> list[logging.Handler]:
    handlers: list[logging.Handler] = [driver_log.make_handler()]
    if appinsights:
        connection = _connection(connection_string, settings)
        if connection is not None:
            from amldbg.logs.appinsights import AppInsightsHandler

            handlers.append(AppInsightsHandler(connection, settings, backend=backend))
    return handlers


def _install(logger: logging.Logger, handlers: list[logging.Handler]) -> None:
    # Replace amldbg's earlier handlers on this logger (calling twice must not double lines);
    # anyone else's handlers stay.
    for old in list(logger.handlers):
        if getattr(old, "amldbg_kind", None):
            logger.removeHandler(old)
    for handler in handlers:
        logger.addHandler(handler)


def _caller_module(depth: int = 2) -> str:
    with quietly():  # a call stack shallower than expected: the user's logger
        return str(sys._getframe(depth).f_globals.get("__name__") or "amldbg.user")
    return "amldbg.user"


def get_logger(
    name: str | None = None,
    *,
    level: int = logging.INFO,
    connection_string: str | None = None,
    backend: str | None = None,
    appinsights: bool = True,
    propagate: bool = False,
) -> logging.Logger:
    """A standard ``logging.Logger`` that writes to the driver log and, when configured, Application Insights.

    ``name`` defaults to the calling module's ``__name__``. The driver-log handler writes
    to ``sys.stdout`` as it is at each record (so redirections apply, e.g. the Azure ML
    inference server's), with ``[rank N]`` in a distributed job; under ParallelRunStep it
    writes through ``EntryScript().logger`` instead. Application Insights is used when
    ``connection_string`` is given or ``APPLICATIONINSIGHTS_CONNECTION_STRING`` is set
    (``appinsights=False`` turns it off); ``backend`` is ``"opencensus"`` (default) or
    ``"otel"``. Records reach Application Insights from a background thread, with the
    run-context custom dimensions. The root logger is not touched and ``propagate`` is
    off by default, so a configured root logger does not print each line twice.
    Calling again for the same name replaces amldbg's handlers, never doubles them.
    Never raises for amldbg's own problems: they are reported as one warning line.
    """
    logger = logging.getLogger(name or _caller_module())
    with guard("get_logger could not set up logging"):
        settings = log_settings.current()
        driver_log.ensure_line_buffered()
        _install(logger, _handlers(settings, connection_string, backend, appinsights))
        logger.setLevel(level)
        logger.propagate = propagate
    return logger


def configure_logging(
    *,
    level: int = logging.INFO,
    connection_string: str | None = None,
    backend: str | None = None,
    root: bool = True,
    grace_period: float | None = None,
    queue_size: int | None = None,
    all_ranks: bool | None = None,
    metrics: str | None = None,
    metrics_to_appinsights: bool | None = None,
    run: Any = None,
) -> LogSettings:
    """Set amldbg's logging and metrics options for the process, and (``root=True``) route all ``logging`` calls.

    With ``root=True`` the root logger gets the driver-log handler (and Application
    Insights when a connection string is known) and ``level``, so existing
    ``logging.info(...)`` calls and libraries' loggers reach the same places; amldbg's
    earlier handlers on the root are replaced, others are kept. The other arguments
    override their environment variables (see :class:`LogSettings`): ``grace_period``
    (``AMLDBG_LOG_GRACE_PERIOD``, default 3 s), ``queue_size`` (``AMLDBG_LOG_QUEUE_SIZE``),
    ``all_ranks`` (``AMLDBG_LOG_ALL_RANKS``), ``metrics`` (``AMLDBG_METRICS``:
    ``auto``/``azureml``/``mlflow``/``driver-log``), ``metrics_to_appinsights`` and an
    explicit azureml-core ``run``. Returns the settings in force.
    """
    try:
        settings = log_settings.update(
            connection_string=connection_string,
            backend=backend,
            grace_period=grace_period,
            queue_size=queue_size,
            all_ranks=all_ranks,
            metrics=metrics,
            metrics_to_appinsights=metrics_to_appinsights,
            run=run,
        )
    except ValueError as error:
        announce.warn(f"configure_logging: {error}; keeping the previous settings")
        settings = log_settings.current()
    with guard("configure_logging could not set up logging"):
        driver_log.ensure_line_buffered()
        if root:
            root_logger = logging.getLogger()
            _install(root_logger, _handlers(settings, None, backend, True))
            root_logger.setLevel(level)
    return settings


def flush_logs(timeout: float | None = None) -> bool:
    """Wait until queued records and metrics are sent, at most ``timeout`` s (default: the grace period).

    Returns True when everything was delivered. Useful before a step hands over to
    something that may kill the process; at a normal exit amldbg flushes by itself.
    """
    exporter = export.existing_exporter()
    if exporter is None:
        return True
    wait = log_settings.current().grace_period if timeout is None else timeout
    with quietly():  # as for a flush that timed out: False says it
        return exporter.flush(wait)
    return False


#: Short alias inside ``amldbg.logs``.
flush = flush_logs
