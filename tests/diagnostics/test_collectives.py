"""Collectives in every dump (amldbg/diagnostics/collectives.py), with a real gloo process
group of one rank on loopback: PyTorch's Flight Recorder turned on when the diagnostics are
armed before the process group, left off (and said so) when armed after it, the user's own
ring size kept, the record in the dump file, the driver-log line and the crash report; a
forked child's dump never asks torch; a script without torch never imports it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

# Imported, not importorskip: torch is part of the test extra.
import torch.distributed  # noqa: F401

from conftest import free_port
from processes import ROOT, child_env

PRELUDE = """
import json, os, signal, sys, time
import amldbg
"""

PROCESS_GROUP = """
import torch, torch.distributed as dist
dist.init_process_group("gloo", init_method="tcp://127.0.0.1:{port}", rank=0, world_size=1)
"""

COLLECTIVES = """
tensor = torch.ones(4)
for _ in range(12):
    dist.all_reduce(tensor)
dist.broadcast(torch.zeros(2, 3, dtype=torch.int64), src=0)
pair = dist.new_group([0])
dist.all_reduce(torch.ones(7, dtype=torch.float16), group=pair)
"""

DUMP = """
os.kill(os.getpid(), signal.SIGUSR1)
deadline = time.monotonic() + 20
while time.monotonic() < deadline and not any(
        n.startswith("stacks-") and n.endswith(".json") for n in os.listdir(os.environ["AMLDBG_DIAGNOSTICS_DIR"])):
    time.sleep(0.05)
time.sleep(0.2)
print("buffer:", os.environ.get("TORCH_FR_BUFFER_SIZE"), flush=True)
"""

ARM = "amldbg.enable_remote_debug(remote_debug_on_demand=True)\n"


def run(tmp_path: Path, body: str, **env: str) -> tuple[subprocess.CompletedProcess[str], list[dict[str, Any]]]:
    script = tmp_path / "job.py"
    script.write_text(PRELUDE + textwrap.dedent(body).format(port=free_port()))
    out = tmp_path / "dumps"
    out.mkdir(exist_ok=True)
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env=child_env(AMLDBG_DIAGNOSTICS_DIR=str(out), PYTHONPATH=str(ROOT), **env),
    )
    files = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
    return result, files


def line_dumps(output: str) -> list[dict[str, Any]]:
    return [json.loads(m) for m in re.findall(r"^amldbg stacks: (\{.*\})$", output, re.M)]


def test_armed_before_the_process_group_every_dump_carries_its_collectives(tmp_path: Path) -> None:
    result, files = run(tmp_path, ARM + PROCESS_GROUP + COLLECTIVES + DUMP)
    assert result.returncode == 0, result.stderr
    assert "buffer: None" in result.stdout  # torch 2.13 keeps a ring of its own: left as it is
    (dump,) = files
    section = dump["collectives"]
    assert section["recorder"] == "on"
    assert section["backend"] == "gloo"
    default, pair = section["groups"]
    assert default["process_group"] == "default_pg"
    assert default["size"] == 1  # the whole world: no list of its ranks
    assert default["last_enqueued"] == 13
    assert len(default["entries"]) == 8  # bounded, newest last
    assert default["entries"][-1] == {
        "seq": 13, "op": "broadcast", "sizes": [[2, 3]], "dtypes": ["long"], "state": default["entries"][-1]["state"],
    }
    assert default["entries"][-2]["op"] == "all_reduce"
    assert default["entries"][-2]["state"] == "completed"
    assert [e["seq"] for e in default["entries"]] == list(range(6, 14))
    assert pair["pg"] == "1"
    assert pair["ranks"] == [0]
    assert pair["entries"][-1]["sizes"] == [[7]]
    assert pair["entries"][-1]["dtypes"] == ["half"]
    # The driver-log line carries the newest entries too, fewer of them.
    (line,) = line_dumps(result.stdout)
    short = line["collectives"]["groups"][0]
    assert [e["seq"] for e in short["entries"]] == [10, 11, 12, 13]
    assert short["last_enqueued"] == 13


OLD_TORCH = """
from amldbg.diagnostics import collectives
collectives.ring_on_by_default = lambda: False  # as with a torch before 2.13
"""


def test_with_an_older_torch_amldbg_turns_a_small_ring_on_before_the_process_group(tmp_path: Path) -> None:
    result, files = run(tmp_path, OLD_TORCH + ARM + PROCESS_GROUP + COLLECTIVES + DUMP)
    assert result.returncode == 0, result.stderr
    assert "buffer: 64" in result.stdout
    assert not [line for line in result.stdout.splitlines() if line.startswith("amldbg: collectives")]
    assert files[0]["collectives"]["recorder"] == "on"


def test_with_an_older_torch_armed_after_the_process_group_says_so_and_leaves_torch_alone(tmp_path: Path) -> None:
    result, files = run(tmp_path, OLD_TORCH + PROCESS_GROUP + ARM + COLLECTIVES + DUMP)
    assert result.returncode == 0, result.stderr
    assert "buffer: None" in result.stdout
    lines = [line for line in result.stdout.splitlines() if line.startswith("amldbg: collectives")]
    assert lines == [
        "amldbg: collectives: the process group existed before the diagnostics were armed, so "
        "PyTorch's Flight Recorder is off: dumps carry stacks only (arm amldbg before "
        "init_process_group, or set TORCH_FR_BUFFER_SIZE)"
    ]
    (dump,) = files
    # A ring that is there all the same (this torch keeps one) is still read.
    section = dump["collectives"]
    assert section["recorder"] == "on"
    assert section["groups"][0]["last_enqueued"] == 13
    assert dump["threads"]


def test_armed_after_the_process_group_with_torchs_own_ring_reads_it(tmp_path: Path) -> None:
    result, files = run(tmp_path, PROCESS_GROUP + ARM + COLLECTIVES + DUMP)
    assert result.returncode == 0, result.stderr
    assert not [line for line in result.stdout.splitlines() if line.startswith("amldbg: collectives")]
    section = files[0]["collectives"]
    assert section["recorder"] == "on"
    assert [(g["process_group"], g.get("size"), g.get("ranks")) for g in section["groups"]] == [
        ("default_pg", 1, None), ("pg 1", None, [0]),
    ]
    assert section["groups"][0]["last_enqueued"] == 13


def test_a_large_ring_is_read_without_its_entries(tmp_path: Path) -> None:
    result, files = run(tmp_path, ARM + PROCESS_GROUP + COLLECTIVES + DUMP, TORCH_FR_BUFFER_SIZE="100000")
    assert result.returncode == 0, result.stderr
    section = files[0]["collectives"]
    assert section["recorder"] == "partial"
    assert "100000 entries" in section["note"]
    assert all(not g["entries"] for g in section["groups"])


def test_a_ring_size_the_user_set_is_kept(tmp_path: Path) -> None:
    result, files = run(tmp_path, ARM + PROCESS_GROUP + COLLECTIVES + DUMP, TORCH_FR_BUFFER_SIZE="3")
    assert result.returncode == 0, result.stderr
    assert "buffer: 3" in result.stdout
    entries = [e["seq"] for g in files[0]["collectives"]["groups"] for e in g["entries"]]
    assert len(entries) <= 3
    assert files[0]["collectives"]["recorder"] == "on"


def test_a_crash_report_carries_the_collectives(tmp_path: Path) -> None:
    armed = "remote_debug_stall_timeout=600, remote_debug_post_mortem=True, remote_debug_ranks=\"1\""
    body = ARM.replace("remote_debug_on_demand=True", armed) + PROCESS_GROUP + COLLECTIVES + """
