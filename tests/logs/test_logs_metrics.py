"""Metrics: azureml-core's real offline run, a stand-in for a submitted run, MLflow's real file store."""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from logs_support import start_child, write_child

from amldbg.logs import configure_logging, log_metric, log_metrics, metrics
from amldbg.logs import settings as log_settings
from harness.ingestion_server import IngestionServer, message, properties


@pytest.fixture(autouse=True)
def fresh_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test starts from the environment's settings, outside any job and tracking server."""
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "RANK", "WORLD_SIZE", "LOCAL_RANK",
                 "AZUREML_RUN_ID", "AZUREML_RUN_TOKEN", "AMLDBG_METRICS", "AMLDBG_LOG_ALL_RANKS",
                 "APPLICATIONINSIGHTS_CONNECTION_STRING"):
        monkeypatch.delenv(name, raising=False)
    log_settings.reset()
    metrics.reset()
    yield
    log_settings.reset()
    metrics.reset()


def test_offline_metrics_are_readable_driver_log_lines(capsys: pytest.CaptureFixture[str]) -> None:
    assert log_metric("loss", 0.25, step=3) is True
    assert log_metric("accuracy", np.float32(0.5)) is True  # numpy scalar unwrapped
    assert log_metrics({"precision": 0.75, "recall": np.int64(1)}, step=np.int64(7)) == 2
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "amldbg metric: loss = 0.25 (step 3)",
        "amldbg metric: accuracy = 0.5",
        "amldbg metric: precision = 0.75 (step 7)",
        "amldbg metric: recall = 1 (step 7)",
    ]


@pytest.mark.parametrize(
    ("name", "value", "why"),
    [
        ("loss", float("nan"), "value is nan"),
        ("loss", float("inf"), "value is inf"),
        ("loss", "0.5", "value is not a number (str)"),
        ("loss", None, "value is not a number (NoneType)"),
        ("loss", np.array([1.0, 2.0]), "value is not a scalar"),
        ("bad*name", 1.0, "may contain only letters"),
        ("/leading/slash", 1.0, "must not be a path"),
        ("a//b", 1.0, "must not be a path"),
        ("", 1.0, "must be a non-empty string"),
    ],
)
def test_bad_metrics_warn_once_and_never_raise(
    capsys: pytest.CaptureFixture[str], name: str, value: object, why: str
) -> None:
    assert log_metric(name, value) is False
    assert log_metric(name, value) is False
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and out[0].startswith("amldbg: warning: metric"), out
    assert why in out[0]
    assert "not logged" in out[0]


