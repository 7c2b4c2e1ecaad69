"""The collective verdict from the stall reports alone, under a real torchrun with 4 gloo ranks
on loopback (tests/diagnostics/scripts/collective_job.py): a rank stuck in user code before
collective #4, two ranks calling a different collective, and two ranks passing different
sizes; each gives the right verdict in ``amldbg stacks``' text, its JSON and its HTML page
(in a real headless Chromium), read from the dump files and from the driver log alike."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

# Imported, not importorskip: torch (torchrun) is part of the test extra.
import torch.distributed  # noqa: F401

from browser import open_page
from conftest import free_port
from processes import ROOT, RunningGroup, child_env, run_amldbg
from processes import dumps_after_any_prefix as dumps  # the ranks share torchrun's stdout

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parent / "scripts" / "collective_job.py"
WAIT_LINE = next(
    number for number, text in enumerate(SCRIPT.read_text().splitlines(), 1)
    if text.strip() == "time.sleep(0.05)"
)

EXPECTED = {
    "stuck": (
        f"collective #4 all_reduce [[4]] float in default_pg: rank 3 never entered it "
        f"(at collective_job.py:{WAIT_LINE} in wait_for_shard)",
        {"entered": [0, 1, 2], "missing": [3], "mismatch": []},
    ),
    "op": (
        "collective #4 all_reduce [[4]] float in default_pg: ranks 2-3 entered broadcast [[4]] float instead",
        {"entered": [0, 1, 2, 3], "missing": [],
         "mismatch": [{"ranks": [2, 3], "op": "broadcast", "sizes": [[4]]}]},
    ),
    "sizes": (
        "collective #4 all_reduce [[4]] float in default_pg: ranks 2-3 entered all_reduce [[5]] float instead",
        {"entered": [0, 1, 2, 3], "missing": [],
         "mismatch": [{"ranks": [2, 3], "op": "all_reduce", "sizes": [[5]]}]},
    ),
}
# Around a rank stuck before the default group's #4: subgroups whose ids differ between
# ranks, gloo send/recv (counted in its status, not in its entries), a group made again.
for _mode in ("subgroups", "p2p", "reinit"):
    EXPECTED[_mode] = EXPECTED["stuck"]


def stacks(*args: str) -> subprocess.CompletedProcess[str]:
    return run_amldbg("stacks", *args, cwd=ROOT)


def run_job(tmp_path: Path, mode: str) -> tuple[Path, Path]:
    """Run the job until every rank dumped its stall report; the dump folder and the log."""
    argv = ["-m", "torch.distributed.run", "--nproc_per_node", "4", "--nnodes", "1",
            "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
            "--rdzv_backend", "static", str(SCRIPT), "--mode", mode, "--out", str(tmp_path),
            "--remote_debug_stall_timeout", "3"]
    with RunningGroup(argv, env=child_env(OMP_NUM_THREADS="1"), cwd=tmp_path) as run:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if {d["rank"] for d in dumps(run.output) if d["reason"] == "stall"} >= {0, 1, 2, 3}:
                break
            assert run.proc.poll() is None, run.output
            time.sleep(0.2)
        else:
            raise AssertionError(f"not every rank dumped:\n{run.output}")
        output = run.output
    log = tmp_path / "std_log.txt"
    log.write_text(output)
    return tmp_path / "outputs" / "amldbg", log


@pytest.mark.parametrize("mode", sorted(EXPECTED))
def test_the_verdict_names_the_collective_and_the_ranks(tmp_path: Path, mode: str) -> None:
    folder, log = run_job(tmp_path, mode)
    line, fields = EXPECTED[mode]
    pids = {json.loads(p.read_text())["rank"]: json.loads(p.read_text())["pid"]
            for p in tmp_path.glob("rank-*.json")}
    for source in (folder, log):  # the dump files, and the driver log alone
        text = stacks(str(source))
        assert text.returncode == 0, text.stderr
        # The one verdict, and no other collective line (no innocent rank named).
        assert [x for x in text.stdout.splitlines() if x.startswith("collective")] == [line], text.stdout
        as_json = stacks(str(source), "--json")
        assert as_json.returncode == 0, as_json.stderr
        result = json.loads(as_json.stdout)
        (verdict,) = [c for c in result["collectives"] if c["process_group"] == "default_pg"]
        assert verdict["seq"] == 4
        assert verdict["entered"] == fields["entered"]
        assert verdict["missing"] == fields["missing"]
        assert [{k: m[k] for k in ("ranks", "op", "sizes")} for m in verdict["mismatch"]] == fields["mismatch"]
        assert {p["rank"]: p["pid"] for g in result["groups"] for p in g["processes"]} == pids

    # The picture, from the dump files: the verdict line, the odd ranks marked, and a click on
    # one of them shows where its main thread is.
    page_file = tmp_path / "job.html"
    made = stacks(str(folder), "--html", str(page_file))
    assert made.returncode == 0, made.stderr
    odd = fields["missing"] or fields["mismatch"][0]["ranks"]
    with open_page(page_file) as page:
        assert line in page.locator("#verdict").inner_text()
        assert page.locator("#grid [data-rank]").count() == 4
        page.locator(f"#grid [data-rank='{odd[-1]}']").click()
        detail = page.locator("#detail")
        assert detail.locator("h2").inner_text() == f"rank {odd[-1]}"
        where = f"collective_job.py:{WAIT_LINE} in wait_for_shard" if mode == "stuck" else "collective_job.py:"
        assert where in detail.inner_text()
