"""Application Insights: the logging handler, and the switch between the two backends.

:class:`AppInsightsHandler` is what :func:`amldbg.get_logger` attaches. Its ``emit`` does
no I/O and takes no lock: it snapshots the message and the user's ``custom_dimensions``
and appends a :func:`snapshot` of the record to the background queue
(:mod:`amldbg.logs._queue`). The export thread builds the backend's sink on first use:

* ``"opencensus"`` (default): the real OpenCensus ``AzureLogHandler`` builds and posts
  the envelopes (:mod:`amldbg.logs.opencensus_sink`; ``appinsights`` extra);
* ``"otel"``: the Azure Monitor OpenTelemetry log exporter
  (:mod:`amldbg.logs.otel_sink`; ``otel`` extra). OpenCensus was retired in 2024.

Both receive the same records with the same dimensions (:func:`dimensions_for`): the run
context (run id, experiment, parent run, step, node address, rank), the process, the
logger's standard fields, then the user's ``extra={"custom_dimensions": {...}}`` merged on
top. Records from the export thread itself (the exporters' transport logs) and from the
exporters' own loggers are never sent, so they cannot loop.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
from typing import Any, Callable, Iterator, NamedTuple

from amldbg import _env
from amldbg.logs import _context, _queue
from amldbg.logs._settings import (
    CONNECTION_STRING_ENV,
    ConnectionString,
    ConnectionStringError,
    LogSettings,
    parse_connection_string,
)

#: Loggers whose records are never sent to Application Insights (the exporters' own).
EXCLUDED_LOGGERS = (
    "opencensus",
    "azure.monitor.opentelemetry",
    "azure.core.pipeline",
    "azure.identity",
    "opentelemetry",
    "urllib3",
    "requests",
    "msal",
    "amldbg.logs",
)

#: Loggers the exporters write their transport messages to; a filter on each drops the
#: records made on amldbg's export thread, so they reach no handler anywhere (amldbg
#: reports failures itself, once, without secrets).
TRANSPORT_LOGGERS = (
    "opencensus.ext.azure.common.transport",
    "opencensus.ext.azure.log_exporter",
    "opencensus.ext.azure.common.processor",
    "azure.monitor.opentelemetry.exporter.export._base",
    "azure.monitor.opentelemetry.exporter.export.logs._exporter",
    "azure.monitor.opentelemetry.exporter._storage",
    "azure.core.pipeline.policies.http_logging_policy",
    "azure.core.pipeline.transport._requests_basic",
    "urllib3.connectionpool",
)

#: Variables set (unless the user set them) before an exporter is built: no statsbeat,
#: no OneSettings control plane, no SDK-stats envelopes (which would also reach the
#: user's resource), so nothing goes to Microsoft's endpoints or 169.254.169.254.
QUIET_ENV = {
    "APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL": "true",
    "APPLICATIONINSIGHTS_CONTROLPLANE_DISABLED": "true",
    "APPLICATIONINSIGHTS_SDKSTATS_DISABLED": "true",
}

class Snapshot(NamedTuple):
    """What is kept of a record until it is sent (see :func:`snapshot`)."""

    created: float
    levelno: int
    levelname: str
    name: str
    message: str
    pathname: str
    lineno: int
    module: str
    func_name: str | None
    process: int | None
    process_name: str | None
    exc_info: Any
    user: dict[str, Any] | None


def snapshot(record: logging.LogRecord, message: str, user: dict[str, Any] | None) -> tuple[Any, ...]:
    """A plain tuple of the record's fields (:class:`Snapshot` order).

    Not the record itself: a queue of 20,000 ``LogRecord`` objects (each with its own
    ``__dict__``, its ``args``) keeps megabytes alive and makes every full garbage
    collection walk them, which showed as pauses of tens of milliseconds in callers. A
    tuple of strings and numbers is not tracked by the collector.
    """
    return (record.created, record.levelno, record.levelname, record.name, message,
            record.pathname, record.lineno, record.module, record.funcName, record.process,
            record.processName, record.exc_info, user)


class _ExportThreadFilter(logging.Filter):
    """Drops records made on amldbg's export thread, and remembers the last one's message."""

    def __init__(self) -> None:
        super().__init__()
        self.last_message = ""

    def filter(self, record: logging.LogRecord) -> bool:
        exporter = _queue.existing_exporter()
        if exporter is not None and record.thread == exporter.thread_ident:
            try:
                self.last_message = record.getMessage()
            except Exception:
                self.last_message = str(record.msg)
            return False
        return True


_transport_filter = _ExportThreadFilter()


def quiet_exporters() -> None:
    """Set :data:`QUIET_ENV` defaults and filter the exporters' transport loggers."""
    for name, value in QUIET_ENV.items():
        os.environ.setdefault(name, value)
    for name in TRANSPORT_LOGGERS:
        logger = logging.getLogger(name)
        if _transport_filter not in logger.filters:
            logger.addFilter(_transport_filter)


