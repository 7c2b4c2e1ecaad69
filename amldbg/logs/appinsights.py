"""Application Insights: the logging handler, and the switch between the two backends.

:class:`AppInsightsHandler` is what :func:`amldbg.get_logger` attaches. Its ``emit`` does
no I/O and takes no lock: it snapshots the message and the user's ``custom_dimensions``
and appends a :func:`~amldbg.logs.envelopes.snapshot` of the record to the background queue
(:mod:`amldbg.logs.export`). The export thread builds the backend's sink on first use:

* ``"opencensus"`` (default): the real OpenCensus ``AzureLogHandler`` builds and posts
  the envelopes (:mod:`amldbg.logs.opencensus_sink`; ``appinsights`` extra);
* ``"otel"``: the Azure Monitor OpenTelemetry log exporter
  (:mod:`amldbg.logs.otel_sink`; ``otel`` extra). OpenCensus was retired in 2024.

Both receive the same records with the same dimensions (:func:`~amldbg.logs.envelopes.dimensions_for`): the run
context (run id, experiment, parent run, step, node address, rank), the process, the
logger's standard fields, then the user's ``extra={"custom_dimensions": {...}}`` merged on
top. Records from the export thread itself (the exporters' transport logs) and from the
exporters' own loggers are never sent, so they cannot loop.
"""

from __future__ import annotations

import hashlib
import logging

from amldbg.core import announce, environment
from amldbg.core.guard import quietly
from amldbg.logs import envelopes, export
from amldbg.logs.connection import ConnectionString
from amldbg.logs.settings import LogSettings

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

#: Said once per process when the connection string asks for Microsoft Entra ID (AAD).
AAD_WARNING = (
    "Application Insights: the connection string asks for Microsoft Entra ID (AAD) "
    "authentication, but amldbg looks up "
    "no credential and sends with the instrumentation key only; a resource "
    "with local authentication disabled refuses that (HTTP 401) and the records are not "
    "delivered. The exporters authenticate with Entra ID only when given a credential object "
    "(azure-identity), which amldbg does not create"
)


def create_sink(backend: str, connection: ConnectionString, settings: LogSettings) -> export.Sink:
    """Build the sink for ``backend`` (called on the export thread: imports are heavy)."""
    envelopes.quiet_exporters()
    if backend == "otel":
        try:
            from amldbg.logs.otel_sink import OtelSink

            with envelopes.exporter_environment():
                return OtelSink(connection)
        except ImportError as error:
            raise RuntimeError(
                f"the OpenTelemetry backend needs azure-monitor-opentelemetry-exporter ({error}); "
                "python -m pip install 'amldbg[otel]'"
            ) from None
    try:
        from amldbg.logs.opencensus_sink import OpenCensusSink

        with envelopes.exporter_environment():
            return OpenCensusSink(connection)
    except ImportError as error:
        raise RuntimeError(
            f"the OpenCensus backend needs opencensus-ext-azure ({error}); "
            "python -m pip install 'amldbg[appinsights]'"
        ) from None


def channel_for(connection: ConnectionString, backend: str, settings: LogSettings) -> export.Channel:
    """This process's queue for one Application Insights resource and backend."""
    # The key identifies the resource without keeping the secret readable in memory dumps.
    digest = hashlib.sha256(connection.value.encode()).hexdigest()[:16]
    # Imported here, by the caller: imported by the export thread while the script forks,
    # it would be half-initialised in the child (see export._forget_half_imports).
    from amldbg.logs import ingestion  # noqa: F401

    exporter = export.get_exporter()
    exporter.grace_period = settings.grace_period
    return exporter.channel(
        key=f"appinsights:{backend}:{digest}",
        name=f"Application Insights ({backend}, {connection.ingestion_endpoint.split('://', 1)[-1]})",
        factory=lambda: create_sink(backend, connection, settings),
        maxlen=settings.queue_size,
        request_timeout=10.0,
        # Building and posting an envelope costs the export thread more of the GIL than
        # the logging call itself: a burst's export waits until the burst is over.
        defer_bursts=True,
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
        self.sends_here = settings.all_ranks or environment.topology().rank == 0
        self._channel: export.Channel | None = None
        if connection.aad and self.sends_here:
            announce.warn_once("appinsights:aad", AAD_WARNING)
        if self.sends_here:
            # Start loading the exporter now, on the export thread: the OpenTelemetry SDK
            # cannot be imported once the interpreter has begun to shut down, so a script
            # that logs and ends at once would otherwise lose its records.
            self._bind()

    def __repr__(self) -> str:
        return f"<AppInsightsHandler {self.backend} {self.connection.masked()}>"

    def _bind(self) -> export.Channel:
        self._channel = channel_for(self.connection, self.backend, self.settings)
        return self._channel

    def handle(self, record: logging.LogRecord) -> bool:  # type: ignore[override,unused-ignore]
        """Filter and emit without the handler lock: :meth:`emit` only appends to a deque."""
        if not self.filters:  # the usual case: no filter to ask
            self.emit(record)
            return True
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
        # Quietly: telemetry never breaks the script, and a warning per record would flood
        # (a bad format string is the user's and already shown by the driver-log handler).
        with quietly():
            channel = self._channel
            if channel is None or channel.generation != export.current_generation():
                channel = self._bind()  # first record, or first record after a fork
            if export.is_export_thread(record.thread):
                return  # made by the exporters while sending: would loop
            try:
                message = record.message  # set when the driver-log handler formatted it
            except AttributeError:
                message = record.getMessage()
            user = record.__dict__.get("custom_dimensions")
            if user is not None:
                user = dict(user) if isinstance(user, dict) else {"custom_dimensions": str(user)}
            channel.put(envelopes.snapshot(record, message, user))

    def flush(self) -> None:
        """Nothing to do here: use :func:`amldbg.logs.flush` to wait for delivery."""
