"""The stall report and the on-demand dump under real launchers: torchrun with 4 gloo ranks and
mpiexec (the PyPI ``mpich`` package) running samples/train_stuck.py on loopback, where the
last rank is stuck in user code while the others wait for it in ``all_reduce``."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

# Imported, not importorskip: torch (torchrun) is part of the test extra, and a missing component
# must fail the run instead of skipping these tests.
import torch.distributed  # noqa: F401

from conftest import free_port
from harness.debug_adapters import reap_debug_adapters
from processes import ROOT, SAMPLES, RunningGroup, child_env, debug_base_port
from processes import dumps_after_any_prefix as dumps  # the ranks share one stdout

pytestmark = pytest.mark.slow

SAMPLE = str(SAMPLES / "train_stuck.py")
HARNESS = Path(__file__).resolve().parent.parent / "cli" / "test_stacks_command.py"


def wait_for_dumps(run: RunningGroup, ranks: set[int], reason: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = {d["rank"] for d in dumps(run.output) if d["reason"] == reason}
        if ranks <= seen:
            return
        if run.proc.poll() is not None:
            break
        time.sleep(0.2)
    raise AssertionError(f"expected {reason} dumps from ranks {sorted(ranks)}; output:\n{run.output}")


def stacks_report(*paths: Path) -> dict[str, Any]:
    """`amldbg stacks --json` on what the job left."""
    namespace: dict[str, Any] = {}
    exec(compile(HARNESS.read_text(), str(HARNESS), "exec"), namespace)
    result = namespace["amldbg_stacks"](*map(str, paths), "--json")
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def test_torchrun_stall_report_names_the_stuck_rank_and_sigusr1_leaves_ranks_running(
    tmp_path: Path,
) -> None:
    argv = ["-m", "torch.distributed.run", "--nproc_per_node", "4", "--nnodes", "1",
            "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
            "--rdzv_backend", "static", SAMPLE, "--steps", "5", "--stuck_at", "2",
            "--shard_dir", str(tmp_path / "shards"),
            "--remote_debug_stall_timeout", "3", "--remote_debug_on_demand"]
    with RunningGroup(argv, env=child_env(OMP_NUM_THREADS="1"), cwd=tmp_path) as run:
        wait_for_dumps(run, {0, 1, 2, 3}, "stall")
        pids = {d["rank"]: d["pid"] for d in dumps(run.output)}
        assert f"rank 1 of 4 started (pid {pids[1]})" in run.output
        report = stacks_report(tmp_path / "outputs" / "amldbg")
        assert report["groups"][0]["ranks"] == [0, 1, 2]
        assert report["groups"][0]["frame"].startswith("train_stuck.py:")
        assert report["groups"][0]["frame"].endswith(" in train_step")
        assert report["groups"][0]["stack"][-1].endswith(" in all_reduce")
        assert report["outliers"] == [3]
        assert report["groups"][1]["frame"].endswith(" in wait_for_shard")
        # The same from the driver log alone.
        log = tmp_path / "std_log.txt"
        log.write_text(run.output)
        assert stacks_report(log)["outliers"] == [3]

        # On demand: rank 1 is blocked in the collective, and dumps at once.
        os.kill(pids[1], signal.SIGUSR1)
        wait_for_dumps(run, {1}, "signal", timeout=60)
        signal_dump = next(d for d in dumps(run.output) if d["reason"] == "signal")
        assert signal_dump["pid"] == pids[1]
        assert signal_dump["threads"][0]["frames"][-1][2] == "all_reduce"

        # Release the stuck rank: every rank finishes, the job succeeds.
        (tmp_path / "shards").mkdir()
        (tmp_path / "shards" / "shard-3.pt").write_text("")
        assert run.wait(180) == 0
    for rank in range(4):
        assert f"rank {rank} of 4 finished" in run.output
    assert len([d for d in dumps(run.output) if d["reason"] == "stall"]) == 4


def mpiexec() -> str | None:
    found = Path(sys.executable).with_name("mpiexec")
    return str(found) if found.exists() else shutil.which("mpiexec")


def test_mpiexec_ranks_ports_and_stall_report(tmp_path: Path) -> None:
    launcher = mpiexec()
    if launcher is None:
        pytest.skip("no mpiexec: pip install mpich")
    base = debug_base_port()
    script = [SAMPLE, "--steps", "4", "--stuck_at", "1", "--shard_dir", str(tmp_path / "shards"),
              "--init_method", f"tcp://127.0.0.1:{free_port()}",
              "--remote_debug", "--remote_debug_ranks", "all", "--remote_debug_connection_timeout", "0",
              "--remote_debug_listen_host", "127.0.0.1", "--remote_debug_port", str(base),
              "--remote_debug_stall_timeout", "3"]
    # The launcher itself replaces this Python process, so that it is reaped like one.
    argv = ["-c", "import os, sys; os.execv(sys.argv[1], sys.argv[1:])", launcher, "-n", "2",
            sys.executable, *script]
    env = child_env(OMP_NUM_THREADS="1", OMPI_ALLOW_RUN_AS_ROOT="1",
                    OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    try:
        with RunningGroup(argv, env=env, cwd=tmp_path) as run:
            wait_for_dumps(run, {0, 1}, "stall")
            endpoints = sorted(
                (json.loads(m) for m in re.findall(r"amldbg endpoint: (\{.*\})$", run.output, re.M)),
                key=lambda e: e["rank"],
            )
            assert [(e["rank"], e["local_rank"], e["world_size"], e["port"], e["state"])
                    for e in endpoints] == [(0, 0, 2, base, "listening"), (1, 1, 2, base + 1, "listening")]
            stall = {d["rank"]: d for d in dumps(run.output)}
            assert {d["launcher"] for d in stall.values()} == {"mpi"}
            assert stall[1]["local_rank"] == 1 and stall[1]["world_size"] == 2
            report = stacks_report(tmp_path / "outputs" / "amldbg")
            assert report["outliers"] == [1] or report["outliers"] == [0]
            stuck = next(g for g in report["groups"] if g["ranks"] == [1])
            assert stuck["frame"].endswith(" in wait_for_shard")
            (tmp_path / "shards").mkdir()
            (tmp_path / "shards" / "shard-1.pt").write_text("")
            assert run.wait(180) == 0
    finally:
        reap_debug_adapters([base, base + 1])
    # mpiexec forwards each rank's output in chunks: two ranks' lines may share a line.
    assert "rank 0 of 2 finished" in run.output and "rank 1 of 2 finished" in run.output


def test_mpich_runs_here(tmp_path: Path) -> None:
    """The MPI launcher comes from pip alone (`pip install mpich`) and runs as root."""
    launcher = mpiexec()
    if launcher is None:
        pytest.skip("no mpiexec: pip install mpich")
    # Each rank writes its own file: mpiexec forwards the ranks' stdout in chunks, so two
    # ranks' words can share one line of the launcher's output.
    result = subprocess.run(
        [launcher, "-n", "2", sys.executable, "-c",
         "import sys; from amldbg.core import environment as e; t = e.topology(); "
         "open(sys.argv[1] + '/rank-%d' % t.rank, 'w')"
         ".write('%s %d %d %d' % (t.launcher, t.rank, t.local_rank, t.world_size))",
         str(tmp_path)],
        capture_output=True, text=True, timeout=120, cwd=str(ROOT),
        env=child_env(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1"),
    )
    assert result.returncode == 0, result.stderr
    seen = sorted(p.read_text() for p in tmp_path.glob("rank-*"))
    assert seen == ["mpi 0 0 2", "mpi 1 1 2"]
