"""Import cost: amldbg.logs, a driver-log logger and offline metrics load no heavy package."""

from __future__ import annotations

import subprocess
import sys

from processes import child_env

HEAVY = ("azureml", "opencensus", "opentelemetry", "mlflow", "debugpy", "azure", "requests")


def test_driver_log_and_offline_metrics_import_nothing_heavy() -> None:
    code = ("import sys, amldbg.logs as logs; log = logs.get_logger('x'); log.info('hi'); "
            "logs.log_metric('loss', 0.5); "
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))")
    env = child_env()
    for name in ("APPLICATIONINSIGHTS_CONNECTION_STRING", "MLFLOW_TRACKING_URI", "AZUREML_RUN_ID"):
        env.pop(name, None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[-1] == "[]", out.stdout
    assert "amldbg metric: loss = 0.5" in lines
