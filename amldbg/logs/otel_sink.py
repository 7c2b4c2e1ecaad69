"""Application Insights through the Azure Monitor OpenTelemetry log exporter (``otel`` extra).

The exporter is driven directly (no ``LoggerProvider``) through its public seams only:
amldbg's export thread turns each queued record into an OpenTelemetry log record and calls
``AzureMonitorLogExporter.export``; the HTTP requests go through an azure-core transport
given to the exporter with the standard ``transport=`` keyword (:class:`_Transport`), which
bounds every request by the time amldbg allows and tells whether a failure is worth a
retry (``export`` itself only says success or failure). Nothing of the exporter's private
API is touched: its generated client changed shape across releases (1.0.0b40 and older
read ``self.track.metadata``, so replacing ``client.track`` dropped every record).

Differences from the OpenCensus backend that are evened out here:

* ``custom_dimensions`` is not unpacked by this exporter (it would arrive as one string
  property): the merged dimensions become the record's attributes one by one;
* exceptions become ``exception.type`` / ``exception.message`` / ``exception.stacktrace``
  attributes, which the exporter turns into exception telemetry;
* a partial success (206) is a failure to ``export`` (it would keep the retryable items in
  its offline storage, which is off): the transport reads the answer, and the sink
  re-sends only the items the service asks for again and counts the rejected ones
  (:func:`~amldbg.logs.ingestion.settle_partial`, as the OpenCensus sink does);
  ``Retry-After`` paces the channel;
* azure-core's own retry policy is off (``retry_total=0``; amldbg retries with back-off),
  offline storage is off, the client-side rate limit is off, no AAD credential is looked
  up (it could call the metadata endpoint), and every request's timeouts are the time
  left at exit.

The SDK's log record classes live in ``opentelemetry.sdk._logs``, the only place the SDK
offers them (the exporter's own ``export`` is typed with them); both their shapes (before
and after SDK 1.39) are handled.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import traceback
from typing import Any, Callable

from amldbg.core import announce
from amldbg.logs import envelopes, export, ingestion
from amldbg.logs.connection import ConnectionString

#: HTTP statuses the exporter itself retries (throttling, server errors, and 401/403, which
#: a token refresh can heal); anything else that failed is not retried by amldbg either.
RETRYABLE_STATUSES = frozenset({401, 403, 408, 429, 439, 500, 502, 503, 504})


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


class Outcome:
    """What the transport saw of the last request: a status code or an error, the answer of
    a partial success or a refusal, the ``Retry-After`` asked for, and the timeout."""

    def __init__(self, secret: str = "") -> None:
        #: The instrumentation key, masked in what is kept of the answer.
        self.secret = secret
        self.timeout = 10.0
        self.status: int | None = None
        self.error: BaseException | None = None
        self.answer: ingestion.TrackAnswer | None = None
        self.retry_after: float | None = None
        self.requests = 0

    def reset(self, timeout: float) -> None:
        """Forget the last request; the next ones get ``timeout`` seconds each."""
        self.timeout = timeout
        self.status = None
        self.error = None
        self.answer = None
        self.retry_after = None
        self.requests = 0

    def note(self, response: Any) -> None:
        """Keep what amldbg needs of an answer (the body only when it is not a plain success)."""
        status = self.status = int(response.status_code)
        self.error = None
        self.answer = None
        self.retry_after = None
        if status == 200:
            return
        try:
            text = response.text()
        except Exception:  # parsing: an unreadable body; the status says enough
            text = ""
        self.answer = ingestion.parse_track_answer(status, text, self.secret)
        header = getattr(getattr(response, "headers", None), "get", None)
        if callable(header):
            self.retry_after = ingestion.retry_after_seconds(header("Retry-After"))


def _transport_class() -> Callable[..., Any]:
    """An azure-core ``RequestsTransport`` that applies amldbg's timeout and notes the outcome.

    ``transport=`` is the keyword every azure-core client accepts and ``send`` is the
    transport interface azure-core documents for custom transports, so this works across
    exporter releases whatever their generated client looks like.
    """
    from azure.core.pipeline.transport import RequestsTransport

    class _Transport(RequestsTransport):  # type: ignore[misc,unused-ignore]
        def __init__(self, outcome: Outcome, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.outcome = outcome

        def send(self, request: Any, **kwargs: Any) -> Any:
            outcome = self.outcome
            # The time amldbg allows, whatever the exporter or its pipeline asked for.
            kwargs["connection_timeout"] = outcome.timeout
            kwargs["read_timeout"] = outcome.timeout
            outcome.requests += 1
            try:
                response = super().send(request, **kwargs)
            except BaseException as error:  # not a catch: noted for the outcome, then raised on
                outcome.status, outcome.error = None, error
                raise
            outcome.note(response)
            return response

    return _Transport


class OtelSink(export.Sink):
    """Sends queued records with ``AzureMonitorLogExporter``."""

    def __init__(self, connection: ConnectionString) -> None:
        envelopes.quiet_exporters()
        from azure.monitor.opentelemetry.exporter import AzureMonitorLogExporter
        from opentelemetry._logs import SeverityNumber
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        self.connection = connection
        self._severity_number = SeverityNumber
        self._scope = InstrumentationScope
        self._cache = envelopes.CachedEnvelopes()
        self.outcome = Outcome(connection.instrumentation_key)
        self._bypass_reported = False
        transport = _transport_class()(self.outcome, connection_timeout=10.0, read_timeout=10.0)
        self.exporter = AzureMonitorLogExporter(
            connection_string=connection.value,
            credential=None,
            disable_offline_storage=True,
            retry_total=0,
            max_envelopes_per_second=0,
            timeout=10.0,
            transport=transport,
        )
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
                return ReadableLogRecord(log_record=log_record, resource=self.resource,
                                         instrumentation_scope=scope)
        except ImportError:  # opentelemetry-sdk before 1.39: the SDK's LogRecord in a LogData
            from opentelemetry.sdk import _logs as sdk_logs

            LogData = getattr(sdk_logs, "LogData")  # noqa: N806, B009 - absent from new stubs
            sdk_record = getattr(sdk_logs, "LogRecord")  # noqa: B009
            resource = self.resource

            def with_resource(**fields: Any) -> Any:
                # The resource goes to the constructor: made without one, the SDK's LogRecord
                # (1.33, which the inference server 1.5 pins, among others) runs
                # Resource.create({}), the resource detectors on a new thread pool, for every
                # record: 3.5 ms each instead of 13 us, and once the interpreter is shutting
                # down it fails ("cannot schedule new futures after interpreter shutdown"), so
                # the records sent by the exit flush were dropped.
                return sdk_record(resource=resource, **fields)

            record_class = with_resource

            def wrap(log_record: Any, scope: Any) -> Any:
                return LogData(log_record=log_record, instrumentation_scope=scope)

        self._wrap = wrap
        self._log_record = record_class

    def _readable(self, item: Any) -> Any:
        original = envelopes.Snapshot._make(item)
        attributes: dict[str, Any] = dict(envelopes.dimensions_for(original))
        if original.exc_info and original.exc_info[0] is not None:
            exc_type, exc_value, exc_tb = original.exc_info
            attributes["exception.type"] = exc_type.__name__
            # The log message, as OpenCensus sends it and as exporters from 1.0.0b22 on take
            # it (the body wins there); older ones would show only the exception's text,
            # which the stack trace's last line carries anyway.
            attributes["exception.message"] = original.message or str(exc_value)
            attributes["exception.stacktrace"] = "".join(traceback.format_exception(exc_type, exc_value, exc_tb))
        log_record = self._log_record(
            timestamp=int(original.created * 1e9),
            observed_timestamp=time.time_ns(),
            severity_text=original.levelname,
            severity_number=self._severity_number(_severity(original.levelno)),
            body=original.message,
            attributes=attributes,
        )
        return self._wrap(log_record, self._scope(original.name))

    def send(self, batch: list[Any], timeout: float) -> str:
        """Export the batch with the exporter's public ``export``; map the outcome to ours."""
        records = self._cache.get(batch, lambda items: envelopes.build_envelopes(items, self._readable))
        outcome = self.outcome
        outcome.reset(timeout)
        result = self.exporter.export(records)
        if getattr(result, "name", "") == "SUCCESS":
            if outcome.requests == 0 and records and not self._bypass_reported:
                # Delivered without passing through `transport=` (an exporter release that
                # ignores it): records still go, with the exporter's own request timeouts
                # (the exit stays bounded: the export thread is a daemon).
                self._bypass_reported = True
                announce.warn_once("otel:transport", "Application Insights (otel): this exporter "
                                   "release does not use amldbg's transport; request timeouts are its own")
            return export.OK
        self.last_error = self._describe(outcome)
        if outcome.status == 206 and outcome.answer is not None:
            # The exporter turns each record into one envelope, in order: the answer's
            # indexes are the batch's.
            again = ingestion.settle_partial(batch, outcome.answer, self.reject, sent=len(records))
            if not again:
                return export.OK
        elif outcome.error is None and outcome.status not in RETRYABLE_STATUSES:
            return export.DROP
        self.retry_after = outcome.retry_after
        return export.RETRY

    def _describe(self, outcome: Outcome) -> str:
        """A short, key-free description of a failed export."""
        secret = self.connection.instrumentation_key
        said = envelopes.last_transport_message(secret)
        if outcome.error is not None:
            text = f"{type(outcome.error).__name__}: {outcome.error}"
            return text.replace(secret, "****")[:300]
        if outcome.status in (401, 403):
            return (f"HTTP {outcome.status}: the resource may require Microsoft Entra ID (AAD) "
                    "authentication; amldbg sends with the instrumentation key only")
        if outcome.answer is not None:
            return outcome.answer.summary()
        if outcome.status is not None:
            return f"HTTP {outcome.status}" + (f": {said}" if said else "")
        return said or "the exporter did not send the batch"

    def close(self, timeout: float) -> None:
        """Shut the exporter down (it holds no queue of its own here)."""
        self.exporter.shutdown()
