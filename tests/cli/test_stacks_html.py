"""``amldbg stacks --html``: the page of the whole job, opened in a real headless Chromium.

The results are built in the shape :func:`amldbg.cli.stacks.analyse` gives with
``detail=True`` (groups, outliers, missing ranks, the collective verdict and each rank's
threads, frames, values and collective record); :func:`amldbg.cli.stacks_html.render`
writes the page and the browser (tests/browser.py) opens it from disk with the network
shut: every test also fails if the page asked for anything, raised, opened a dialog or broke
its Content-Security-Policy.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from amldbg import cli
from amldbg.cli import stacks, stacks_html
from browser import PageLog, open_page

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT = ROOT / "docs" / "images" / "stacks-html.png"
TRAIN = "/mnt/azureml/cr/j/0f3c/exe/wd/train.py"
TORCH = "/opt/conda/lib/python3.11/site-packages/torch/distributed"
COLLECTIVE_LINE = (
    "collective #4 all_reduce [[4]] float in default_pg: rank 3 never entered it "
    "(at train.py:47 in wait_for_shard)"
)


def _frame(file: str, line: int, function: str, code: str = "", values: dict[str, str] | None = None) -> dict[str, Any]:
    frame: dict[str, Any] = {
        "file": file, "line": line, "function": function, "library": "site-packages" in file,
    }
    if code:
        frame["code"] = code
    if values is not None:
        frame["locals"] = values
    return frame


def _label(frame: dict[str, Any]) -> str:
    return f"{frame['file'].rsplit('/', 1)[-1]}:{frame['line']} in {frame['function']}"


def _main_frames(rank: int, stuck: bool, hostile: str = "") -> list[dict[str, Any]]:
    top = [
        _frame(TRAIN, 100, "<module>", "main()"),
        _frame(TRAIN, 91 if not stuck else 93, "main",
               "loss = train_step(model, batch, step)" if not stuck else "batch = wait_for_shard(loader, step)",
               {"step": "41", "args": "Namespace(lr=0.1, epochs=3, hf_token=<hidden>)"}),
    ]
    if stuck:
        return top + [_frame(
            TRAIN, 47, "wait_for_shard" + hostile, "time.sleep(1)" + hostile,
            {"shard": f"'data/part-{rank}.csv'", "attempt": "12", **({"note" + hostile: hostile} if hostile else {})},
        )]
    return top + [
        _frame(TRAIN, 55, "train_step", "dist.all_reduce(loss)",
               {"loss": "<Tensor shape=(4,) dtype=torch.float32 device=cpu>", "rank": str(rank)}),
        _frame(f"{TORCH}/c10d_logger.py", 83, "_exception_logger.<locals>.wrapper", "return func(*args, **kwargs)"),
        _frame(f"{TORCH}/distributed_c10d.py", 3252, "all_reduce", "work.wait()",
               {"op": "<RedOpType.SUM: 0>", "tensor": "<Tensor shape=(4,) dtype=torch.float32 device=cpu>"}),
    ]


def _helper_thread() -> dict[str, Any]:
    lib = "/opt/conda/lib/python3.11/threading.py"
    return {"name": "Thread-1 (_pin_memory_loop)", "ident": 140001, "main": False, "daemon": True, "frames": [
        _frame(lib, 1002, "_bootstrap", "self._bootstrap_inner()"),
        _frame(lib, 1045, "_bootstrap_inner", "self.run()"),
        _frame(lib, 982, "run", "self._target(*self._args, **self._kwargs)"),
    ]}


def _collectives(world: int, last: int, op: str = "all_reduce") -> dict[str, Any]:
    """A rank's Flight Recorder section: collectives 1..``last`` on the default group, the
    last one not yet completed when the rank is past the others' #3."""
    entries = [
        {"seq": seq, "op": op, "sizes": [[4]], "dtypes": ["float"],
         "state": "completed" if seq <= 3 else "scheduled"}
        for seq in range(1, last + 1)
    ]
    return {"recorder": "on", "backend": "gloo", "groups": [{
        "process_group": "default_pg", "pg": "0", "ranks": list(range(world)),
        "last_enqueued": last, "last_started": None, "last_completed": min(last, 3),
        "entries": entries,
    }]}


