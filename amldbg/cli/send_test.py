"""``amldbg doctor --send-test``: one marked trace through amldbg's own Application Insights
sink, and the ingestion endpoint's answer in one line.

The backend and connection string are the ones the script would use. The trace is sent
from a thread of its own, so that a hanging endpoint costs at most ``--timeout``; the
exporters' messages made on that thread are kept (they hold the HTTP status and the
service's reason) and never printed, since they may echo the envelope and its key.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http
import json
import logging
import os
import re
import threading
import time
import uuid
from typing import Any, Mapping

from amldbg.cli.checks import (
    Check,
    backend_missing,
    ikey_without_connection_string,
    masked,
    resolve_backend,
    shown,
)
from amldbg.core.guard import describe
from amldbg.logs import connection
from amldbg.logs import settings as log_settings

#: ``--timeout`` of ``--send-test``: seconds for loading the exporter and the ingestion answer.
DEFAULT_SEND_TIMEOUT = 10.0
#: The logger name and the custom dimension that mark the test trace.
SEND_TEST_LOGGER = "amldbg.doctor"
SEND_TEST_DIMENSION = "amldbg_send_test"
SEND_TEST_ID_DIMENSION = "amldbg_send_test_id"
#: Slack after ``--timeout`` for the sending thread to return (a request may overrun its
#: own timeout by a scheduling delay).
_JOIN_MARGIN = 1.0


class _TransportCapture(logging.Handler):
    """Keeps the exporters' messages made on the sending thread, and keeps them from printing.

    A filter on each of the exporters' transport loggers
    (:data:`amldbg.logs.envelopes.TRANSPORT_LOGGERS`) takes the sending thread's records and
    stops them there, so no handler of the script's (or ``logging.lastResort``) prints them;
    as a handler on the exporters' parent loggers it takes what other loggers of theirs say
    on that thread. ``urllib3.connectionpool`` is lowered to DEBUG meanwhile, for its
    ``"POST /v2.1/track HTTP/1.1" 400`` line: the one place both backends show the HTTP
    status of the ingestion answer.
    """

    PARENTS = ("opencensus", "azure", "urllib3", "requests")
    LOUDER = {"urllib3.connectionpool": logging.DEBUG}

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.thread: int | None = None
        self.messages: list[str] = []
        self.keep = False
        self._levels: dict[str, int] = {}
        self._filtered: list[logging.Logger] = []

    def _take(self, record: logging.LogRecord) -> bool:
        """True (and the message kept) for a record made on the sending thread."""
        if self.thread is None or record.thread != self.thread:
            return False
        try:
            self.messages.append(record.getMessage())
        except Exception:
            self.messages.append(str(record.msg))
        return True

    def filter(self, record: logging.LogRecord) -> bool:
        """As a logger filter: the sending thread's records stop here, the others go on."""
        return not self._take(record)

    def emit(self, record: logging.LogRecord) -> None:
        """As a handler on the parent loggers: keep what the sending thread says."""
        self._take(record)

    def handle(self, record: logging.LogRecord) -> bool:
        """Emit without the handler's own filtering (``filter`` is the loggers' side)."""
        self.emit(record)
        return True

    def __enter__(self) -> _TransportCapture:
        from amldbg.logs import envelopes

        for name in envelopes.TRANSPORT_LOGGERS:
            logger = logging.getLogger(name)
            logger.addFilter(self)
            self._filtered.append(logger)
        for name in self.PARENTS:
            logging.getLogger(name).addHandler(self)
        for name, level in self.LOUDER.items():
            logger = logging.getLogger(name)
            self._levels[name] = logger.level
            logger.setLevel(level)
        return self

    def __exit__(self, *exc: Any) -> None:
        for name, level in self._levels.items():
            logging.getLogger(name).setLevel(level)
        if self.keep:
            # The sending thread still runs (a hanging endpoint): its late messages must
            # not be printed either (they may echo the envelope).
            return
        for logger in self._filtered:
            logger.removeFilter(self)
        for name in self.PARENTS:
            logging.getLogger(name).removeHandler(self)


@dataclasses.dataclass
class _Attempt:
    """What happened to the test trace (filled by the sending thread)."""

    loaded: bool = False
    result: str | None = None  # export.OK / RETRY / DROP
    load_error: str = ""
    send_error: str = ""
    last_error: str = ""
    done: threading.Event = dataclasses.field(default_factory=threading.Event)


