"""Debug hooks for entry scripts that a runtime calls: ``score.py`` under the Azure ML
inference server, and ParallelRunStep entry scripts.

Such scripts have no command line, so the hooks are decorators configured by the same
``AMLDBG_*`` environment variables as the ``--remote_debug`` flags::

    import amldbg

    @amldbg.debug_init            # debugger first when AMLDBG_REMOTE_DEBUG=1, then init()
    def init(): ...

    @amldbg.debug_run             # timing, full tracebacks with the request id, re-raise
    def run(raw_data): ...

Both keep the decorated function's name, signature and attributes, and compose with
inference-schema's ``@input_schema``/``@output_schema`` in either order. inference-schema
(and so the inference server) finds the user's function by walking the wrapper's closure
cells and taking the last one, so each wrapper here closes over the wrapped function and
nothing else: per-function options live in a module-level table instead.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import sys
import time
import traceback
from typing import Any, Callable, Mapping, TypeVar, overload

from amldbg.core import announce, runtime
from amldbg.core import settings as settings_module
from amldbg.core.guard import describe, guard
from amldbg.hooks import parallel

F = TypeVar("F", bound=Callable[..., Any])

#: The connection timeout of an entry script when ``AMLDBG_REMOTE_DEBUG_CONNECTION_TIMEOUT``
#: is not set: the guides' deployment block waits 30 s, not a training job's 300 s, because
#: the server answers no health probe while init() waits.
DEFAULT_INIT_TIMEOUT = 30.0
_ENABLED = settings_module.FLAGS_BY_NAME["remote_debug"]
_TIMEOUT = settings_module.FLAGS_BY_NAME["remote_debug_connection_timeout"]
_POST_MORTEM = settings_module.FLAGS_BY_NAME["remote_debug_post_mortem"]

# Bound once: the wrapper's hot path then costs two global look-ups, not attribute look-ups.
_clock = time.perf_counter


@dataclasses.dataclass(frozen=True)
class _InitOptions:
    timeout: float | None = None
    port: int | None = None
    listen_host: str | None = None
    client_ip: str | None = None
    enabled: bool | None = None


@dataclasses.dataclass(frozen=True)
class _RunOptions:
    log_calls: bool = False


# (kind, id(wrapped function)) -> (the function, its options). Kept outside the wrappers'
# closures (see the module docstring); the function is stored too so that its id stays unique.
_options: dict[tuple[str, int], tuple[Any, Any]] = {}
# True once any decorated run() logs its calls; until then the hot path skips that lookup.
_calls_logged = False


def _options_of(kind: str, func: Any) -> Any:
    entry = _options.get((kind, id(func)))
    return entry[1] if entry is not None and entry[0] is func else None


# -- where amldbg's per-call lines go ----------------------------------------------------

_sink: Callable[[int, str], None] | None = None


def _announce_sink(level: int, message: str) -> None:
    announce.say(announce.PREFIX + message)


def _resolve_sink() -> Callable[[int, str], None]:
    # Inside ParallelRunStep the runtime's logger writes to logs/user/<ip>/Process-*.txt,
    # where users look for a mini-batch's failure.
    logger = runtime.entry_script_logger()
    if logger is not None:
        return lambda level, message: logger.log(level, announce.PREFIX + message)
    # Elsewhere amldbg's logger: its driver-log handler writes to sys.stdout, which the
    # inference server leaves alone (it reroutes print() only), so the lines land in the
    # server's log; with Application Insights configured they are exported there too.
    try:
        from amldbg.logs import get_logger
    except Exception:  # amldbg.logs missing or broken: plain lines on stdout still work
        return _announce_sink
    own = get_logger("amldbg.scoring")
    return lambda level, message: own.log(level, message)


def _emit(level: int, message: str) -> None:
    global _sink
    try:
        if _sink is None:
            _sink = _resolve_sink()
        _sink(level, message)
    except Exception as error:  # not a guard: one warning for all lines, then plain stdout
        announce.warn_once(
            "scoring-sink", f"could not write a log line through the configured logger: {describe(error)}"
        )
        _announce_sink(level, message)


# -- debug_init ----------------------------------------------------------------------------


@overload
def debug_init(func: F) -> F: ...


@overload
def debug_init(
    func: None = None,
    *,
    timeout: float | None = None,
    port: int | None = None,
    listen_host: str | None = None,
    client_ip: str | None = None,
    enabled: bool | None = None,
) -> Callable[[F], F]: ...


def debug_init(
    func: Any = None,
    *,
    timeout: float | None = None,
    port: int | None = None,
    listen_host: str | None = None,
    client_ip: str | None = None,
    enabled: bool | None = None,
) -> Any:
    """Start remote debugging before an entry script's ``init()`` runs, when enabled.

    Use it bare (``@debug_init``) or with options (``@debug_init(timeout=60)``). It is
    enabled by ``AMLDBG_REMOTE_DEBUG=1`` (or ``enabled=True``); the other settings come from
    the same ``AMLDBG_*`` variables as the ``--remote_debug`` flags, with keyword options
    winning. The connection timeout defaults to 30 s here unless
    ``AMLDBG_REMOTE_DEBUG_CONNECTION_TIMEOUT`` says otherwise. When enabled, the process
    listens (or connects out), prints where to attach, waits at most the timeout, then runs
    ``init()``; nobody attaching only delays start-up.

    Under the inference server each gunicorn worker listens on base port + its worker index;
    in ParallelRunStep only the processes selected by ``AMLDBG_REMOTE_DEBUG_PROCESSES``
    (default ``0``) listen, on base port + their local process index. A debugger already
    active in the process (the server's ``AZUREML_DEBUG_PORT`` mode) is reused. Disabled,
    it costs a function call: debugpy is not imported. amldbg's own failures give one
    warning line and ``init()`` still runs; ``init()``'s exceptions propagate unchanged.
    """
    options = _InitOptions(
        timeout=timeout, port=port, listen_host=listen_host, client_ip=client_ip, enabled=enabled
    )

    def decorate(function: F) -> F:
        _options[("init", id(function))] = (function, options)
        return _wrap_init(function)

    if func is None:
        return decorate
    if not callable(func):
        raise TypeError(f"debug_init decorates a function, not {type(func).__name__}")
    return decorate(func)


def _wrap_init(func: F) -> F:
    # The closure must hold `func` and nothing else (see the module docstring).
    @functools.wraps(func)
    def init_wrapper(*args: Any, **kwargs: Any) -> Any:
        _before_init(func)
        return func(*args, **kwargs)

    return init_wrapper  # type: ignore[return-value]


def _before_init(func: Any) -> Any:
    """Start the debugger for ``func``'s options; never raises. Returns the session or None."""
    options: _InitOptions = _options_of("init", func) or _InitOptions()
    env = os.environ
    # The common case, debugging off, decides here without importing amldbg.debug.
    if options.enabled is False or (
        options.enabled is None and settings_module.env_text(_ENABLED, env) is None
    ):
        return None
    with guard("remote debugging failed and is off"):  # init() still runs
        return _start_debugging(options, env)
    return None


def entry_settings(options: _InitOptions, env: Mapping[str, str]) -> settings_module.DebugSettings:
    """The settings of an entry script, resolved once: keyword options, then ``AMLDBG_*``,
    with a 30 s connection timeout unless the variable sets one."""
    timeout = options.timeout
    if timeout is None and not (settings_module.env_text(_TIMEOUT, env) or "").strip():
        timeout = DEFAULT_INIT_TIMEOUT
    return settings_module.resolve_settings(
        None,
        env=env,
        enabled=options.enabled,
        timeout=timeout,
        port=options.port,
        listen_host=options.listen_host,
        client_ip=options.client_ip,
    )


def _start_debugging(options: _InitOptions, env: Mapping[str, str]) -> Any:
    from amldbg.debugger import remote

    settings = entry_settings(options, env)
    if not settings.remote_debug:
        # Off, or an invalid AMLDBG_REMOTE_DEBUG (warned about once): never listen.
        return None

    worker = runtime.gunicorn_worker()
    if worker is None and runtime.inference_server_preloads(env):
        # init() runs in the gunicorn master, which then forks the workers: a debugger
        # started here would not survive into them, and its port would stay taken.
        announce.warn(
            "remote debugging is off: WORKER_PRELOAD=true runs init() in the gunicorn master "
            "before it forks the workers; unset WORKER_PRELOAD while debugging"
        )
        return None
    in_prs = worker is None and runtime.in_parallel_run(env)
    offset = 0
    who = f"pid {os.getpid()}"
    if worker is not None:
        offset = worker.index
        who = f"inference server worker {worker.index + 1} of {worker.count} (pid {worker.pid})"
    elif in_prs:
        index = parallel.debugging_process(env)
        if index is None:
            return None
        offset = index
        who = f"parallel job process {index} (pid {os.getpid()})"

    base = settings.port
    # Imported here: core.environment brings socket and selectors, which init() without
    # debugging never needs.
    from amldbg.core import environment

    port = environment.debug_port(base, offset)
    if port != base:
        settings = dataclasses.replace(settings, remote_debug_port=port)
        announce.info(f"{who} debugs on port {port} (base port {base} + {offset})")

    session = remote.enable_with(settings)
    if session.active and (worker is not None or in_prs):
        if session.mode == "reused":
            what = "reuses the debugger already active in this process"
        else:
            what = f"debugger {session.mode} on {session.host}:{session.port}"
        announce.info(f"{who}: {what}, attached={session.attached}")
    if session.active and worker is not None and worker.timeout:
        announce.info(
            f"gunicorn replaces a worker that does not answer for {worker.timeout:g} s "
            f"(WORKER_TIMEOUT), including one paused at a breakpoint; raise WORKER_TIMEOUT "
            f"while debugging"
        )
    return session


# -- debug_run -----------------------------------------------------------------------------


@overload
def debug_run(func: F) -> F: ...


@overload
def debug_run(func: None = None, *, log_calls: bool | None = None) -> Callable[[F], F]: ...


def debug_run(func: Any = None, *, log_calls: bool | None = None) -> Any:
    """Time each call of an entry script's ``run()`` and log its failures in full.

    Use it bare (``@debug_run``) or with options (``@debug_run(log_calls=True)``). On an
    exception it logs the full traceback, the time taken, the item count of a mini-batch
    and, under the inference server, the request's ids (``x-request-id``,
    ``x-ms-client-request-id``), then re-raises the same exception object, so the server
    answers exactly as it would without amldbg (HTTP 500). With ``log_calls`` (default: on
    in ParallelRunStep, off under the inference server, which logs each request itself;
    ``AMLDBG_LOG_CALLS`` overrides the default) it also logs one line per call with the time
    and, for a mini-batch, the number of items and results. With
    ``AMLDBG_REMOTE_DEBUG_POST_MORTEM=1`` a failure is first shown in the remote debugger,
    stopped at the frame that raised (waiting at most the timeout for a client), then
    re-raised. In ParallelRunStep the lines go
    to ``EntryScript().logger``; elsewhere through ``amldbg.logs.get_logger("amldbg.scoring")``
    (stdout, which reaches the server's log, and Application Insights when configured).

    It works on top of or underneath inference-schema's decorators, keeps ``run``'s
    signature (the server reads it for ``request_headers`` and input parsing) and costs well
    under a microsecond per call when nothing is logged.
    """
    if log_calls is None:
        log_calls = settings_module.env_value(settings_module.LOG_CALLS)
        if log_calls is None:
            try:
                log_calls = runtime.in_parallel_run()
            except Exception:  # best effort: the runtime's probe failing means no runtime
                log_calls = False
    options = _RunOptions(log_calls=bool(log_calls))

    def decorate(function: F) -> F:
        global _calls_logged
        _options[("run", id(function))] = (function, options)
        if options.log_calls:
            _calls_logged = True
        return _wrap_run(function)

    if func is None:
        return decorate
    if not callable(func):
        raise TypeError(f"debug_run decorates a function, not {type(func).__name__}")
    return decorate(func)


def _wrap_run(func: F) -> F:
    # The closure must hold `func` and nothing else: inference-schema (and the inference
    # server through it) takes the last closure cell to be the user's run().
    @functools.wraps(func)
    def run_wrapper(*args: Any, **kwargs: Any) -> Any:
        started = _clock()
        try:
            result = func(*args, **kwargs)
        except Exception as error:  # the user's exception: logged, then re-raised as it is
            _failed(func, error, _clock() - started, args, kwargs)
            raise  # the same object and traceback: the host handles it as without amldbg
        if _calls_logged:
            _succeeded(func, _clock() - started, args, result)
        return result

    return run_wrapper  # type: ignore[return-value]


def _size(value: Any) -> int | None:
    # A mini-batch is a list of paths or a pandas DataFrame; both have a length.
    if isinstance(value, (str, bytes)):
        return None
    try:
        return len(value)
    except Exception:  # best effort: a count is an extra, not every batch has one
        return None


def _name(func: Any) -> str:
    return str(getattr(func, "__name__", "run"))


def _batch(args: tuple[Any, ...]) -> tuple[str, str]:
    """``(" on a mini-batch of N items", " (process I)")`` in ParallelRunStep, else empty."""
    if not runtime.in_parallel_run():
        return "", ""
    items = _size(args[0]) if args else None
    text = f" on a mini-batch of {items} item{'s' if items != 1 else ''}" if items is not None else ""
    return text, f" (process {runtime.process_index()})"


def _succeeded(func: Any, elapsed: float, args: tuple[Any, ...], result: Any) -> None:
    # One warning for all calls (key), not one per distinct message.
    with guard("could not log the call of run()", key="log-call"):
        options = _options_of("run", func)
        if options is None or not options.log_calls:
            return
        batch, process = _batch(args)
        results = _size(result) if batch else None
        counts = f" -> {results} result{'s' if results != 1 else ''}" if results is not None else ""
        _emit(logging.INFO, f"{_name(func)}(){batch}{counts} took {elapsed * 1000:.1f} ms{process}")


def request_ids(request_headers: Mapping[str, str] | None = None) -> dict[str, str]:
    """The ids of the inference-server request being handled, for correlating log lines.

    Returns ``{"request_id": ..., "client_request_id": ...}`` with the keys that are known:
    from the server's request context when called while it handles a request, else from
    ``request_headers`` (the headers the server passes to a ``run(data, request_headers)``).
    Outside a request it returns ``{}``.
    """
    ids: dict[str, str] = {}
    flask = sys.modules.get("flask")
    if flask is not None:
        try:
            if flask.has_request_context():
                for key in ("request_id", "client_request_id"):
                    value = getattr(flask.g, key, "")
                    if value:
                        ids[key] = str(value)
        except Exception:  # best effort: no request context, try the headers instead
            pass
    if not ids and request_headers:
        lowered = {str(k).lower(): str(v) for k, v in dict(request_headers).items()}
        for key, header in (("request_id", "x-request-id"),
                            ("client_request_id", "x-ms-client-request-id")):
            if lowered.get(header):
                ids[key] = lowered[header]
    return ids


def _failed(
    func: Any, error: BaseException, elapsed: float, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    # One warning for all failures (key), not one per distinct message.
    with guard("could not log the failure of run()", key="log-failure"):
        details = [f"after {elapsed * 1000:.1f} ms"]
        headers = kwargs.get("request_headers")
        ids = request_ids(headers if isinstance(headers, Mapping) else None)
        if "request_id" in ids:
            details.append(f"request id {ids['request_id']}")
        if "client_request_id" in ids:
            details.append(f"client request id {ids['client_request_id']}")
        text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        batch, process = _batch(args)
        if process:
            details.append(process.strip(" ()"))
        _emit(
            logging.ERROR,
            f"{_name(func)}(){batch} failed ({', '.join(details)}):\n{text.rstrip()}",
        )
    _post_mortem(error)


def _post_mortem(error: BaseException) -> None:
    """Show the failure to the remote debugger when post-mortem debugging is on.

    The host catches run()'s exceptions itself (the server answers 500, a parallel job
    counts a failed mini-batch), so they never reach the post-mortem exception hooks; this
    is where they can be shown, stopped at the frame that raised. On: armed by
    ``--remote_debug_post_mortem`` or :func:`amldbg.enable_post_mortem` in this process, or
    ``AMLDBG_REMOTE_DEBUG_POST_MORTEM=1``. The wait for a client uses the entry-script
    timeout (30 s unless set): a request cannot wait 300 s.
    """
    with guard("post-mortem debugging of run() failed"):
        from amldbg.debugger import postmortem

        settings = postmortem.enabled_settings() or settings_module.remembered()
        if settings is None:
            if settings_module.env_text(_POST_MORTEM) is None:
                return
            settings = entry_settings(_InitOptions(), os.environ)
        if settings.remote_debug_post_mortem:
            postmortem.show(error, settings, "run()")