def test_only_rank_zero_logs_metrics_by_default(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert log_metric("loss", 0.5) is False
    assert capsys.readouterr().out == ""
    configure_logging(all_ranks=True, root=False)
    assert log_metric("loss", 0.5) is True
    assert capsys.readouterr().out.strip() == "amldbg metric: [rank 1] loss = 0.5"


def test_real_offline_run_gives_driver_log_lines(capsys: pytest.CaptureFixture[str]) -> None:
    from azureml.core import Run

    from amldbg.logs.run_metrics import is_offline_run

    run = Run.get_context()  # outside Azure ML: azureml-core's real offline run
    assert is_offline_run(run)
    configure_logging(run=run, root=False)
    assert metrics.destination() == "driver-log"
    assert log_metric("accuracy", 0.9, step=1) is True
    out = capsys.readouterr().out
    assert "amldbg metric: accuracy = 0.9 (step 1)" in out
    assert "Attempted to log" not in out  # the offline run's own print was not used


STAND_IN_RUN = '''
class StandInRun:
    """Stand-in for a *submitted* azureml.core.Run (a real one needs a workspace and a job).

    Its methods copy the real class's signatures (checked by the test) and print each call.
    """

    id = "train_run_123"

    def log(self, name, value, description="", step=None):
        print(f"CALL log {name} {value!r} {type(value).__name__} step={step}", flush=True)

    def flush(self, timeout_seconds=300):
        print(f"CALL flush timeout_seconds={timeout_seconds}", flush=True)
'''


def test_submitted_run_gets_run_log_calls_and_a_bounded_flush_at_exit(tmp_path: Path) -> None:
    from azureml.core import Run

    namespace: dict[str, object] = {}
    exec(STAND_IN_RUN, namespace)
    stand_in = namespace["StandInRun"]
    for method in ("log", "flush"):
        assert inspect.signature(getattr(stand_in, method)) == inspect.signature(getattr(Run, method)), method

    script = write_child(tmp_path, STAND_IN_RUN + """
import numpy as np
import amldbg.logs as logs
logs.configure_logging(run=StandInRun(), root=False, grace_period=2)
logs.log_metric("loss", np.float64(0.5), step=1)
logs.log_metric("epochs", np.int64(3))
logs.log_metrics({f"m{i:02d}": i for i in range(50)})
print("SCRIPT END", flush=True)
""")
    with start_child(script) as child:
        assert child.wait(30) == 0, child.output
    calls = [line for line in child.lines if line.startswith("CALL ")]
    assert calls[0] == "CALL log loss 0.5 float step=1"
    assert calls[1] == "CALL log epochs 3 int step=None"
    logged = [c.split()[2] for c in calls if c.startswith("CALL log")]
    assert len(logged) == 50 and logged[-1] == "m47", "a run accepts 50 metric names"
    flushed = re.fullmatch(r"CALL flush timeout_seconds=([0-9.]+)", calls[-1])
    assert flushed and 0 < float(flushed.group(1)) <= 2, "flush gets no more than the grace period"
    assert child.output.count("a run accepts 50 metric names") == 1


def test_a_run_whose_flush_never_returns_does_not_hold_the_exit(tmp_path: Path) -> None:
    # azureml-core's Run.flush waits for each of its two queues in turn and then up to 240 s
    # for ingestion: the grace period (1 s here) must still bound the exit.
    script = write_child(tmp_path, STAND_IN_RUN + """
import time
import amldbg.logs as logs

class StuckRun(StandInRun):
    def flush(self, timeout_seconds=300):
        print(f"CALL flush timeout_seconds={timeout_seconds}", flush=True)
        time.sleep(600)

logs.configure_logging(run=StuckRun(), root=False, grace_period=1)
logs.log_metric("loss", 0.5, step=1)
print("FLUSHED", logs.flush_logs(30), flush=True)
""")
    with start_child(script) as child:
        assert child.wait(30) == 0, child.output  # not 600 s
    assert "FLUSHED True" in child.output
    assert "CALL log loss 0.5 float step=1" in child.output
    flushed = re.search(r"CALL flush timeout_seconds=([0-9.]+)", child.output)
    assert flushed and float(flushed.group(1)) <= 1, child.output
    assert child.output.count("amldbg: warning: Azure ML run metrics: run.flush() did not finish within") == 1


def test_mlflow_metrics_read_back_through_mlflows_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

    # MLflow 3 keeps its file store behind this switch; the file store is what we want here.
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    store = (tmp_path / "mlruns").as_uri()
    own_run = write_child(tmp_path, """
        import time
        from amldbg.logs import log_metric, log_metrics
        slowest = 0.0
        for step in range(5):
            start = time.perf_counter()
            log_metric("loss", 1.0 / (step + 1), step=step)
            slowest = max(slowest, time.perf_counter() - start)
        log_metrics({"acc": 0.9, "f1": 0.8})
        print("SLOWEST %.4f" % slowest, flush=True)
    """, name="own_run.py")
    # A generous grace period: importing mlflow on a busy machine takes seconds, and the
    # script ends right after its last metric.
    with start_child(own_run, MLFLOW_TRACKING_URI=store, AMLDBG_LOG_GRACE_PERIOD="60") as child:
        assert child.wait(60) == 0, child.output
    assert "warning" not in child.output, child.output
    client = MlflowClient(tracking_uri=store)
    runs = client.search_runs(["0"])
    assert len(runs) == 1 and runs[0].info.run_name == "amldbg"
    assert runs[0].info.status == "FINISHED", "the run amldbg created is ended at exit"
    history = client.get_metric_history(runs[0].info.run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(s, 1.0 / (s + 1)) for s in range(5)]
    assert runs[0].data.metrics["acc"] == 0.9 and runs[0].data.metrics["f1"] == 0.8

    users_run = write_child(tmp_path, """
        import mlflow
        from amldbg.logs import log_metric
        with mlflow.start_run(run_name="mine") as run:
            print("RUN", run.info.run_id, flush=True)
            log_metric("inside_users_run", 2.5, step=1)
    """, name="users_run.py")
    with start_child(users_run, MLFLOW_TRACKING_URI=store, AMLDBG_LOG_GRACE_PERIOD="60") as child:
        assert child.wait(60) == 0, child.output
    run_id = re.search(r"RUN (\w+)", child.output).group(1)  # type: ignore[union-attr]
    history = client.get_metric_history(run_id, "inside_users_run")
    assert [(m.step, m.value) for m in history] == [(1, 2.5)]
    assert len(client.search_runs(["0"])) == 2, "no extra run was created"


def test_metrics_can_also_go_to_application_insights(tmp_path: Path) -> None:
    script = write_child(tmp_path, """
        import amldbg.logs as logs
        logs.configure_logging(metrics_to_appinsights=True, root=False)
        logs.log_metric("loss", 0.5, step=2)
        print("FLUSHED", logs.flush_logs(10), flush=True)
    """)
    with IngestionServer() as server:
        with start_child(script, APPLICATIONINSIGHTS_CONNECTION_STRING=server.connection_string,
                         AZUREML_RUN_ID="train_run_123") as child:
            assert child.wait(60) == 0, child.output
        envelopes = server.wait_for(1, timeout=5)
    assert "amldbg metric: loss = 0.5 (step 2)" in child.output
    assert [message(e) for e in envelopes] == ["metric loss = 0.5"]
    props = properties(envelopes[0])
    assert (props["metric_name"], props["metric_value"], props["metric_step"]) == ("loss", "0.5", "2")
    assert props["run_id"] == "train_run_123"
