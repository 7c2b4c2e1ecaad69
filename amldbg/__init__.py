"""amldbg: drop-in remote debugging, logging and metrics hooks for Azure Machine Learning scripts.

Three lines make a training or pipeline-step script debuggable from VS Code::

    import amldbg
    amldbg.add_args(parser)                 # --remote_debug and friends
    amldbg.enable_remote_debug(args)        # no-op unless --remote_debug was given

Importing this package is cheap: the public names below are re-exported from their modules
on first use, and debugpy, azureml-core and the Application Insights exporters are imported
only by the features that need them.
"""

from __future__ import annotations

import importlib

from amldbg._version import __version__

# `typing` costs a few milliseconds to import; type checkers treat this name specially.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from amldbg.core.args import RemoteDebugArgsMixin, add_args
    from amldbg.core.settings import DebugSettings, resolve_settings
    from amldbg.debugger.breakpoints import breakpoint
    from amldbg.debugger.postmortem import enable_post_mortem, post_mortem
    from amldbg.debugger.remote import enable_remote_debug
    from amldbg.debugger.session import DebugSession
    from amldbg.debugger.watchdogs import process_group_timeout, watchdog_timeout
    from amldbg.diagnostics.envsnap import env_snapshot, write_env_snapshot
    from amldbg.diagnostics.stall import heartbeat
    from amldbg.hooks.scoring import debug_init, debug_run, request_ids
    from amldbg.logs import (
        LogSettings,
        configure_logging,
        flush_logs,
        get_logger,
        log_metric,
        log_metrics,
    )

# Public name -> the module that defines it. Resolved by __getattr__ on first access so
# that `import amldbg` stays a few hundred microseconds.
_EXPORTS = {
    "add_args": "amldbg.core.args",
    "RemoteDebugArgsMixin": "amldbg.core.args",
    "DebugSettings": "amldbg.core.settings",
    "resolve_settings": "amldbg.core.settings",
    "enable_remote_debug": "amldbg.debugger.remote",
    "DebugSession": "amldbg.debugger.session",
    "env_snapshot": "amldbg.diagnostics.envsnap",
    "write_env_snapshot": "amldbg.diagnostics.envsnap",
    "heartbeat": "amldbg.diagnostics.stall",
    "debug_init": "amldbg.hooks.scoring",
    "debug_run": "amldbg.hooks.scoring",
    "request_ids": "amldbg.hooks.scoring",
    "get_logger": "amldbg.logs",
    "configure_logging": "amldbg.logs",
    "log_metric": "amldbg.logs",
    "log_metrics": "amldbg.logs",
    "flush_logs": "amldbg.logs",
    "LogSettings": "amldbg.logs",
    "breakpoint": "amldbg.debugger.breakpoints",
    "post_mortem": "amldbg.debugger.postmortem",
    "enable_post_mortem": "amldbg.debugger.postmortem",
    "watchdog_timeout": "amldbg.debugger.watchdogs",
    "process_group_timeout": "amldbg.debugger.watchdogs",
}

__all__ = [
    "DebugSession",
    "DebugSettings",
    "LogSettings",
    "RemoteDebugArgsMixin",
    "__version__",
    "add_args",
    "breakpoint",
    "configure_logging",
    "debug_init",
    "debug_run",
    "enable_post_mortem",
    "enable_remote_debug",
    "env_snapshot",
    "flush_logs",
    "get_logger",
    "heartbeat",
    "log_metric",
    "log_metrics",
    "post_mortem",
    "process_group_timeout",
    "request_ids",
    "resolve_settings",
    "watchdog_timeout",
    "write_env_snapshot",
]


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'amldbg' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
