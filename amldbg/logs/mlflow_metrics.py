"""Metrics to MLflow tracking (``MLFLOW_TRACKING_URI``, as current Azure ML jobs set it).

``mlflow.log_metric`` blocks for hundreds of milliseconds per call against Azure ML's
tracking server, so metrics are queued and sent from the export thread with
``MlflowClient.log_batch`` (up to 1000 per request). The run is chosen when the metric is
logged, on the caller's thread (MLflow's active run is thread-local): the caller's active
run if mlflow is already imported, else ``MLFLOW_RUN_ID`` (set by Azure ML), else a run
this sink creates once in ``MLFLOW_EXPERIMENT_ID``/``MLFLOW_EXPERIMENT_NAME`` (default
experiment otherwise) and ends at exit.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from amldbg.logs import export

#: MLflow's limit of metrics per ``log_batch`` request.
BATCH_LIMIT = 1000


def caller_run_id() -> str | None:
    """The run id to log to, decided on the caller's thread without importing mlflow."""
    mlflow = sys.modules.get("mlflow")
    if mlflow is not None:
        try:
            active = mlflow.active_run()
        except Exception:
            active = None
        if active is not None:
            return str(active.info.run_id)
    return os.environ.get("MLFLOW_RUN_ID") or None


class MlflowSink(export.Sink):
    """Logs queued metrics through ``MlflowClient.log_batch``."""

    def __init__(self) -> None:
        from mlflow.entities import Metric
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient()
        self._metric = Metric
        self._exception = MlflowException
        self.created_run_id: str | None = None

    def _own_run(self) -> str:
        if self.created_run_id is None:
            experiment_id = os.environ.get("MLFLOW_EXPERIMENT_ID")
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME")
            if not experiment_id and name:
                found = self.client.get_experiment_by_name(name)
                experiment_id = found.experiment_id if found else self.client.create_experiment(name)
            run = self.client.create_run(experiment_id or "0", run_name="amldbg")
            self.created_run_id = str(run.info.run_id)
        return self.created_run_id

    def send(self, batch: list[Any], timeout: float) -> str:
        """One ``log_batch`` per run (and per 1000 metrics); server errors are retried."""
        by_run: dict[str, list[Any]] = {}
        for name, value, step, stamp, run_id in batch:
            metric = self._metric(key=name, value=float(value), timestamp=stamp, step=step or 0)
            by_run.setdefault(run_id or self._own_run(), []).append(metric)
        try:
            for run_id, metrics in by_run.items():
                for start in range(0, len(metrics), BATCH_LIMIT):
                    self.client.log_batch(run_id, metrics=metrics[start:start + BATCH_LIMIT])
        except self._exception as error:
            self.last_error = f"{type(error).__name__}: {str(error)[:200]}"
            status = error.get_http_status_code()
            return export.RETRY if status == 429 or status >= 500 else export.DROP
        except Exception as error:  # connection errors from the REST store
            self.last_error = f"{type(error).__name__}: {str(error)[:200]}"
            return export.RETRY
        return export.OK

    def close(self, timeout: float) -> None:
        """End the run this sink created (a run the user or Azure ML owns is left alone)."""
        if self.created_run_id is not None:
            self.client.set_terminated(self.created_run_id)
