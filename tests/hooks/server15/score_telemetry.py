"""A score.py that logs with amldbg while the inference server runs its own telemetry.

Used by tests/hooks/server15/checks_server15.py under azureml-inference-server-http >= 1.5,
which sets the global OpenTelemetry ``LoggerProvider`` and ``TracerProvider`` itself (when
``AML_APP_INSIGHTS_ENABLED`` is true) before it loads this script. ``run()`` answers with the
identity and class of both global providers as they were when the script was imported and as
they are after amldbg's records were delivered, so the test sees, from inside the worker,
whether amldbg replaced or added one. With ``SCORE_SETS_PROVIDERS=1`` (the tests' control)
``init()`` itself sets both providers twice, as code that does set one would: the first call
replaces a proxy, the second is refused with the API's warning.
"""

import json
import os

from opentelemetry import _logs, trace

import amldbg


def providers():
    """The global OpenTelemetry providers of this worker: their id and class."""
    found = {}
    for name, provider in (("logger", _logs.get_logger_provider()), ("tracer", trace.get_tracer_provider())):
        found[name] = {"id": id(provider), "class": f"{type(provider).__module__}.{type(provider).__qualname__}"}
    return found


AT_IMPORT = providers()
log = None


@amldbg.debug_init
def init():
    global log
    log = amldbg.get_logger("score_telemetry")
    log.info("init done", extra={"custom_dimensions": {"stage": "init"}})
    # The server's print hook sends this to its own logger, azmlinfsrv.print.
    print("print from init")
    if os.environ.get("SCORE_SETS_PROVIDERS") == "1":
        from opentelemetry.sdk._logs import LoggerProvider
        from opentelemetry.sdk.trace import TracerProvider

        for _ in range(2):
            _logs.set_logger_provider(LoggerProvider())
            trace.set_tracer_provider(TracerProvider())


@amldbg.debug_run
def run(raw_data, request_headers):
    rows = json.loads(raw_data)["rows"]
    log.info("scoring %d rows", len(rows), extra={"custom_dimensions": {"rows": len(rows)}})
    mean = sum(rows) / len(rows)  # no rows: ZeroDivisionError, and the server answers 500
    delivered = amldbg.flush_logs(10)
    return {"mean": mean, "delivered": delivered, "at_import": AT_IMPORT, "after": providers(),
            "pid": os.getpid()}
