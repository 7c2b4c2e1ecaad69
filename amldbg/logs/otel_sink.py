"""Application Insights through the Azure Monitor OpenTelemetry log exporter (``otel`` extra).

The exporter is driven directly (no ``LoggerProvider``): amldbg's export thread turns each
queued record into an OpenTelemetry log record and calls the exporter's envelope builder
and transport, so the retry decision (``FAILED_RETRYABLE``) stays visible. Differences
from the OpenCensus backend that are evened out here:

* ``custom_dimensions`` is not unpacked by this exporter (it would arrive as one string
  property): the merged dimensions become the record's attributes one by one;
* exceptions become ``exception.type`` / ``exception.message`` / ``exception.stacktrace``
  attributes, which the exporter turns into exception telemetry;
* azure-core's own retry policy is off (``retry_total=0``; amldbg retries with back-off),
  offline storage is off, the client-side rate limit is off, no AAD credential is looked
  up (it could call the metadata endpoint), and every request's timeouts are the time
  left at exit.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import traceback
from typing import Any

from amldbg.logs import envelopes, export
from amldbg.logs.connection import ConnectionString


def _severity(levelno: int) -> int:
    # OpenTelemetry severity numbers: DEBUG 5, INFO 9, WARN 13, ERROR 17, FATAL 21.
    if levelno >= logging.CRITICAL:
        return 21
    if levelno >= logging.ERROR:
        return 17
    if levelno >= logging.WARNING:
        return 13
    if levelno >= logging.INFO:
        return 9
    return 5


class OtelSink(export.Sink):
    """Sends queued records with ``AzureMonitorLogExporter``."""

    def __init__(self, connection: ConnectionString) -> None:
        envelopes.quiet_exporters()
        from azure.monitor.opentelemetry.exporter import AzureMonitorLogExporter
        from azure.monitor.opentelemetry.exporter.export._base import ExportResult
        from opentelemetry._logs import SeverityNumber
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        self.connection = connection
        self._ok = ExportResult.SUCCESS
        self._retry = ExportResult.FAILED_RETRYABLE
        self._severity_number = SeverityNumber
        self._scope = InstrumentationScope
        self._timeout = 10.0
        self._cache = envelopes.CachedEnvelopes()
        self.exporter = AzureMonitorLogExporter(
            connection_string=connection.value,
            credential=None,
            disable_offline_storage=True,
            retry_total=0,
            max_envelopes_per_second=0,
            timeout=10.0,
        )
        client = self.exporter.client
        track = client.track

        def track_with_timeout(body: Any, **kwargs: Any) -> Any:
            kwargs.setdefault("connection_timeout", self._timeout)
            kwargs.setdefault("read_timeout", self._timeout)
            return track(body, **kwargs)

        client.track = track_with_timeout  # type: ignore[method-assign]
        # The same cloud role OpenCensus reports (the script's file name), for parity.
        role = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python"
        # Resource(...) rather than Resource.create(...): the latter runs the resource
        # detectors on a thread pool, which fails when the first records are sent at exit.
        self.resource = Resource({"service.name": role})
        record_class: Any
        try:
            from opentelemetry._logs import LogRecord as record_class
            from opentelemetry.sdk._logs import ReadableLogRecord

            def wrap(log_record: Any, scope: Any) -> Any:
                return ReadableLogRecord(log_record=log_record, resource=self.resource, instrumentation_scope=scope)
        except ImportError:  # opentelemetry-sdk before 1.39: the SDK's LogRecord in a LogData
            from opentelemetry.sdk import _logs as sdk_logs

            LogData = getattr(sdk_logs, "LogData")  # noqa: N806, B009 - absent from new stubs
            record_class = getattr(sdk_logs, "LogRecord")  # noqa: B009

            def wrap(log_record: Any, scope: Any) -> Any:
                log_record.resource = self.resource
                return LogData(log_record=log_record, instrumentation_scope=scope)

        self._wrap = wrap
        self._log_record = record_class

    def _readable(self, item: Any) -> Any:
        original = envelopes.Snapshot._make(item)
        message = original.message
        attributes: dict[str, Any] = dict(envelopes.dimensions_for(original))
        if original.exc_info and original.exc_info[0] is not None:
            exc_type, exc_value, exc_tb = original.exc_info
            attributes["exception.type"] = exc_type.__name__
            attributes["exception.message"] = str(exc_value)
            attributes["exception.stacktrace"] = "".join(traceback.format_exception(exc_type, exc_value, exc_tb))
        stamp = int(original.created * 1e9)
        log_record = self._log_record(
            timestamp=stamp,
            observed_timestamp=time.time_ns(),
            severity_text=original.levelname,
            severity_number=self._severity_number(_severity(original.levelno)),
            body=message,
            attributes=attributes,
        )
        return self._wrap(log_record, self._scope(original.name))

    def send(self, batch: list[Any], timeout: float) -> str:
        """Build the envelopes with the exporter and post them; map its result to ours."""
        exporter = self.exporter
        built = self._cache.get(
            batch, lambda items: envelopes.build_envelopes(items, lambda item: exporter._log_to_envelope(self._readable(item)))
        )
        self._timeout = timeout
        result = exporter._transmit(built)
        if result == self._ok:
            return export.OK
        self.last_error = envelopes.last_transport_message(self.connection.instrumentation_key)
        if result == self._retry:
            return export.RETRY
        return export.DROP

    def close(self, timeout: float) -> None:
        """Shut the exporter down (it holds no queue of its own here)."""
        self.exporter.shutdown()