def job_dumps(world: int, outlier: int = 3, missing: int = 0, hostile: str = "") -> list[dict[str, Any]]:
    """The stall reports of a job of ``world`` ranks (the dump schema amldbg writes) where
    rank ``outlier`` is stuck in user code before collective #4, which the others entered,
    and the last ``missing`` ranks wrote none."""
    dumps = []
    for rank in range(world - missing):
        stuck = rank == outlier
        dumps.append({
            "amldbg_stacks": 1, "reason": "stall", "detail": "no progress for 600 s",
            "time": f"2026-05-04T10:{rank // 60 % 60:02d}:{rank % 60:02d}.{rank % 1000:03d}+00:00",
            "seq": 1, "rank": rank, "local_rank": rank % 8, "world_size": world,
            "node_rank": rank // 8, "launcher": "torchrun", "pid": 4000 + rank,
            "host": f"node-{rank // 8}{hostile}",
            "threads": [
                {"name": "MainThread", "ident": 140000, "main": True, "daemon": False,
                 "frames": _main_frames(rank, stuck, hostile)},
                _helper_thread(),
            ],
            "collectives": _collectives(world, 3 if stuck else 4),
        })
    return dumps


def write_page(tmp_path: Path, dumps: list[dict[str, Any]], name: str = "job.html") -> Path:
    """The page ``amldbg stacks DIR --html FILE`` writes for ``dumps`` (one file each, as a
    job's outputs/amldbg/ holds them)."""
    folder = tmp_path / "outputs" / "amldbg"
    folder.mkdir(parents=True, exist_ok=True)
    for dump in dumps:
        (folder / f"stacks-rank{dump['rank']}-pid{dump['pid']}-1.json").write_text(
            json.dumps(dump), encoding="utf-8")
    page = tmp_path / name
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli.main(["stacks", str(folder), "--html", str(page)]) == 0
    assert page.is_file()
    return page


def test_eight_ranks_name_the_outlier_and_the_collective(tmp_path: Path) -> None:
    log = PageLog()
    with open_page(write_page(tmp_path, job_dumps(8)), log) as page:
        verdict = page.locator("#verdict")
        assert COLLECTIVE_LINE in verdict.inner_text()
        assert "outlier: rank 3 at train.py:47 in wait_for_shard" in verdict.inner_text()
        assert page.get_by_text(COLLECTIVE_LINE).is_visible()
        cells = page.locator("#grid [data-rank]")
        assert cells.count() == 8
        assert page.locator("#grid [data-rank='3']").inner_text() == "3"
        assert "out" in (page.locator("#grid [data-rank='3']").get_attribute("class") or "").split()
        assert "out" not in (page.locator("#grid [data-rank='0']").get_attribute("class") or "").split()
        legend = page.locator("#legend").inner_text()
        assert "group 1 \u00b7 7 ranks \u00b7 train.py:55 in train_step" in legend
        assert "group 2 \u00b7 1 rank \u00b7 train.py:47 in wait_for_shard" in legend
        # The page opens on the rank the collective verdict names.
        detail = page.locator("#detail")
        assert detail.locator("h2").inner_text() == "rank 3"
        assert "never entered collective #4 all_reduce in default_pg" in detail.inner_text()
        # docs/hung-jobs.md's picture: written when missing, or renewed on request (fonts differ
        # between machines, so an ordinary run leaves the committed one alone).
        shot = tmp_path / "stacks-html.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        if os.environ.get("AMLDBG_UPDATE_SCREENSHOTS") == "1" or not SCREENSHOT.exists():
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shot, SCREENSHOT)
    assert log.requests == [] and log.dialogs == [] and log.errors == []


def test_click_on_a_rank_shows_its_threads_frames_values_and_collectives(tmp_path: Path) -> None:
    with open_page(write_page(tmp_path, job_dumps(8))) as page:
        detail = page.locator("#detail")
        assert "rank = 5" not in detail.inner_text().replace("\t", " = ")
        page.locator("#grid [data-rank='5']").click()
        assert detail.locator("h2").inner_text() == "rank 5"
        text = detail.inner_text()
        assert "pid 4005 on node-0" in text
        assert "MainThread (main thread) \u2014 5 frames" in text
        assert "Thread-1 (_pin_memory_loop) \u2014 3 frames" in text
        main = detail.locator("details.th").first
        assert "train.py:55 in train_step" in main.inner_text()
        assert "dist.all_reduce(loss)" in main.inner_text()
        values = main.locator("table.vals tr").all_inner_texts()
        assert "rank\t5" in values and "step\t41" in values
        # Its collective record: #4 entered (scheduled), the collective the verdict is about.
        record = detail.locator("table.coll tr.at").inner_text()
        assert record.split("\t") == ["4", "all_reduce", "[[4]]", '["float"]', "scheduled"]
        assert page.locator("#grid [data-rank='5']").evaluate("c => c.classList.contains('sel')")


