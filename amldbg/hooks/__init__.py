"""Entry-script hooks: ``score.py`` under the Azure ML inference server, and parallel-job
(ParallelRunStep) entry scripts.

* :mod:`.scoring`: ``@debug_init`` and ``@debug_run``, and the request ids;
* :mod:`.parallel`: which worker processes of a parallel job debug.

The hooks sit on top of both :mod:`amldbg.debugger` and :mod:`amldbg.logs`.
"""
