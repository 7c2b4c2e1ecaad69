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
* every request's timeout is the time left when the export thread is at the exit deadline;
* the sink reads the HTTP answer of its own requests (:class:`_ResponseSpy`): ``_transmit``
  says only "success", "retry" or "drop", and says "drop" for a partial success (206)
  whose retryable items it would keep in its local storage, which is off here. With the
  answer, a 206 re-sends only the items the service asks for again and counts the
  rejected ones (:func:`~amldbg.logs.ingestion.settle_partial`), a ``Retry-After`` paces
  the channel, and ``last_error`` is the status and the service's message instead of the
  handler's log line (its "Data drop" line carries the envelope, user data; the transport
  filter of :func:`~amldbg.logs.envelopes.quiet_exporters` keeps it from every handler);
* message envelopes are built directly as plain dicts (:meth:`OpenCensusSink._build`), about
  four times cheaper on the export thread than the handler's ``LogRecord`` → formatter →
  protocol objects, and checked against the handler's own envelope on every batch; the
  properties that are the same for every record of one logging call site are built once.

OpenCensus was retired in 2024 and its last release is 1.1.15, so the ``appinsights`` extra
allows ``>=1.1.9,<1.2`` and tests/logs/test_logs_exporter_versions.py runs both ends. The
private members used here are checked when the sink is built: without ``_transmit`` (the
only way to learn "retry" from "drop") the backend is off with one warning that names the
``otel`` backend; the others only make things faster or quieter and are skipped if absent.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from typing import Any, Iterator

from amldbg.core.guard import quietly
from amldbg.logs import context, envelopes, export, ingestion
from amldbg.logs.connection import ConnectionString

#: Where a queued record keeps its ``exc_info`` (see :class:`~amldbg.logs.envelopes.Snapshot`).
_EXC_INFO = envelopes.Snapshot._fields.index("exc_info")
#: Most call sites whose properties are kept ready (see :meth:`OpenCensusSink._properties`).
_TEMPLATES = 1024


class _ResponseSpy:
    """Stands in for the ``requests`` module in OpenCensus' transport module and remembers,
    on amldbg's export threads only, the last response of ``requests.post``.

    Why a stand-in for a module: ``_transmit`` posts with the module-global ``requests.post``
    of ``opencensus.ext.azure.common.transport`` and returns only a status code, the answer
    itself is lost. OpenCensus was retired (its last release is 1.1.15), so no hook will
    come, and there is no other seam: no session or transport can be given to the handler. Every other attribute (``requests.Timeout``,
    ``requests.RequestException``, which ``_transmit`` catches) is the real module's, and
    other threads' requests (a statsbeat exporter of the user's) are passed through unseen.
    """

    def __init__(self, real: Any) -> None:
        self._real = real
        self._seen = threading.local()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def post(self, *args: Any, **kwargs: Any) -> Any:
        """``requests.post``, remembering the response on an export thread."""
        response = self._real.post(*args, **kwargs)
        if export.is_export_thread(threading.get_ident()):
            self._seen.response = response
        return response

    def forget(self) -> None:
        """Forget this thread's last response (before a request of the sink's own)."""
        self._seen.response = None

    def take(self) -> Any:
        """This thread's last response since :meth:`forget`, or None (no answer came)."""
        response = getattr(self._seen, "response", None)
        self._seen.response = None
        return response


def _install_spy(transport: Any) -> None:
    """Put a :class:`_ResponseSpy` in OpenCensus' ``transport`` module, once per process.

    Without a ``requests`` there to stand in for (a release that posts otherwise) nothing
    is changed and the sink reads no answers (the handler's status codes only). No lock:
    two sinks built at once may both install one, and either serves (see :func:`_spy_of`).
    """
    current = getattr(transport, "requests", None)
    if current is not None and not isinstance(current, _ResponseSpy) and callable(getattr(current, "post", None)):
        transport.requests = _ResponseSpy(current)


