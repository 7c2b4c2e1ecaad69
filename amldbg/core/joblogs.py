"""Reading a downloaded job's folders: the one bounded reader behind ``amldbg stacks`` and
``amldbg find``.

A job folder comes from a remote machine and is read as hostile input, with bounds that do
not depend on what it holds:

* :func:`walk` turns the paths a user gave (files, folders, ``-`` for standard input) into
  the files to read, in name order. Folders are walked with symbolic links to folders
  followed, but each real folder is entered once (known by its ``(st_dev, st_ino)``), so a
  link loop ends; a file reached twice is read once. Below a folder only regular files are
  opened, never a FIFO (which would block) or a device. What cannot be read is yielded as
  :class:`Unreadable` with a one-line reason, never raised and never passed over in silence;
* :class:`LineReader` streams the lines of a file of any size in bounded chunks: a line
  longer than :data:`MAX_LINE` keeps its first part, the rest is skipped and counted;
* :func:`read_text` reads a JSON document whole, up to :data:`MAX_JSON` bytes; a larger file
  is refused with :class:`TooLarge` (an :class:`OSError`, reported like any unreadable file).

Only the standard library is used. Nothing here prints: the commands decide how to report,
through :mod:`amldbg.core.safetext`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import stat
from pathlib import Path
from typing import IO, Any, AnyStr, Iterable, Iterator, Sequence

__all__ = [
    "MAX_JSON",
    "MAX_LINE",
    "SUFFIXES",
    "JobFile",
    "LineReader",
    "TooLarge",
    "Unreadable",
    "open_lines",
    "read_text",
    "reason",
    "walk",
]

#: The longest line kept whole when reading logs; the rest of a longer line is skipped.
MAX_LINE = 1 << 20
#: The largest JSON document read whole (a dump amldbg writes is a few hundred KiB at most).
MAX_JSON = 64 << 20
#: The files worth reading below a folder when no other suffixes are given: dumps and crash
#: reports (``.json``) and logs.
SUFFIXES = (".json", ".txt", ".log", ".out", ".err")

# How many bytes are read at a time.
_CHUNK = 1 << 20


class LineReader:
    """The lines of a log, read in bounded chunks: memory stays bounded whatever the input.

    Iterating yields each line without its line ending, decoded as UTF-8 with undecodable
    bytes replaced (from a binary stream), or as read (from a text stream). A line longer
    than ``max_line`` characters is cut to its first ``max_line`` and counted in
    :attr:`cut`: a 200 MB log without a line break costs ``max_line``, not 200 MB.
    """

    def __init__(self, stream: IO[Any], max_line: int = MAX_LINE, chunk: int = _CHUNK) -> None:
        self._stream = stream
        self.max_line = max_line
        self._chunk = chunk
        #: How many lines were longer than ``max_line`` and read only in part.
        self.cut = 0

    def __iter__(self) -> Iterator[str]:
        first = self._stream.read(self._chunk)
        if isinstance(first, bytes):
            for raw in self._lines(first, b"\n", b""):
                yield raw.decode("utf-8", "replace").rstrip("\r")
        else:
            for text in self._lines(first, "\n", ""):
                yield text.rstrip("\r")

    def _lines(self, chunk: AnyStr, newline: AnyStr, empty: AnyStr) -> Iterator[AnyStr]:
        pieces: list[AnyStr] = []
        size = 0
        dropping = False
        while chunk:
            start = 0
            while True:
                end = chunk.find(newline, start)
                piece = chunk[start:] if end < 0 else chunk[start:end]
                if not dropping:
                    room = self.max_line - size
                    if len(piece) > room:
                        piece = piece[:room]
                        dropping = True
                        self.cut += 1
                    pieces.append(piece)
                    size += len(piece)
                if end < 0:
                    break
                yield empty.join(pieces)
                pieces, size, dropping = [], 0, False
                start = end + 1
            chunk = self._stream.read(self._chunk)
        if size or dropping:
            yield empty.join(pieces)


@dataclasses.dataclass(frozen=True)
class JobFile:
    """A file to read: ``path``, or standard input when ``path`` is ``None``.

    ``found`` is true for a file found below a folder (only a regular file is opened then);
    a path the user named is read whatever it is (``<(az ml job stream ...)`` is a pipe).
    """

    path: Path | None
    found: bool = False

    @property
    def name(self) -> str:
        """How to name the file in a report: its path, or ``<stdin>``."""
        return "<stdin>" if self.path is None else str(self.path)

    def has_suffix(self, *suffixes: str) -> bool:
        """True when the file's name ends with one of ``suffixes`` (any case)."""
        return self.path is not None and self.path.name.lower().endswith(suffixes)


@dataclasses.dataclass(frozen=True)
class Unreadable:
    """A file or folder that could not be read, and why (one line)."""

    path: str
    reason: str


class TooLarge(OSError):
    """A file larger than a reader reads whole (see :func:`read_text`)."""


def reason(error: OSError) -> str:
    """Why ``error`` happened, in a few words (``Permission denied``)."""
    return str(error.strerror or error)


def _key(info: os.stat_result) -> tuple[int, int] | None:
    # Some file systems give no inode numbers (0): then nothing can be recognised twice.
    return (info.st_dev, info.st_ino) if info.st_ino else None


