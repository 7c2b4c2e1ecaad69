"""Rank-aware debugging under a real launcher: ``torchrun --nproc_per_node 2`` (gloo on CPU,
rendezvous on 127.0.0.1) running samples/train_distributed.py, with a real DAP client
attaching to the selected ranks over loopback."""

from __future__ import annotations

import json
import re
import socket
import time
from pathlib import Path

import pytest

# Not importorskip: torch (and so torchrun) is part of the test extra, and a missing launcher
# must fail the run instead of skipping the distributed tests silently.
import torch.distributed  # noqa: F401

from conftest import free_port
from harness.dap_client import DAPClient, DAPError
from processes import SAMPLES, RunningGroup, child_env, port_free

pytestmark = pytest.mark.slow

SAMPLE = str(SAMPLES / "train_distributed.py")
LOSS_LINE = next(
    n for n, line in enumerate(Path(SAMPLE).read_text().splitlines(), 1) if "loss = torch" in line
)


def free_port_pair() -> int:
    """A base port whose successor is free too (ranks listen on base + local rank)."""
    for _ in range(50):
        base = free_port()
        if base < 65535 and all(port_free(p) for p in (base, base + 1)):
            return base
    raise RuntimeError("no two consecutive free ports")


def torchrun(tmp_path: Path, *script_args: str) -> RunningGroup:
    argv = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--nnodes", "1",
            "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
            "--rdzv_backend", "static", SAMPLE, "--output_dir", str(tmp_path / "out"),
            *script_args]
    # OMP_NUM_THREADS: torchrun's own default, set here to keep its warning out of the log.
    return RunningGroup(argv, env=child_env(OMP_NUM_THREADS="1"), cwd=tmp_path)


def endpoints(output: str, state: str) -> list[dict[str, object]]:
    found = [json.loads(m) for m in re.findall(r"^amldbg endpoint: (\{.*\})$", output, re.M)]
    return [e for e in found if e["state"] == state]


