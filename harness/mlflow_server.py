"""A small MLflow tracking server on 127.0.0.1 (the REST API's shape), for tests and benchmarks.

It answers the endpoints of MLflow's REST API 2.0 that metric logging uses, with the
request and response bodies of ``mlflow/protos/service.proto``:

* ``POST /api/2.0/mlflow/runs/log-batch`` ``{"run_id", "metrics": [{key, value, timestamp, step}]}``
* ``POST /api/2.0/mlflow/runs/log-metric`` ``{"run_id", "key", "value", "timestamp", "step"}``
* ``POST /api/2.0/mlflow/runs/create``, ``POST .../runs/update``, ``GET .../runs/get``
* ``GET /api/2.0/mlflow/experiments/get-by-name``, ``GET .../experiments/get``,
  ``POST .../experiments/create``

Everything else answers ``200 {}`` and is recorded. Errors use MLflow's error body
(``{"error_code": ..., "message": ...}``). It can be told to misbehave like a remote
tracking server does:

* ``delay=S``: answer every request after S seconds (Azure ML's tracking server takes
  about 0.7 s per call);
* ``hang=True``: never answer a metric request (``log-batch``, ``log-metric``) until the
  server stops; ``hang_first=N``: only the first N metric requests hang;
* ``fail_status=500`` with ``fail_first=N`` (N metric requests fail, then they succeed) or
  ``fail_first=-1`` (they always fail); ``retry_after="1"`` (seconds or an HTTP date) is
  sent as ``Retry-After`` with those answers (``fail_status=429``: a throttling server).

Run it as a program for the benchmarks (``python -m harness.mlflow_server --delay 0.7``,
from the repository's root): it prints ``PORT <n>`` and serves ``GET /stats``
(``{"metrics": n, "requests": n}``).
"""

from __future__ import annotations

import json
import time
import uuid
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

from harness.loopback_server import (
    JsonHandler,
    LoopbackServer,
    program_options,
    serve_until_interrupted,
)

PREFIX = "/api/2.0/mlflow/"
METRIC_ENDPOINTS = ("runs/log-batch", "runs/log-metric")


