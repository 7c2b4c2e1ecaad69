"""`amldbg signal`: the armed ranks of a real torchrun job get the signal and the agent does not;
stale, reused and unarmed entries are never signalled; what the registry holds is printed safely."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

# Imported, not importorskip: torch (torchrun) is part of the test extra.
import torch.distributed  # noqa: F401

from amldbg.diagnostics import registry
from conftest import free_port
from processes import ROOT, Running, RunningGroup, child_env, run_amldbg
from processes import dumps_after_any_prefix as dumps  # the ranks share torchrun's stdout

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="amldbg signal is Linux only")


def amldbg_signal(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_amldbg("signal", *args, cwd=ROOT, env=child_env(AMLDBG_REGISTRY_DIR=str(folder)))


def listed(folder: Path) -> list[dict[str, Any]]:
    result = amldbg_signal(folder, "--list", "--json")
    assert result.returncode in (0, 1), result.stderr
    return [p for p in json.loads(result.stdout)["processes"] if p["status"] == "armed"]


def wait_for_entries(folder: Path, count: int, timeout: float = 60) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        found = listed(folder)
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


RANKS = """
    import os, time, amldbg
    amldbg.enable_remote_debug()  # on demand through AMLDBG_REMOTE_DEBUG_ON_DEMAND=1
    rank = int(os.environ["RANK"])
    # One write per line: the ranks share torchrun's stdout, and print's two writes glue.
    os.write(1, f"rank {rank} ready pid {os.getpid()}\\n".encode())
    deadline = time.monotonic() + 150
    while not os.path.exists("finish") and time.monotonic() < deadline:
        time.sleep(0.05)
    os.write(1, f"rank {rank} finished\\n".encode())
"""


def test_every_armed_rank_of_a_torchrun_job_is_signalled_and_the_agent_is_not(tmp_path: Path) -> None:
    script = tmp_path / "ranks.py"
    script.write_text(textwrap.dedent(RANKS).lstrip())
    folder, dumped = tmp_path / "registry", tmp_path / "dumps"
    env = child_env(OMP_NUM_THREADS="1", AMLDBG_REMOTE_DEBUG_ON_DEMAND="1",
                    AMLDBG_REGISTRY_DIR=str(folder), AMLDBG_DIAGNOSTICS_DIR=str(dumped))
    argv = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--nnodes", "1",
            "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
            "--rdzv_backend", "static", "--max_restarts", "0", str(script)]
    with RunningGroup(argv, env=env, cwd=tmp_path) as run:
        agent = run.proc.pid
        pids = {rank: int(run.wait_for_line(rf"^rank {rank} ready pid (\d+)$", 120).group(1))
                for rank in (0, 1)}
        # The list names exactly the two ranks, never the agent (whose command line also
        # ends in ranks.py: `pkill -USR1 -f ranks.py` would have ended it).
        entries = wait_for_entries(folder, 2)
        assert sorted((e["rank"], e["pid"]) for e in entries) == sorted(pids.items())
        assert agent not in {e["pid"] for e in entries}
        assert {e["launcher"] for e in entries} == {"torchrun"}
        assert {e["world_size"] for e in entries} == {2}
        assert all(e["signals"] == ["SIGUSR1", "SIGUSR2"] for e in entries)
        table = amldbg_signal(folder, "--list")
        assert table.returncode == 0 and table.stdout.startswith("RANK  LOCAL  WORLD  PID")

        result = amldbg_signal(folder)
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == [
            f"signalled rank 0 (pid {pids[0]}): stacks", f"signalled rank 1 (pid {pids[1]}): stacks",
        ]
        deadline = time.monotonic() + 60
        while {d["rank"] for d in dumps(run.output) if d["reason"] == "signal"} != {0, 1}:
            assert time.monotonic() < deadline, run.output
            time.sleep(0.2)
        assert {d["pid"] for d in dumps(run.output)} == set(pids.values())
        assert sorted(p.name for p in dumped.iterdir()) == sorted(
            f"stacks-rank{rank}-pid{pid}-1.json" for rank, pid in pids.items()
        )
        assert "[rank 0]" in run.output and "[rank 1]" in run.output

        # --rank picks one rank.
        one = amldbg_signal(folder, "--rank", "1")
        assert one.returncode == 0 and one.stdout == f"signalled rank 1 (pid {pids[1]}): stacks\n"
        run.wait_for_line(r'"rank":1,"reason":"signal","seq":2', 60)

        # The agent lives on and keeps its ranks: let them finish, the job succeeds.
        time.sleep(1)
        assert run.proc.poll() is None, run.output
        (tmp_path / "finish").write_text("")
        assert run.wait(120) == 0, run.output
    assert "rank 0 finished" in run.output and "rank 1 finished" in run.output
    assert os.listdir(folder) == []  # each rank removed its entry at exit
    after = amldbg_signal(folder)
    assert after.returncode == 1 and after.stdout == ""
    assert "no process on this node has on-demand triggers armed" in after.stderr


def entry(folder: Path, pid: int, **changes: Any) -> Path:
    record = {
        "amldbg_registry": 1, "pid": pid, "start_time": registry.start_time(pid) or 1,
        "uid": os.getuid(), "rank": 0, "local_rank": 0, "world_size": 1, "launcher": "torchrun",
        "host": "node-0", "signals": ["SIGUSR1", "SIGUSR2"], "script": "train.py",
        "armed_at": "2026-01-01T00:00:00+00:00",
    }
    record.update(changes)
    folder.mkdir(mode=0o700, exist_ok=True)
    path = folder / f"{pid}.json"
    path.write_text(json.dumps(record))
    return path


@pytest.fixture()
def sleeper() -> Iterator[Any]:
    """Processes that SIGUSR1 or SIGUSR2 would end (no handler), as a launcher's agent."""
    started: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        started.append(child)
        return child

    yield start
    for child in started:
        if child.poll() is None:
            child.kill()
        child.wait(30)


