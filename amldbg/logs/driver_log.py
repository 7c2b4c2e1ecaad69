"""The driver log: stdout, line-buffered, with the rank of a distributed job on every line.

Azure ML copies a job's stdout into ``70_driver_log.txt`` / ``user_logs/std_log.txt``.
The handler here looks ``sys.stdout`` up at every record instead of keeping the stream it
saw at creation, so redirections made later still apply: pytest's capture,
``contextlib.redirect_stdout``, and the Azure ML inference server, which replaces
``sys.stdout`` to route prints into its ``azmlinfsrv.print`` logger.

Inside a parallel job (SDK v2 ``parallel`` job or ParallelRunStep: the runtime's
``EntryScript``, from ``azureml_user.parallel_run`` or the older ``entry_script``),
records go through ``EntryScript().logger`` instead, which writes to
``logs/user/<ip>/Process-*.txt`` where the step's own lines are; writing to stdout as well
would put every line there twice.
"""

from __future__ import annotations

import io
import logging
import sys
import threading
from typing import Any

from amldbg.core import announce, environment, runtime
from amldbg.core.guard import quietly
from amldbg.logs import export

#: Format of driver-log lines; ``%(amldbg_rank)s`` is ``"[rank N] "`` in a distributed job.
LINE_FORMAT = "%(asctime)s %(amldbg_rank)s%(levelname)s %(name)s: %(message)s"


def rank_prefix() -> str:
    """``"[rank N] "`` when the job is distributed, else ``""``."""
    topo = environment.topology()
    return f"[rank {topo.rank}] " if topo.is_distributed else ""


class _RankFormatter(logging.Formatter):
    """The standard formatter with the rank prefix filled in (fixed per process)."""

    def __init__(self, fmt: str = LINE_FORMAT) -> None:
        super().__init__(fmt)
        self.prefix = rank_prefix()

    def format(self, record: logging.LogRecord) -> str:
        record.amldbg_rank = self.prefix
        return super().format(record)


def is_exporter_record(record: logging.LogRecord) -> bool:
    """True for records made by amldbg's export thread (the exporters' transport logs)."""
    return export.is_export_thread(record.thread)


class DriverLogHandler(logging.StreamHandler):  # type: ignore[type-arg,unused-ignore]
    """A ``StreamHandler`` writing to whatever ``sys.stdout`` is when the record is emitted.

    Each record is flushed, so lines reach a piped driver log before the process ends.
    A failure to write (closed stdout) is ignored rather than printed to stderr.
    """

    amldbg_kind = "driver-log"

    def __init__(self, fmt: str = LINE_FORMAT) -> None:
        super().__init__(sys.stdout)
        self.setFormatter(_RankFormatter(fmt))

    @property  # type: ignore[override,unused-ignore]
    def stream(self) -> Any:
        """``sys.stdout`` as it is now (the stream set at creation is not kept)."""
        return sys.stdout

    @stream.setter
    def stream(self, value: Any) -> None:
        # StreamHandler.__init__ and setStream assign it; the live lookup wins.
        pass

    def emit(self, record: logging.LogRecord) -> None:
        """Write the record (flushed) unless it comes from the export thread."""
        if export.is_export_thread(record.thread):
            return
        stream = sys.stdout
        if stream is None:
            return
        try:
            stream.write(self.format(record) + "\n")
            stream.flush()
        except RecursionError:
            raise
        except Exception:  # not quietly(): RecursionError must pass (logging's contract)
            pass  # the driver log is best effort: a closed stdout must not stop the script

    def handleError(self, record: logging.LogRecord) -> None:
        """Swallow write errors: the driver log is best effort, the script must go on."""


class EntryScriptHandler(logging.Handler):
    """Forwards records to ParallelRunStep's ``EntryScript().logger``."""

    amldbg_kind = "driver-log"
    _local = threading.local()

    def __init__(self, target: logging.Logger) -> None:
        super().__init__()
        self.target = target

    def emit(self, record: logging.LogRecord) -> None:
        """Hand the record to the EntryScript logger (once: a loop back here is ignored)."""
        if getattr(self._local, "busy", False) or record.name == self.target.name:
            return
        if is_exporter_record(record):
            return
        self._local.busy = True
        try:
            with quietly():  # the runtime's logger is best effort, as the driver log is
                if record.levelno >= self.target.getEffectiveLevel():
                    self.target.handle(record)
        finally:
            self._local.busy = False


def entry_script_logger() -> logging.Logger | None:
    """``EntryScript().logger`` when running in a parallel job, else None."""
    if runtime.entry_script_class() is None:
        return None
    found = runtime.entry_script_logger()
    if not isinstance(found, logging.Logger):
        announce.warn_once(
            "entry-script-logger",
            "the parallel job's EntryScript().logger is not usable; logging to stdout",
        )
        return None
    return found


def make_handler() -> logging.Handler:
    """The driver-log handler for this process: EntryScript's logger in a parallel job, else stdout."""
    target = entry_script_logger()
    if target is not None:
        return EntryScriptHandler(target)
    return DriverLogHandler()


def ensure_line_buffered() -> None:
    """Make stdout and stderr line-buffered, so prints reach a piped driver log promptly.

    Only real text files are changed (``io.TextIOWrapper.reconfigure``); a stream someone
    replaced (the inference server's, pytest's) is left alone.
    """
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper) and not stream.line_buffering:
            with quietly():  # a stream that refuses keeps its buffering
                stream.reconfigure(line_buffering=True)


def metric_line(name: str, value: float, step: int | None) -> str:
    """The readable driver-log line for a metric: ``amldbg metric: loss = 0.25 (step 3)``."""
    where = f" (step {step})" if step is not None else ""
    return f"amldbg metric: {rank_prefix()}{name} = {value:g}{where}"


def write_metric(name: str, value: float, step: int | None) -> None:
    """Write :func:`metric_line` to stdout (flushed)."""
    announce.say(metric_line(name, value, step))
