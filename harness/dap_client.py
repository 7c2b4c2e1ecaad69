"""A small Debug Adapter Protocol client, playing VS Code's part in the tests and benchmarks.

It speaks DAP (Content-Length framed JSON) to debugpy's real adapter, either over TCP (the
script listens, VS Code attaches with ``connect``) or over the stdin/stdout of an adapter
process it starts itself (reverse connect: VS Code's ``listen`` configurations run the
adapter this way, and the script connects to it).
"""

from __future__ import annotations

import contextlib
import json
import queue
import socket
import subprocess
import sys
import threading
import time
from typing import IO, Any, Callable, Iterator

DEFAULT_TIMEOUT = 30.0


class DAPError(AssertionError):
    """The adapter answered a request with ``success: false`` or did not answer in time."""


class DAPClient:
    """One DAP session over a pair of byte streams."""

    def __init__(self, reader: IO[bytes], writer: IO[bytes], close: Callable[[], None]) -> None:
        self._reader = reader
        self._writer = writer
        self._close = close
        self._seq = 0
        self._lock = threading.Lock()
        self._responses: dict[int, dict[str, Any]] = {}
        self._response_ready = threading.Condition()
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen_events: list[dict[str, Any]] = []
        self.output: list[str] = []
        self._thread = threading.Thread(target=self._read_loop, daemon=True)
        self._thread.start()

    # -- transport -----------------------------------------------------------------------
    @classmethod
    def connect(cls, host: str, port: int, timeout: float = DEFAULT_TIMEOUT) -> DAPClient:
        """Connect to an adapter listening on ``host:port``, retrying until ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                sock = socket.create_connection((host, port), timeout=5)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        sock.settimeout(None)
        stream = sock.makefile("rwb", buffering=0)

        def close() -> None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

        return cls(stream, stream, close)  # type: ignore[arg-type]

    def _read_message(self) -> dict[str, Any] | None:
        length = None
        while True:
            line = self._reader.readline()
            if not line:
                return None
            line = line.strip()
            if not line:
                break
            name, _, value = line.decode("ascii").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        if length is None:
            return None
        body = b""
        while len(body) < length:
            chunk = self._reader.read(length - len(body))
            if not chunk:
                return None
            body += chunk
        return json.loads(body.decode("utf-8"))

    def _read_loop(self) -> None:
        try:
            while True:
                message = self._read_message()
                if message is None:
                    break
                if message.get("type") == "response":
                    with self._response_ready:
                        self._responses[message["request_seq"]] = message
                        self._response_ready.notify_all()
                elif message.get("type") == "event":
                    if message.get("event") == "output":
                        self.output.append(message.get("body", {}).get("output", ""))
                    self.seen_events.append(message)
                    self.events.put(message)
                elif message.get("type") == "request":
                    # Reverse requests (runInTerminal, startDebugging) are not used here.
                    self._send(
                        {
                            "type": "response",
                            "request_seq": message["seq"],
                            "success": False,
                            "command": message.get("command"),
                            "message": "not supported by the test client",
                        }
                    )
        except (OSError, ValueError):
            pass
        finally:
            self.events.put({"type": "event", "event": "__closed__"})

    def _send(self, message: dict[str, Any]) -> int:
        with self._lock:
            self._seq += 1
            message["seq"] = self._seq
            data = json.dumps(message).encode("utf-8")
            self._writer.write(b"Content-Length: %d\r\n\r\n" % len(data) + data)
            self._writer.flush()
            return self._seq

    # -- requests and events -------------------------------------------------------------
    def send_request(self, command: str, arguments: dict[str, Any] | None = None) -> int:
        """Send a request and return its sequence number without waiting for the answer."""
        message: dict[str, Any] = {"type": "request", "command": command}
        if arguments is not None:
            message["arguments"] = arguments
        return self._send(message)

    def response(self, seq: int, timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
        """Wait for the response to request ``seq``; raise when it failed or never came."""
        deadline = time.monotonic() + timeout
        with self._response_ready:
            while seq not in self._responses:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DAPError(f"no response to request {seq} within {timeout} s")
                self._response_ready.wait(left)
            answer = self._responses.pop(seq)
        if not answer.get("success"):
            raise DAPError(f"{answer.get('command')} failed: {answer.get('message')}")
        return answer

    def request(
        self, command: str, arguments: dict[str, Any] | None = None, timeout: float = DEFAULT_TIMEOUT
    ) -> dict[str, Any]:
        """Send a request and return its response body."""
        body = self.response(self.send_request(command, arguments), timeout).get("body")
        return body or {}

    def wait_for_event(self, name: str, timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
        """Return the next event called ``name`` (earlier ones of other names are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DAPError(f"no {name!r} event within {timeout} s")
            try:
                event = self.events.get(timeout=left)
            except queue.Empty:
                continue
            if event["event"] == name:
                return event
            if event["event"] == "__closed__":
                self.events.put(event)
                raise DAPError(f"connection closed before a {name!r} event")

    # -- the VS Code sequence ------------------------------------------------------------
    def attach(
        self,
        breakpoints: dict[str, list[int]] | None = None,
        attach_arguments: dict[str, Any] | None = None,
        exception_filters: list[str] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        on_attach_sent: Callable[[], Any] | None = None,
    ) -> None:
        """Do what VS Code does on "attach": initialize, attach, set breakpoints,
        configurationDone, then wait for the attach response.

        ``on_attach_sent`` runs right after the attach request went out: in reverse-connect
        tests it starts the script, which the adapter is now listening for.
        """
        self.request(
            "initialize",
            {
                "clientID": "amldbg-tests",
                "adapterID": "debugpy",
                "linesStartAt1": True,
                "columnsStartAt1": True,
                "pathFormat": "path",
            },
            timeout,
        )
        attach_seq = self.send_request("attach", {"justMyCode": False, **(attach_arguments or {})})
        if on_attach_sent is not None:
            on_attach_sent()
        self.wait_for_event("initialized", timeout)
        for path, lines in (breakpoints or {}).items():
            body = self.request(
                "setBreakpoints",
                {"source": {"path": path}, "breakpoints": [{"line": n} for n in lines]},
                timeout,
            )
            assert all(bp.get("verified") for bp in body["breakpoints"]), body
        self.request("setExceptionBreakpoints", {"filters": exception_filters or []}, timeout)
        self.request("configurationDone", None, timeout)
        self.response(attach_seq, timeout)

    def wait_for_stop(self, timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
        """Wait for a ``stopped`` event and return its body."""
        return self.wait_for_event("stopped", timeout)["body"]

    def top_frame(self, thread_id: int) -> dict[str, Any]:
        """The innermost stack frame of a stopped thread."""
        frames = self.request("stackTrace", {"threadId": thread_id, "levels": 1})["stackFrames"]
        return frames[0]

    def locals_of(self, frame_id: int) -> dict[str, str]:
        """The frame's local variables as ``{name: repr}``."""
        scopes = self.request("scopes", {"frameId": frame_id})["scopes"]
        local_scope = next(s for s in scopes if s["name"].lower().startswith("locals"))
        variables = self.request(
            "variables", {"variablesReference": local_scope["variablesReference"]}
        )["variables"]
        return {v["name"]: v["value"] for v in variables}

    def evaluate(self, expression: str, frame_id: int) -> str:
        """Evaluate ``expression`` in a stopped frame and return the result's repr."""
        body = self.request(
            "evaluate", {"expression": expression, "frameId": frame_id, "context": "repl"}
        )
        return str(body["result"])

    def continue_(self, thread_id: int) -> None:
        """Resume the stopped thread (and, as debugpy does, every other)."""
        self.request("continue", {"threadId": thread_id})

    def disconnect(self) -> None:
        """Detach from the debuggee, leaving it running, and close the connection."""
        with contextlib.suppress(Exception):
            self.request("disconnect", {"terminateDebuggee": False}, timeout=10)
        self.close()

    def close(self) -> None:
        """Close the transport."""
        with contextlib.suppress(Exception):
            self._close()


@contextlib.contextmanager
def listening_adapter(host: str, port: int) -> Iterator[DAPClient]:
    """Play VS Code's ``listen`` configuration: start debugpy's adapter on stdio and ask it to
    listen on ``host:port`` for a script that connects out (``debugpy.connect``).

    The attach request is sent by :meth:`DAPClient.attach` with ``listen`` arguments; this
    context manager starts the adapter process and always ends it.
    """
    adapter = subprocess.Popen(
        [sys.executable, "-m", "debugpy.adapter"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert adapter.stdin is not None and adapter.stdout is not None

    def close() -> None:
        with contextlib.suppress(OSError):
            adapter.stdin.close()  # type: ignore[union-attr]

    client = DAPClient(adapter.stdout, adapter.stdin, close)
    try:
        yield client
    finally:
        client.close()
        try:
            adapter.wait(10)
        except subprocess.TimeoutExpired:
            adapter.kill()
            adapter.wait(10)