def load_shard():
    raise RuntimeError("shard 3 is missing")
load_shard()
"""
    result, files = run(tmp_path, body)
    assert result.returncode == 1
    assert "RuntimeError" in result.stderr  # the script's own traceback, unchanged
    (report,) = files
    assert report["amldbg_crash"] == 1
    assert report["collectives"]["groups"][0]["last_enqueued"] == 13
    crash_line = json.loads(re.search(r"^amldbg crash: (\{.*\})$", result.stdout, re.M).group(1))
    assert [e["seq"] for e in crash_line["collectives"]["groups"][0]["entries"]] == [12, 13]


def test_a_forked_child_dumps_its_stacks_without_asking_torch(tmp_path: Path) -> None:
    body = ARM + PROCESS_GROUP + COLLECTIVES + """
from amldbg.diagnostics import stacks
pid = os.fork()
if pid == 0:
    path = stacks.write_dump("request", "child", log=False)
    os._exit(0 if path else 3)
_, status = os.waitpid(pid, 0)
print("child exit:", os.waitstatus_to_exitcode(status), flush=True)
"""
    result, files = run(tmp_path, body)
    assert result.returncode == 0, result.stderr
    assert "child exit: 0" in result.stdout
    (dump,) = files
    assert dump["forked_from"]
    assert "collectives" not in dump


def test_a_script_without_torch_never_imports_it(tmp_path: Path) -> None:
    result, files = run(tmp_path, ARM + DUMP + 'print("torch imported:", "torch" in sys.modules)\n')
    assert result.returncode == 0, result.stderr
    assert "torch imported: False" in result.stdout
    assert "buffer: None" in result.stdout  # torch 2.13 (installed, never imported) has its own ring
    (dump,) = files
    assert "collectives" not in dump


def test_a_ring_of_zero_the_user_set_keeps_the_recorder_off(tmp_path: Path) -> None:
    result, files = run(tmp_path, ARM + PROCESS_GROUP + COLLECTIVES + DUMP, TORCH_FR_BUFFER_SIZE="0")
    assert result.returncode == 0, result.stderr
    assert "buffer: 0" in result.stdout
    section = files[0]["collectives"]
    assert section["recorder"] == "off"
    assert "ring to 0" in section["note"]
    assert all(not g["entries"] for g in section["groups"])
