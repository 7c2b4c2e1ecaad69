"""A local stand-in for ParallelRunStep's driver: a plain loop calling an entry script's
``init()`` and ``run(mini_batch)`` in several worker processes, offline.

    python samples/parallel_driver.py [--entry_script samples/parallel_entry.py]
        [--input samples/parallel_data] [--output outputs] [--processes 2]
        [--mini_batch_size 2]

Mini-batch k goes to worker process k mod N. Each worker gets ``AMLDBG_PROCESS_INDEX`` (its
local index, which amldbg uses for the debug port and process selection), calls ``init()``
once, then ``run()`` per mini-batch, and writes its results to
``<output>/results_<index>.txt``; the driver merges them into
``<output>/parallel_run_step.txt`` (ParallelRunStep's ``append_row`` file). A failing
mini-batch is reported and skipped, as ParallelRunStep does within its error threshold;
the exit code is 1 when any mini-batch failed.
"""

import argparse
import importlib.util
import os
import subprocess
import sys
import time
import traceback
from typing import List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser("parallel_driver")
    parser.add_argument("--entry_script", default=os.path.join(HERE, "parallel_entry.py"))
    parser.add_argument("--input", default=os.path.join(HERE, "parallel_data"))
    parser.add_argument("--output", default="outputs")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--mini_batch_size", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=600, help="seconds for the whole run")
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def mini_batches(folder: str, size: int) -> List[List[str]]:
    files = sorted(os.path.join(folder, name) for name in os.listdir(folder))
    return [files[i:i + size] for i in range(0, len(files), size)]


def work(args: argparse.Namespace) -> int:
    spec = importlib.util.spec_from_file_location("entry_script_module", args.entry_script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.init()
    failed = 0
    batches = mini_batches(args.input, args.mini_batch_size)[args.worker::args.processes]
    with open(os.path.join(args.output, f"results_{args.worker}.txt"), "w") as out:
        for batch in batches:
            try:
                results = module.run(batch)
            except Exception as error:
                failed += 1
                print(f"driver: process {args.worker}: mini-batch failed: "
                      f"{type(error).__name__}: {error}", flush=True)
                continue
            for line in results:
                out.write(f"{line}\n")
    return 1 if failed else 0


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        return work(args)
    os.makedirs(args.output, exist_ok=True)
    workers = []
    for index in range(args.processes):
        env = dict(os.environ, AMLDBG_PROCESS_INDEX=str(index))
        argv = [sys.executable, os.path.abspath(__file__), "--worker", str(index),
                "--entry_script", args.entry_script, "--input", args.input,
                "--output", args.output, "--processes", str(args.processes),
                "--mini_batch_size", str(args.mini_batch_size)]
        workers.append(subprocess.Popen(argv, env=env))
        print(f"driver: process {index} has pid {workers[-1].pid}", flush=True)
    deadline = time.monotonic() + args.timeout
    codes: List[int] = []
    try:
        for worker in workers:
            codes.append(worker.wait(max(0.1, deadline - time.monotonic())))
    except subprocess.TimeoutExpired:
        traceback.print_exc()
        codes.append(1)
    finally:
        for worker in workers:  # every worker is reaped, by its own PID
            if worker.poll() is None:
                worker.kill()
            worker.wait()
    with open(os.path.join(args.output, "parallel_run_step.txt"), "w") as merged:
        for index in range(args.processes):
            part = os.path.join(args.output, f"results_{index}.txt")
            if os.path.exists(part):
                with open(part) as results:
                    merged.write(results.read())
    print(f"driver: {args.processes} processes finished with exit codes {codes}", flush=True)
    return max(codes) if codes else 1


if __name__ == "__main__":
    sys.exit(main())
