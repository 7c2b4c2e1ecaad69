"""Reading the Azure ML context: topology, run identity, node address, port check."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import types
from pathlib import Path

import pytest

from amldbg.core import environment as _env
from processes import ROOT, child_env


def test_single_process_without_launcher_variables() -> None:
    topo = _env.topology({})
    assert (topo.rank, topo.local_rank, topo.world_size, topo.launcher) == (0, 0, 1, "single")
    assert not topo.is_distributed


def test_torchrun_variables() -> None:
    topo = _env.topology({"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4",
                          "LOCAL_WORLD_SIZE": "2", "GROUP_RANK": "1"})
    assert (topo.rank, topo.local_rank, topo.world_size, topo.node_rank) == (3, 1, 4, 1)
    assert topo.launcher == "torchrun" and topo.is_distributed


def test_open_mpi_variables() -> None:
    topo = _env.topology({"OMPI_COMM_WORLD_RANK": "5", "OMPI_COMM_WORLD_LOCAL_RANK": "1",
                          "OMPI_COMM_WORLD_SIZE": "8", "OMPI_COMM_WORLD_LOCAL_SIZE": "4"})
    assert (topo.rank, topo.local_rank, topo.world_size, topo.local_world_size) == (5, 1, 8, 4)
    assert topo.launcher == "mpi"


def test_run_context_outside_and_inside_a_job() -> None:
    assert _env.run_context({}) == _env.RunContext()
    ctx = _env.run_context({"AZUREML_RUN_ID": "run_1", "AZUREML_ARM_PROJECT_NAME": "exp",
                            "AZUREML_RUN_TOKEN": "t", "AZUREML_SERVICE_ENDPOINT": "https://x"})
    assert (ctx.run_id, ctx.experiment, ctx.in_job) == ("run_1", "exp", True)
    assert _env.run_context({"AZUREML_RUN_ID": "run_1"}).in_job is False


def test_node_address_is_never_a_hosts_file_loopback() -> None:
    address, how = _env.node_address({})
    assert not address.startswith("127.0.1.")
    assert how
    if how != "loopback fallback":
        assert not _env.is_loopback(address)
        socket.inet_aton(address)


def test_node_address_override() -> None:
    assert _env.node_address({"AMLDBG_NODE_ADDRESS": "10.3.0.5"}) == (
        "10.3.0.5", "AMLDBG_NODE_ADDRESS")


def test_port_available_sees_a_listener() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        port = sock.getsockname()[1]
        assert not _env.port_available("127.0.0.1", port)
    assert _env.port_available("127.0.0.1", 0)


def test_loopback_detection() -> None:
    assert _env.is_loopback("127.0.0.1") and _env.is_loopback("[::1]")
    assert _env.is_loopback("localhost") and not _env.is_loopback("10.0.0.1")


def test_per_node_launcher_without_rank_derives_the_global_rank() -> None:
    topo = _env.topology({"LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "NODE_RANK": "1",
                          "WORLD_SIZE": "4"})
    assert (topo.rank, topo.local_rank, topo.node_rank, topo.world_size) == (3, 1, 1, 4)


def test_open_mpi_node_is_not_ompi_node_rank() -> None:
    # OMPI_COMM_WORLD_NODE_RANK counts processes on the node, not nodes: with 4 processes
    # per node, rank 5 is on node 1 whatever that variable says.
    topo = _env.topology({"OMPI_COMM_WORLD_RANK": "5", "OMPI_COMM_WORLD_LOCAL_RANK": "1",
                          "OMPI_COMM_WORLD_SIZE": "8", "OMPI_COMM_WORLD_LOCAL_SIZE": "4",
                          "OMPI_COMM_WORLD_NODE_RANK": "3"})
    assert topo.node_rank == 1 and topo.rank == 5


def test_azureml_task_index_with_node_count() -> None:
    topo = _env.topology({"AZ_BATCHAI_TASK_INDEX": "2", "AZUREML_NODE_COUNT": "4"})
    assert (topo.rank, topo.node_rank, topo.world_size, topo.launcher) == (2, 2, 4, "azureml")
    assert topo.is_distributed
    assert _env.topology({"RANK": "x"}).launcher == "single"


def test_deepspeed_variables_give_its_local_size_and_node() -> None:
    # What deepspeed.launcher.launch sets for rank 3 of 2 nodes x 2 (tests/diagnostics/
    # test_launcher_ranks.py checks these names against the real launcher).
    topo = _env.topology({"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4", "LOCAL_SIZE": "2",
                          "CROSS_RANK": "1", "CROSS_SIZE": "2", "MASTER_ADDR": "10.0.0.4"})
    assert (topo.rank, topo.local_rank, topo.world_size, topo.local_world_size, topo.node_rank) == (
        3, 1, 4, 2, 1)
    assert topo.launcher == "deepspeed"
    # The generic names alone are not read as DeepSpeed's.
    other = _env.topology({"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4", "LOCAL_SIZE": "2"})
    assert (other.local_world_size, other.node_rank, other.launcher) == (1, 0, "torchrun")


def test_per_node_variables_without_rank_are_lightnings_layout() -> None:
    # Lightning's launcher: LOCAL_RANK, NODE_RANK, WORLD_SIZE, and no RANK.
    topo = _env.topology({"LOCAL_RANK": "1", "NODE_RANK": "0", "WORLD_SIZE": "2",
                          "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1234"})
    assert (topo.rank, topo.local_rank, topo.world_size, topo.launcher) == (1, 1, 2, "per-node")


def test_accelerate_names_itself_over_the_launcher_it_ran() -> None:
    mpi = {"PMI_RANK": "1", "PMI_SIZE": "2", "MPI_LOCALRANKID": "1", "MPI_LOCALNRANKS": "2",
           "ACCELERATE_MIXED_PRECISION": "no", "ACCELERATE_USE_CPU": "True"}
    topo = _env.topology(mpi)
    assert (topo.rank, topo.local_rank, topo.world_size, topo.launcher) == (1, 1, 2, "accelerate")
    # Accelerator() then sets RANK/LOCAL_RANK/WORLD_SIZE in-process: the same numbers.
    later = _env.topology({**mpi, "RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2"})
    assert (later.rank, later.local_rank, later.world_size, later.launcher) == (1, 1, 2, "accelerate")


def test_explicit_variables_ignore_the_process_state(monkeypatch: pytest.MonkeyPatch) -> None:
    group = types.ModuleType("torch.distributed")
    group.is_available = lambda: True  # type: ignore[attr-defined]
    group.is_initialized = lambda: True  # type: ignore[attr-defined]
    group.get_rank = lambda: 5  # type: ignore[attr-defined]
    group.get_world_size = lambda: 8  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch.distributed", group)
    assert _env.topology({"RANK": "1", "WORLD_SIZE": "2"}).rank == 1
    monkeypatch.setattr(_env.os, "environ", {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    own = _env.topology()
    assert (own.rank, own.world_size, own.local_rank, own.launcher) == (5, 8, 1, "torchrun")


@pytest.mark.parametrize("failure", ["raises", "half imported", "nonsense"])
def test_a_broken_torch_distributed_never_breaks_the_topology(
    monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    group = types.ModuleType("torch.distributed")
    if failure == "raises":
        def boom() -> bool:
            raise RuntimeError("default process group is being destroyed")
        group.is_available = lambda: True  # type: ignore[attr-defined]
        group.is_initialized = boom  # type: ignore[attr-defined]
    elif failure == "nonsense":
        group.is_available = lambda: True  # type: ignore[attr-defined]
        group.is_initialized = lambda: True  # type: ignore[attr-defined]
        group.get_rank = lambda: 9  # type: ignore[attr-defined]
        group.get_world_size = lambda: 2  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch.distributed", group)
    monkeypatch.setattr(_env.os, "environ", {"RANK": "1", "WORLD_SIZE": "2"})
    topo = _env.topology()
    assert (topo.rank, topo.world_size) == (1, 2)


def run_probe(tmp_path: Path, source: str, *args: str) -> str:
    script = tmp_path / "probe.py"
    script.write_text(source)
    result = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True,
                            timeout=120, cwd=str(ROOT), env=child_env())
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_topology_never_imports_torch(tmp_path: Path) -> None:
    out = run_probe(tmp_path, "import sys\nfrom amldbg.core import environment\n"
                              "environment.topology()\nprint('torch' in sys.modules)\n")
    assert out.split() == ["False"]


PROCESS_GROUP_PROBE = """
import json, os, threading
os.environ.update(RANK="3", LOCAL_RANK="1", WORLD_SIZE="4")
import torch.distributed as dist
from amldbg.core import environment