def test_flame_graph_frame_of_the_outlier_lists_its_rank(tmp_path: Path) -> None:
    with open_page(write_page(tmp_path, job_dumps(8))) as page:
        # A frame one rank wide (of 8) shows its function and its rank; the whole label is
        # its accessible name and its tooltip.
        frame = page.locator("#flame-graph .fn", has_text="wait_for_shard")
        assert frame.count() == 1
        assert frame.inner_text() == "wait_for_shard \u2014 rank 3"
        assert frame.get_attribute("aria-label") == "train.py:47 in wait_for_shard \u2014 rank 3"
        shared = page.locator("#flame-graph .fn", has_text="train.py:100 in <module>")
        assert shared.inner_text() == "train.py:100 in <module> \u2014 ranks 0-7"
        widths = [page.locator("#flame-graph .fn", has_text=t).bounding_box()["width"]
                  for t in ("train.py:55 in train_step", "wait_for_shard")]
        assert widths[0] > 5 * widths[1]  # 7 ranks against 1
        # Hover names the ranks; a click lists them, and one rank's frame opens that rank.
        page.locator("#grid [data-rank='0']").click()
        frame.hover()
        assert "rank 3" in page.locator("#tip").inner_text()
        assert TRAIN in page.locator("#tip").inner_text()
        frame.click()
        assert page.locator("#flame-sel .chip").all_inner_texts() == ["3"]
        assert page.locator("#detail h2").inner_text() == "rank 3"
        page.locator("#flame-graph .fn", has_text="train.py:55 in train_step").click()
        assert page.locator("#flame-sel .chip").all_inner_texts() == [str(r) for r in range(8) if r != 3]
        page.locator("#flame-sel .chip", has_text="6").click()
        assert page.locator("#detail h2").inner_text() == "rank 6"


def test_1024_ranks_stay_readable(tmp_path: Path) -> None:
    with open_page(write_page(tmp_path, job_dumps(1024, outlier=700, missing=4))) as page:
        verdict = page.locator("#verdict").inner_text()
        assert "outlier: rank 700 at train.py:47 in wait_for_shard" in verdict
        assert "no dump from ranks 1020-1023" in verdict
        assert "rank 700 never entered it" in verdict
        cells = page.locator("#grid [data-rank]")
        assert cells.count() == 1024
        box = page.locator("#grid [data-rank='1023']").bounding_box()
        assert box is not None and box["width"] <= 16 and box["y"] < 900  # small cells, wrapped
        assert "miss" in (page.locator("#grid [data-rank='1021']").get_attribute("class") or "")
        # Row labels say where a row starts; whole nodes of 8 ranks stay on one row.
        labels = page.locator("#grid .rl").all_inner_texts()
        assert labels[0] == "0" and int(labels[1]) % 8 == 0
        # The outlier's frame is one rank in 1,020: narrow, no label, but there and named.
        node = page.evaluate("""() => {
            for (const d of document.querySelectorAll('#flame-graph .fn')) {
                const r = d.getBoundingClientRect();
                if (!d.textContent && r.width >= 2) return d.dataset.node;
            }
            return null;
        }""")
        assert node is not None
        target = page.locator(f"#flame-graph [data-node='{node}']")
        target.hover()
        assert "rank 700" in page.locator("#tip").inner_text()
        # Find a rank by number.
        page.locator("#find").fill("900")
        assert page.locator("#find-status").inner_text() == "1 rank (Enter opens it)"
        page.locator("#find").press("Enter")
        assert page.locator("#detail h2").inner_text() == "rank 900"
        assert "train.py:55 in train_step" in page.locator("#detail").inner_text()
        # Find by frame text: the ranks at that frame are highlighted.
        page.locator("#find").fill("wait_for_shard")
        assert page.locator("#find-status").inner_text() == "1 rank at a frame matching"
        assert page.locator("#grid .hl").count() == 1
        assert page.locator("#grid .hl").get_attribute("data-rank") == "700"


HOSTILE = "</script><script>window.__pwned=1;alert(1)</script><img src=x onerror=alert(2)>\u202e\u2028&amp;"


