"""Metrics to MLflow tracking (``MLFLOW_TRACKING_URI``, as Azure ML v2 jobs set it).

``mlflow.log_metric`` blocks for hundreds of milliseconds per call against Azure ML's
tracking server (azureml-mlflow ignores MLflow's async logging), so metrics are queued and
sent from an export thread in batches (``runs/log-batch``, up to 1000 metrics a request).
The run is chosen when the metric is logged, on the caller's thread (MLflow's active run
is thread-local): the caller's active run if mlflow is already imported, else
``MLFLOW_RUN_ID`` (set by Azure ML), else a run this sink creates once in
``MLFLOW_EXPERIMENT_ID``/``MLFLOW_EXPERIMENT_NAME`` (default experiment otherwise) and
ends at exit.

Every request keeps to the time the export thread gives it. MLflow's client cannot be told
so per call: it retries each request up to ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` (7) times
with exponential back-off and waits ``MLFLOW_HTTP_REQUEST_TIMEOUT`` (120 s) for each answer,
minutes in all. So against a REST tracking store (``http(s)://``, ``azureml://``,
``databricks``) the requests of MLflow's REST API are made with MLflow's own
``http_request`` (the store's credentials, headers and TLS settings), no retries of its
own and the time given as timeout; amldbg's queue retries with its back-off, and not before
the time a throttling answer's ``Retry-After`` asks for. Local stores (files, databases) go
through ``MlflowClient``.
"""

from __future__ import annotations

import inspect
import os
import sys
import time
from typing import Any, Callable

from amldbg.core import safetext
from amldbg.core.guard import quietly
from amldbg.logs import export, ingestion

#: MLflow's limit of metrics per ``log_batch`` request.
BATCH_LIMIT = 1000
#: Where MLflow's REST API lives below the tracking URI.
API = "/api/2.0/mlflow/"
#: Answers worth retrying (MLflow's own transient codes).
RETRY_STATUS = frozenset((408, 429, 500, 502, 503, 504))


def caller_run_id() -> str | None:
    """The run id to log to, decided on the caller's thread without importing mlflow."""
    mlflow = sys.modules.get("mlflow")
    if mlflow is not None:
        active = None
        with quietly():  # mlflow's failure: the run named by the environment, if any
            active = mlflow.active_run()
        if active is not None:
            return str(active.info.run_id)
    return os.environ.get("MLFLOW_RUN_ID") or None


def _describe(error: BaseException, timeout: float) -> str:
    """A short reason for a failed request: the innermost error, not MLflow's wrapper."""
    root = error
    for _ in range(10):  # the chain is short; bounded anyway
        inner = root.__cause__ or root.__context__
        if inner is None:
            break
        root = inner
    name = type(root).__name__
    if "Timeout" in name or "timed out" in str(root):
        return f"no answer within {timeout:.1f} s ({name})"
    return f"{name}: {safetext.safe(str(root), 120)}"