def last_transport_message(secret: str) -> str:
    """The exporters' last transport message from the export thread, with ``secret`` masked."""
    text = _transport_filter.last_message
    if secret:
        text = text.replace(secret, "****")
    return text[:300]


def dimensions_for(snap: Snapshot) -> dict[str, str]:
    """The custom dimensions of one record: run context, process, logger fields, then the user's."""
    dims: dict[str, str] = dict(_context.context_dimensions())
    dims["pid"] = str(snap.process)
    dims["process"] = str(snap.process_name)
    dims["logger_name"] = snap.name
    dims["module"] = str(snap.module)
    dims["fileName"] = str(snap.pathname)
    dims["lineNumber"] = str(snap.lineno)
    dims["level"] = snap.levelname
    user = snap.user
    if user:
        for key, value in user.items():
            dims[str(key)] = value if isinstance(value, str) else str(value)
    return dims


@contextlib.contextmanager
def exporter_environment() -> Iterator[None]:
    """While an exporter is built, show it a normalised ``APPLICATIONINSIGHTS_CONNECTION_STRING``.

    Both exporters parse that variable even when given a connection string explicitly,
    and OpenCensus fails on a hand-typed one (trailing ``;``, blanks). The variable is
    replaced by amldbg's normalised form (or hidden when it is malformed; that was
    reported once already) and restored afterwards.
    """
    original = os.environ.get(CONNECTION_STRING_ENV)
    if original is None:
        yield
        return
    try:
        os.environ[CONNECTION_STRING_ENV] = parse_connection_string(original).value
    except ConnectionStringError:
        del os.environ[CONNECTION_STRING_ENV]
    try:
        yield
    finally:
        os.environ[CONNECTION_STRING_ENV] = original


#: Envelopes built between two pauses of the export thread (see :func:`build_envelopes`).
YIELD_EVERY = 32


def build_envelopes(batch: list[Any], convert: Callable[[Any], Any]) -> list[Any]:
    """``[convert(item) for item in batch]``, pausing every :data:`YIELD_EVERY` items.

    Building envelopes is pure Python work under the GIL; ``time.sleep(0)`` lets a
    logging call waiting for the GIL run at once instead of after the interpreter's
    switch interval (5 ms), which keeps the callers' latency flat while a batch is built.
    """
    out = []
    for index, item in enumerate(batch):
        out.append(convert(item))
        if index % YIELD_EVERY == YIELD_EVERY - 1:
            time.sleep(0)
    return out


class CachedEnvelopes:
    """Remembers the envelopes of the batch being retried, so a retry does not rebuild them."""

    def __init__(self) -> None:
        self._batch: list[Any] | None = None
        self._envelopes: list[Any] = []

    def get(self, batch: list[Any], build: Callable[[list[Any]], list[Any]]) -> list[Any]:
        """The envelopes for ``batch``, built once per batch object."""
        if batch is not self._batch:
            self._envelopes = build(batch)
            self._batch = batch
        return self._envelopes


