"""Data-parallel training with torch.distributed (gloo, CPU), debuggable rank by rank.

Run it under torchrun, locally or as an Azure ML command job with a PyTorch distribution:

    python -m torch.distributed.run --nproc_per_node 2 samples/train_distributed.py \
        --remote_debug --remote_debug_ranks 0 --remote_debug_watchdog_timeout 3600

Each selected rank listens on the base port plus its local rank (5678, 5679, ...) and prints
its rank, node address and port; the others train without a debugger. With
``--remote_debug_watchdog_timeout`` the process group's timeout is lengthened on every rank,
so the ranks waiting in ``all_reduce`` for a rank held at a breakpoint do not time out.
"""

import argparse
import datetime
import os

import torch
import torch.distributed as dist

import amldbg


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser("train_distributed")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--output_dir", default="outputs")
    parser.add_argument(
        "--pg_timeout", type=float, default=None,
        help="process-group timeout in seconds (torch's default when omitted)",
    )
    amldbg.add_args(parser)  # --remote_debug, --remote_debug_ranks and friends
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    # A no-op unless --remote_debug; ranks not in --remote_debug_ranks carry on at once.
    amldbg.enable_remote_debug(args)

    default = datetime.timedelta(seconds=args.pg_timeout) if args.pg_timeout else None
    # Follows the flags enable_remote_debug was given (--remote_debug_watchdog_timeout).
    timeout = amldbg.process_group_timeout(default, backend="gloo")
    dist.init_process_group("gloo", timeout=timeout)
    rank, world = dist.get_rank(), dist.get_world_size()

    torch.manual_seed(0)
    model = torch.nn.Linear(1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    # Each rank trains on its own shard of y = 3x.
    x = torch.arange(rank, 40, world, dtype=torch.float32).unsqueeze(1) / 40
    y = 3 * x
    for epoch in range(args.epochs):
        loss = torch.nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        for param in model.parameters():
            # The other ranks wait here while one is stopped in the debugger.
            dist.all_reduce(param.grad)
            param.grad /= world
        optimizer.step()
        print(f"rank {rank} epoch {epoch}: loss {loss.item():.4f}", flush=True)

    if rank == 0:
        os.makedirs(args.output_dir, exist_ok=True)
        torch.save(model.state_dict(), os.path.join(args.output_dir, "model.pt"))
    print(f"rank {rank} of {world} finished", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
