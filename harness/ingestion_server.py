"""A small Application Insights ingestion endpoint on 127.0.0.1, for tests and benchmarks.

It answers ``POST .../v2.1/track`` like the service: the body is a JSON array of
envelopes (or newline-delimited JSON, possibly gzip-compressed), the answer
``{"itemsReceived": n, "itemsAccepted": n, "errors": []}``. It can be told to misbehave:

* ``fail_first=N`` with ``fail_status=503`` (or 429, 500): the first N requests fail;
  ``retry_after="1"`` (seconds or an HTTP date) is sent as ``Retry-After`` with those answers;
* ``partial=(k, r, status)``: a partial success (206) like the service's: of the envelopes of
  a request that were never seen before (by time and message), the first ``k`` get the
  item status ``status`` (500, 503, 408, 429: to be sent again) and the next ``r`` get 400
  with ``reject_message`` (refused for good); the others, and every envelope seen before,
  are accepted (a request with nothing to refuse is answered 200);
* ``delay=S``: answer every request after S seconds (a slow endpoint);
* ``hang=True``: never answer (until the server stops);

and :func:`refused_endpoint` gives a connection string whose port nobody listens on.

Run it as a program for the benchmarks (``python -m harness.ingestion_server [--delay S]
[--hang]``, from the repository's root): it prints ``PORT <n>`` and serves ``GET /stats``
(``{"envelopes": n, "requests": n}``).
"""

from __future__ import annotations

import gzip
import json
import socket
import time
import uuid
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any

from harness.loopback_server import (
    JsonHandler,
    LoopbackServer,
    program_options,
    serve_until_interrupted,
)