def wait_for_endpoints(run: RunningGroup, count: int, timeout: float = 90) -> list[dict[str, object]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        waiting = endpoints(run.output, "waiting")
        if len(waiting) >= count:
            return waiting
        if run.proc.poll() is not None:
            break
        time.sleep(0.1)
    raise AssertionError(f"expected {count} waiting endpoint(s); output:\n{run.output}")


def debug_one_rank(client: DAPClient, expected_rank: int, attach: bool = True) -> None:
    """Stop at the loss line in epoch 0, check the rank's own locals, and let it go."""
    if attach:
        client.attach(breakpoints={SAMPLE: [LOSS_LINE]})
    stop = client.wait_for_stop(timeout=60)
    frame = client.top_frame(stop["threadId"])
    assert frame["line"] == LOSS_LINE
    local_vars = client.locals_of(frame["id"])
    assert local_vars["rank"] == str(expected_rank)
    assert local_vars["epoch"] == "0"
    assert client.evaluate("dist.get_rank()", frame["id"]) == str(expected_rank)
    client.request("setBreakpoints", {"source": {"path": SAMPLE}, "breakpoints": []})
    client.continue_(stop["threadId"])


def test_default_debugs_rank_zero_only(tmp_path: Path) -> None:
    base = free_port_pair()
    with torchrun(tmp_path, "--remote_debug", "--remote_debug_listen_host", "127.0.0.1",
                  "--remote_debug_port", str(base),
                  "--remote_debug_connection_timeout", "90") as run:
        [waiting] = wait_for_endpoints(run, 1)
        assert (waiting["rank"], waiting["local_rank"], waiting["port"]) == (0, 0, base)
        run.wait_for_line(r"^amldbg: rank 1 does not debug \(--remote_debug_ranks 0\)$")
        announce = run.wait_for_line(
            r"remote debugging on rank 0 of 2 \(local rank 0, node (\S+), pid \d+\): "
            rf"listening on 127\.0\.0\.1:{base}, attach to 127\.0\.0\.1:{base}$"
        )
        assert announce.group(1)
        assert not port_free(base)
        # Rank 1 does not listen: nothing accepts on its would-be port.
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", base + 1), 2):
            pass
        client = DAPClient.connect("127.0.0.1", base)
        try:
            debug_one_rank(client, 0)
            assert run.wait(120) == 0
        finally:
            client.disconnect()
    # In the output, not as whole lines: print() writes a line's text and its newline
    # separately, so two ranks sharing torchrun's pipe can glue their lines together.
    assert "rank 0 of 2 finished" in run.output and "rank 1 of 2 finished" in run.output
    assert [e["rank"] for e in endpoints(run.output, "attached")] == [0]
    assert (tmp_path / "out" / "model.pt").exists()


def test_all_ranks_listen_on_distinct_ports_and_each_can_be_debugged(tmp_path: Path) -> None:
    base = free_port_pair()
    with torchrun(tmp_path, "--remote_debug", "--remote_debug_ranks", "all",
                  "--remote_debug_listen_host", "127.0.0.1", "--remote_debug_port", str(base),
                  "--remote_debug_connection_timeout", "90") as run:
        waiting = wait_for_endpoints(run, 2)
        ports = {e["rank"]: e["port"] for e in waiting}
        assert ports == {0: base, 1: base + 1}
        assert "does not debug" not in run.output
        clients = [DAPClient.connect("127.0.0.1", ports[rank]) for rank in (0, 1)]
        try:
            # Attach to both first, as a user with two VS Code windows would: a rank that
            # was let go waits in init_process_group for the other.
            for client in clients:
                client.attach(breakpoints={SAMPLE: [LOSS_LINE]})
            for rank, client in enumerate(clients):
                debug_one_rank(client, rank, attach=False)
            assert run.wait(120) == 0
        finally:
            for client in clients:
                client.disconnect()
    assert sorted(e["rank"] for e in endpoints(run.output, "attached")) == [0, 1]
    assert "rank 0 of 2 finished" in run.output and "rank 1 of 2 finished" in run.output


@pytest.mark.parametrize("lengthen", [False, True], ids=["torch-timeout", "lengthened"])
def test_a_rank_held_at_a_breakpoint_and_the_process_group_timeout(
    tmp_path: Path, lengthen: bool
) -> None:
    """Rank 0 is held at a breakpoint longer than the process group's 3 s timeout: rank 1's
    all_reduce times out and the job fails, unless --remote_debug_watchdog_timeout lengthened
    the timeout passed through amldbg's process_group_timeout()."""
    base = free_port_pair()
    extra = ["--remote_debug_watchdog_timeout", "120"] if lengthen else []
    with torchrun(tmp_path, "--remote_debug", "--remote_debug_listen_host", "127.0.0.1",
                  "--remote_debug_port", str(base), "--remote_debug_connection_timeout", "90",
                  "--pg_timeout", "3", *extra) as run:
        wait_for_endpoints(run, 1)
        client = DAPClient.connect("127.0.0.1", base)
        try:
            client.attach(breakpoints={SAMPLE: [LOSS_LINE]})
            stop = client.wait_for_stop(timeout=60)
            frame = client.top_frame(stop["threadId"])
            assert client.locals_of(frame["id"])["epoch"] == "0"
            time.sleep(8)  # not a synchronisation: the user looks around past the 3 s process-group timeout
            try:
                client.request("setBreakpoints", {"source": {"path": SAMPLE}, "breakpoints": []})
                client.continue_(stop["threadId"])
            except DAPError:
                # torchrun ended the job (rank 0 too) when rank 1's collective timed out.
                assert not lengthen
            code = run.wait(120)
        finally:
            client.disconnect()
    if lengthen:
        assert code == 0, run.output
        assert "rank 1 of 2 finished" in run.output
        assert "timeouts passed through amldbg.process_group_timeout() are at least 120 s" in run.output
    else:
        assert code != 0
        assert "rank 1 of 2 finished" not in run.output
        assert re.search(r"[Tt]imed out|[Tt]imeout", run.output), run.output
        assert "--remote_debug_watchdog_timeout SECONDS to lengthen it" in run.output
