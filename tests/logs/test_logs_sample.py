"""samples/logging_demo.py runs locally and reaches every destination it is given."""

from __future__ import annotations

from pathlib import Path

import pytest
from logs_support import start_child

from harness.ingestion_server import IngestionServer, kind, message

SAMPLE = Path(__file__).resolve().parents[2] / "samples" / "logging_demo.py"


def test_local_run_prints_lines_and_metrics(tmp_path: Path) -> None:
    with start_child(SAMPLE) as child:
        assert child.wait(60) == 0, child.output
    assert "INFO logging_demo: metrics go to: driver-log" in child.output
    assert "amldbg metric: loss = " in child.output and "(step 2)" in child.output
    assert "amldbg metric: epochs = 3" in child.output
    assert "WARNING some.library: a library's own logging call, routed too" in child.output
    assert "warning" not in child.output.replace("WARNING", "")


@pytest.mark.parametrize("backend", ["opencensus", "otel"])
def test_with_application_insights_and_mlflow(tmp_path: Path, backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps its file store behind this
    store = (tmp_path / "mlruns").as_uri()
    with IngestionServer() as server:
        with start_child(SAMPLE, AMLDBG_LOG_GRACE_PERIOD="60", AMLDBG_APPINSIGHTS_BACKEND=backend, APPLICATIONINSIGHTS_CONNECTION_STRING=server.connection_string,
                         MLFLOW_TRACKING_URI=store) as child:
            assert child.wait(60) == 0, child.output
        envelopes = server.wait_for(7, timeout=10)
    assert "metrics go to: mlflow" in child.output
    texts = [message(e).splitlines()[0] for e in envelopes]
    assert "epoch 2 finished" in texts and "a library's own logging call, routed too" in texts
    assert any(kind(e) == "ExceptionData" for e in envelopes)
    client = MlflowClient(tracking_uri=store)
    (run,) = client.search_runs(["0"])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [0, 1, 2]
