"""A small Application Insights ingestion endpoint on 127.0.0.1, for tests and benchmarks.

It answers ``POST .../v2.1/track`` like the service: the body is a JSON array of
envelopes (or newline-delimited JSON, possibly gzip-compressed), the answer
``{"itemsReceived": n, "itemsAccepted": n, "errors": []}``. It can be told to misbehave:

* ``fail_first=N`` with ``fail_status=503`` (or 429, 500): the first N requests fail;
* ``delay=S``: answer every request after S seconds (a slow endpoint);
* ``hang=True``: never answer (until the server stops);

and :func:`refused_endpoint` gives a connection string whose port nobody listens on.

Run it as a program for the benchmarks (``python ingestion_server.py --port 0``): it
prints ``PORT <n>`` and serves ``GET /stats`` (``{"envelopes": n, "requests": n}``).
"""

from __future__ import annotations

import argparse
import gzip
import json
import socket
import time
import uuid
from http.server import BaseHTTPRequestHandler
from typing import Any

from loopback_server import LoopbackServer


class IngestionServer(LoopbackServer):
    """The endpoint; use as a context manager. ``envelopes`` holds every accepted envelope."""

    def __init__(self, fail_first: int = 0, fail_status: int = 503, delay: float = 0.0,
                 hang: bool = False) -> None:
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.delay = delay
        self.hang = hang
        self.instrumentation_key = str(uuid.uuid4())
        self.envelopes: list[dict[str, Any]] = []
        self.arrival_times: list[float] = []
        self.statuses: list[int] = []
        self.paths: list[str] = []
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
        deadline = time.monotonic() + timeout
        with self._lock:
            while len(self.envelopes) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._lock.wait(min(left, 0.1))
            return list(self.envelopes)

    def _record(self, path: str, status: int, items: list[dict[str, Any]]) -> None:
        with self._lock:
            self.paths.append(path)
            self.statuses.append(status)
            if status == 200:
                self.envelopes.extend(items)
                self.arrival_times.extend([time.monotonic()] * len(items))
            self._lock.notify_all()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def _answer(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                with server._lock:
                    body = {"envelopes": len(server.envelopes), "requests": len(server.statuses)}
                self._answer(200, body)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                if self.headers.get("Content-Encoding", "").lower() == "gzip":
                    raw = gzip.decompress(raw)
                if not self.path.rstrip("/").endswith("/v2.1/track") and not self.path.endswith("/v2/track"):
                    server._record(self.path, 404, [])
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
                    server._record(self.path, server.fail_status, items)
                    self._answer(server.fail_status, {"itemsReceived": len(items), "itemsAccepted": 0,
                                                      "errors": []})
                    return
                server._record(self.path, 200, items)
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
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--hang", action="store_true")
    args = parser.parse_args()
    with IngestionServer(delay=args.delay, hang=args.hang) as server:
        print(f"PORT {server.port} IKEY {server.instrumentation_key}", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
