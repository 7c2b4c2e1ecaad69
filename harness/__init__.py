"""Helpers that drive real parts, shared by the tests and the benchmarks (one copy each).

The DAP client that plays VS Code's part (:mod:`harness.dap_client`), the builder of the
per-interpreter venvs (:mod:`harness.venvs`), the reaper of debugpy's daemonized adapters
(:mod:`harness.debug_adapters`), the fake loopback services (:mod:`harness.loopback_server`,
:mod:`harness.ingestion_server`, :mod:`harness.mlflow_server`; the benchmarks run the last two
as programs, ``python -m harness.ingestion_server``) and a large job's stack dumps
(:mod:`harness.stack_dumps`).

Not part of the package: amldbg never imports it (tests/test_architecture.py checks that) and
the wheel does not ship it. pytest finds it through ``pythonpath`` in pyproject.toml, the
benchmarks through benchmarks/_common.py. Helpers only one side uses stay on that side
(tests/processes.py, benchmarks/_common.py).
"""
