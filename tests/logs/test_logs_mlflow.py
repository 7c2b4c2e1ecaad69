"""MLflow metrics against a REST tracking server on loopback (harness/mlflow_server.py).

The server speaks MLflow's REST API and can be slow, fail with 500 or never answer; the
scripts are real processes running the real MLflow client and amldbg. What is checked is
what a user sees: the metrics that reached the run, the exit code, the warning lines.
Limits on waits are generous bounds on an outcome (a process that would otherwise hang for
minutes), never measurements.
"""

from __future__ import annotations

from pathlib import Path

from logs_support import start_child, start_group, write_child

from harness.ingestion_server import IngestionServer, message
from harness.mlflow_server import MlflowServer

#: Waits until the server has seen ``count`` metric requests (so one is in flight).
WAIT_FOR_REQUEST = """
import json, time, urllib.request

def wait_for_requests(uri, count=1):
    for _ in range(600):
        with urllib.request.urlopen(uri + "/stats", timeout=5) as answer:
            if json.load(answer)["requests"] >= count:
                return
        time.sleep(0.05)
    raise SystemExit("the tracking server never saw the request")
"""


def test_metrics_reach_a_rest_tracking_server_in_batches(tmp_path: Path) -> None:
    script = write_child(tmp_path, """
        import amldbg
        for step in range(300):
            amldbg.log_metric("loss", 1.0 / (step + 1), step=step)
        amldbg.log_metrics({"acc": 0.9, "f1": 0.8}, step=300)
        print("FLUSHED", amldbg.flush_logs(60), flush=True)
    """)
    with MlflowServer() as server:
        run_id = server.add_run()
        with start_child(script, MLFLOW_TRACKING_URI=server.uri, MLFLOW_RUN_ID=run_id) as child:
            assert child.wait(90) == 0, child.output
        metrics = server.wait_for(302, timeout=5)
    assert "FLUSHED True" in child.output and "warning" not in child.output, child.output
    assert sorted((key, step) for run, key, _, step in metrics if run == run_id) == sorted(
        [("loss", s) for s in range(300)] + [("acc", 300), ("f1", 300)])
    endpoints = [endpoint for _, endpoint, _ in server.requests]
    assert "runs/log-metric" not in endpoints
    assert endpoints.count("runs/log-batch") < 30, "metrics are sent in batches, not one request each"


def test_without_a_run_id_amldbg_creates_a_run_and_ends_it_at_exit(tmp_path: Path) -> None:
    script = write_child(tmp_path, """
        import amldbg
        amldbg.log_metric("loss", 0.5, step=1)
        print("FLUSHED", amldbg.flush_logs(60), flush=True)
    """)
    with MlflowServer() as server:
        with start_child(script, MLFLOW_TRACKING_URI=server.uri, MLFLOW_EXPERIMENT_NAME="mine") as child:
            assert child.wait(90) == 0, child.output
        assert "FLUSHED True" in child.output, child.output
        [(run_id, key, value, step)] = server.metrics
        run = server.runs[run_id]["info"]
    assert (key, value, step) == ("loss", 0.5, 1)
    assert run["run_name"] == "amldbg" and run["status"] == "FINISHED"
    assert run["experiment_id"] == server.experiments["mine"]


def test_a_request_that_never_answers_is_given_up_and_sent_again(tmp_path: Path) -> None:
    # MLflow's client would wait MLFLOW_HTTP_REQUEST_TIMEOUT (120 s) for this answer and
    # retry 7 times; amldbg gives each request its own limit and retries itself.
    script = write_child(tmp_path, """
        import amldbg
        amldbg.log_metric("loss", 0.5, step=1)
        print("FLUSHED", amldbg.flush_logs(60), flush=True)
    """)
    with MlflowServer(hang_first=1) as server:
        run_id = server.add_run()
        with start_child(script, MLFLOW_TRACKING_URI=server.uri, MLFLOW_RUN_ID=run_id) as child:
            assert child.wait(90) == 0, child.output
        metrics = server.wait_for(1, timeout=5)
        statuses = [status for _, endpoint, status in server.requests if endpoint == "runs/log-batch"]
    assert "FLUSHED True" in child.output, child.output
    assert metrics == [(run_id, "loss", 0.5, 1)]
    assert statuses == [0, 200], "the hanging request was abandoned and sent once more"
    assert child.output.count("MLflow metrics: sending failed (no answer within") == 1, child.output


