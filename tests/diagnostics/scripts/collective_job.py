"""A 4-rank gloo job whose collective #4 goes wrong in one of three ways (the test chooses):

* ``stuck``: the last rank waits in user code (``wait_for_shard``) and never calls it;
* ``op``: ranks 2-3 call ``broadcast`` where ranks 0-1 call ``all_reduce``;
* ``sizes``: ranks 2-3 pass a tensor of 5 elements where ranks 0-1 pass 4.

Each rank writes ``rank-R.json`` (its pid) before the collectives start, so a test can tell
which process is which.
"""

import argparse
import json
import os
import time

import torch
import torch.distributed as dist

import amldbg


def wait_for_shard(path: str) -> None:
    while not os.path.exists(path):
        time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=("stuck", "op", "sizes"), required=True)
    parser.add_argument("--out", required=True)
    amldbg.add_args(parser)
    args = parser.parse_args()
    amldbg.enable_remote_debug(args)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    with open(os.path.join(args.out, f"rank-{rank}.json"), "w") as handle:
        json.dump({"rank": rank, "pid": os.getpid()}, handle)
    tensor = torch.ones(4)
    for _ in range(3):
        dist.all_reduce(tensor)
    odd = rank >= world - 2
    if args.mode == "stuck" and rank == world - 1:
        wait_for_shard(os.path.join(args.out, "never"))
    elif args.mode == "op" and odd:
        dist.broadcast(tensor, src=world - 2)
    elif args.mode == "sizes" and odd:
        dist.all_reduce(torch.ones(5))
    else:
        dist.all_reduce(tensor)
    # A rank whose collective returned waits in the next one.
    dist.all_reduce(tensor)


if __name__ == "__main__":
    main()
