"""Pipeline step 1 of samples/v2/pipeline_job.py: write the training data train.py reads.

The same three amldbg lines as train.py, so this step can be debugged too (give it the
``--remote_debug`` flags in pipeline_job.py).
"""

from __future__ import annotations

import argparse
import os

import amldbg

log = amldbg.get_logger("prep")


def main() -> None:
    """Write ``--rows`` (x, y) pairs to ``--output_dir``/data.csv."""
    parser = argparse.ArgumentParser("prep")
    parser.add_argument("--output_dir", default="outputs/data")
    parser.add_argument("--rows", type=int, default=20)
    amldbg.add_args(parser)
    args = parser.parse_args()
    amldbg.enable_remote_debug(args)  # no-op unless --remote_debug was given

    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "data.csv"), "w") as data:
        for x in range(1, args.rows + 1):
            data.write(f"{x / 10},{3 * x / 10}\n")
    amldbg.log_metric("rows", args.rows)
    log.info("wrote %d rows to %s", args.rows, args.output_dir)


if __name__ == "__main__":
    main()