def create_sink(backend: str, connection: ConnectionString, settings: LogSettings) -> _queue.Sink:
    """Build the sink for ``backend`` (called on the export thread: imports are heavy)."""
    quiet_exporters()
    if backend == "otel":
        try:
            from amldbg.logs.otel_sink import OtelSink

            with exporter_environment():
                return OtelSink(connection)
        except ImportError as error:
            raise RuntimeError(
                f"the OpenTelemetry backend needs azure-monitor-opentelemetry-exporter ({error}); "
                "python -m pip install 'amldbg[otel]'"
            ) from None
    try:
        from amldbg.logs.opencensus_sink import OpenCensusSink

        with exporter_environment():
            return OpenCensusSink(connection)
    except ImportError as error:
        raise RuntimeError(
            f"the OpenCensus backend needs opencensus-ext-azure ({error}); "
            "python -m pip install 'amldbg[appinsights]'"
        ) from None


def channel_for(connection: ConnectionString, backend: str, settings: LogSettings) -> _queue.Channel:
    """This process's queue for one Application Insights resource and backend."""
    # The key identifies the resource without keeping the secret readable in memory dumps.
    digest = hashlib.sha256(connection.value.encode()).hexdigest()[:16]
    exporter = _queue.get_exporter()
    exporter.grace_period = settings.grace_period
    return exporter.channel(
        key=f"appinsights:{backend}:{digest}",
        name=f"Application Insights ({backend}, {connection.ingestion_endpoint.split('://', 1)[-1]})",
        factory=lambda: create_sink(backend, connection, settings),
        maxlen=settings.queue_size,
        request_timeout=10.0,
    )


class AppInsightsHandler(logging.Handler):
    """A logging handler that queues records for Application Insights; never blocks.

    By default only rank 0 of a distributed job sends (``all_ranks=True`` to change).
    """

    amldbg_kind = "appinsights"

    def __init__(
        self,
        connection: ConnectionString,
        settings: LogSettings,
        backend: str | None = None,
        level: int = logging.NOTSET,
    ) -> None:
        super().__init__(level)
        self.connection = connection
        self.settings = settings
        self.backend = backend or settings.backend
        self.sends_here = settings.all_ranks or _env.topology().rank == 0
        self._channel: _queue.Channel | None = None
        if self.sends_here:
            # Start loading the exporter now, on the export thread: the OpenTelemetry SDK
            # cannot be imported once the interpreter has begun to shut down, so a script
            # that logs and ends at once would otherwise lose its records.
            self._bind()

    def __repr__(self) -> str:
        return f"<AppInsightsHandler {self.backend} {self.connection.masked()}>"

    def _bind(self) -> _queue.Channel:
        self._channel = channel_for(self.connection, self.backend, self.settings)
        return self._channel

    def handle(self, record: logging.LogRecord) -> bool:  # type: ignore[override,unused-ignore]
        """Filter and emit without the handler lock: :meth:`emit` only appends to a deque."""
        result = self.filter(record)
        if result:
            if isinstance(result, logging.LogRecord):
                record = result
            self.emit(record)
        return bool(result)

    def emit(self, record: logging.LogRecord) -> None:
        """Queue the record with its message and a copy of the user's custom dimensions."""
        if not self.sends_here or record.name.startswith(EXCLUDED_LOGGERS):
            return
        try:
            channel = self._channel
            if channel is None or channel.generation != _queue._generation:
                channel = self._bind()  # first record, or first record after a fork
            if record.thread == channel.exporter.thread_ident:
                return  # made by the exporters while sending: would loop
            try:
                message = record.message  # set when the driver-log handler formatted it
            except AttributeError:
                message = record.getMessage()
            user = record.__dict__.get("custom_dimensions")
            if user is not None:
                user = dict(user) if isinstance(user, dict) else {"custom_dimensions": str(user)}
            channel.put(snapshot(record, message, user))
        except Exception:
            # Never let telemetry break the script (a bad format string is the user's
            # and already shown by the driver-log handler).
            pass

    def flush(self) -> None:
        """Nothing to do here: use :func:`amldbg.logs.flush` to wait for delivery."""
