"""The part every fake service shares: an HTTP server on 127.0.0.1 run on a daemon thread,
used as a context manager, answering JSON (:mod:`harness.ingestion_server`,
:mod:`harness.mlflow_server`), and the same server run as a program for the benchmarks."""

from __future__ import annotations

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, TypeVar

S = TypeVar("S", bound="LoopbackServer")
T = TypeVar("T")


class JsonHandler(BaseHTTPRequestHandler):
    """The request handler every fake service extends: HTTP/1.1, quiet, JSON answers."""

    protocol_version = "HTTP/1.1"

    #: Sent as ``Retry-After`` with the next answer (then forgotten).
    retry_after: str | None = None

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if self.retry_after is not None:
            self.send_header("Retry-After", self.retry_after)
            self.retry_after = None
        self.end_headers()
        self.wfile.write(data)


class LoopbackServer:
    """An HTTP server on a free port of 127.0.0.1; subclasses give :meth:`_handler_class`."""

    def __init__(self, thread_name: str) -> None:
        self._lock = threading.Condition()
        self._stopping = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        # A client that gives up mid-request (the point of several tests) is not an error here.
        self._server.handle_error = lambda request, client_address: None  # type: ignore[method-assign]
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name=thread_name,
                                        daemon=True)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        raise NotImplementedError

    def _wait_until(self, answer: Callable[[], T], enough: Callable[[T], bool], timeout: float) -> T:
        """``answer()``, taken under the lock, once ``enough`` of it arrived or ``timeout`` s
        passed (whichever comes first); the handlers notify the lock as requests arrive."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                value = answer()
                left = deadline - time.monotonic()
                if enough(value) or left <= 0:
                    return value
                self._lock.wait(min(left, 0.1))

    def start(self: S) -> S:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self: S) -> S:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def program_options(description: str) -> argparse.Namespace:
    """The options of a fake service run as a program: ``--delay S`` and ``--hang``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--hang", action="store_true")
    return parser.parse_args()


def serve_until_interrupted(server: LoopbackServer, banner: str) -> None:
    """Run ``server`` as a program: print ``banner`` (it starts ``PORT <n>``, which the
    benchmarks read), then serve until interrupted."""
    with server:
        print(banner, flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
