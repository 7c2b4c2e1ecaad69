"""Every performance figure of amldbg with its goal, as ratios measured side by side in one run.

Run: python benchmarks/run_all.py [--quick] [--only bench_NAME ...]

Every ``benchmarks/bench_*.py`` runs (a new one is picked up as it is added): each has
``figures(quick)``, which prints its detailed output and returns its rows of the table.
``--quick`` runs every measurement briefly (CI runs it on every submission to prove the
benchmarks still run and print their figures); its numbers are not to be trusted and
nothing asserts on them. Without it the run takes several minutes. Each figure is the median
of per-round ratios over interleaved rounds (see benchmarks/_common.py for why), shown with
the range of the rounds. The detailed output of each benchmark comes first, the table last.
The exit status is 0 whenever every benchmark ran, whether or not a goal was met.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time

from _common import BENCHMARKS, Row


def benchmark_names() -> list[str]:
    """Every benchmark of this folder, by module name (``bench_debug``, ...)."""
    return sorted(path.stem for path in BENCHMARKS.glob("bench_*.py"))


def main(argv: list[str] | None = None) -> int:
    """Run every benchmark (or those named by ``--only``) and print the table of their figures."""
    names = benchmark_names()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="run fast (figures are printed, not trustworthy)"
    )
    parser.add_argument("--only", action="append", choices=names, metavar="bench_NAME",
                        help="run this benchmark only (may be given more than once)")
    options = parser.parse_args(argv)
    quick = bool(options.quick)
    started = time.monotonic()
    rows: list[Row] = []
    for name in options.only or names:
        module = importlib.import_module(name)
        title = (module.__doc__ or name).strip().splitlines()[0]
        print(f"\n== {name}: {title} ==", flush=True)
        rows.extend(module.figures(quick))


    took = time.monotonic() - started
    print(f"\n== amldbg performance figures ({'--quick: NOT trustworthy, ' if quick else ''}"
          f"measured in one run, {took:.0f} s) ==")
    table = [("figure", "measured (median, range over rounds)", "goal", ""), *rows]
    widths = [max(len(row[i]) for row in table) for i in range(3)]
    for row in table:
        print(f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:<{widths[2]}}  {row[3]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