class MlflowServer(LoopbackServer):
    """The tracking server; use as a context manager. ``metrics`` holds every accepted metric
    as ``(run_id, key, value, step)``; ``requests`` every request, ``request_times`` when each came."""

    def __init__(self, delay: float = 0.0, hang: bool = False, hang_first: int = 0,
                 fail_first: int = 0, fail_status: int = 500, retry_after: str | None = None) -> None:
        self.delay = delay
        self.hang = hang
        self.hang_first = hang_first
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.retry_after = retry_after
        self.metrics: list[tuple[str, str, float, int]] = []
        self.requests: list[tuple[str, str, int]] = []  # (method, endpoint, status)
        self.request_times: list[float] = []
        self.runs: dict[str, dict[str, Any]] = {}
        self.experiments: dict[str, str] = {"Default": "0"}
        super().__init__("mlflow-server")

    @property
    def uri(self) -> str:
        """The tracking URI (``MLFLOW_TRACKING_URI``) of this server."""
        return f"http://127.0.0.1:{self.port}"

    def add_run(self, experiment_id: str = "0", name: str = "job") -> str:
        """Create a run as Azure ML does before the job starts (``MLFLOW_RUN_ID``); return its id."""
        return self._create_run(experiment_id, name, int(time.time() * 1000))["info"]["run_id"]

    def wait_for(self, count: int, timeout: float = 20.0) -> list[tuple[str, str, float, int]]:
        """Wait until at least ``count`` metrics arrived (or the timeout); return them all."""
        return self._wait_until(lambda: list(self.metrics), lambda got: len(got) >= count, timeout)

    def wait_for_requests(self, endpoint: str, count: int, timeout: float = 20.0) -> int:
        """Wait until ``count`` requests reached ``endpoint`` (answered or not); return how many."""
        return self._wait_until(lambda: sum(1 for _, path, _ in self.requests if path == endpoint),
                                lambda seen: seen >= count, timeout)

    def _create_run(self, experiment_id: str, name: str, start_time: int) -> dict[str, Any]:
        run_id = uuid.uuid4().hex
        run = {"info": {"run_id": run_id, "run_uuid": run_id, "run_name": name,
                        "experiment_id": experiment_id, "status": "RUNNING",
                        "start_time": start_time, "lifecycle_stage": "active",
                        "artifact_uri": f"mlflow-artifacts:/{experiment_id}/{run_id}/artifacts"},
               "data": {}}
        with self._lock:
            self.runs[run_id] = run
        return run

    def _handle(self, method: str, endpoint: str, query: dict[str, list[str]],
                body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """The answer to one request, without the misbehaviour (applied by the handler)."""
        def missing(what: str) -> tuple[int, dict[str, Any]]:
            return 404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": f"{what} not found"}

        if endpoint == "runs/log-batch" or endpoint == "runs/log-metric":
            run_id = str(body.get("run_id") or body.get("run_uuid") or "")
            if run_id not in self.runs:
                return missing(f"Run '{run_id}'")
            items = body.get("metrics", []) if endpoint == "runs/log-batch" else [body]
            with self._lock:
                for m in items:
                    self.metrics.append((run_id, str(m["key"]), float(m["value"]), int(m.get("step", 0))))
                self._lock.notify_all()
            return 200, {}
        if endpoint == "runs/create":
            run = self._create_run(str(body.get("experiment_id") or "0"), str(body.get("run_name", "")),
                                   int(body.get("start_time") or 0))
            return 200, {"run": run}
        if endpoint == "runs/update":
            run_id = str(body.get("run_id") or body.get("run_uuid") or "")
            if run_id not in self.runs:
                return missing(f"Run '{run_id}'")
            info = self.runs[run_id]["info"]
            if body.get("status"):
                info["status"] = body["status"]
            if body.get("end_time"):
                info["end_time"] = int(body["end_time"])
            return 200, {"run_info": info}
        if endpoint == "runs/get":
            run_id = (query.get("run_id") or query.get("run_uuid") or [""])[0]
            return (200, {"run": self.runs[run_id]}) if run_id in self.runs else missing(f"Run '{run_id}'")
        if endpoint == "experiments/get-by-name":
            name = (query.get("experiment_name") or [""])[0]
            if name not in self.experiments:
                return missing(f"Experiment '{name}'")
            return 200, {"experiment": self._experiment(name)}
        if endpoint == "experiments/get":
            wanted = (query.get("experiment_id") or [""])[0]
            for name, experiment_id in self.experiments.items():
                if experiment_id == wanted:
                    return 200, {"experiment": self._experiment(name)}
            return missing(f"Experiment '{wanted}'")
        if endpoint == "experiments/create":
            name = str(body.get("name", ""))
            with self._lock:
                experiment_id = self.experiments.setdefault(name, str(len(self.experiments)))
            return 200, {"experiment_id": experiment_id}
        return 200, {}

    def _experiment(self, name: str) -> dict[str, Any]:
        return {"experiment_id": self.experiments[name], "name": name, "lifecycle_stage": "active",
                "artifact_location": f"mlflow-artifacts:/{self.experiments[name]}"}

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(JsonHandler):
            def _serve(self, method: str) -> None:
                arrived = time.monotonic()
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                if parts.path == "/stats":
                    with server._lock:
                        self._answer(200, {"metrics": len(server.metrics), "requests": len(server.requests)})
                    return
                endpoint = parts.path[len(PREFIX):] if parts.path.startswith(PREFIX) else parts.path
                query = parse_qs(parts.query)
                try:
                    body = json.loads(raw) if raw else {}
                except json.JSONDecodeError:
                    body = {}
                metric_request = endpoint in METRIC_ENDPOINTS
                with server._lock:
                    hanging = metric_request and (server.hang or server.hang_first > 0)
                    if hanging and not server.hang:
                        server.hang_first -= 1
                if hanging:
                    server._record(method, endpoint, 0, arrived)
                    server._stopping.wait(600)
                    return
                if server.delay:
                    time.sleep(server.delay)
                with server._lock:
                    failing = metric_request and server.fail_first != 0
                    if failing and server.fail_first > 0:
                        server.fail_first -= 1
                if failing:
                    status, answer = server.fail_status, {"error_code": "INTERNAL_ERROR",
                                                          "message": "the test server fails on purpose"}
                    self.retry_after = server.retry_after
                else:
                    status, answer = server._handle(method, endpoint, query, body)
                server._record(method, endpoint, status, arrived)
                self._answer(status, answer)

            def do_GET(self) -> None:
                self._serve("GET")

            def do_POST(self) -> None:
                self._serve("POST")

            def do_PATCH(self) -> None:
                self._serve("PATCH")

        return Handler

    def _record(self, method: str, endpoint: str, status: int, arrived: float) -> None:
        with self._lock:
            self.requests.append((method, endpoint, status))
            self.request_times.append(arrived)
            self._lock.notify_all()


def main() -> None:
    options = program_options(__doc__ or "")
    server = MlflowServer(delay=options.delay, hang=options.hang)
    serve_until_interrupted(server, f"PORT {server.port}")


if __name__ == "__main__":
    main()