def test_server_errors_are_retried_by_amldbg_and_rejections_dropped_once(tmp_path: Path) -> None:
    script = write_child(tmp_path, """
        import amldbg
        amldbg.log_metric("loss", 0.5, step=1)
        print("FLUSHED", amldbg.flush_logs(60), flush=True)
    """)
    with MlflowServer(fail_first=3) as server:
        run_id = server.add_run()
        with start_child(script, MLFLOW_TRACKING_URI=server.uri, MLFLOW_RUN_ID=run_id) as child:
            assert child.wait(90) == 0, child.output
        statuses = [status for _, endpoint, status in server.requests if endpoint == "runs/log-batch"]
        assert server.metrics == [(run_id, "loss", 0.5, 1)]
    assert statuses == [500, 500, 500, 200]
    assert child.output.count("MLflow metrics: sending failed (HTTP 500") == 1, child.output

    with MlflowServer() as server:  # a run that does not exist: 404, not worth retrying
        with start_child(script, MLFLOW_TRACKING_URI=server.uri, MLFLOW_RUN_ID="no-such-run") as child:
            assert child.wait(90) == 0, child.output
        statuses = [status for _, endpoint, status in server.requests if endpoint == "runs/log-batch"]
    assert statuses == [404]
    assert child.output.count("MLflow metrics: a batch of 1 record(s) was rejected and dropped (HTTP 404") == 1


def test_the_exit_is_bounded_when_the_tracking_server_never_answers(tmp_path: Path) -> None:
    script = write_child(tmp_path, WAIT_FOR_REQUEST + """
import os, amldbg
amldbg.log_metric("loss", 0.5, step=1)
wait_for_requests(os.environ["MLFLOW_TRACKING_URI"])
print("SCRIPT END", flush=True)
""")
    with MlflowServer(hang=True) as server:
        run_id = server.add_run()
        with start_child(script, MLFLOW_TRACKING_URI=server.uri, MLFLOW_RUN_ID=run_id,
                         AMLDBG_LOG_GRACE_PERIOD="1") as child:
            assert child.wait(30) == 0, child.output  # grace period 1 s, not MLflow's minutes
    assert "SCRIPT END" in child.output
    assert "MLflow metrics: 1 record(s) were not delivered: 1 not sent within the 1 s grace period" in child.output


def test_a_hanging_tracking_server_does_not_hold_up_application_insights(tmp_path: Path) -> None:
    done = tmp_path / "done"
    script = write_child(tmp_path, WAIT_FOR_REQUEST + f"""
import os, time, amldbg
log = amldbg.get_logger("train")
amldbg.log_metric("loss", 0.5, step=1)
wait_for_requests(os.environ["MLFLOW_TRACKING_URI"])  # the metric's request is in flight
log.warning("the trace that must still arrive")
while not os.path.exists({str(done)!r}):
    time.sleep(0.05)
""")
    with MlflowServer(hang=True) as tracking, IngestionServer() as ingestion:
        run_id = tracking.add_run()
        with start_child(script, MLFLOW_TRACKING_URI=tracking.uri, MLFLOW_RUN_ID=run_id,
                         APPLICATIONINSIGHTS_CONNECTION_STRING=ingestion.connection_string,
                         AMLDBG_LOG_GRACE_PERIOD="1") as child:
            try:
                envelopes = ingestion.wait_for(1, timeout=40)
            finally:
                done.touch()
            assert child.wait(30) == 0, child.output
    assert [message(e) for e in envelopes] == ["the trace that must still arrive"], child.output


def test_forks_during_a_hanging_request_do_not_wait_and_children_send_their_own(tmp_path: Path) -> None:
    # DataLoader workers and gunicorn workers fork while metrics are being sent. A fork
    # used to wait up to 5 s for the request; twelve forks would take a minute.
    script = write_child(tmp_path, WAIT_FOR_REQUEST + """
import os, amldbg
amldbg.log_metric("parent", 1.0, step=0)
wait_for_requests(os.environ["MLFLOW_TRACKING_URI"])  # the parent's request hangs
children = []
for i in range(12):
    pid = os.fork()
    if pid == 0:
        amldbg.log_metric("child", float(i), step=i)
        flushed = amldbg.flush_logs(30)
        print("CHILD", i, "FLUSHED", flushed, flush=True)
        os._exit(0 if flushed else 3)
    children.append(pid)
print("FORKED", len(children), flush=True)
codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in children]
print("CHILD CODES", codes, flush=True)
""")
    with MlflowServer(hang_first=1) as server:
        run_id = server.add_run()
        with start_group(script, MLFLOW_TRACKING_URI=server.uri, MLFLOW_RUN_ID=run_id,
                         AMLDBG_LOG_GRACE_PERIOD="30") as child:
            assert child.wait(45) == 0, child.output
        metrics = server.wait_for(13, timeout=5)
    assert "CHILD CODES [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]" in child.output, child.output
    assert sorted(step for _, key, _, step in metrics if key == "child") == list(range(12))
    assert [key for _, key, _, _ in metrics].count("parent") == 1, "the parent's own metric, once"
