"""Figures for collectives in the dumps: the cost of the PyTorch Flight Recorder ring the dumps
read (torch 2.13's own ring of 2,000 entries, which amldbg leaves as it is; with an older
torch amldbg turns on one of 64).

A collective-heavy loop (gloo, 2 ranks on 127.0.0.1, one ``all_reduce`` of a 64 KiB gradient
per step and a small matrix product) runs with amldbg's stall report armed before the process
group, once with the ring on (what a job gets: ``TORCH_FR_BUFFER_SIZE`` unset) and once with
it off (``TORCH_FR_BUFFER_SIZE=0``), in interleaved rounds; each round starts both ranks afresh
(torch reads the ring size once per process). The figure is the speed with the ring on /
off (goal >= 0.99), from the CPU time of both ranks' loops after a barrier (rank 0's wall
time beside it).

The stall report's latency with the collectives in it (goal <= 2 s) is bench_stall.py's
"dump latency" row: its sample arms amldbg before ``init_process_group``, so every dump there
carries the Flight Recorder's record.

Run: python benchmarks/bench_collectives.py [--quick]   (talks only to 127.0.0.1)
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from _common import PY, Ratio, Row, child_env, free_port, goal_text, ratio, row, run_alone

LOOP = textwrap.dedent("""
    import json, os, sys, time
    steps = int(sys.argv[1])
    import amldbg
    amldbg.enable_remote_debug(remote_debug_stall_timeout=600)
    import torch, torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    grad = torch.ones(16 * 1024)
    weights = torch.randn(32, 32)
    for _ in range(50):
        dist.all_reduce(grad)
    dist.barrier()
    started, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        weights = torch.tanh(weights @ weights) * 0.5
        dist.all_reduce(grad)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    print("RESULT " + json.dumps({"seconds": elapsed, "cpu": cpu, "steps": steps,
                                  "ring": os.environ.get("TORCH_FR_BUFFER_SIZE")}), flush=True)
    dist.destroy_process_group()
""")


def _loop_seconds(steps: int, ring: str | None) -> tuple[float, float]:
    """The loop's wall time on rank 0 and the CPU time of both ranks' loops, both ranks
    started with ``TORCH_FR_BUFFER_SIZE=ring``."""
    port = str(free_port())
    procs = []
    for rank in range(2):
        env = child_env()
        env.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=port, OMP_NUM_THREADS="1")
        env.pop("TORCH_FR_BUFFER_SIZE", None)
        env.pop("TORCH_NCCL_TRACE_BUFFER_SIZE", None)
        if ring is not None:
            env["TORCH_FR_BUFFER_SIZE"] = ring
        procs.append(subprocess.Popen([PY, "-c", LOOP, str(steps)], env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    try:
        outputs = [proc.communicate(timeout=600) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for proc, (_, err) in zip(procs, outputs):
        if proc.returncode != 0:
            raise RuntimeError(f"a rank failed ({proc.returncode}): {err[-2000:]}")
    results = []
    for out, _ in outputs:
        line = next(x for x in out.splitlines() if x.startswith("RESULT "))
        results.append(json.loads(line[len("RESULT "):]))
        if results[-1]["ring"] != ring:
            raise RuntimeError(f"the ring size was {results[-1]['ring']!r}, not {ring!r}")
    return float(results[0]["seconds"]), sum(float(r["cpu"]) for r in results)


def ring_cost(quick: bool = False) -> Ratio:
    """Print and return the loop's speed with the Flight Recorder ring on / off: CPU time of
    both ranks per step (what the ring costs; unlike wall time it does not count what other
    processes of a shared 2-core machine took), with the wall-time ratio beside it."""
    rounds, steps = (2, 300) if quick else (12, 4_000)
    cpu_pairs, wall_pairs = [], []
    on_times = []
    for index in range(rounds):
        # ABBA: a drift of the machine hits both alike.
        order = (None, "0") if index % 2 == 0 else ("0", None)
        times = {ring: _loop_seconds(steps, ring) for ring in order}
        wall_pairs.append((times["0"][0], times[None][0]))
        cpu_pairs.append((times["0"][1], times[None][1]))
        on_times.append(times[None][0])
    speed, wall = ratio(cpu_pairs), ratio(wall_pairs)
    per_step = min(on_times) / steps
    print(f"collective-heavy loop (gloo, 2 ranks, {per_step * 1e6:.0f} us per step, one all_reduce "
          f"of 64 KiB each): speed with the Flight Recorder ring on (torch's own) vs off, CPU time "
          f"of both ranks: {speed.text()} (goal >= 0.99: {goal_text(speed.median >= 0.99)}); "
          f"wall time of rank 0: {wall.text()}")
    return speed


def figures(quick: bool) -> list[Row]:
    """Print every figure of this benchmark; return its rows of run_all.py's table."""
    return [row("collective-heavy loop (gloo, 2 ranks) with the Flight Recorder ring on vs off",
                ring_cost(quick), ">= 0.99", lambda v: v >= 0.99)]


def main(argv: list[str] | None = None) -> int:
    """Print every figure of this benchmark."""
    return run_alone(figures, __doc__ or "", argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