def test_stale_reused_and_unarmed_entries_are_never_signalled(tmp_path: Path, sleeper: Any) -> None:
    folder = tmp_path / "registry"
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait(30)
    stale = entry(folder, gone.pid, rank=3)
    reused, unarmed = sleeper(), sleeper()
    entry(folder, reused.pid, rank=4, start_time=(registry.start_time(reused.pid) or 0) + 1)
    entry(folder, unarmed.pid, rank=5)  # verified, but it has no handler: it would die
    result = amldbg_signal(folder)
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        f"skipped rank 3 (pid {gone.pid}): stale: the process has exited; its entry was removed",
        f"skipped rank 4 (pid {reused.pid}): stale: its pid now names another process; its entry was removed",
        f"skipped rank 5 (pid {unarmed.pid}): the process has no SIGUSR1 handler (the signal would end it)",
    ]
    assert not stale.exists()
    assert (folder / f"{unarmed.pid}.json").exists()  # alive: kept
    for name in ("--debugger", "--list"):
        amldbg_signal(folder, name)
    time.sleep(0.5)
    assert reused.poll() is None and unarmed.poll() is None
    again = amldbg_signal(folder, "--list", "--json")
    assert again.returncode == 0
    assert [p["pid"] for p in json.loads(again.stdout)["processes"]] == [unarmed.pid]


def test_only_the_signals_amldbg_owns_are_sent(tmp_path: Path) -> None:
    folder = tmp_path / "registry"
    job = tmp_path / "job.py"
    job.write_text(textwrap.dedent("""
        import os, signal, time, amldbg
        signal.signal(signal.SIGUSR2, lambda *a: print("the script's SIGUSR2 ran", flush=True))
        amldbg.enable_remote_debug(on_demand=True)
        print("pid", os.getpid(), flush=True)
        deadline = time.monotonic() + 60
        while not os.path.exists("finish") and time.monotonic() < deadline:
            time.sleep(0.05)
    """).lstrip())
    env = child_env(AMLDBG_REGISTRY_DIR=str(folder), AMLDBG_DIAGNOSTICS_DIR=str(tmp_path / "dumps"))
    with Running([str(job)], env=env, cwd=tmp_path) as run:
        pid = int(run.wait_for_line(r"^pid (\d+)$").group(1))
        assert [e["signals"] for e in wait_for_entries(folder, 1)] == [["SIGUSR1"]]
        debugger = amldbg_signal(folder, "--debugger")
        assert debugger.returncode == 1
        assert debugger.stdout == (
            f"skipped rank 0 (pid {pid}): amldbg does not handle SIGUSR2 there "
            f"(debugger on demand is off)\n"
        )
        missing = amldbg_signal(folder, "--rank", "1-3")
        assert missing.returncode == 1 and missing.stdout == ""
        assert "no process with rank 1,2,3 on this node" in missing.stderr
        assert amldbg_signal(folder, "--rank", "0").returncode == 0
        run.wait_for_line(r"^amldbg stacks: ")
        (tmp_path / "finish").write_text("")
        assert run.wait(60) == 0
    assert "the script's SIGUSR2 ran" not in run.output


def test_what_the_registry_holds_is_printed_safely(tmp_path: Path, sleeper: Any) -> None:
    folder = tmp_path / "registry"
    child = sleeper()
    entry(folder, child.pid, script="\x1b]0;owned\x07train.py --token=abc", launcher="\u202etorchrun",
          host="node\nforged line")
    (folder / "1.json").write_text("x" * (registry.MAX_ENTRY + 10))
    (folder / "\x1b[2Jbad.json").write_text("{")
    result = amldbg_signal(folder, "--list")
    assert result.returncode == 0
    assert "\x1b" not in result.stdout + result.stderr and "\u202e" not in result.stdout
    assert "\\x1b]0;owned\\x07train.py" in result.stdout and "abc" not in result.stdout
    assert "\\u202etorchrun" in result.stdout
    assert "skipped a damaged registry file: 1.json: too large" in result.stderr
    assert "skipped a damaged registry file: \\x1b[2Jbad.json: " in result.stderr
    as_json = json.loads(amldbg_signal(folder, "--list", "--json").stdout)
    assert as_json["skipped_files"] == 2 and as_json["processes"][0]["host"] == "node\\x0aforged line"


@pytest.mark.parametrize("args", [["--rank", "x"], ["--rank", "3-1"], ["--list", "--debugger"]])
def test_usage_errors(tmp_path: Path, args: list[str]) -> None:
    result = amldbg_signal(tmp_path / "registry", *args)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("amldbg signal: error: ")


def test_an_unsafe_registry_is_not_believed(tmp_path: Path, sleeper: Any) -> None:
    real = tmp_path / "real"
    child = sleeper()
    entry(real, child.pid)
    real.chmod(0o777)  # anyone could have written this entry
    result = amldbg_signal(real)
    assert result.returncode == 1 and result.stdout == ""
    assert "ignored the registry" in result.stderr and "has mode 0777, not 0700" in result.stderr
    assert child.poll() is None
