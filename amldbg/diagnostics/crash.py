"""The crash-hook chain: what amldbg does with an uncaught exception, and the crash report.

:func:`install` chains ``sys.excepthook`` and ``threading.excepthook``, once per process, and
with ``watch_child_exit`` also the end of a multiprocessing child (the ranks of
``torch.multiprocessing.spawn``, where no hook runs for the exception that ends the target).
An uncaught exception that reaches one of the hooks then goes through, in this order:

1. the ``before_report`` step of each :class:`Handler` added with :func:`add_handler`;
2. the crash report ``outputs/amldbg/crash-rank<R>-pid<P>.json`` (:func:`write_report`),
   written once per exception;
3. the ``after_report`` step of each handler: post-mortem debugging
   (:mod:`amldbg.debugger.postmortem`) waits for a client here, after the report is on disk;
4. the hook that was there before amldbg's, so the same traceback is printed and the process
   exits with the same code as without amldbg.

Stopping the script on purpose (``KeyboardInterrupt``, ``SystemExit``) is not a crash: it
goes straight to the previous hook. amldbg acts only through the hooks it installed: a script
that replaces ``sys.excepthook`` afterwards decides whether amldbg's still runs (by calling
the hook it replaced), until a part of amldbg is armed after that (post-mortem enabled late,
which is asking for it): then a layer of amldbg's goes on top of the script's hook, which
still runs after amldbg's steps. Each step acts once per exception. Nothing on this path
runs the script's code: the exception, its frames and the thread are read through C
descriptors (:mod:`amldbg.diagnostics.values`).

The report holds the exception (masked, bounded), the traceback outermost first with each
frame's local values, the exceptions it was raised from or during, the topology and an
environment summary; one ``amldbg crash: {json}`` line in the driver log names the file.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import threading
import time
from types import TracebackType
from typing import Any, Callable, Sequence

from amldbg.core import announce, forksafe, safetext, secrets
from amldbg.diagnostics import collectives, stacks, values

#: How the hooks name the main thread in a report's ``where`` (other threads: ``thread 'name'``).
MAIN_THREAD = "the main thread"
# Exceptions listed as handled are kept alive (a few, bounded) so that an id is never reused
# by another exception while it is listed.
_HANDLED_KEEP = 64


@dataclasses.dataclass(frozen=True)
class Uncaught:
    """An uncaught exception as a hook received it; ``where`` is :data:`MAIN_THREAD` or
    ``thread 'name'``."""

    exc_type: type[BaseException]
    exc: BaseException
    tb: TracebackType
    where: str


@dataclasses.dataclass(frozen=True)
class Handler:
    """A part of amldbg that acts on uncaught exceptions, around the crash report.

    A step that raises (amldbg's own failure, or a Ctrl+C while it waits) becomes one warning
    line ``{failure}: {error}``; after a Ctrl+C or ``SystemExit`` no later step runs. While
    the handler is added, the exception types named in ``not_crashes`` (``module.QualName``)
    are no crash at all: no report, no step.
    """

    failure: str
    before_report: Callable[[Uncaught], None] | None = None
    after_report: Callable[[Uncaught], None] | None = None
    not_crashes: frozenset[str] = frozenset()


class _Chain:
    """This process's crash hooks: whether they are in, what they chain to, who plugs in,
    and which exceptions were already handled."""

    def __init__(self) -> None:
        self.lock = forksafe.lock()
        self.hooks_installed = False
        self.watching_child_exit = False
        self.previous_excepthook: Callable[..., Any] | None = None
        self.previous_threading_excepthook: Callable[..., Any] | None = None
        # The hooks of amldbg's in sys.excepthook / threading.excepthook: the first pair and
        # any layer put on top of a script's own hook (see _back_on_top).
        self.own_hooks: list[Callable[..., Any]] = []
        # Read by the hooks without the lock (a crash waits for nothing): replaced whole.
        self.handlers: tuple[Handler, ...] = ()
        # By identity: a marker attribute on the exception would run its class's __setattr__.
        self.handled: dict[str, list[BaseException]] = {}


_chain = _Chain()


# -- the hooks --------------------------------------------------------------------------------
def install(*, watch_child_exit: bool = False) -> None:
    """Install the crash hooks of this process (once) and fix the report folder; with
    ``watch_child_exit``, also report the exception that ends a multiprocessing child (once).
    Idempotent."""
    with _chain.lock:
        if not _chain.hooks_installed:
            stacks.resolve_output_dir()  # before the script can chdir away from ./outputs
            _chain.previous_excepthook = sys.excepthook
            _chain.previous_threading_excepthook = threading.excepthook
            sys.excepthook = _excepthook
            threading.excepthook = _threading_excepthook
            _chain.own_hooks += [_excepthook, _threading_excepthook]
            _chain.hooks_installed = True
        if watch_child_exit and not _chain.watching_child_exit:
            _chain.watching_child_exit = True
            _watch_child_exit()


def add_handler(handler: Handler) -> bool:
    """Run ``handler``'s steps, once each, for every uncaught exception that reaches the hooks
    from now on (:func:`install` puts the hooks in). True when it was added now, False when it
    already was."""
    with _chain.lock:
        if handler in _chain.handlers:
            return False
        _chain.handlers = (*_chain.handlers, handler)
        if _chain.hooks_installed:
            _back_on_top()
        return True


def _back_on_top() -> None:
    """When the script replaced amldbg's hooks since they went in, put a layer of amldbg's on
    top of the script's, so a handler added now (post-mortem armed late) still runs, as asked.

    The script's hook stays below and runs after amldbg's steps; if it calls amldbg's first
    hook in turn, the exception meets the steps again and they pass it on without acting:
    each step acts once per exception (:func:`first_time`).
    """
    if not _is_own(sys.excepthook):
        below = sys.excepthook
        sys.excepthook = _main_hook(lambda: below)
        _chain.own_hooks.append(sys.excepthook)
    if not _is_own(threading.excepthook):
        threading_below = threading.excepthook
        threading.excepthook = _thread_hook(lambda: threading_below)
        _chain.own_hooks.append(threading.excepthook)


def _is_own(hook: object) -> bool:
    # By identity: ``in`` would run the script's hook's __eq__.
    return any(own is hook for own in _chain.own_hooks)


def is_crash(exc_type: type[BaseException]) -> bool:
    """False for stopping the script on purpose (``KeyboardInterrupt``, ``SystemExit``)."""
    return not issubclass(exc_type, (KeyboardInterrupt, SystemExit))


def _main_hook(below: Callable[[], Callable[..., Any] | None]) -> Callable[..., None]:
    """A ``sys.excepthook``: the steps, then the hook ``below()`` names."""

    def excepthook(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        try:
            _handle(exc_type, exc, tb, MAIN_THREAD)
        finally:
            hook = below()  # compared to None: a hook object's __bool__ is the script's code
            (hook if hook is not None else sys.__excepthook__)(exc_type, exc, tb)

    return excepthook


def _thread_hook(below: Callable[[], Callable[..., Any] | None]) -> Callable[..., None]:
    """A ``threading.excepthook``: the steps, then the hook ``below()`` names."""

    def threading_excepthook(hook_args: Any) -> None:
        try:
            if hook_args.exc_value is not None:
                where = f"thread {stacks.thread_name(hook_args.thread)!r}"
                _handle(hook_args.exc_type, hook_args.exc_value, hook_args.exc_traceback, where)
        finally:
            hook = below()
            (hook if hook is not None else threading.__excepthook__)(hook_args)

    return threading_excepthook


# The first pair, installed by install(): they read what they chain to at call time.
_excepthook = _main_hook(lambda: _chain.previous_excepthook)
_threading_excepthook = _thread_hook(lambda: _chain.previous_threading_excepthook)


def _handle(
    exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None, where: str
) -> None:
    """The steps between an uncaught exception and the previous hook."""
    if tb is None or not is_crash(exc_type):
        return
    handlers = _chain.handlers
    type_name = values.type_name(exc_type)
    if any(type_name in handler.not_crashes for handler in handlers):
        return
    if not first_time(exc, "steps"):
        return  # a script's hook between two of amldbg's layers passed it on: acted on once
    uncaught = Uncaught(exc_type, exc, tb, where)
    steps = [(handler.failure, handler.before_report) for handler in handlers]
    steps.append(("could not write the crash report", _write_report_step))
    steps += [(handler.failure, handler.after_report) for handler in handlers]
    for failure, step in steps:
        if step is not None and not _run_step(failure, step, uncaught):
            return


def _write_report_step(uncaught: Uncaught) -> None:
    write_report_once(uncaught.exc_type, uncaught.exc, uncaught.tb, uncaught.where)


def _run_step(failure: str, step: Callable[[Uncaught], None], uncaught: Uncaught) -> bool:
    """Run one step; False when it was interrupted and no later step may run."""
    try:
        step(uncaught)
        return True
    except Exception as error:  # amldbg's own failure: the script still fails as before
        announce.warn(f"{failure}: {values.exception_text(error, 300)}")
        return True
    except BaseException as error:  # e.g. Ctrl+C while a step waits: still fail as before
        announce.warn(f"{failure}: {values.exception_text(error, 300)}")
        return False


def _watch_child_exit() -> None:
    """In a multiprocessing child (``torch.multiprocessing.spawn``'s ranks), also report the
    exception that ends the process's target: no ``sys.excepthook`` runs for it there."""
    process = sys.modules.get("multiprocessing.process")
    parent = getattr(process, "parent_process", None)
    if parent is None or parent() is None:
        return  # not a multiprocessing child
    import multiprocessing.util

    # multiprocessing runs its exit finalizers in the ``finally`` around the target, where
    # the exception that ends the child is still the current one.
    multiprocessing.util.Finalize(None, _report_child_exit, exitpriority=100)


def _report_child_exit() -> None:
    # The report only: the handlers' steps belong to the hooks, which the child never runs.
    try:
        exc = sys.exc_info()[1]
        if isinstance(exc, SystemExit) and exc.code not in (None, 0):
            # torch's spawn wrapper catches fn's exception and calls sys.exit(1) in its
            # handler: the exception is the SystemExit's context.
            exc = _exception_field(exc, "__context__")
        if isinstance(exc, Exception):
            tb = _exception_field(exc, "__traceback__")
            if tb is not None:
                write_report_once(type(exc), exc, tb, MAIN_THREAD)
    except Exception:  # the child is ending: a failure here must not change how it ends
        pass


# -- handled once -----------------------------------------------------------------------------
def first_time(exc: BaseException, what: str) -> bool:
    """True the first time ``exc`` is seen for ``what`` (``"crash report"``, ``"post-mortem"``)."""
    seen = _chain.handled.setdefault(what, [])
    if any(known is exc for known in seen):
        return False
    seen.append(exc)
    del seen[:-_HANDLED_KEEP]
    return True


def write_report_once(
    exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None, where: str
) -> str | None:
    """:func:`write_report`, unless this exception already has a report."""
    if not first_time(exc, "crash report"):
        return None
    return write_report(exc_type, exc, tb, where)


# -- the report -------------------------------------------------------------------------------
def _environment_summary() -> dict[str, Any]:
    try:
        from amldbg.diagnostics import envsnap

        snapshot = envsnap.env_snapshot(gpu=False, record_imports=False)
        return {
            "summary": envsnap.summary(snapshot),
            "python": snapshot.get("python"),
            "platform": snapshot.get("platform"),
            "azureml": snapshot.get("azureml"),
            "env": snapshot.get("env"),
        }
    except Exception as error:  # the report is still worth writing without this section
        return {"error": safetext.safe(error, 200)}


def masked_argv(argv: Sequence[str]) -> list[str]:
    """``argv`` with the values of secret-looking options hidden (``--api_key X``,
    ``--token=X``) and credential-like values masked."""
    shown: list[str] = []
    hide_next = False
    for arg in map(str, argv):
        if hide_next:
            shown.append(secrets.MASK)
            hide_next = False
            continue
        if arg.startswith("-"):
            name, equals, _ = arg.partition("=")
            if secrets.is_secret_name(name.lstrip("-")):
                if equals:
                    shown.append(name + "=" + secrets.MASK)
                else:
                    shown.append(arg)
                    hide_next = True
                continue
        shown.append(safetext.safe(arg, 200))
    return shown


def _exception_text(exc: BaseException) -> str:
    # Never the exception's own __str__: it may raise, block or print a secret.
    return values.exception_text(exc, 500)


def _exception_field(exc: BaseException, name: str) -> Any:
    """``exc.__cause__`` and friends from BaseException's own C descriptors."""
    try:
        return BaseException.__dict__[name].__get__(exc)
    except Exception:  # not a field of this exception: the chain simply ends here
        return None


def _next_in_chain(exc: BaseException) -> BaseException | None:
    cause = _exception_field(exc, "__cause__")
    if cause is None and not _exception_field(exc, "__suppress_context__"):
        cause = _exception_field(exc, "__context__")
    return cause if isinstance(cause, BaseException) else None


def write_report(
    exc_type: type[BaseException],
    exc: BaseException,
    tb: TracebackType | None,
    where: str = MAIN_THREAD,
    *,
    directory: str | None = None,
    environment_summary: Callable[[], dict[str, Any]] = _environment_summary,
) -> str | None:
    """Write ``crash-rank<R>-pid<P>.json`` for an uncaught exception; return its path.

    The report holds the exception (masked, bounded), the traceback outermost first with
    each frame's local values, the exceptions it was raised from or during, the topology
    and an environment summary. One ``amldbg crash: {json}`` line in the driver log names
    the file. Never raises.
    """
    try:
        deadline = time.monotonic() + stacks.TIME_BUDGET
        chain: list[dict[str, Any]] = []
        seen = {id(exc)}
        cause = _next_in_chain(exc)
        while cause is not None and id(cause) not in seen and len(chain) < 5:
            seen.add(id(cause))
            chain.append({
                "exception": _exception_text(cause),
                "frames": stacks.traceback_frames(_exception_field(cause, "__traceback__"), deadline),
            })
            cause = _next_in_chain(cause)
        frames = stacks.traceback_frames(tb, deadline)
        report = {
            "amldbg_crash": stacks.DUMP_FORMAT,
            "exception": _exception_text(exc),
            "type": safetext.escape(values.type_name(exc_type)),
            "where": safetext.safe(where, 200),
            "time": stacks.timestamp(),
            **stacks.topology_fields(),
            "argv": masked_argv(sys.argv[:50]),
            "cwd": safetext.escape(os.getcwd()),
            "frames": frames,
            "chain": chain,
            "environment": environment_summary(),
        }
        section = collectives.snapshot()
        if section is not None:
            report["collectives"] = section
        directory = directory or stacks.output_dir()
        base = f"crash-rank{report['rank']}-pid{report['pid']}"
        path = os.path.join(directory, base + ".json")
        count = 1
        while os.path.exists(path):
            count += 1
            path = os.path.join(directory, f"{base}-{count}.json")
        written = stacks.write_json(path, report)
        if written is None:
            return None
        top = stacks.innermost_user_frame(frames)
        announce.say(stacks.CRASH_MARKER + json.dumps({
            "amldbg_crash": stacks.DUMP_FORMAT, "rank": report["rank"], "pid": report["pid"],
            "host": report["host"], "exception": report["exception"],
            "frame": stacks.frame_label(top) if top else None,
            "file": written, "time": report["time"], "where": report["where"],
            **({"collectives": collectives.shortened(report["collectives"], 2)}
               if "collectives" in report else {}),
        }, sort_keys=True, default=stacks.json_fallback))
        return written
    except Exception as error:  # a report must never change how the script fails
        announce.warn(f"could not write the crash report: {error}")
        return None
