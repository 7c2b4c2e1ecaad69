"""The right rank under every launcher users run, each the real one from PyPI, two gloo ranks on
loopback: ``torch.multiprocessing.spawn`` (no variables at all), PyTorch Lightning's DDP launcher
(it re-runs the script with its own variables; the user's process is rank 0), ``accelerate
launch`` in its CPU multi-process mode (``--cpu --mpirun_hostfile``, over MPICH's mpiexec) and
DeepSpeed's ``deepspeed`` launcher. torchrun and mpiexec are in test_stall_launchers.py.

Each job runs launcher_scripts/two_ranks.py: rank 1 waits in user code while rank 0 waits for it
in ``all_reduce``, both arm the stall report. Each rank writes its pid, its rank and local rank
as the launcher numbers them, and the variables it started with to a file of its own; the test
checks that the stall dumps and ``amldbg stacks --json`` name the ranks that way, that the
outlier is rank 1, and that :func:`amldbg.core.environment.topology` of the variables each
launcher really set gives the launcher's local rank (the debug port is base + local rank).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from amldbg.core import environment
from conftest import free_port
from harness.debug_adapters import reap_debug_adapters
from processes import (
    ROOT,
    RunningGroup,
    child_env,
    debug_base_port,
    run_amldbg,
)

# Looked up (importing them costs seconds), never importorskip'd: the launchers are part of
# the test extra, and a missing one must fail the run instead of skipping these tests.
for _launcher in ("torch", "lightning", "accelerate", "deepspeed"):
    if importlib.util.find_spec(_launcher) is None:
        raise ImportError(f"{_launcher} is in the test extra: pip install -e '.[test]'")

pytestmark = pytest.mark.slow

SCRIPT = str(Path(__file__).resolve().parent / "launcher_scripts" / "two_ranks.py")
STALL = ["--remote_debug_stall_timeout", "2"]
BIN = Path(sys.executable).parent
# Where each rank stops: rank 0 in the collective, rank 1 in user code.
STUCK_AT = {0: "join_collective", 1: "wait_for_release"}


def job_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The launcher's environment: dumps to tmp_path/dumps, one thread per rank, the venv's
    executables (mpirun for accelerate) first on PATH."""
    return child_env(
        OMP_NUM_THREADS="1", AMLDBG_DIAGNOSTICS_DIR=str(tmp_path / "dumps"),
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", **extra,
    )


def records(out: Path) -> dict[int, dict[str, Any]]:
    """What each rank wrote about itself, by the rank its launcher gave it."""
    found = {}
    for path in out.glob("rank-*.json"):
        record = json.loads(path.read_text())
        found[record["rank"]] = record
    return found


def latest_dump(dumps: Path, pid: int) -> dict[str, Any] | None:
    """The last stack dump file process ``pid`` wrote."""
    latest: dict[str, Any] | None = None
    for path in dumps.glob(f"stacks-rank*-pid{pid}-*.json"):
        dump = json.loads(path.read_text())
        if latest is None or dump["seq"] > latest["seq"]:
            latest = dump
    return latest


def main_functions(dump: dict[str, Any] | None) -> list[str]:
    if dump is None:
        return []
    main = next(t for t in dump["threads"] if t["main"])
    return [frame["function"] for frame in main["frames"]]


def wait_until_stalled(run: RunningGroup, out: Path, dumps: Path, timeout: float = 240) -> dict[int, dict[str, Any]]:
    """Wait for both ranks' records and for a stall dump of each where it is stuck."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = records(out)
        if set(found) == {0, 1} and all(
            STUCK_AT[rank] in main_functions(latest_dump(dumps, found[rank]["pid"])) for rank in (0, 1)
        ):
            return found
        if run.proc.poll() is not None:
            break
        time.sleep(0.2)
    raise AssertionError(f"no stall dumps of ranks 0 and 1 where they wait; output:\n{run.output}")


def amldbg_stacks(*paths: Path) -> dict[str, Any]:
    """`python -m amldbg stacks PATH... --json`, the command a user runs on the job's outputs."""
    result = run_amldbg("stacks", *map(str, paths), "--json", cwd=ROOT)
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def check_stall_report(dumps: Path, found: dict[int, dict[str, Any]], launcher: str) -> None:
    """The dumps and `amldbg stacks` name the ranks as the launcher numbers them."""
    for rank in (0, 1):
        dump = latest_dump(dumps, found[rank]["pid"])
        assert dump is not None
        assert (dump["rank"], dump["world_size"], dump["launcher"]) == (rank, 2, launcher)
    report = amldbg_stacks(dumps)
    processes = {p["rank"]: p["pid"] for g in report["groups"] for p in g["processes"]}
    assert processes == {0: found[0]["pid"], 1: found[1]["pid"]}
    assert report["outliers"] == [1]
    assert report["outlier_processes"][0]["frame"].endswith(" in wait_for_release")
    assert report["shared_ranks"] == [] and report["missing"] == []
    assert report["world_size"] == 2