_HTTP_LINE = re.compile(r'"(?:POST|PUT) [^"]*" (\d{3})\b')
_STATUS_PATTERNS = (
    re.compile(r"\bserver side error (\d{3})\b"),  # OpenCensus
    re.compile(r"\bResponse status: (\d{3})\b"),  # azure-core's HTTP logging policy
    re.compile(r"\bHTTP (\d{3})\b"),  # a sink's last_error
)
_OTEL_REASON = re.compile(r"invalid status '([^']*)'")
_DATA_DROP = re.compile(r"Data drop (\d{3}): (.*?)(?: [\[{(<]|\.?$)")


def _http_status(messages: list[str]) -> int | None:
    status = None
    for message in messages:
        for pattern in (_HTTP_LINE,) + _STATUS_PATTERNS:
            for match in pattern.finditer(message):
                status = int(match.group(1))
    return status


_SINK_REASON = re.compile(r"^HTTP \d{3}: (.+)$")


def _service_reason(messages: list[str]) -> str:
    """The ingestion service's own words: ``errors[].message`` of its JSON answer."""
    reasons: list[str] = []
    for message in messages:
        start = message.find("{")
        while start != -1:
            try:
                body, _ = json.JSONDecoder().raw_decode(message[start:])
            except ValueError:
                start = message.find("{", start + 1)
                continue
            if isinstance(body, dict):
                for error in body.get("errors") or []:
                    if isinstance(error, dict) and error.get("message"):
                        reasons.append(str(error["message"]))
            break
        for match in _DATA_DROP.finditer(message):
            reasons.append(match.group(2))
        sink_said = _SINK_REASON.search(message)
        if sink_said and "{" not in sink_said.group(1):
            reasons.append(sink_said.group(1))  # a sink's last_error: "HTTP 400: <reason>"
    unique = list(dict.fromkeys(reason.strip().rstrip(".") for reason in reasons if reason.strip()))
    return "; ".join(unique)


def _unreachable_cause(messages: list[str], timeout: float) -> str:
    text = " ".join(messages)
    lowered = text.lower()
    if "connection refused" in lowered or "errno 111" in lowered:
        return "connection refused"
    if any(s in lowered for s in ("name or service not known", "nodename nor servname", "getaddrinfo",
                                  "failed to resolve", "nameresolutionerror", "temporary failure in name")):
        return "the endpoint's host name does not resolve"
    if "certificate" in lowered or "ssl" in lowered:
        return "the TLS handshake failed: " + shown(messages[-1])
    if any(s in lowered for s in ("timed out", "time out", "timeout")):
        return f"no answer within {timeout:g} s"
    if messages:
        return shown(messages[-1])
    return "no answer"


def _test_record(test_id: str) -> tuple[Any, ...]:
    from amldbg.logs import context, envelopes

    dims = context.context_dimensions()
    where = f"{dims.get('node_address', 'unknown')} rank {dims.get('rank', '0')} pid {os.getpid()}"
    message = (f"amldbg doctor --send-test: test record {test_id} from {where}; "
               "safe to ignore")
    record = logging.LogRecord(SEND_TEST_LOGGER, logging.INFO, __file__, 0, message, None, None, "send_test")
    user = {SEND_TEST_DIMENSION: "true", SEND_TEST_ID_DIMENSION: test_id}
    return envelopes.snapshot(record, message, user)


def _send(backend: str, parsed: connection.ConnectionString, timeout: float, test_id: str,
          attempt: _Attempt, capture: _TransportCapture) -> None:
    """On the sending thread: build the real sink, send the one record within the time left."""
    deadline = time.monotonic() + timeout
    capture.thread = threading.get_ident()
    try:
        from amldbg.logs import appinsights

        settings = log_settings.LogSettings(connection_string=parsed.value, backend=backend)
        sink = appinsights.create_sink(backend, parsed, settings)
    except Exception as error:
        attempt.load_error = describe(error)
        attempt.done.set()
        return
    attempt.loaded = True
    try:
        attempt.result = sink.send([_test_record(test_id)], max(0.1, deadline - time.monotonic()))
    except Exception as error:
        attempt.send_error = describe(error)
    attempt.last_error = str(getattr(sink, "last_error", "") or "")
    with contextlib.suppress(Exception):
        sink.close(0.5)
    attempt.done.set()