def walk(paths: Iterable[str], suffixes: Sequence[str] = SUFFIXES) -> Iterator[JobFile | Unreadable]:
    """The files to read for ``paths``, in the order given, and what cannot be read.

    ``-`` stands for standard input (a :class:`JobFile` without a path); a folder gives its
    files whose names end with one of ``suffixes`` (any case), from every folder below it,
    in path order, then the files and folders below it that cannot be read; any other path
    is read as it is (a named FIFO too). A path that does not exist is :class:`Unreadable`.
    """
    tuple_suffixes = tuple(s.lower() for s in suffixes)
    folders: set[tuple[int, int]] = set()
    files: set[tuple[int, int]] = set()
    for path in paths:
        if path == "-":
            yield JobFile(None)
            continue
        try:
            info = os.stat(path)
        except OSError as error:
            yield Unreadable(path, reason(error))
            continue
        if stat.S_ISDIR(info.st_mode):
            yield from _folder(Path(path), info, tuple_suffixes, folders, files)
            continue
        key = _key(info)
        if key is not None and stat.S_ISREG(info.st_mode):
            if key in files:
                continue
            files.add(key)
        yield JobFile(Path(path))


def _folder(
    root: Path,
    info: os.stat_result,
    suffixes: tuple[str, ...],
    folders: set[tuple[int, int]],
    files: set[tuple[int, int]],
) -> Iterator[JobFile | Unreadable]:
    """The files below ``root`` (see :func:`walk`)."""
    key = _key(info)
    if key is not None:
        if key in folders:
            return
        folders.add(key)
    found: list[tuple[bool, Path, tuple[int, int] | None]] = []
    problems: list[Unreadable] = []
    # Real folders first, then the linked ones whose target was not entered already: the
    # files are named by their real path when they have one, and a link loop ends.
    pending: list[Path] = [root]
    linked: list[tuple[Path, tuple[int, int]]] = []
    while pending or linked:
        if pending:
            folder = pending.pop()
        else:
            folder, linked_key = linked.pop(0)
            if linked_key in folders:
                continue
            folders.add(linked_key)
        try:
            with os.scandir(folder) as listing:
                entries = list(listing)
        except OSError as error:
            problems.append(Unreadable(str(folder), reason(error)))
            continue
        for entry in entries:
            wanted = entry.name.lower().endswith(suffixes)
            try:
                entry_info = entry.stat()  # follows a link
                is_link = entry.is_symlink()
            except OSError as error:
                # A dangling link, a link loop, a file removed meanwhile: say so.
                if wanted:
                    problems.append(Unreadable(entry.path, reason(error)))
                continue
            if stat.S_ISDIR(entry_info.st_mode):
                if not entry_info.st_ino:
                    # Windows' DirEntry.stat() leaves st_ino at 0; os.stat() fills it in.
                    with contextlib.suppress(OSError):
                        entry_info = os.stat(entry.path)
                target = _key(entry_info)
                if is_link:
                    if target is not None:  # without inode numbers a loop cannot be seen
                        linked.append((Path(entry.path), target))
                elif target is None or target not in folders:
                    if target is not None:
                        folders.add(target)
                    pending.append(Path(entry.path))
            elif wanted and stat.S_ISREG(entry_info.st_mode):
                found.append((is_link, Path(entry.path), _key(entry_info)))
    # A file reached twice is read once, by its real name when one of the names is real.
    chosen: list[Path] = []
    for _, path, file_key in sorted(found, key=lambda item: (item[0], item[1])):
        if file_key is not None:
            if file_key in files:
                continue
            files.add(file_key)
        chosen.append(path)
    for path in sorted(chosen):
        yield JobFile(path, found=True)
    yield from sorted(problems, key=lambda problem: problem.path)


def _open(item: JobFile) -> IO[bytes]:
    """``item`` opened for binary reading; a file found below a folder only when it is still
    a regular file (it is opened without blocking, so a FIFO put in its place cannot hang)."""
    assert item.path is not None
    if not item.found:
        return open(item.path, "rb")
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    descriptor = os.open(item.path, flags)
    try:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(item.path))
        return os.fdopen(descriptor, "rb")
    except BaseException:  # whatever stopped the open, close the descriptor; re-raised
        os.close(descriptor)
        raise


@contextlib.contextmanager
def open_lines(
    item: JobFile, stdin: IO[Any] | None = None, max_line: int = MAX_LINE
) -> Iterator[LineReader]:
    """A :class:`LineReader` over ``item`` (standard input: ``stdin``'s bytes when it has
    them, which is left open). Raises :class:`OSError` when the file cannot be opened; a
    read error while iterating is an :class:`OSError` too."""
    if item.path is None:
        if stdin is None:
            raise OSError(errno.EBADF, "no standard input", "<stdin>")
        # Bytes, not text: a log is not always UTF-8, and a strict decoder would stop at
        # the first bad byte.
        yield LineReader(getattr(stdin, "buffer", stdin), max_line=max_line)
        return
    with _open(item) as handle:
        yield LineReader(handle, max_line=max_line)


def read_text(item: JobFile, limit: int = MAX_JSON) -> str:
    """The whole text of ``item`` (UTF-8, undecodable bytes replaced, without a byte-order
    mark), at most ``limit`` bytes: :class:`TooLarge` for a larger file."""
    if item.path is None:
        raise OSError(errno.EBADF, "standard input is read line by line", "<stdin>")
    with _open(item) as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise TooLarge(
            errno.EFBIG, f"larger than {_size(limit)}, more than a dump file ever holds",
            str(item.path),
        )
    return data.decode("utf-8", "replace").lstrip("\ufeff")


def _size(count: int) -> str:
    return f"{count >> 20} MiB" if count >= 1 << 20 else f"{count} bytes"