def added(record: dict[str, Any], env: dict[str, str], key: str = "start_env") -> dict[str, str]:
    """The variables the launcher added to (or changed in) the environment it was given."""
    return {k: v for k, v in record[key].items() if env.get(k) != v and k != "TEST_REAP_TOKEN"}


def release(out: Path) -> None:
    (out / "release").write_text("")


def debug_flags(base: int) -> list[str]:
    """Every rank listens (without waiting for a client) on base + its local rank."""
    return ["--remote_debug", "--remote_debug_ranks", "all", "--remote_debug_connection_timeout", "0",
            "--remote_debug_listen_host", "127.0.0.1", "--remote_debug_port", str(base)]


def endpoints(output: str) -> dict[int, tuple[int, int, str]]:
    """Each pid's debug endpoint line: (rank, port, state)."""
    found = (json.loads(m) for m in re.findall(r"amldbg endpoint: (\{.*\})$", output, re.M))
    return {e["pid"]: (e["rank"], e["port"], e["state"]) for e in found}


def check_ports(output: str, found: dict[int, dict[str, Any]], base: int) -> None:
    """The debug port of each rank is base + the launcher's local rank, one per rank."""
    listening = endpoints(output)
    for rank in (0, 1):
        local = found[rank]["local_rank"]
        assert listening[found[rank]["pid"]] == (rank, base + local, "listening"), output


def run_listening(tmp_path: Path, launcher: str, env: dict[str, str]) -> dict[int, dict[str, Any]]:
    """Run the job under ``launcher`` with every rank's debugger listening: wait until both
    ranks stalled, check their stall reports and that each listens on base + its local rank,
    let them finish; each rank's record."""
    out, dumps = tmp_path / "out", tmp_path / "dumps"
    base = debug_base_port()
    argv = [SCRIPT, launcher, "--out", str(out), *STALL, *debug_flags(base)]
    try:
        with RunningGroup(argv, env=env, cwd=tmp_path) as run:
            found = wait_until_stalled(run, out, dumps)
            check_stall_report(dumps, found, launcher)
            check_ports(run.output, found, base)
            release(out)
            assert run.wait(120) == 0, run.output
    finally:
        reap_debug_adapters([base, base + 1])
    return found


def test_torch_multiprocessing_spawn_ranks(tmp_path: Path) -> None:
    """spawn sets no variable: the rank is the index spawn passed to fn, then torch's."""
    (tmp_path / "out").mkdir()
    env = job_env(tmp_path, TEST_SPAWN_PORT=str(free_port()))
    # Both children listen, each on its own port (not both on base).
    found = run_listening(tmp_path, "spawn", env)
    for rank in (0, 1):
        # Nothing to read from the variables: the launcher added none.
        assert not {"RANK", "LOCAL_RANK", "WORLD_SIZE"} & set(added(found[rank], env))
        assert environment.topology(found[rank]["start_env"]).launcher == "single"
        # Before the process group (where the debug port is chosen) the spawn index.
        start = found[rank]["topology_at_start"]
        assert (start["rank"], start["local_rank"], start["launcher"]) == (rank, rank, "spawn")
        assert found[rank]["topology_now"]["world_size"] == 2


def test_torch_multiprocessing_spawn_crash_report_names_the_rank(tmp_path: Path) -> None:
    """Rank 1's fn raises; spawn's wrapper catches it (no sys.excepthook runs) and exits 1.
    The crash report must be there and say rank 1."""
    out, dumps = tmp_path / "out", tmp_path / "dumps"
    out.mkdir()
    release(out)  # no stall: rank 1 raises as soon as both joined
    env = job_env(tmp_path, TEST_SPAWN_PORT=str(free_port()))
    argv = [SCRIPT, "spawn", "--out", str(out), "--crash",
            "--remote_debug_post_mortem", "--remote_debug_ranks", "0"]
    with RunningGroup(argv, env=env, cwd=tmp_path) as run:
        assert run.wait(180) != 0
    assert "RuntimeError: rank 1 fails after its wait" in run.output
    pid = records(out)[1]["pid"]
    reports = list(dumps.glob(f"crash-rank*-pid{pid}.json"))
    assert [p.name for p in reports] == [f"crash-rank1-pid{pid}.json"], run.output
    report = json.loads(reports[0].read_text())
    assert (report["rank"], report["local_rank"], report["launcher"]) == (1, 1, "spawn")
    assert report["exception"].startswith("RuntimeError: rank 1 fails")
    crashes = amldbg_stacks(dumps)["crashes"]
    assert [(c["rank"], c["pid"]) for c in crashes] == [(1, pid)]


