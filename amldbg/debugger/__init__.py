"""The debugger: debugpy started, announced and waited for, within the user's limits.

* :mod:`.remote`: :func:`~.remote.enable_remote_debug`, the public entry point;
* :mod:`.start`: listen or connect out, announce, wait, go idle;
* :mod:`.session`: the process's session and the bounded wait every path shares;
* :mod:`.postmortem`: post-mortem debugging of uncaught exceptions;
* :mod:`.breakpoints`: ``amldbg.breakpoint()`` and ``breakpoint()`` routing;
* :mod:`.watchdogs`: timeouts that can kill a job while a debugger holds a process.

This package imports only :mod:`amldbg.core`; it never imports :mod:`amldbg.logs`.
"""
