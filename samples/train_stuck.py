"""A data-parallel job (torch.distributed, gloo, CPU) where one rank gets stuck in user code while
the others wait for it in ``all_reduce``: the hang the stall report and ``amldbg stacks`` are for.

    python -m torch.distributed.run --nproc_per_node 4 samples/train_stuck.py \
        --remote_debug_stall_timeout 10 --remote_debug_on_demand

After ten seconds without progress every rank writes its stacks to the log and to
``outputs/amldbg/``; then ``amldbg stacks outputs/amldbg`` groups ranks 0-2 (in
``all_reduce``) and names rank 3 (in ``wait_for_shard``) as the outlier. Meanwhile
``kill -USR1 PID`` dumps a rank's stacks on demand and ``kill -USR2 PID`` starts its debugger.

Under an MPI launcher (``mpiexec -n 4``) pass ``--init_method tcp://HOST:PORT``: the rank and
world size then come from the MPI variables.
"""

import argparse
import datetime
import os
import time

import torch
import torch.distributed as dist

import amldbg


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser("train_stuck")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--stuck_rank", type=int, default=-1, help="which rank hangs (default: the last)")
    parser.add_argument("--stuck_at", type=int, default=2, help="the step at which it hangs")
    parser.add_argument(
        "--stuck_seconds", type=float, default=0,
        help="how long it hangs; 0 hangs until the job is killed",
    )
    parser.add_argument("--shard_dir", default="shards", help="where the stuck rank's shard appears")
    parser.add_argument("--step_seconds", type=float, default=0.05)
    parser.add_argument("--init_method", default="env://", help="tcp://HOST:PORT under mpiexec")
    parser.add_argument("--pg_timeout", type=float, default=600)
    amldbg.add_args(parser)  # --remote_debug_stall_timeout, --remote_debug_on_demand, ...
    return parser.parse_args()


def wait_for_shard(path: str, seconds: float) -> None:
    """User code that waits for an input that never comes (or comes late)."""
    deadline = time.monotonic() + seconds if seconds else float("inf")
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.05)


def train_step(model: torch.nn.Module, batch: torch.Tensor, world: int) -> float:
    loss = model(batch).pow(2).mean()
    loss.backward()
    for param in model.parameters():
        # The other ranks wait here for the stuck one.
        dist.all_reduce(param.grad)
        param.grad /= world
    return loss.item()


def mpi_rank_and_size() -> "tuple[int, int]":
    for rank_var, size_var in (("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"), ("PMI_RANK", "PMI_SIZE")):
        if rank_var in os.environ:
            return int(os.environ[rank_var]), int(os.environ[size_var])
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def main() -> None:
    args = parse_args()
    # Arms the stall watchdog and the signals on every rank; the debugger only if asked for.
    amldbg.enable_remote_debug(args)

    timeout = datetime.timedelta(seconds=args.pg_timeout)
    if args.init_method == "env://":
        dist.init_process_group("gloo", timeout=timeout)
    else:
        rank, world = mpi_rank_and_size()
        dist.init_process_group(
            "gloo", init_method=args.init_method, rank=rank, world_size=world, timeout=timeout
        )
    rank, world = dist.get_rank(), dist.get_world_size()
    stuck_rank = args.stuck_rank if args.stuck_rank >= 0 else world - 1
    print(f"rank {rank} of {world} started (pid {os.getpid()})", flush=True)

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    for step in range(args.steps):
        if rank == stuck_rank and step == args.stuck_at:
            print(f"rank {rank} waits for its shard", flush=True)
            wait_for_shard(os.path.join(args.shard_dir, f"shard-{rank}.pt"), args.stuck_seconds)
        model.zero_grad()
        loss = train_step(model, torch.randn(8, 4), world)
        print(f"rank {rank} step {step} loss {loss:.3f}", flush=True)
        time.sleep(args.step_seconds)
    dist.barrier()
    print(f"rank {rank} of {world} finished", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