class RequestFailed(Exception):
    """A REST request failed; ``retry`` says whether sending again may succeed, and
    ``retry_after`` how many seconds the server asked to wait first (None: not asked)."""

    def __init__(self, message: str, retry: bool, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry = retry
        self.retry_after = retry_after


class RestTracking:
    """The requests of MLflow's REST API that metric logging needs, each bounded in time."""

    def __init__(self, store: Any) -> None:
        from mlflow.utils.rest_utils import http_request

        self.get_host_creds: Callable[[], Any] = store.get_host_creds
        self._http_request = http_request
        try:
            accepted = set(inspect.signature(http_request).parameters)
        except (TypeError, ValueError):
            accepted = set()
        # Newer MLflow routes Databricks hosts through the Databricks SDK, which has a
        # retry budget of its own (whole seconds, at least 1).
        self._sdk_budget = "retry_timeout_seconds" in accepted
        # Without these, a 5xx answer surfaces as urllib3's "Max retries exceeded" error
        # instead of the answer (whose status decides between retry and drop).
        self._options: dict[str, Any] = {}
        if "retry_codes" in accepted:
            self._options["retry_codes"] = frozenset()
        if "raise_on_status" in accepted:
            self._options["raise_on_status"] = False

    def call(self, method: str, endpoint: str, timeout: float, body: dict[str, Any] | None = None) -> Any:
        """One request, answered within about ``timeout`` s; the parsed JSON answer."""
        import json

        kwargs: dict[str, Any] = dict(self._options)
        if self._sdk_budget:
            kwargs["retry_timeout_seconds"] = max(1, int(timeout))
        if body is not None:
            kwargs["params" if method == "GET" else "json"] = body
        try:
            response = self._http_request(
                self.get_host_creds(), API + endpoint, method,
                max_retries=0, backoff_factor=0, timeout=max(0.1, timeout), **kwargs,
            )
        except Exception as error:  # not the guard, handed on: refused, timed out, name lookup (MLflow wraps them all)
            raise RequestFailed(_describe(error, timeout), retry=True) from None
        status = int(response.status_code)
        if status != 200:
            retry = status in RETRY_STATUS
            header = getattr(getattr(response, "headers", None), "get", None)
            asked = ingestion.retry_after_seconds(header("Retry-After")) if retry and callable(header) else None
            raise RequestFailed(f"HTTP {status}: {safetext.safe(response.text, 200)}", retry=retry,
                                retry_after=asked)
        try:
            return json.loads(response.text) if response.text.strip() else {}
        except ValueError:
            return {}


def _rest_store(client: Any) -> Any:
    """The client's store when it talks to a REST tracking server, else None.

    ``MlflowClient`` has no public accessor for its store; this reads the one attribute
    path MLflow 2 and 3 share, and any surprise means "not a REST store" (the
    ``MlflowClient`` path, which works but is not bounded per call).
    """
    with quietly():  # any surprise means "not a REST store"
        from mlflow.store.tracking.rest_store import RestStore

        store = client._tracking_client.store
        if isinstance(store, RestStore) and callable(getattr(store, "get_host_creds", None)):
            return store
    return None


class MlflowSink(export.Sink):
    """Logs queued metrics to MLflow: REST requests bounded in time, else ``MlflowClient``."""

    def __init__(self) -> None:
        from mlflow.entities import Metric
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient()
        self._metric = Metric
        self._exception = MlflowException
        store = _rest_store(self.client)
        self.rest = RestTracking(store) if store is not None else None
        self.created_run_id: str | None = None

    # -- the run amldbg creates when nobody gave one ---------------------------------
    def _own_run(self, timeout: float) -> str:
        if self.created_run_id is None:
            experiment_id = os.environ.get("MLFLOW_EXPERIMENT_ID")
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME")
            if self.rest is not None:
                self.created_run_id = self._create_rest_run(experiment_id, name, timeout)
            else:
                if not experiment_id and name:
                    found = self.client.get_experiment_by_name(name)
                    experiment_id = found.experiment_id if found else self.client.create_experiment(name)
                run = self.client.create_run(experiment_id or "0", run_name="amldbg")
                self.created_run_id = str(run.info.run_id)
        return self.created_run_id

    def _create_rest_run(self, experiment_id: str | None, name: str | None, timeout: float) -> str:
        assert self.rest is not None
        deadline = time.monotonic() + timeout

        def left() -> float:
            return max(0.1, deadline - time.monotonic())

        if not experiment_id and name:
            try:
                found = self.rest.call("GET", "experiments/get-by-name", left(), {"experiment_name": name})
                experiment_id = str(found["experiment"]["experiment_id"])
            except RequestFailed as error:
                if "HTTP 404" not in str(error):
                    raise
                made = self.rest.call("POST", "experiments/create", left(), {"name": name})
                experiment_id = str(made["experiment_id"])
        made = self.rest.call("POST", "runs/create", left(), {
            "experiment_id": experiment_id or "0", "run_name": "amldbg",
            "start_time": int(time.time() * 1000),
            "tags": [{"key": "mlflow.runName", "value": "amldbg"}],
        })
        return str(made["run"]["info"]["run_id"])

    # -- sending -------------------------------------------------------------------------
    def send(self, batch: list[Any], timeout: float) -> str:
        """One ``log-batch`` per run (and per 1000 metrics), all within ``timeout`` seconds.

        When a later request fails, what was delivered is removed from ``batch`` (the
        channel's pending list), so the retry does not send it twice.
        """
        deadline = time.monotonic() + timeout
        sent: set[int] = set()
        try:
            groups: dict[str, list[int]] = {}
            for index, item in enumerate(batch):
                groups.setdefault(item[4] or self._own_run(timeout), []).append(index)
            for run_id, indexes in groups.items():
                for start in range(0, len(indexes), BATCH_LIMIT):
                    chunk = indexes[start:start + BATCH_LIMIT]
                    self._log_batch(run_id, [batch[i] for i in chunk], max(0.1, deadline - time.monotonic()))
                    sent.update(chunk)
        except RequestFailed as error:
            self.last_error = str(error)
            if sent:
                batch[:] = [item for index, item in enumerate(batch) if index not in sent]
            if not error.retry:
                return export.DROP
            self.retry_after = error.retry_after
            return export.RETRY
        except self._exception as error:
            self.last_error = f"{type(error).__name__}: {safetext.safe(str(error), 200)}"
            status = error.get_http_status_code()
            return export.RETRY if status in RETRY_STATUS else export.DROP
        except Exception as error:  # not the guard: the client path's failure is a send result
            self.last_error = f"{type(error).__name__}: {safetext.safe(str(error), 200)}"
            return export.RETRY
        return export.OK

    def _log_batch(self, run_id: str, items: list[Any], timeout: float) -> None:
        """Send queued ``(name, value, step, stamp, run_id)`` items to ``run_id``."""
        metrics = [(str(name), float(value), int(step or 0), int(stamp)) for name, value, step, stamp, _ in items]
        if self.rest is not None:
            self.rest.call("POST", "runs/log-batch", timeout, {
                "run_id": run_id,
                "metrics": [{"key": k, "value": v, "step": s, "timestamp": t} for k, v, s, t in metrics],
            })
            return
        self.client.log_batch(run_id, metrics=[
            self._metric(key=k, value=v, timestamp=t, step=s) for k, v, s, t in metrics
        ])

    def close(self, timeout: float) -> None:
        """End the run this sink created (a run the user or Azure ML owns is left alone)."""
        if self.created_run_id is None:
            return
        if self.rest is not None:
            self.rest.call("POST", "runs/update", timeout, {
                "run_id": self.created_run_id, "status": "FINISHED", "end_time": int(time.time() * 1000),
            })
        else:
            self.client.set_terminated(self.created_run_id)
