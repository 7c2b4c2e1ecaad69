"""A ParallelRunStep entry script over a FileDataset, debuggable with amldbg.

ParallelRunStep calls ``init()`` once in each worker process and ``run(mini_batch)`` for
each mini-batch (here a list of file paths), expecting one result per successful input.
Each input file holds one sensor reading per line; each result says how many readings
the file has and how many are above the threshold.

Try it offline with the local driver (two worker processes, mini-batches of two files):

    python samples/parallel_driver.py --processes 2 --mini_batch_size 2

and with a debugger on worker process 1 (VS Code attaches to port 5678 + 1):

    AMLDBG_REMOTE_DEBUG=1 AMLDBG_REMOTE_DEBUG_PROCESSES=1 \
        python samples/parallel_driver.py --processes 2
"""

import os
from typing import List, Optional

import amldbg

threshold: Optional[float] = None


@amldbg.debug_init  # the selected worker process(es) start the debugger first
def init() -> None:
    global threshold
    threshold = float(os.environ.get("READING_THRESHOLD", "5.0"))
    print(f"init: threshold {threshold}")


@amldbg.debug_run  # per-mini-batch timing and item count; full tracebacks; re-raises
def run(mini_batch: List[str]) -> List[str]:
    results = []
    for path in mini_batch:
        with open(path) as readings:
            values = [float(line) for line in readings if line.strip()]
        above = sum(1 for value in values if threshold is not None and value > threshold)
        results.append(f"{os.path.basename(path)},{len(values)},{above}")
    return results
