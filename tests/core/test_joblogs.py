"""amldbg.core.joblogs: the one bounded reader of job folders (``amldbg stacks``, ``amldbg find``)."""

from __future__ import annotations

import io
import os
import threading
from pathlib import Path

import pytest

from amldbg.core import joblogs
from amldbg.core.joblogs import JobFile, LineReader, TooLarge, Unreadable


def names(items: list[JobFile | Unreadable], root: Path) -> list[str]:
    """What :func:`joblogs.walk` yielded, as paths relative to ``root`` (``!`` marks a problem)."""
    shown = []
    for item in items:
        if isinstance(item, Unreadable):
            shown.append(f"!{os.path.relpath(item.path, root)}: {item.reason}")
        else:
            assert item.path is not None
            shown.append(os.path.relpath(item.path, root))
    return shown


def test_a_folder_gives_its_files_in_path_order_filtered_by_suffix(tmp_path: Path) -> None:
    for name in ("b/std_log.txt", "a/z.LOG", "a/x/stacks-rank0.json", "model.pt", "a/notes.md"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    found = list(joblogs.walk([str(tmp_path)]))
    assert names(found, tmp_path) == ["a/x/stacks-rank0.json", "a/z.LOG", "b/std_log.txt"]
    assert all(isinstance(item, JobFile) and item.found for item in found)
    only_logs = list(joblogs.walk([str(tmp_path)], (".txt",)))
    assert names(only_logs, tmp_path) == ["b/std_log.txt"]


def test_stdin_a_named_file_and_a_missing_path(tmp_path: Path) -> None:
    log = tmp_path / "driver.bin"  # a named file is read whatever its suffix
    log.write_text("x")
    items = list(joblogs.walk(["-", str(log), str(tmp_path / "nope")]))
    assert items[0] == JobFile(None) and items[0].name == "<stdin>"
    assert items[1] == JobFile(log, found=False)
    assert items[2] == Unreadable(str(tmp_path / "nope"), "No such file or directory")


def test_a_folder_link_loop_ends_and_a_linked_folder_is_read_once(tmp_path: Path) -> None:
    (tmp_path / "job" / "logs").mkdir(parents=True)
    (tmp_path / "job" / "logs" / "std_log.txt").write_text("x")
    (tmp_path / "job" / "logs" / "up").symlink_to("..")  # a loop
    (tmp_path / "job" / "again").symlink_to("logs")  # the same folder twice
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "other.txt").write_text("x")
    (tmp_path / "job" / "linked").symlink_to(elsewhere)  # a folder only a link leads to
    items = list(joblogs.walk([str(tmp_path / "job")]))
    # The real path names a file that a link also leads to; the linked folder is read.
    assert names(items, tmp_path / "job") == ["linked/other.txt", "logs/std_log.txt"]


def test_a_file_reached_twice_is_read_once(tmp_path: Path) -> None:
    (tmp_path / "std_log.txt").write_text("x")
    (tmp_path / "copy.log").symlink_to("std_log.txt")
    items = list(joblogs.walk([str(tmp_path), str(tmp_path / "std_log.txt")]))
    assert names(items, tmp_path) == ["std_log.txt"]  # by its real name


def test_links_that_lead_nowhere_are_reported_and_fifos_are_never_opened(tmp_path: Path) -> None:
    (tmp_path / "std_log.txt").write_text("x")
    (tmp_path / "loop.txt").symlink_to("loop.txt")
    (tmp_path / "gone.json").symlink_to(tmp_path / "missing.json")
    (tmp_path / "gone.bin").symlink_to(tmp_path / "missing.bin")  # not a wanted name: ignored
    os.mkfifo(tmp_path / "pipe.txt")
    (tmp_path / "to-pipe.log").symlink_to("pipe.txt")
    items = list(joblogs.walk([str(tmp_path)]))
    assert names(items, tmp_path) == [
        "std_log.txt",
        "!gone.json: No such file or directory",
        "!loop.txt: Too many levels of symbolic links",
    ]


def test_a_folder_that_cannot_be_listed_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests run as root, whom chmod 000 does not stop: make listing one folder fail instead,
    # as it does for a folder that is removed while the walk is under way.
    (tmp_path / "ok").mkdir()
    (tmp_path / "ok" / "std_log.txt").write_text("x")
    (tmp_path / "locked").mkdir()
    real = os.scandir

    def scandir(path: str | os.PathLike[str]) -> object:
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    items = list(joblogs.walk([str(tmp_path)]))
    assert names(items, tmp_path) == ["ok/std_log.txt", "!locked: Permission denied"]


def test_a_file_replaced_by_a_fifo_after_the_walk_is_refused_without_blocking(tmp_path: Path) -> None:
    log = tmp_path / "std_log.txt"
    log.write_text("x")
    (item,) = joblogs.walk([str(tmp_path)])
    assert isinstance(item, JobFile)
    log.unlink()
    os.mkfifo(log)
    outcome: list[BaseException | None] = []

    def read() -> None:
        try:
            with joblogs.open_lines(item) as reader:
                list(reader)
            outcome.append(None)
        except OSError as error:
            outcome.append(error)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(10)
    assert outcome, "opening a FIFO found in a folder blocked"
    assert isinstance(outcome[0], OSError) and joblogs.reason(outcome[0]) == "not a regular file"


def test_a_file_removed_after_the_walk_is_an_oserror(tmp_path: Path) -> None:
    log = tmp_path / "std_log.txt"
    log.write_text("x")
    (item,) = joblogs.walk([str(tmp_path)])
    assert isinstance(item, JobFile)
    log.unlink()
    with pytest.raises(OSError) as raised, joblogs.open_lines(item):
        pass
    assert joblogs.reason(raised.value) == "No such file or directory"


def test_lines_of_any_size_are_streamed_and_an_overlong_line_is_cut_and_counted(tmp_path: Path) -> None:
    log = tmp_path / "std_log.txt"
    log.write_bytes(b"first\r\n" + b"y" * 50 + b"\n\xff last")
    with joblogs.open_lines(JobFile(log), max_line=10) as reader:
        lines = list(reader)
    assert lines == ["first", "y" * 10, "\ufffd last"]
    assert reader.cut == 1
    stdin = io.TextIOWrapper(io.BytesIO(b"a\nb\xff\n"))
    with joblogs.open_lines(JobFile(None), stdin) as reader:
        assert list(reader) == ["a", "b\ufffd"]  # read as bytes: no strict decoding


def test_line_reader_on_text_and_bytes() -> None:
    assert list(LineReader(io.BytesIO(b"a\nbb\n\nccc"), max_line=2, chunk=1)) == ["a", "bb", "", "cc"]
    assert list(LineReader(io.StringIO("x\r\ny"))) == ["x", "y"]
    assert list(LineReader(io.BytesIO(b""))) == []


def test_read_text_is_bounded(tmp_path: Path) -> None:
    dump = tmp_path / "stacks-rank0.json"
    dump.write_bytes(b'\xef\xbb\xbf{"a": "\xff"}')
    assert joblogs.read_text(JobFile(dump)) == '{"a": "\ufffd"}'
    big = tmp_path / "stacks-rank1.json"
    with open(big, "wb") as handle:
        handle.truncate((1 << 20) + 1)
    with pytest.raises(TooLarge) as raised:
        joblogs.read_text(JobFile(big), limit=1 << 20)
    assert isinstance(raised.value, OSError)  # reported like any file that cannot be read
    assert joblogs.reason(raised.value) == "larger than 1 MiB, more than a dump file ever holds"
    assert joblogs.read_text(JobFile(big), limit=2 << 20).count("\x00") == (1 << 20) + 1