def seen():
    t = environment.topology()
    return [t.rank, t.local_rank, t.world_size, t.launcher]

before = seen()
dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
during = seen()
from_thread = []
thread = threading.Thread(target=lambda: from_thread.append(seen()))
thread.start(); thread.join()
dist.destroy_process_group()
print(json.dumps([before, during, from_thread[0], seen()]))
"""


@pytest.mark.slow
def test_the_default_process_group_wins_over_the_variables(tmp_path: Path) -> None:
    """A real gloo group whose rank (0 of 1) is not what the variables say (3 of 4)."""
    before, during, from_thread, after = json.loads(run_probe(tmp_path, PROCESS_GROUP_PROBE))
    assert before == [3, 1, 4, "torchrun"]
    assert during == from_thread == [0, 1, 1, "torchrun"]
    assert after == before  # destroyed: the variables again


SPAWN_PROBE = """
import json, multiprocessing, os, sys
import torch.multiprocessing as mp
from amldbg.core import environment

def seen(name, out):
    t = environment.topology()
    with open(os.path.join(out, name + ".json"), "w") as handle:
        json.dump([t.rank, t.local_rank, t.world_size, t.launcher], handle)

def fn(index, out):
    seen(f"spawn-{index}", out)

if __name__ == "__main__":
    out, method = sys.argv[1], sys.argv[2]
    context = multiprocessing.get_context(method)
    # Processes started first shift multiprocessing's own numbering (_identity), not spawn's.
    with context.Pool(2) as pool:
        pool.map(abs, [1, 2])
    plain = context.Process(target=seen, args=("plain", out))
    plain.start()
    plain.join()
    mp.start_processes(fn, args=(out,), nprocs=2, start_method=method)
    seen("parent", out)
"""


@pytest.mark.slow
@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_torch_spawn_children_are_numbered_by_their_spawn_index(tmp_path: Path, method: str) -> None:
    run_probe(tmp_path, SPAWN_PROBE, str(tmp_path), method)

    def seen(name: str) -> list[object]:
        return list(json.loads((tmp_path / f"{name}.json").read_text()))

    # Before any process group: the index is the rank and the local rank (the debug port).
    assert seen("spawn-0") == [0, 0, 1, "spawn"]
    assert seen("spawn-1") == [1, 1, 2, "spawn"]
    # A plain multiprocessing child and the parent are no spawn ranks.
    assert seen("plain") == [0, 0, 1, "single"]
    assert seen("parent") == [0, 0, 1, "single"]