def send_test(env: Mapping[str, str] | None = None, timeout: float = DEFAULT_SEND_TIMEOUT) -> Check:
    """Send one marked trace through the Application Insights sink the script would use.

    The backend and connection string come from ``env`` as in the script
    (``AMLDBG_APPINSIGHTS_BACKEND``, ``APPLICATIONINSIGHTS_CONNECTION_STRING``); the record
    carries the run-context dimensions plus ``amldbg_send_test=true`` and a test id.
    Loading the exporter and the ingestion answer together take at most ``timeout``
    seconds. Returns the ``send test`` check, masked; its ``outcome`` is ``accepted``,
    ``rejected`` (with the service's reason), ``unreachable``, ``malformed``,
    ``not-configured``, ``backend-missing`` (the backend's package) or ``backend-error``
    (the exporter failed to load). Never raises for what it finds.
    """
    env = dict(os.environ if env is None else env)
    return masked([_send_test(env, timeout)], env)[0]


def _send_test(env: Mapping[str, str], timeout: float) -> Check:
    from amldbg.logs import export

    name = "send test"
    raw = env.get(connection.CONNECTION_STRING_ENV, "").strip()
    if not raw:
        ikey = ikey_without_connection_string(env)
        hint = f" ({ikey} alone is not enough)" if ikey else ""
        return Check(name, False, f"not sent: {connection.CONNECTION_STRING_ENV} is not set{hint}",
                     outcome="not-configured")
    try:
        parsed = connection.parse_connection_string(raw)
    except ValueError as error:
        return Check(name, False, f"not sent: malformed connection string: {error}", outcome="malformed")
    backend, _ = resolve_backend(env)
    missing = backend_missing(backend)
    if missing is not None:
        return Check(name, False, f"not sent: {missing}", outcome="backend-missing")
    endpoint = parsed.ingestion_endpoint
    test_id = uuid.uuid4().hex[:16]
    attempt = _Attempt()
    started = time.monotonic()
    with _TransportCapture() as capture:
        thread = threading.Thread(
            target=_send, args=(backend, parsed, timeout, test_id, attempt, capture),
            name="amldbg-doctor-send", daemon=True,
        )
        thread.start()
        attempt.done.wait(timeout + _JOIN_MARGIN)
        capture.keep = not attempt.done.is_set()
        messages = list(capture.messages)
    took = time.monotonic() - started
    if attempt.last_error:
        messages.append(attempt.last_error)
    via = f"{backend} exporter"
    if not attempt.done.is_set():
        if not attempt.loaded:
            return Check(name, False, f"not sent: the {via} did not load within {timeout:g} s "
                         "(try a longer --timeout)", outcome="backend-error")
        return Check(name, False, f"unreachable: {endpoint} gave no answer within {timeout:g} s ({via})",
                     outcome="unreachable")
    if attempt.load_error:
        return Check(name, False, f"not sent: the {via} could not be loaded: {shown(attempt.load_error)}",
                     outcome="backend-error")
    if attempt.result == export.OK:
        return Check(
            name, True,
            f"accepted by {endpoint} in {took:.1f} s ({via}); find it with: traces | where "
            f"customDimensions.{SEND_TEST_ID_DIMENSION} == '{test_id}'",
            outcome="accepted",
        )
    status = _http_status(messages)
    if status is not None:
        try:
            phrase = http.HTTPStatus(status).phrase
        except ValueError:
            otel = [m.group(1) for text in messages for m in _OTEL_REASON.finditer(text)]
            phrase = otel[-1] if otel else ""
        reason = _service_reason(messages)
        retry = ("a temporary error: the script keeps such records and retries"
                 if attempt.result == export.RETRY else "the script drops such records")
        said = f": {shown(reason)}" if reason else " (the service gave no reason)"
        return Check(name, False, f"rejected by {endpoint}: HTTP {status} {phrase}{said}; {retry} ({via})",
                     outcome="rejected")
    cause = _unreachable_cause(messages + ([attempt.send_error] if attempt.send_error else []), timeout)
    return Check(name, False, f"unreachable: {endpoint}: {cause} ({via})", outcome="unreachable")
