"""Two gloo ranks under a real launcher, for tests/diagnostics/test_launcher_ranks.py.

    python two_ranks.py MODE --out DIR [--crash] [amldbg flags]

``MODE`` says how the ranks come to be:

* ``env``: the launcher started this process and set the variables (``deepspeed``): the
  process group comes from ``env://``;
* ``accelerate``: ``accelerate launch`` started it; ``Accelerator(cpu=True)`` joins;
* ``spawn``: this process calls ``torch.multiprocessing.spawn(fn, nprocs=2)``; each child
  arms amldbg in ``fn`` (the parent is not a rank and arms nothing);
* ``lightning``: a ``Trainer(strategy="ddp", accelerator="cpu", devices=2)``: Lightning's
  launcher re-runs this script for rank 1; the user's process is rank 0.

Each rank writes ``DIR/rank-R.json`` (``R`` as the launcher numbers it): its pid, its local
rank as the launcher numbers it, the variables it started with, amldbg's topology at its start
(before any process group: what the debug port is computed from) and now. Then rank 1 waits in
user code (``wait_for_release``) for ``DIR/release`` while rank 0 waits for it in
``all_reduce`` (``join_collective``): both stall. Released, rank 1 raises with ``--crash``;
otherwise both finish and the job exits 0.
"""

import argparse
import json
import os
import time
from typing import Any, Dict

import torch
import torch.distributed as dist

import amldbg
from amldbg.core import environment


def parse_args(argv: Any = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser("two_ranks")
    parser.add_argument("mode", choices=("env", "accelerate", "spawn", "lightning"))
    parser.add_argument("--out", required=True)
    parser.add_argument("--crash", action="store_true", help="rank 1 raises once released")
    parser.add_argument("--local_rank", type=int, default=None, help="passed by deepspeed")
    amldbg.add_args(parser)
    return parser.parse_args(argv)


def topology_now() -> Dict[str, Any]:
    topo = environment.topology()
    return {"rank": topo.rank, "local_rank": topo.local_rank, "world_size": topo.world_size,
            "node_rank": topo.node_rank, "launcher": topo.launcher}


def write_record(out: str, rank: int, local_rank: int, start: Dict[str, Any], **more: Any) -> None:
    record = {"rank": rank, "local_rank": local_rank, "pid": os.getpid(), **start,
              "topology_now": topology_now(), **more}
    # Each rank its own file, written whole and renamed: a reader never sees half of it.
    path = os.path.join(out, f"rank-{rank}.json")
    with open(path + ".tmp", "w") as handle:
        json.dump(record, handle)
    os.replace(path + ".tmp", path)


def wait_for_release(path: str) -> None:
    """User code that waits for an input that comes late."""
    while not os.path.exists(path):
        time.sleep(0.05)


def join_collective(tensor: torch.Tensor) -> None:
    """Rank 0 waits here for rank 1."""
    dist.all_reduce(tensor)


def stuck_then_finish(args: argparse.Namespace, rank: int) -> None:
    tensor = torch.ones(2)
    if rank == 1:
        wait_for_release(os.path.join(args.out, "release"))
        if args.crash:
            raise RuntimeError("rank 1 fails after its wait")
    join_collective(tensor)
    assert tensor.tolist() == [2.0, 2.0], tensor


def at_start() -> Dict[str, Any]:
    return {"start_env": dict(os.environ), "topology_at_start": topology_now()}


def run_env(args: argparse.Namespace, start: Dict[str, Any]) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    dist.all_reduce(torch.ones(1))
    write_record(args.out, rank, args.local_rank if args.local_rank is not None else -1, start)
    stuck_then_finish(args, rank)
    dist.destroy_process_group()


def run_accelerate(args: argparse.Namespace, start: Dict[str, Any]) -> None:
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    rank = accelerator.process_index
    accelerator.wait_for_everyone()
    write_record(args.out, rank, accelerator.local_process_index, start,
                 distributed_type=str(accelerator.distributed_type))
    stuck_then_finish(args, rank)
    dist.destroy_process_group()


def spawned(index: int, args: argparse.Namespace, port: str) -> None:
    start = at_start()
    amldbg.enable_remote_debug(args)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=index, world_size=2)
    dist.all_reduce(torch.ones(1))
    write_record(args.out, index, index, start)
    stuck_then_finish(args, index)
    dist.destroy_process_group()


def run_lightning(args: argparse.Namespace, start: Dict[str, Any]) -> None:
    import lightning as L

    class Stuck(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            # Lightning's own numbering, and the variables it set in this process.
            write_record(args.out, self.global_rank, self.local_rank, start,
                         fit_env=dict(os.environ))
            stuck_then_finish(args, self.global_rank)
            return self.layer(batch[0]).sum()

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(4, 2)), batch_size=1)
    trainer = L.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", max_steps=1, limit_train_batches=1,
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=args.out,
    )
    trainer.fit(Stuck(), data)


def main() -> None:
    args = parse_args()
    if args.mode == "spawn":
        # The parent is no rank: only the children arm amldbg (in fn).
        import torch.multiprocessing as mp

        mp.spawn(spawned, args=(args, os.environ["TEST_SPAWN_PORT"]), nprocs=2)
        return
    start = at_start()
    amldbg.enable_remote_debug(args)
    {"env": run_env, "accelerate": run_accelerate, "lightning": run_lightning}[args.mode](args, start)
    print(f"pid {os.getpid()} finished", flush=True)


if __name__ == "__main__":
    main()
