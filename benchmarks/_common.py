"""What every benchmark shares: the environment its children get, the ``--quick`` switch, and
the one statistic the figures use (interleaved rounds, median of per-round ratios, spread).

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
import os
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


def child_env() -> dict[str, str]:
    """The environment for benchmark children: no amldbg or Azure ML debug settings leak in,
    no telemetry about telemetry, imports from cached bytecode as users get them."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AMLDBG_", "AZUREML_DEBUG", "APPLICATIONINSIGHTS_CONNECTION"))
    }
    env["APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL"] = "true"
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p
    )
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


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