class IngestionServer(LoopbackServer):
    """The endpoint; use as a context manager. ``envelopes`` holds every accepted envelope
    (``arrival_times`` when each was accepted); ``request_times`` when each request came,
    ``statuses`` its answer; with ``partial``, ``asked_again`` and ``rejected`` hold the
    envelopes answered with the retry status and with 400."""

    def __init__(self, fail_first: int = 0, fail_status: int = 503, delay: float = 0.0,
                 hang: bool = False, retry_after: str | None = None,
                 partial: tuple[int, int, int] | None = None,
                 reject_message: str = "Field 'time' on type 'Envelope' is required.") -> None:
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.delay = delay
        self.hang = hang
        self.retry_after = retry_after
        self.partial = partial
        self.reject_message = reject_message
        self.instrumentation_key = str(uuid.uuid4())
        self.envelopes: list[dict[str, Any]] = []
        self.arrival_times: list[float] = []
        self.request_times: list[float] = []
        self.statuses: list[int] = []
        self.paths: list[str] = []
        self.asked_again: list[dict[str, Any]] = []
        self.rejected: list[dict[str, Any]] = []
        self._seen: set[tuple[str, str]] = set()
        super().__init__("ingestion")

    @property
    def endpoint(self) -> str:
        """The ingestion endpoint URL."""
        return f"http://127.0.0.1:{self.port}/"

    @property
    def connection_string(self) -> str:
        """The connection string pointing at this server."""
        return f"InstrumentationKey={self.instrumentation_key};IngestionEndpoint={self.endpoint}"

    def wait_for(self, count: int, timeout: float = 20.0) -> list[dict[str, Any]]:
        """Wait until at least ``count`` envelopes arrived (or the timeout); return them all."""
        return self._wait_until(lambda: list(self.envelopes), lambda got: len(got) >= count, timeout)

    def _record(self, path: str, status: int, items: list[dict[str, Any]], arrived: float) -> None:
        """Note one request; ``items`` are the envelopes it got accepted."""
        with self._lock:
            self.paths.append(path)
            self.statuses.append(status)
            self.request_times.append(arrived)
            if status in (200, 206):
                self.envelopes.extend(items)
                self.arrival_times.extend([time.monotonic()] * len(items))
            self._lock.notify_all()

    def _partial_answer(self, items: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The accepted envelopes and the answer's ``errors`` for one request (``partial``)."""
        assert self.partial is not None
        again, refused, status = self.partial
        accepted: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        fresh = 0
        with self._lock:
            for index, item in enumerate(items):
                key = (str(item.get("time")), message(item))
                if key in self._seen:
                    accepted.append(item)
                    continue
                self._seen.add(key)
                if fresh < again:
                    errors.append({"index": index, "statusCode": status, "message": HTTPStatus(status).phrase})
                    self.asked_again.append(item)
                elif fresh < again + refused:
                    errors.append({"index": index, "statusCode": 400, "message": self.reject_message})
                    self.rejected.append(item)
                else:
                    accepted.append(item)
                fresh += 1
        return accepted, errors

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(JsonHandler):
            def do_GET(self) -> None:
                with server._lock:
                    body = {"envelopes": len(server.envelopes), "requests": len(server.statuses)}
                self._answer(200, body)

            def do_POST(self) -> None:
                arrived = time.monotonic()
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                if self.headers.get("Content-Encoding", "").lower() == "gzip":
                    raw = gzip.decompress(raw)
                if not self.path.rstrip("/").endswith("/v2.1/track") and not self.path.endswith("/v2/track"):
                    server._record(self.path, 404, [], arrived)
                    self._answer(404, {"error": "unknown path"})
                    return
                text = raw.decode("utf-8")
                try:
                    parsed = json.loads(text)
                    items = parsed if isinstance(parsed, list) else [parsed]
                except json.JSONDecodeError:
                    items = [json.loads(line) for line in text.splitlines() if line.strip()]
                if server.hang:
                    server._stopping.wait(120)
                    return
                if server.delay:
                    time.sleep(server.delay)
                with server._lock:
                    failing = server.fail_first > 0
                    if failing:
                        server.fail_first -= 1
                if failing:
                    server._record(self.path, server.fail_status, [], arrived)
                    self.retry_after = server.retry_after
                    self._answer(server.fail_status, {"itemsReceived": len(items), "itemsAccepted": 0,
                                                      "errors": []})
                    return
                if server.partial is not None:
                    accepted, errors = server._partial_answer(items)
                    if errors:
                        server._record(self.path, 206, accepted, arrived)
                        self._answer(206, {"itemsReceived": len(items), "itemsAccepted": len(accepted),
                                           "errors": errors})
                        return
                server._record(self.path, 200, items, arrived)
                self._answer(200, {"itemsReceived": len(items), "itemsAccepted": len(items), "errors": []})

        return Handler


def refused_endpoint() -> str:
    """A connection string for a loopback port with no listener (connections are refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"InstrumentationKey={uuid.uuid4()};IngestionEndpoint=http://127.0.0.1:{port}/"


# -- reading envelopes ---------------------------------------------------------------------
def base_data(envelope: dict[str, Any]) -> dict[str, Any]:
    """The ``data.baseData`` part of an envelope."""
    return dict(envelope.get("data", {}).get("baseData", {}))


def kind(envelope: dict[str, Any]) -> str:
    """``"MessageData"``, ``"ExceptionData"``, ... of an envelope."""
    return str(envelope.get("data", {}).get("baseType", ""))


def message(envelope: dict[str, Any]) -> str:
    """The message of a trace, or of an exception (first exception's message)."""
    data = base_data(envelope)
    if "message" in data:
        return str(data["message"])
    exceptions = data.get("exceptions") or [{}]
    return str(exceptions[0].get("message", ""))


def properties(envelope: dict[str, Any]) -> dict[str, str]:
    """The custom dimensions of an envelope."""
    return dict(base_data(envelope).get("properties") or {})


def main() -> None:
    options = program_options(__doc__ or "")
    server = IngestionServer(delay=options.delay, hang=options.hang)
    serve_until_interrupted(server, f"PORT {server.port} IKEY {server.instrumentation_key}")


if __name__ == "__main__":
    main()