def test_lightning_ddp_launcher_ranks(tmp_path: Path) -> None:
    """Lightning re-runs the script for rank 1 with LOCAL_RANK, NODE_RANK, WORLD_SIZE and no
    RANK; the user's own process is rank 0 and gets the same variables when fit starts."""
    (tmp_path / "out").mkdir()
    env = job_env(tmp_path, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    # The user's process listens on base at its start, Lightning's child on base + 1.
    found = run_listening(tmp_path, "lightning", env)
    assert found[1]["pid"] != found[0]["pid"]
    child = added(found[1], env)
    assert {"LOCAL_RANK", "NODE_RANK", "WORLD_SIZE"} <= set(child) and "RANK" not in child
    assert (child["LOCAL_RANK"], child["WORLD_SIZE"]) == ("1", "2")
    # The user's process started with none of them, and is local rank 0 (debug port: base).
    assert not {"LOCAL_RANK", "RANK", "WORLD_SIZE"} & set(added(found[0], env))
    assert found[0]["topology_at_start"]["local_rank"] == 0
    for rank in (0, 1):
        variables = found[rank]["fit_env"]
        topo = environment.topology(variables)
        assert (topo.rank, topo.local_rank, topo.world_size) == (rank, found[rank]["local_rank"], 2)
    assert found[1]["topology_at_start"]["local_rank"] == 1


def test_accelerate_launch_cpu_ranks(tmp_path: Path) -> None:
    """`accelerate launch --cpu --num_processes 2 --mpirun_hostfile`: its multi-CPU mode runs
    mpirun (MPICH's here), which sets PMI_RANK and friends; Accelerator() then sets RANK,
    LOCAL_RANK and WORLD_SIZE in-process."""
    out, dumps = tmp_path / "out", tmp_path / "dumps"
    out.mkdir()
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("localhost:2\n")
    argv = [str(BIN / "accelerate"), "launch", "--cpu", "--num_processes", "2", "--num_machines", "1",
            "--mpirun_hostfile", str(hostfile), "--main_process_ip", "127.0.0.1",
            "--main_process_port", str(free_port()), "--mixed_precision", "no",
            "--dynamo_backend", "no", SCRIPT, "accelerate", "--out", str(out), *STALL]
    env = job_env(tmp_path, HF_HOME=str(tmp_path / "hf"))
    with RunningGroup(argv, env=env, cwd=tmp_path) as run:
        found = wait_until_stalled(run, out, dumps)
        check_stall_report(dumps, found, "accelerate")
        release(out)
        assert run.wait(120) == 0, run.output
    for rank in (0, 1):
        assert found[rank]["distributed_type"] == "DistributedType.MULTI_CPU"
        variables = added(found[rank], env)
        assert {"PMI_RANK", "MPI_LOCALRANKID", "ACCELERATE_USE_CPU"} <= set(variables)
        topo = environment.topology(found[rank]["start_env"])
        assert (topo.rank, topo.local_rank, topo.world_size, topo.launcher) == (
            rank, found[rank]["local_rank"], 2, "accelerate")
        assert found[rank]["topology_at_start"]["local_rank"] == rank


def test_deepspeed_launcher_ranks(tmp_path: Path) -> None:
    """`deepspeed --num_gpus 2` on CPU (its CPU accelerator, gloo): RANK, LOCAL_RANK, WORLD_SIZE,
    LOCAL_SIZE and CROSS_RANK/CROSS_SIZE, and --local_rank=N on the command line."""
    out, dumps = tmp_path / "out", tmp_path / "dumps"
    out.mkdir()
    argv = [str(BIN / "deepspeed"), "--num_gpus", "2", "--master_addr", "127.0.0.1",
            "--master_port", str(free_port()), SCRIPT, "env", "--out", str(out), *STALL]
    env = job_env(tmp_path)
    with RunningGroup(argv, env=env, cwd=tmp_path) as run:
        found = wait_until_stalled(run, out, dumps)
        check_stall_report(dumps, found, "deepspeed")
        release(out)
        assert run.wait(120) == 0, run.output
    for rank in (0, 1):
        variables = added(found[rank], env)
        assert {"RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_SIZE", "CROSS_RANK", "CROSS_SIZE"} <= set(variables)
        topo = environment.topology(found[rank]["start_env"])
        assert (topo.rank, topo.local_rank, topo.world_size, topo.local_world_size, topo.launcher) == (
            rank, found[rank]["local_rank"], 2, 2, "deepspeed")
        assert found[rank]["local_rank"] == rank  # DeepSpeed's --local_rank=N
        assert found[rank]["topology_at_start"]["local_rank"] == rank
