"""Figures for MLflow metrics against a slow tracking server: what a training step pays for
``mlflow.log_metric`` called directly versus ``amldbg.log_metric``, and how long the process
takes to exit after its last metric (with every metric delivered, or bounded when the server
never answers).

Azure ML v2 jobs set ``MLFLOW_TRACKING_URI``, and azureml-mlflow answers each call in about
0.7 s (it ignores MLflow's async logging). The tracking server here is
harness/mlflow_server.py in a separate process on 127.0.0.1, answering every request after
``--delay`` seconds (0.7 by default) with MLflow's REST API.

Each configuration runs a training-like loop in its own process: a step of pure-Python work,
then three metrics. The figures: median step time of each, their ratio (direct / amldbg,
interleaved rounds), the time from the last metric to the end of the process, and how many
metrics reached the run.

Run: python benchmarks/bench_mlflow.py [--quick] [--delay 0.7]   (needs mlflow-skinny; talks
only to 127.0.0.1).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import textwrap
import time
import urllib.request
from dataclasses import dataclass
from typing import Any, Iterator

from _common import PY, Row, child_env, fake_service, interleaved, ratio, shown

METRICS_PER_STEP = 3
#: Seconds the tracking server takes per request: about what Azure ML's takes.
DELAY = 0.7


@dataclass(frozen=True)
class Sizes:
    """How much each measurement does (``--quick`` shrinks all of it)."""

    #: Steps of the loops that log through amldbg or not at all (a step is tens of ms).
    steps: int = 300
    #: Steps of the loop calling mlflow.log_metric (a step is seconds: fewer suffice).
    mlflow_steps: int = 8
    rounds: int = 3
    hang_steps: int = 100


FULL = Sizes()
QUICK = Sizes(steps=40, mlflow_steps=2, rounds=1, hang_steps=20)

LOOP = """
import json, os, statistics, sys, time
kind = sys.argv[1]
steps = int(sys.argv[2])
if kind == "mlflow":
    import mlflow
    log_metric = mlflow.log_metric
elif kind == "amldbg":
    import amldbg
    log_metric = amldbg.log_metric
else:
    log_metric = None


def train_step(step):
    # Pure-Python work standing in for a training step (it holds the GIL, as Python-side
    # training code does; a background sender competes with it).
    return sum(i * i for i in range(150_000)) + step


step_times = []
last_metric = 0.0
for step in range(steps):
    start = time.perf_counter()
    train_step(step)
    if log_metric is not None:
        log_metric("loss", 1.0 / (step + 1), step=step)
        log_metric("accuracy", step / steps, step=step)
        log_metric("learning_rate", 0.001, step=step)
    step_times.append(time.perf_counter() - start)
    last_metric = time.time()
print(json.dumps({"steps": step_times, "last_metric": last_metric}), flush=True)
"""


@contextlib.contextmanager
def tracking_server(*args: str) -> Iterator[str]:
    """The tracking server in a process of its own: its tracking URI."""
    with fake_service("mlflow_server", *args) as banner:  # PORT <n>
        yield f"http://127.0.0.1:{int(banner[1])}"


def call(uri: str, endpoint: str, body: dict[str, Any] | None = None) -> Any:
    """One request to the tracking server (``body`` given: POST)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{uri}{endpoint}", data=data,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as answer:
        return json.load(answer)


def new_run(uri: str) -> str:
    """A run, as Azure ML creates one before the job starts (the job gets ``MLFLOW_RUN_ID``)."""
    made = call(uri, "/api/2.0/mlflow/runs/create", {"experiment_id": "0", "run_name": "bench"})
    return str(made["run"]["info"]["run_id"])


@dataclass
class Outcome:
    """One loop process: its step times, exit time after the last metric, metrics delivered."""

    steps: list[float]
    exit_after_last: float
    delivered: int
    output: str


def run_loop(kind: str, uri: str, steps: int, **extra: str) -> Outcome:
    """Run the training loop with ``kind`` (``mlflow``, ``amldbg``, ``none``) in a fresh process."""
    run_id = new_run(uri)
    before = int(call(uri, "/stats")["metrics"])
    env = child_env()
    env.update(MLFLOW_TRACKING_URI=uri, MLFLOW_RUN_ID=run_id, **extra)
    proc = subprocess.run([PY, "-c", textwrap.dedent(LOOP), kind, str(steps)], env=env,
                          capture_output=True, text=True, timeout=900)
    ended = time.time()
    report = next((line for line in proc.stdout.splitlines() if line.startswith("{")), None)
    if proc.returncode != 0 or report is None:
        raise SystemExit(f"{kind} loop failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    figures = json.loads(report)
    delivered = int(call(uri, "/stats")["metrics"]) - before
    return Outcome(figures["steps"], ended - figures["last_metric"], delivered,
                   proc.stdout + proc.stderr)


def median_ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:8.1f} ms"


