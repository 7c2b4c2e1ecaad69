"""``log_metric``: check the value on the caller's thread, then route it to one destination.

Destinations, decided once per process (``AMLDBG_METRICS`` or
``configure_logging(metrics=...)`` overrides ``"auto"``):

1. an azureml-core ``Run`` given to ``configure_logging(run=...)``, or the job's run when
   inside an Azure ML job with azureml-core installed: ``run.log`` (:mod:`.run_metrics`);
2. MLflow when ``MLFLOW_TRACKING_URI`` is set and mlflow is installed (:mod:`.mlflow_metrics`);
3. otherwise a readable line in the driver log, ``amldbg metric: loss = 0.25 (step 3)``
   (an offline azureml run only prints, too).

Both remote destinations are fed from the background queue. Bad input (NaN, infinity,
non-numbers, names MLflow or Azure ML refuse) gives one ``amldbg: warning:`` line per
metric name and is not logged; nothing raises. Only rank 0 of a distributed job logs
metrics unless ``all_ranks`` is set.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import posixpath
import re
import time
from typing import Any, Mapping

from amldbg.core import announce, environment, forksafe
from amldbg.core.guard import guard
from amldbg.logs import connection, driver_log, export
from amldbg.logs import settings as log_settings

#: What MLflow (the stricter of the two services) accepts in a metric name.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_\-. /:]+$")
MAX_NAME_LENGTH = 250

_lock = forksafe.lock()
# (pid, settings object) -> destination, so a fork or a configure_logging call re-decides.
_decided: tuple[int, int, str] | None = None


def _warn_once(key: str, message: str) -> None:
    announce.warn_once("metrics:" + key, message)


def check_name(name: Any) -> str | None:
    """Why ``name`` cannot be a metric name, or None when it can."""
    if not isinstance(name, str) or not name:
        return "must be a non-empty string"
    if len(name) > MAX_NAME_LENGTH:
        return f"is longer than {MAX_NAME_LENGTH} characters"
    if not NAME_PATTERN.match(name):
        return "may contain only letters, digits and _ - . space / :"
    normal = posixpath.normpath(name)
    if normal != name or normal.startswith(("/", "..")) or normal == ".":
        return "must not be a path that normalises to another name (leading '/', '//', '..')"
    return None


def to_number(value: Any) -> tuple[float | None, str]:
    """``(number, "")`` for a finite real number (numpy/torch scalars unwrapped), else ``(None, why)``."""
    if hasattr(value, "item") and not isinstance(value, (int, float)):
        try:
            value = value.item()  # numpy / torch scalar; azureml would store "np.int64(3)"
        except Exception:  # not the guard: the user's object refused; the caller warns with why
            return None, f"is not a scalar ({type(value).__name__})"
    if isinstance(value, bool):
        return float(value), ""  # MLflow refuses bools
    if not isinstance(value, (int, float)):
        return None, f"is not a number ({type(value).__name__})"
    number = float(value) if isinstance(value, float) else value
    if isinstance(number, float) and not math.isfinite(number):
        return None, f"is {number}"
    return number, ""


def _destination(settings: log_settings.LogSettings) -> str:
    global _decided
    pid = os.getpid()
    decided = _decided
    if decided is not None and decided[0] == pid and decided[1] == id(settings):
        return decided[2]
    choice = settings.metrics
    if settings.run is not None:
        from amldbg.logs.run_metrics import is_offline_run

        choice = "driver-log" if is_offline_run(settings.run) else "azureml"
    elif choice == "auto":
        if environment.run_context().in_job and importlib.util.find_spec("azureml") is not None:
            choice = "azureml"
        elif os.environ.get("MLFLOW_TRACKING_URI") and importlib.util.find_spec("mlflow") is not None:
            choice = "mlflow"
        else:
            choice = "driver-log"
    elif choice == "azureml" and not environment.run_context().in_job:
        choice = "driver-log"  # Run.get_context() would be an offline run, which only prints
    _decided = (pid, id(settings), choice)
    return choice


def destination() -> str:
    """Where metrics go in this process: ``"azureml"``, ``"mlflow"`` or ``"driver-log"``."""
    return _destination(log_settings.current())


def _channel(kind: str, settings: log_settings.LogSettings) -> export.Channel:
    exporter = export.get_exporter()
    exporter.grace_period = settings.grace_period
    if kind == "azureml":
        run = settings.run

        def factory() -> export.Sink:
            try:
                from amldbg.logs.run_metrics import AzureMLRunSink
            except ImportError as error:  # pragma: no cover - the module is ours
                raise RuntimeError(str(error)) from None
            try:
                return AzureMLRunSink(run)
            except ImportError as error:
                raise RuntimeError(
                    f"azureml-core is not installed ({error}); python -m pip install 'amldbg[aml]'"
                ) from None

        return exporter.channel("metrics:azureml", "Azure ML run metrics", factory,
                                maxlen=settings.queue_size, batch_size=1000, interval=1.0)

    def mlflow_factory() -> export.Sink:
        try:
            from amldbg.logs.mlflow_metrics import MlflowSink

            return MlflowSink()
        except ImportError as error:
            raise RuntimeError(
                f"mlflow is not installed ({error}); python -m pip install 'amldbg[mlflow]'"
            ) from None

    return exporter.channel("metrics:mlflow", "MLflow metrics", mlflow_factory,
                            maxlen=settings.queue_size, batch_size=1000, interval=1.0)


def _to_appinsights(settings: log_settings.LogSettings, name: str, value: float, step: int | None) -> None:
    from amldbg.logs import appinsights, envelopes

    if not settings.connection_string:
        return
    try:
        parsed = connection.parse_connection_string(settings.connection_string)
    except connection.ConnectionStringError:
        return  # reported once by the logger set-up
    record = logging.LogRecord("amldbg.metrics", logging.INFO, __file__, 0,
                               f"metric {name} = {value:g}", None, None)
    dims: dict[str, Any] = {"metric_name": name, "metric_value": repr(value)}
    if step is not None:
        dims["metric_step"] = str(step)
    appinsights.channel_for(parsed, settings.backend, settings).put(envelopes.snapshot(record, str(record.msg), dims))


def log_metric(name: str, value: Any, step: int | None = None) -> bool:
    """Log one metric to the run's metrics: Azure ML ``run.log``, MLflow, or the driver log.

    ``value`` must be a finite real number (numpy and torch scalars are unwrapped);
    ``step`` an optional integer. Returns True when the metric was accepted (queued or
    written), False when it was refused (with one warning per name) or when this rank does
    not log metrics. Never raises and never blocks on the network.
    """
    with guard("log_metric failed", key="metrics:internal"):  # amldbg's own failure
        settings = log_settings.current()
        if not settings.all_ranks and environment.topology().rank != 0:
            return False
        why = check_name(name)
        if why is not None:
            _warn_once("name:" + repr(name), f"metric name {name!r} {why}; not logged")
            return False
        number, why = to_number(value)
        if number is None:
            _warn_once("value:" + name, f"metric {name!r}: value {why}; not logged")
            return False
        if step is not None:
            try:
                step = int(step)
            except (TypeError, ValueError):
                _warn_once("step:" + name, f"metric {name!r}: step {step!r} is not an integer; logged without step")
                step = None
        where = _destination(settings)
        if where == "driver-log":
            driver_log.write_metric(name, number, step)
        else:
            run_id = None
            if where == "mlflow":
                from amldbg.logs.mlflow_metrics import caller_run_id

                run_id = caller_run_id()
            _channel(where, settings).put((name, number, step, int(time.time() * 1000), run_id))
        if settings.metrics_to_appinsights:
            _to_appinsights(settings, name, number, step)
        return True
    return False


def log_metrics(metrics: Mapping[str, Any], step: int | None = None) -> int:
    """Log several metrics at once (same rules as :func:`log_metric`); returns how many were accepted."""
    try:
        items = list(metrics.items())
    except Exception as error:  # not the guard: the user's mapping refused, with its own wording
        _warn_once("metrics-mapping", f"log_metrics needs a mapping of name to value ({type(error).__name__})")
        return 0
    return sum(1 for name, value in items if log_metric(name, value, step))


def reset() -> None:
    """Forget the decided destination and the warnings given (tests use it)."""
    global _decided
    with _lock:
        _decided = None
    announce.forget_warnings()
