"""Where amldbg sends logs and metrics, in one small script you can run anywhere.

Locally (no Azure ML): lines and metrics go to the terminal (the "driver log")::

    python samples/logging_demo.py

With Application Insights (any resource's connection string; the key is never printed)::

    APPLICATIONINSIGHTS_CONNECTION_STRING="InstrumentationKey=...;IngestionEndpoint=https://..." \\
        python samples/logging_demo.py --backend otel

With MLflow tracking (what Azure ML jobs set up; here a local store)::

    MLFLOW_ALLOW_FILE_STORE=true MLFLOW_TRACKING_URI=file:///tmp/mlruns python samples/logging_demo.py

As an Azure ML SDK v1 step or job with azureml-core installed, metrics go to ``run.log``
and appear in the studio; the driver log is ``70_driver_log.txt`` / ``user_logs/std_log.txt``.
"""

from __future__ import annotations

import argparse
import logging
import random

import amldbg.logs as logs


def main() -> None:
    parser = argparse.ArgumentParser("logging_demo")
    parser.add_argument("--backend", choices=["opencensus", "otel"], default=None,
                        help="Application Insights backend (default: opencensus)")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()

    # Route every logging call (libraries' too) to the driver log and, when a connection
    # string is set, Application Insights. get_logger alone would leave the root logger alone.
    logs.configure_logging(level=logging.INFO, backend=args.backend)
    log = logs.get_logger("logging_demo", backend=args.backend)

    log.info("metrics go to: %s", logs.metrics.destination())
    random.seed(0)
    loss = 1.0
    for epoch in range(args.epochs):
        loss *= 0.5 + random.random() * 0.3
        # Custom dimensions sit next to the run context (run id, step, node, rank...).
        log.info("epoch %d finished", epoch, extra={"custom_dimensions": {"epoch": epoch}})
        logs.log_metric("loss", loss, step=epoch)
    logs.log_metrics({"final_loss": loss, "epochs": args.epochs})

    try:
        {}["missing"]  # noqa: B018 - a deliberate failure, to show exception telemetry
    except KeyError:
        log.exception("a handled failure, sent with its stack")
    logging.getLogger("some.library").warning("a library's own logging call, routed too")
    log.info("done; pending records are flushed at exit within the grace period")


if __name__ == "__main__":
    main()
