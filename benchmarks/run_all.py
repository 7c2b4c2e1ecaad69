"""Every performance figure of amldbg with its goal, as ratios measured side by side in one run.

Run: python benchmarks/run_all.py [--quick]

``--quick`` runs every measurement briefly (CI runs it on every submission to prove the
benchmarks still run and print their figures); its numbers are not to be trusted and
nothing asserts on them. Without it the run takes a few minutes. Each figure is the median
of per-round ratios over interleaved rounds (see benchmarks/_common.py for why), shown with
the range of the rounds. The detailed output of each benchmark comes first, the table last.
The exit status is 0 whenever every benchmark ran, whether or not a goal was met.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, Tuple

import bench_collectives
import bench_debug
import bench_logs
import bench_scoring
import bench_stacks_scale
import bench_stall
from _common import Ratio, goal_text, parse_quick

Row = Tuple[str, str, str, str]


def _row(figure: str, ratio: Ratio, goal: str, met: Callable[[float], bool], unit: str = ""
         ) -> Row:
    return (figure, ratio.text(unit), goal, goal_text(met(ratio.median)))


def main(argv: list[str] | None = None) -> int:
    """Run every benchmark's figures of the table and print the table."""
    quick = parse_quick(__doc__ or "", argv)
    started = time.monotonic()
    rows: list[Row] = []

    print("== debugger: speed after a wait nobody answered ==", flush=True)
    speed = bench_debug.speed_after_wait(quick)
    rows.append(_row("pure-Python speed, main thread, after a wait that timed out, vs never "
                     "enabled", speed["timed-out main"], ">= 0.95", lambda v: v >= 0.95))
    rows.append(_row("the same on a thread started after that wait", speed["timed-out thread"],
                     ">= 0.95", lambda v: v >= 0.95))

    print("\n== logging ==", flush=True)
    logs = bench_logs.call_cost(bench_logs.QUICK if quick else bench_logs.FULL)
    rows.append(_row("saturated logging, App Insights on (opencensus), per call, vs the guides' "
                     "AzureLogHandler set-up", logs["vs guide"], "<= 1.0x", lambda v: v <= 1.0,
                     "x"))
    rows.append(_row("the same vs a plain stdlib StreamHandler to the same stream",
                     logs["vs stream"], "<= 1.3x", lambda v: v <= 1.3, "x"))
    total = bench_logs.whole_cost(bench_logs.QUICK if quick else bench_logs.FULL)
    rows.append(("the same, counting the export done after the burst (total CPU per record)",
                 total.text("x"), "(shown)", ""))

    print("\n== scoring hooks ==", flush=True)
    extra_us = bench_scoring.per_call_cost(quick)
    rows.append(("@debug_run per call, debugging off (extra over an undecorated call)",
                 f"{extra_us:+.2f} us", "<= 1 us", goal_text(extra_us <= 1.0)))
    served = bench_scoring.server_throughput(quick, extra_us)
    rows.append(_row("inference server requests/s with the decorators vs without", served,
                     ">= 0.98", lambda v: v >= 0.98))

    print("\n== hung jobs: stall watchdog and on-demand triggers ==", flush=True)
    armed = bench_stall.step_time(quick)
    rows.append(_row("training-like loop with the stall watchdog and on-demand triggers armed "
                     "vs nothing armed", armed, ">= 0.99", lambda v: v >= 0.99))
    latency = bench_stall.dump_latency(quick)
    for kind, values in latency.items():
        worst = max(values)
        what = "" if kind == "sample" else ", a stuck frame holding a blocking repr"
        rows.append((f"from the stall timeout to the last of 4 ranks' dump written{what} (worst)",
                     f"{worst:.2f} s", "<= 2 s", goal_text(worst <= 2.0)))

    print("\n== hung jobs: collectives in the dumps ==", flush=True)
    ring = bench_collectives.ring_cost(quick)
    rows.append(_row("collective-heavy loop (gloo, 2 ranks) with the Flight Recorder ring on vs "
                     "off", ring, ">= 0.99", lambda v: v >= 0.99))

    print("\n== hung jobs: amldbg stacks over a large job ==", flush=True)
    rows.extend(bench_stacks_scale.rows(bench_stacks_scale.scale(quick), quick))

    took = time.monotonic() - started
    print(f"\n== amldbg performance figures ({'--quick: NOT trustworthy, ' if quick else ''}"
          f"measured in one run, {took:.0f} s) ==")
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    header = ("figure", "measured (median, range over rounds)", "goal", "")
    for row in [header, *rows]:
        print(f"{row[0]:<{widths[0]}}  {row[1]:<{max(widths[1], len(header[1]))}}  "
              f"{row[2]:<{widths[2]}}  {row[3]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