def figures(quick: bool, delay: float = DELAY) -> list[Row]:
    """Print every figure of this benchmark; return its rows of run_all.py's table."""
    sizes = QUICK if quick else FULL
    steps_of = {"none": sizes.steps, "mlflow": sizes.mlflow_steps, "amldbg": sizes.steps}
    print(f"MLflow metrics, tracking server on 127.0.0.1 answering after {delay:g} s; "
          f"{METRICS_PER_STEP} metrics a step; {sizes.steps} steps ({sizes.mlflow_steps} with "
          f"mlflow.log_metric), {sizes.rounds} round(s)")

    outcomes: dict[str, list[Outcome]] = {"none": [], "mlflow": [], "amldbg": []}
    with tracking_server("--delay", str(delay)) as uri:
        def measure(kind: str) -> Any:
            def once() -> float:
                outcome = run_loop(kind, uri, steps_of[kind])
                outcomes[kind].append(outcome)
                return statistics.median(outcome.steps)
            return once

        medians = interleaved({kind: measure(kind) for kind in outcomes}, sizes.rounds)

    for kind, label in (("none", "no metrics"), ("mlflow", "mlflow.log_metric"),
                        ("amldbg", "amldbg.log_metric")):
        steps = [t for outcome in outcomes[kind] for t in outcome.steps]
        exits = [o.exit_after_last for o in outcomes[kind]]
        delivered = [o.delivered for o in outcomes[kind]]
        p95 = sorted(steps)[int(0.95 * (len(steps) - 1))]
        line = f"  {label:18s} step median {median_ms(steps)}  p95 {p95 * 1000:8.1f} ms"
        if kind != "none":
            line += (f"  exit after last metric {statistics.median(exits):5.2f} s"
                     f"  delivered {min(delivered)}/{steps_of[kind] * METRICS_PER_STEP}")
        print(line)
    slowdown = ratio(list(zip(medians["mlflow"], medians["amldbg"])))
    overhead = ratio(list(zip(medians["amldbg"], medians["none"])))
    print(f"  step time, mlflow.log_metric / amldbg.log_metric: {slowdown.text('x')}")
    print(f"  step time, amldbg.log_metric / no metrics:        {overhead.text('x')}")

    # Context for "delivered": the sink imports mlflow on amldbg's thread, and a script that
    # ends sooner than that import plus the grace period cannot send anything.
    started = time.perf_counter()
    subprocess.run([PY, "-c", "import mlflow.tracking"], env=child_env(), check=True, timeout=300)
    print(f"  (importing mlflow takes {time.perf_counter() - started:.1f} s on this machine, "
          "interpreter start included)")

    # The same bounded exit as the other sinks: a server that never answers.
    with tracking_server("--hang") as uri:
        outcome = run_loop("amldbg", uri, sizes.hang_steps, AMLDBG_LOG_GRACE_PERIOD="3")
    warned = "not sent within the 3 s grace period" in outcome.output
    print(f"  server that never answers, grace period 3 s: step median {median_ms(outcome.steps)}, "
          f"exit after last metric {outcome.exit_after_last:5.2f} s, delivered "
          f"{outcome.delivered}/{sizes.hang_steps * METRICS_PER_STEP}, loss reported: {warned}")
    sys.stdout.flush()
    return [
        shown(f"a training step against a tracking server answering after {delay:g} s, "
              "mlflow.log_metric vs amldbg.log_metric", slowdown.text("x")),
        shown("the same, amldbg.log_metric vs no metrics", overhead.text("x")),
    ]


def main(argv: list[str] | None = None) -> int:
    """Print every figure of this benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="run fast (figures are printed, not trustworthy)")
    parser.add_argument("--delay", type=float, default=DELAY,
                        help=f"seconds the tracking server takes per request (default {DELAY})")
    args = parser.parse_args(argv)
    figures(args.quick, args.delay)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
