"""A 4-rank gloo job whose collective #4 goes wrong in one of three ways (the test chooses):

* ``stuck``: the last rank waits in user code (``wait_for_shard``) and never calls it;
* ``op``: ranks 2-3 call ``broadcast`` where ranks 0-1 call ``all_reduce``;
* ``sizes``: ranks 2-3 pass a tensor of 5 elements where ranks 0-1 pass 4;

and three shapes of a job around the first (the last rank stuck in user code before the
default group's collective #4) that the verdict must not be misled by:

* ``subgroups``: each pair of ranks (``new_subgroups(2)``) ran collectives of its own first;
* ``p2p``: ranks 0 and 1 exchanged a tensor with send/recv first (gloo counts those in its
  status, not in its entries);
* ``reinit``: the default group was destroyed and made again after two collectives, so the
  collective is #4 of the new group.

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
    parser.add_argument("--mode", choices=("stuck", "op", "sizes", "subgroups", "p2p", "reinit"), required=True)
    parser.add_argument("--out", required=True)
    amldbg.add_args(parser)
    args = parser.parse_args()
    amldbg.enable_remote_debug(args)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    with open(os.path.join(args.out, f"rank-{rank}.json"), "w") as handle:
        json.dump({"rank": rank, "pid": os.getpid()}, handle)
    tensor = torch.ones(4)
    if args.mode == "reinit":
        for _ in range(2):
            dist.all_reduce(tensor)
        dist.destroy_process_group()
        dist.init_process_group(
            # A file store: torchrun's own store is the agent's, which a second group cannot use.
            "gloo", init_method="file://" + os.path.join(args.out, "store"), rank=rank, world_size=world
        )
    for _ in range(3):
        dist.all_reduce(tensor)
    if args.mode == "subgroups":
        pair, _ = dist.new_subgroups(2)
        for _ in range(2 + rank // 2):  # the pairs are at different numbers
            dist.all_reduce(torch.ones(2), group=pair)
    if args.mode == "p2p" and rank < 2:
        if rank == 0:
            dist.send(torch.ones(3), dst=1)
        else:
            dist.recv(torch.zeros(3), src=0)
    odd = rank >= world - 2
    if args.mode in ("stuck", "subgroups", "p2p", "reinit") and rank == world - 1:
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