@contextlib.contextmanager
def _worker_unstarted(needed: bool) -> Iterator[None]:
    """While ``needed`` (an interpreter that starts no new thread at exit, see
    :data:`amldbg.logs.export.threads_refused`), an ``AzureLogHandler`` being built leaves its
    worker thread unstarted instead of failing."""
    worker_class = None
    if needed:
        from opencensus.ext.azure import log_exporter

        worker_class = getattr(log_exporter, "Worker", None)
    if worker_class is None:
        yield
        return
    own = worker_class.__dict__.get("start")
    worker_class.start = lambda self: None
    try:
        yield
    finally:
        if own is None:
            del worker_class.start
        else:
            worker_class.start = own


def _spy_of(transport: Any) -> _ResponseSpy | None:
    """The spy the transport module posts through now (looked up per request, not kept)."""
    current = getattr(transport, "requests", None)
    return current if isinstance(current, _ResponseSpy) else None


def _as_json(envelope: Any) -> Any:
    """An envelope as the service receives it (the transport's own ``json.dumps``)."""
    return json.loads(json.dumps(envelope, default=str))


class OpenCensusSink(export.Sink):
    """Sends queued records with OpenCensus' ``AzureLogHandler``."""

    def __init__(self, connection: ConnectionString) -> None:
        envelopes.quiet_exporters()
        from opencensus.ext.azure.common import transport
        from opencensus.ext.azure.log_exporter import AzureLogHandler

        self.connection = connection
        self._codes = transport.TransportStatusCode
        with _worker_unstarted(export.threads_refused):
            self.handler = AzureLogHandler(
                connection_string=connection.value,
                enable_local_storage=False,
                grace_period=0.5,
            )
        # amldbg sends through the handler's _transmit on its own export thread: the
        # handler's worker thread is stopped (or was never started) and never used.
        worker = getattr(self.handler, "_worker", None)
        if worker is not None and not worker.is_alive():
            self.handler._worker = None
        elif worker is not None and hasattr(worker, "stop"):
            worker.stop(timeout=2.0)
        transmit = getattr(self.handler, "_transmit", None)
        if not callable(transmit) or not hasattr(self.handler, "log_record_to_envelope"):
            self.handler.close(timeout=0.5)
            raise RuntimeError(
                "this opencensus-ext-azure release lacks what amldbg drives (1.1.9 to 1.1.15 work); "
                "use AMLDBG_APPINSIGHTS_BACKEND=otel"
            )
        self._transmit: Any = transmit
        _install_spy(transport)
        self._transport_module: Any = transport
        if hasattr(self.handler, "_check_stats_collection"):
            self.handler._check_stats_collection = lambda: True  # type: ignore[method-assign,unused-ignore]
        self.handler.setFormatter(logging.Formatter("%(message)s"))
        self._cache = envelopes.CachedEnvelopes()
        #: Properties per call site and run context (see :meth:`_properties`).
        self._templates: dict[tuple[Any, ...], tuple[dict[str, str], dict[str, Any]]] = {}
        self._ikey = self.handler.options.instrumentation_key
        try:
            from opencensus.ext.azure.common.utils import timestamp_to_iso_str

            self._iso: Any = timestamp_to_iso_str
            self._fast_ok = True
        except ImportError:  # only the handler's own envelopes then
            self._fast_ok = False

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

    def _official(self, item: Any) -> Any:
        return self.handler.log_record_to_envelope(self._record(item))

    def _properties(self, snap: envelopes.Snapshot) -> dict[str, Any]:
        """The handler's properties (its own fields, then :func:`~.envelopes.dimensions_for`).

        All but the user's custom dimensions are the same for every record of one logging
        call site, so they are built once per call site and copied."""
        run_context = context.context_dimensions()
        key = (snap.name, snap.module, snap.pathname, snap.lineno, snap.levelname, snap.process,
               snap.process_name)
        found = self._templates.get(key)
        if found is None or found[0] is not run_context:
            if len(self._templates) >= _TEMPLATES:
                self._templates.clear()  # call sites beyond this are rare: start over
            template = {"process": snap.process_name, "module": snap.module,
                        "fileName": snap.pathname, "lineNumber": snap.lineno,
                        "level": snap.levelname}
            template.update(envelopes.dimensions_for(snap._replace(user=None)))
            found = self._templates[key] = (run_context, template)
        properties = dict(found[1])
        envelopes.add_user_dimensions(properties, snap.user)
        return properties

    def _fast(self, item: Any, tags: dict[str, str]) -> dict[str, Any]:
        """The envelope ``log_record_to_envelope`` makes for a record without an exception,
        as plain dicts, without the LogRecord, the formatter and the protocol objects."""
        snap = envelopes.Snapshot._make(item)
        properties = self._properties(snap)
        return {
            "iKey": self._ikey, "tags": tags, "time": self._iso(snap.created),
            "name": "Microsoft.ApplicationInsights.Message",
            "data": {"baseData": {"message": snap.message,
                                  "severityLevel": max(0, snap.levelno - 1) // 10,
                                  "properties": properties, "ver": 2},
                     "baseType": "MessageData"},
        }

    def _build(self, batch: list[Any]) -> list[Any]:
        """The batch's envelopes: the handler's own for the first record of each batch and
        for exceptions, the same envelope built directly for the other records.

        The handler's envelope for a message costs about three times the direct one, on
        the export thread that shares the GIL with the callers. The direct one is checked
        against the handler's on every batch (first record, same JSON); on any difference
        it is never used again in this process (fail-over to the handler's path)."""
        handler = self.handler
        if not batch:
            return []
        fast_ok = self._fast_ok
        first = self._official(batch[0])
        built = [first]
        tags = first.get("tags") if isinstance(first, dict) else None
        if fast_ok and isinstance(tags, dict):
            head = envelopes.Snapshot._make(batch[0])
            if head.exc_info is None or head.exc_info[0] is None:
                same = False
                with quietly():  # the fast path's own failure: the official conversion is kept
                    same = _as_json(self._fast(batch[0], tags)) == _as_json(first)
                if not same:
                    self._fast_ok = fast_ok = False
        else:
            fast_ok = False

        def convert(item: Any) -> Any:
            exc_info = item[_EXC_INFO]
            if fast_ok and (exc_info is None or exc_info[0] is None):
                return self._fast(item, tags)  # type: ignore[arg-type]
            return self._official(item)

        built.extend(envelopes.build_envelopes(batch[1:], convert))
        return list(handler.apply_telemetry_processors(built))

    def send(self, batch: list[Any], timeout: float) -> str:
        """Build the envelopes with the handler and post them; map the answer to ours.

        A partial success (206) leaves in ``batch`` the items the service asks for again
        and rejects the others (see :meth:`export.Sink.send`); a ``Retry-After`` of a
        failed answer is kept in :attr:`retry_after`.
        """
        handler = self.handler
        built = self._cache.get(batch, self._build)
        handler.options.timeout = timeout
        spy = _spy_of(self._transport_module)
        if spy is not None:
            spy.forget()
        status = self._transmit(built)
        response = spy.take() if spy is not None else None
        if status == self._codes.SUCCESS:
            return export.OK
        secret = self.connection.instrumentation_key
        if response is None:  # no answer (refused, timed out): the handler's words
            self.last_error = envelopes.last_transport_message(secret)
            return export.RETRY if status == self._codes.RETRY else export.DROP
        code, text, retry_after = _read(response)
        answer = ingestion.parse_track_answer(code, text, secret)
        self.last_error = answer.summary()
        if code == 206:
            # One envelope per item (the handler has no telemetry processors here), so the
            # answer's indexes are the batch's; `sent` lets the parser check that.
            again = ingestion.settle_partial(batch, answer, self.reject, sent=len(built))
            status = self._codes.RETRY if again else self._codes.SUCCESS
        if status == self._codes.SUCCESS:
            return export.OK
        if status == self._codes.RETRY:
            self.retry_after = ingestion.retry_after_seconds(retry_after)
            return export.RETRY
        return export.DROP

    def close(self, timeout: float) -> None:
        """Close the handler (its worker is already stopped, so this returns at once)."""
        self.handler.close(timeout=min(timeout, 0.5))


def _read(response: Any) -> tuple[int, str, Any]:
    """Status, body and ``Retry-After`` header of a ``requests`` response, whatever it holds."""
    try:
        code = int(response.status_code)
    except Exception:  # parsing: a response without a readable status
        code = 0
    try:
        text = response.text
    except Exception:  # parsing: a body that cannot be decoded
        text = ""
    header = getattr(getattr(response, "headers", None), "get", None)
    retry_after = header("Retry-After") if callable(header) else None
    return code, text if isinstance(text, str) else "", retry_after
