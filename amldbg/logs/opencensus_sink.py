"""Application Insights through the real OpenCensus ``AzureLogHandler`` (``appinsights`` extra).

The handler is used as an envelope builder and transport, driven by amldbg's export
thread, never attached to a logger. Its own traps are worked around here:

* its worker thread is stopped right after construction: amldbg's thread exports, and
  ``logging.shutdown`` (which closes every handler ever created) then returns at once
  instead of flushing without a time limit;
* local file storage is off (amldbg retries in memory, within the grace period at exit);
* with statsbeat disabled its ``_transmit`` turns a connection error or timeout into
  "drop" (it reads an undefined response); telling it stats collection is on makes it
  return "retry" as intended. Statsbeat itself is not started (that happens only in the
  constructor, with statsbeat disabled) and its request counters stay in memory;
* every request's timeout is the time left when the export thread is at the exit deadline.
"""

from __future__ import annotations

import logging
from typing import Any

from amldbg.logs import envelopes, export
from amldbg.logs.connection import ConnectionString


class OpenCensusSink(export.Sink):
    """Sends queued records with OpenCensus' ``AzureLogHandler``."""

    def __init__(self, connection: ConnectionString) -> None:
        envelopes.quiet_exporters()
        from opencensus.ext.azure.common.transport import TransportStatusCode
        from opencensus.ext.azure.log_exporter import AzureLogHandler

        self.connection = connection
        self._codes = TransportStatusCode
        self.handler = AzureLogHandler(
            connection_string=connection.value,
            enable_local_storage=False,
            grace_period=0.5,
        )
        self.handler._worker.stop(timeout=2.0)
        self.handler._check_stats_collection = lambda: True  # type: ignore[method-assign,unused-ignore]
        self.handler.setFormatter(logging.Formatter("%(message)s"))
        self._cache = envelopes.CachedEnvelopes()

    def _record(self, item: Any) -> logging.LogRecord:
        snap = envelopes.Snapshot._make(item)
        record = logging.LogRecord(snap.name, snap.levelno, snap.pathname, snap.lineno, snap.message,
                                   None, snap.exc_info, snap.func_name)
        record.created = snap.created
        record.msecs = (snap.created - int(snap.created)) * 1000
        record.process = snap.process
        record.processName = snap.process_name
        record.message = snap.message
        record.custom_dimensions = envelopes.dimensions_for(snap)
        return record

    def _build(self, batch: list[Any]) -> list[Any]:
        handler = self.handler
        built = envelopes.build_envelopes(batch, lambda item: handler.log_record_to_envelope(self._record(item)))
        return list(handler.apply_telemetry_processors(built))

    def send(self, batch: list[Any], timeout: float) -> str:
        """Build the envelopes with the handler and post them; map its status to ours."""
        handler = self.handler
        built = self._cache.get(batch, self._build)
        handler.options.timeout = timeout
        status = handler._transmit(built)
        if status == self._codes.SUCCESS:
            return export.OK
        self.last_error = envelopes.last_transport_message(self.connection.instrumentation_key)
        if status == self._codes.RETRY:
            return export.RETRY
        return export.DROP

    def close(self, timeout: float) -> None:
        """Close the handler (its worker is already stopped, so this returns at once)."""
        self.handler.close(timeout=min(timeout, 0.5))
