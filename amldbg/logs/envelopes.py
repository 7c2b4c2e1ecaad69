"""Application Insights envelope helpers shared by both backends' sinks.

What a queued record keeps (:class:`Snapshot`), the custom dimensions every record carries
(:func:`dimensions_for`), keeping the exporters quiet and away from Microsoft's endpoints
(:func:`quiet_exporters`), and building envelopes without starving the callers of the GIL
(:func:`build_envelopes`, :class:`CachedEnvelopes`). The sinks (:mod:`.opencensus_sink`,
:mod:`.otel_sink`) import this module; it imports neither them nor :mod:`.appinsights`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Any, Callable, Iterator, NamedTuple

from amldbg.logs import context, export
from amldbg.logs.connection import (
    CONNECTION_STRING_ENV,
    ConnectionStringError,
    parse_connection_string,
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
        if export.is_export_thread(record.thread):
            try:
                self.last_message = record.getMessage()
            except Exception:  # not the guard: parsing an exporter's record whose arguments do not format
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
    dims: dict[str, str] = dict(context.context_dimensions())
    dims["pid"] = str(snap.process)
    dims["process"] = str(snap.process_name)
    dims["logger_name"] = snap.name
    dims["module"] = str(snap.module)
    dims["fileName"] = str(snap.pathname)
    dims["lineNumber"] = str(snap.lineno)
    dims["level"] = snap.levelname
    add_user_dimensions(dims, snap.user)
    return dims


def add_user_dimensions(dims: dict[str, Any], user: dict[str, Any] | None) -> None:
    """Merge the user's ``custom_dimensions`` into ``dims``, keys and values as strings."""
    if user:
        for key, value in user.items():
            dims[str(key)] = value if isinstance(value, str) else str(value)


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


#: Envelopes built between two pauses of the export thread (see :func:`build_envelopes`):
#: a millisecond or two of work with either sink (the opencensus sink builds a message
#: envelope in a few microseconds), well under the interpreter's 5 ms switch interval. Each
#: pause is a system call that, on a busy machine, can cost the export thread milliseconds.
YIELD_EVERY = 128


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
    """Remembers the envelopes of the batch being retried, so a retry does not rebuild them.

    A sink changes a pending batch in place only by removing items (a partial success, see
    :meth:`amldbg.logs.export.Sink.send`), so a batch whose length changed is built anew.
    """

    def __init__(self) -> None:
        self._batch: list[Any] | None = None
        self._length = 0
        self._envelopes: list[Any] = []

    def get(self, batch: list[Any], build: Callable[[list[Any]], list[Any]]) -> list[Any]:
        """The envelopes for ``batch``, built once per batch object and length."""
        if batch is not self._batch or len(batch) != self._length:
            self._envelopes = build(batch)
            self._batch = batch
            self._length = len(batch)
        return self._envelopes