def test_hostile_strings_are_text_and_run_nothing(tmp_path: Path) -> None:
    dumps = job_dumps(8, hostile=HOSTILE)
    dumps[3]["reason"] = "stall" + HOSTILE
    dumps[3]["collectives"]["groups"][0]["entries"][0]["op"] = "gloo:" + HOSTILE
    dumps[3]["collectives"]["groups"][0]["process_group"] = "default_pg" + HOSTILE
    dumps[2]["collectives"] = {"recorder": "late", "note": "late" + HOSTILE}
    crash = {"amldbg_crash": 1, "rank": 3, "pid": 4003, "host": "node-0", "time": "2026-05-04T10:00:09+00:00",
             "exception": "ValueError: " + HOSTILE, "where": "main thread" + HOSTILE,
             "frames": [_frame(TRAIN, 47, "wait_for_shard" + HOSTILE)]}
    folder = tmp_path / "outputs" / "amldbg"
    folder.mkdir(parents=True)
    (folder / "crash-rank3-pid4003.json").write_text(json.dumps(crash), encoding="utf-8")
    page_file = write_page(tmp_path, dumps)
    source = page_file.read_text(encoding="utf-8")
    # One <script> element of data and one of code; nothing else can start or end one.
    assert source.count("<script") == 2 and source.count("</script>") == 2
    assert "\u202e" not in source and "\u2028" not in source
    log = PageLog()
    with open_page(page_file, log, check=False) as page:
        page.locator("#grid [data-rank='3']").click()
        detail = page.locator("#detail").inner_text()
        shown = "</script><script>window.__pwned=1;alert(1)</script><img src=x onerror=alert(2)>\\u202e\\u2028&amp;"
        assert "wait_for_shard" + shown in detail
        assert shown in page.locator("#verdict").inner_text()
        assert page.locator("#verdict img, #detail img, #detail script, #verdict script").count() == 0
        assert page.evaluate("() => window.__pwned") is None
        assert page.title().startswith("amldbg stacks: ")
        page.locator("#flame-graph .fn", has_text="wait_for_shard").first.hover()
        assert shown in page.locator("#tip").inner_text()
    assert log.dialogs == []
    assert log.errors == []
    assert log.requests == []
    assert not [m for m in log.console if m[0] in ("error", "warning")], log.console


def test_the_network_guard_sees_a_request(tmp_path: Path) -> None:
    """The browser helper's record is what the other tests rely on: a page that does fetch is
    caught (each kind aborted), and an alert is seen."""
    page_file = tmp_path / "fetches.html"
    page_file.write_text(
        '<!DOCTYPE html><img src="http://127.0.0.1:9/pixel.png"><img src="other.png">'
        "<script>alert('hi'); document.documentElement.dataset.ready = '1';</script>",
        encoding="utf-8",
    )
    log = PageLog()
    with open_page(page_file, log, check=False) as page:
        page.wait_for_timeout(300)
    assert "http://127.0.0.1:9/pixel.png" in log.requests
    assert any(url.endswith("/other.png") for url in log.requests)
    assert log.dialogs == ["hi"]


def analysed(tmp_path: Path, dumps: list[dict[str, Any]]) -> dict[str, Any]:
    """analyse(detail=True) of ``dumps`` read from their files."""
    for dump in dumps:
        (tmp_path / f"stacks-rank{dump['rank']}-pid{dump['pid']}-1.json").write_text(json.dumps(dump), encoding="utf-8")
    return stacks.analyse(stacks.collect([str(tmp_path)], io.StringIO(), detail=True), detail=True)


def test_page_is_self_contained_and_data_written_once(tmp_path: Path) -> None:
    page = stacks_html.render(analysed(tmp_path, job_dumps(256)))
    # Nothing to fetch: no URL of any scheme, no src or href, and a policy that forbids it.
    assert not re.search(r"\b(src|href)\s*=", page)
    assert not re.search(r"(https?|ftp|wss?)://", page)
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', page)
    assert csp and "default-src 'none'" in csp.group(1) and "unsafe" not in csp.group(1)
    data = json.loads(re.search(r'id="amldbg-data">(.*?)</script>', page, re.S).group(1))  # type: ignore[union-attr]
    # 256 ranks share two main-thread stacks and one helper thread: each frame list once.
    assert len(data["stacks"]) == 3
    assert page.count(f"{TORCH}/c10d_logger.py") == 1
    assert page.count('"c10d_logger.py:83 in _exception_logger.\\u003clocals\\u003e.wrapper"') == 1
    assert len(data["procs"]) == 256


def test_render_survives_odd_results() -> None:
    """Keys missing (an analyse() without detail) or of the wrong type: still a page."""
    for result in ({}, {"groups": "x", "ranks_detail": [None, 3, {"rank": "a"}], "collectives": [7]},
                   {"groups": [{"ranks": [0, 1], "frame": "a.py:1 in f", "stack": ["a.py:1 in f"]}],
                    "world_size": 10**9, "missing": [2], "recorder": ["late on rank 2", None]}):
        page = stacks_html.render(result)
        assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")


def test_4096_ranks_page_stays_small(tmp_path: Path) -> None:
    page = stacks_html.render(analysed(tmp_path, job_dumps(4096, outlier=1234, missing=16)))
    assert len(page.encode("utf-8")) < 3 * 1024 * 1024
