"""Azure ML run metrics through azureml-core's ``Run.log`` (SDK v1 runs; ``aml`` extra).

``Run.get_context()`` is called on the export thread, and only inside a job
(:func:`amldbg.core.environment.run_context` ``.in_job``) or for a run the user handed over: importing
azureml-core takes over a second. What this module knows about the real ``Run``:

* ``Run.log(name, value, description="", step=None)`` queues the value and returns; the
  offline run's ``log(name, value, description="")`` only prints and has no ``step``;
* values must be plain numbers: numpy and torch scalars would be stored as strings such
  as ``"np.int64(3)"`` (the caller converts them, :mod:`amldbg.logs.metrics`);
* a run accepts 50 distinct metric names; later names are refused here with one warning;
* ``Run.flush(timeout_seconds=300)`` waits for the queued values: called at exit within the
  time left in the grace period (azureml-core's own wait can be several times longer, so
  the call is abandoned at that limit), since nothing else flushes outside the job wrapper.
"""

from __future__ import annotations

from typing import Any

from amldbg.core import announce
from amldbg.logs import export

#: Distinct metric names a run accepts.
MAX_METRIC_NAMES = 50


def is_offline_run(run: Any) -> bool:
    """True for the offline run ``Run.get_context()`` returns outside Azure ML."""
    return type(run).__name__ == "_OfflineRun" or str(getattr(run, "id", "")).startswith("OfflineRun_")


def current_run() -> Any:
    """``azureml.core.Run.get_context()`` (imports azureml-core: call it off the main thread)."""
    from azureml.core import Run

    return Run.get_context()


class AzureMLRunSink(export.Sink):
    """Logs queued metrics with ``run.log`` (``run`` given, or the job's own run)."""

    def __init__(self, run: Any = None) -> None:
        self.run = current_run() if run is None else run
        self.names: set[str] = set()

    def _warn_once(self, key: str, message: str) -> None:
        announce.warn_once("run-metrics:" + key, message)

    def send(self, batch: list[Any], timeout: float) -> str:
        """Call ``run.log`` per metric; a refused metric is reported once and skipped."""
        for name, value, step, _stamp, _run_id in batch:
            if name not in self.names:
                if len(self.names) >= MAX_METRIC_NAMES:
                    self._warn_once(
                        "limit",
                        f"Azure ML run metrics: a run accepts {MAX_METRIC_NAMES} metric names; "
                        f"{name!r} and later new names are not logged",
                    )
                    continue
                self.names.add(name)
            try:
                if step is None:
                    self.run.log(name, value)
                else:
                    self.run.log(name, value, step=step)
            except Exception as error:  # not the guard: azureml's failure is the sink's result, per name
                self.last_error = f"{type(error).__name__}: {error}"
                self._warn_once("log:" + name, f"Azure ML run metrics: run.log({name!r}) failed: {self.last_error}")
        return export.OK

    def close(self, timeout: float) -> None:
        """``run.flush`` within ``timeout`` seconds, so queued values reach the run before exit.

        azureml-core waits for each of its two metric queues up to ``timeout_seconds`` in turn
        and then for the service's ingestion (``AZUREML_FLUSH_INGEST_WAIT``, up to 240 s), so
        it gets half the time and is not waited for beyond ``timeout``.
        """
        flush = getattr(self.run, "flush", None)
        if flush is None or is_offline_run(self.run):
            return

        def bounded_flush() -> None:
            try:
                flush(timeout_seconds=round(max(0.1, timeout / 2), 3))
            except TypeError:  # a run class whose flush takes no time limit
                flush()

        finished, _ = export.call_within(bounded_flush, timeout, name="amldbg-run-flush")
        if not finished:
            self.last_error = f"run.flush() did not finish within {timeout:.1f} s"
            self._warn_once("flush", f"Azure ML run metrics: {self.last_error}; values still queued "
                                     "in azureml-core may not reach the run")
