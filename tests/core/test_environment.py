"""Reading the Azure ML context: topology, run identity, node address, port check."""

from __future__ import annotations

import socket

from amldbg.core import environment as _env


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
