"""Figures for the stall report and the on-demand triggers:

1. the step time of a training-like loop (torch when installed, else pure Python) with the
   stall watchdog and the SIGUSR1/SIGUSR2 triggers armed, against the same loop with nothing
   armed, in interleaved rounds (speed ratio armed / not armed; goal >= 0.99);
2. the time from the stall timeout to the last rank's dump written, under a real torchrun
   with 4 gloo ranks on loopback where the last rank is stuck (goal <= 2 s), once with the
   sample as it is and once with the stuck rank's frame holding an object whose ``__repr__``
   blocks on a lock held for ever (a shard reader on a hung mount): the report must not wait
   for it (goal <= 2 s too).

Run: python benchmarks/bench_stall.py [--quick]   (talks only to 127.0.0.1)
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from _common import PY, ROOT, Ratio, Row, child_env, free_port, goal_text, row, run_alone

SAMPLE_INTERVAL = 0.5

ENV = child_env()

LOOP = textwrap.dedent("""
    import json, statistics, sys, time
    blocks, steps = int(sys.argv[1]), int(sys.argv[2])
    import amldbg
    from amldbg.core.settings import resolve_settings
    from amldbg.debugger import on_demand
    from amldbg.diagnostics import stall
    try:
        import torch
        torch.set_num_threads(1)
        model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        batch, target = torch.randn(32, 64), torch.randn(32, 1)

        def step():
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(model(batch), target)
            loss.backward()
            optimizer.step()
        kind = "torch"
    except ImportError:
        weights = [0.1] * 64

        def step():
            total = 0.0
            for i in range(64):
                total += weights[i] * i
            weights[0] = total * 1e-9
        kind = "python"

    def block():
        # CPU time of the whole process (the watchdog's thread included): unlike wall time,
        # it does not count the time other processes on a shared machine took the CPU.
        started = time.process_time()
        for _ in range(steps):
            step()
        return (time.process_time() - started) / steps

    settings = resolve_settings(stall_timeout=60, on_demand=True)
    for _ in range(steps // 4):
        step()
    ratios, off_times = [], []
    for index in range(blocks):
        # Alternate the order (ABBA) so that drift of the machine hits both alike.
        order = ("off", "armed") if index % 2 == 0 else ("armed", "off")
        times = {}
        for mode in order:
            if mode == "armed":
                stall.arm(60)
                on_demand.arm(settings)
            for _ in range(steps // 20):  # settle after arming (a thread started) or not
                step()
            times[mode] = block()
            if mode == "armed":
                stall.disarm()
                on_demand.disarm()
        ratios.append(times["off"] / times["armed"])
        off_times.append(times["off"])
    # The watchdog's own work: one sample of the main thread's stack, every 0.5 s.
    frame = sys._getframe()
    started = time.perf_counter()
    for _ in range(10_000):
        stall._signature(frame, 0)
    sample = (time.perf_counter() - started) / 10_000
    print("RESULT " + json.dumps({"ratios": ratios, "step": min(off_times), "kind": kind,
                                  "sample": sample}))
""")


def step_time(quick: bool = False) -> Ratio:
    """Print and return the speed of the loop armed / not armed (1.0 = no cost; process CPU
    time per step), as the median of interleaved blocks in one process, and the watchdog's
    own CPU share."""
    blocks, steps = (6, 300) if quick else (30, 4_000)
    out = subprocess.run([PY, "-c", LOOP, str(blocks), str(steps)], capture_output=True,
                         text=True, env=ENV, timeout=900, check=True)
    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))
    result = json.loads(line[len("RESULT "):])
    values = sorted(result["ratios"])
    speed = Ratio(values[len(values) // 2], values[0], values[-1], len(values))
    share = result["sample"] / SAMPLE_INTERVAL
    print(f"training-like loop ({result['kind']}, {result['step'] * 1e6:.0f} us of CPU per step): "
          f"speed with the stall watchdog and on-demand triggers armed vs nothing armed: "
          f"{speed.text()} (goal >= 0.99: {goal_text(speed.median >= 0.99)})")
    print(f"  the watchdog's own work: {result['sample'] * 1e6:.1f} us per sample every "
          f"{SAMPLE_INTERVAL:g} s = {share * 100:.4f}% of one core; the on-demand triggers: "
          f"a thread waiting in select(), waking every 2 s to check that amldbg still owns its signals")
    return speed


# The sample, with the stuck rank's frame holding an object whose __repr__ never returns.
BLOCKING_VALUES = textwrap.dedent("""
    import sys, threading
    sys.path.insert(0, sys.argv.pop(1))
    import train_stuck

    held = threading.Lock()
    held.acquire()  # a stuck prefetch thread holds it for ever

    class ShardReader:
        def __repr__(self):
            held.acquire()
            return "never"

    sample_wait = train_stuck.wait_for_shard

    def wait_for_shard(path, seconds):
        reader = ShardReader()
        sample_wait(path, seconds)

    train_stuck.wait_for_shard = wait_for_shard
    train_stuck.main()
""")


def dump_latency(quick: bool = False) -> dict[str, list[float]]:
    """Print and return, per kind of job and run, the seconds from the stall timeout to the
    last of the 4 ranks' dump files written."""
    try:
        import torch.distributed  # noqa: F401
    except ImportError:
        print("stall report latency: skipped (torch is not installed)")
        return {}
    timeout = 2.0
    runs = 1 if quick else 3
    found: dict[str, list[float]] = {}
    for kind in ("sample", "blocking repr"):
        latencies = found.setdefault(kind, [])
        for _ in range(runs):
            folder = Path(tempfile.mkdtemp(prefix="amldbg-bench-stall-"))
            try:
                script = ROOT / "samples" / "train_stuck.py"
                prefix: list[str] = []
                if kind == "blocking repr":
                    script = folder / "train_stuck_blocking.py"
                    script.write_text(BLOCKING_VALUES)
                    prefix = [str(ROOT / "samples")]
                latencies.append(_one_latency(folder, timeout, script, prefix))
            finally:
                shutil.rmtree(folder, ignore_errors=True)
        worst = max(latencies)
        what = "" if kind == "sample" else ", the stuck frame holding an object whose repr blocks"
        print(f"stall report under torchrun (4 gloo ranks, timeout {timeout:g} s{what}): from the "
              f"stall timeout to the last rank's dump written: "
              f"{', '.join(f'{v:.2f}' for v in latencies)} s (goal <= 2 s: {goal_text(worst <= 2)})")
    return found


def _one_latency(folder: Path, timeout: float, script: Path, script_args: list[str]) -> float:
    argv = [PY, "-m", "torch.distributed.run", "--nproc_per_node", "4", "--nnodes", "1",
            "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
            "--rdzv_backend", "static", str(script), *script_args,
            "--steps", "4", "--stuck_at", "1", "--shard_dir", str(folder / "shards"),
            "--remote_debug_stall_timeout", str(timeout)]
    env = dict(ENV, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(argv, cwd=folder, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    stuck_at = None
    written: dict[int, float] = {}
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            now = time.monotonic()
            if re.match(r"rank \d+ waits for its shard", line):
                stuck_at = now
            found = re.match(r"amldbg stacks: (\{.*\})$", line.strip())
            if found:
                written[json.loads(found.group(1))["rank"]] = now
                if len(written) == 4:
                    break
        # Release the stuck rank so the job ends on its own.
        (folder / "shards").mkdir(exist_ok=True)
        (folder / "shards" / "shard-3.pt").write_text("")
        proc.wait(120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    if stuck_at is None or len(written) < 4:
        raise RuntimeError("the job did not stall and dump as expected")
    # The others enter all_reduce just after the last rank got stuck: this is an upper bound.
    return max(written.values()) - stuck_at - timeout


def figures(quick: bool) -> list[Row]:
    """Print every figure of this benchmark; return its rows of run_all.py's table."""
    found = [row("training-like loop with the stall watchdog and on-demand triggers armed "
                 "vs nothing armed", step_time(quick), ">= 0.99", lambda v: v >= 0.99)]
    for kind, values in dump_latency(quick).items():
        worst = max(values)
        what = "" if kind == "sample" else ", a stuck frame holding a blocking repr"
        found.append((f"from the stall timeout to the last of 4 ranks' dump written{what} (worst)",
                      f"{worst:.2f} s", "<= 2 s", goal_text(worst <= 2.0)))
    return found


def main(argv: list[str] | None = None) -> int:
    """Print every figure of this benchmark."""
    return run_alone(figures, __doc__ or "", argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
