"""What every benchmark shares: the environment its children get, the ``--quick`` switch, the
one statistic the figures use (interleaved rounds, median of per-round ratios, spread), the
rows of run_all.py's table, and the fake services (harness/*_server.py run as programs).

A benchmark imports amldbg, this module and ``harness`` (the helpers that drive real parts,
shared with the tests), never the test suite: ``figures(quick)`` in each
``bench_*.py`` runs all its measurements, prints them, and returns its rows of the table.

Why not pyperf: every figure here is a *ratio between two configurations measured side by
side* (never enabled vs timed-out wait, decorated vs plain server, one handler vs another).
On a shared 2-core machine, drift between two sequential pyperf runs is larger than the
effects measured; alternating the two configurations within each round and taking the median
of the per-round ratios cancels it. pyperf measures one configuration per run (its
``compare_to`` compares runs made at different times), its Runner owns ``sys.argv`` and
spawns its own workers, and two figures need processes in a state pyperf cannot set up (a
debugger that waited and timed out; a running inference server). So the benchmarks keep
this small helper and no extra dependency.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence, Tuple

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = Path(__file__).resolve().parent
PY = sys.executable

# A benchmark is started as ``python benchmarks/NAME.py`` (run_all.py, or alone), which puts
# only benchmarks/ on the path; ``harness`` lies at the checkout's root.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: One row of run_all.py's table: (figure, measured, goal, "met" / "NOT met" / "").
Row = Tuple[str, str, str, str]


def child_env(*path_first: str | Path, **extra: str) -> dict[str, str]:
    """The environment for benchmark children: no amldbg or Azure ML debug settings leak in,
    no telemetry about telemetry, imports from cached bytecode as users get them, amldbg
    from this tree (after the folders ``path_first``); ``extra`` variables on top."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AMLDBG_", "AZUREML_DEBUG", "APPLICATIONINSIGHTS_CONNECTION"))
    }
    env["APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL"] = "true"
    env["PYTHONPATH"] = os.pathsep.join(
        str(p) for p in (*path_first, ROOT, env.get("PYTHONPATH", "")) if p
    )
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.update(extra)
    return env


def free_port() -> int:
    """A TCP port of 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def fake_service(name: str, *args: str) -> Iterator[list[str]]:
    """The fake service ``harness/<name>.py`` (the ingestion or MLflow server the tests use
    too) run as a separate process, so that it does not share the measured GIL; yields the
    words of the line it starts with (``PORT <n> ...``). It is run as a program, never
    imported."""
    proc = subprocess.Popen([PY, "-m", f"harness.{name}", *args], stdout=subprocess.PIPE,
                            text=True, env=child_env(), cwd=ROOT)
    try:
        assert proc.stdout is not None
        yield proc.stdout.readline().split()
    finally:
        proc.terminate()
        proc.wait(10)


def parse_quick(description: str, argv: Sequence[str] | None = None) -> bool:
    """``--quick``: run every measurement briefly, print the figures, assert no timing."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--quick", action="store_true", help="run fast (figures are printed, not trustworthy)"
    )
    return bool(parser.parse_args(argv).quick)


@dataclass(frozen=True)
class Ratio:
    """The median of per-round ratios ``a / b`` and their range."""

    median: float
    low: float
    high: float
    rounds: int

    def text(self, unit: str = "") -> str:
        """``0.987 (0.95-1.01 over 7 rounds)``."""
        return (
            f"{self.median:.3f}{unit} ({self.low:.2f}-{self.high:.2f} over {self.rounds} "
            f"round{'s' if self.rounds != 1 else ''})"
        )


def ratio(pairs: Sequence[tuple[float, float]]) -> Ratio:
    """Median and range of ``a / b`` over rounds of ``(a, b)``."""
    values = [a / b for a, b in pairs if b > 0]
    if not values:
        return Ratio(float("nan"), float("nan"), float("nan"), 0)
    return Ratio(statistics.median(values), min(values), max(values), len(values))


def interleaved(
    measures: dict[str, Callable[[], float]], rounds: int
) -> dict[str, list[float]]:
    """Run every measure once per round, alternating their order (ABBA), so a drift of the
    machine within a round hits all of them alike."""
    results: dict[str, list[float]] = {name: [] for name in measures}
    names = list(measures)
    for round_ in range(rounds):
        order = names if round_ % 2 == 0 else list(reversed(names))
        for name in order:
            results[name].append(measures[name]())
    return results


def goal_text(met: bool) -> str:
    """``met`` / ``NOT met``."""
    return "met" if met else "NOT met"


def row(figure: str, measured: Ratio, goal: str, met: Callable[[float], bool], unit: str = ""
        ) -> Row:
    """The table row of a ratio with a goal: ``met`` judges its median."""
    return (figure, measured.text(unit), goal, goal_text(met(measured.median)))


def shown(figure: str, measured: str) -> Row:
    """The table row of a figure that has no goal."""
    return (figure, measured, "(shown)", "")


def run_alone(figures: Callable[[bool], list[Row]], description: str,
              argv: Sequence[str] | None = None) -> int:
    """A benchmark's ``main``: its figures, printed, with ``--quick`` as run_all.py runs them."""
    figures(parse_quick(description, argv))
    return 0
