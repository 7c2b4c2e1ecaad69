"""Helpers for the logging tests: children that run amldbg logging, behind a network guard.

Not a conftest.py: the root tests/conftest.py is imported as the module `conftest` by other
tests, and a second conftest.py would replace it in sys.modules.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from processes import Running, RunningGroup, child_env  # noqa: E402

#: First lines of every child script: block any connection beyond loopback.
CHILD_HEADER = f"import sys\nsys.path.insert(0, {str(HERE)!r})\nimport netguard  # noqa\n"


def write_child(tmp_path: Path, body: str, name: str = "child.py") -> Path:
    """Write a child script (netguard first, then ``body``, dedented) and return its path."""
    path = tmp_path / name
    path.write_text(CHILD_HEADER + textwrap.dedent(body))
    return path


def start_child(script: Path, unbuffered: bool = True, **env: str) -> Running:
    """Start ``script`` with the test environment plus ``env`` (stdout and stderr merged)."""
    child = child_env(AMLDBG_NODE_ADDRESS="10.0.0.7", **env)
    if not unbuffered:
        child.pop("PYTHONUNBUFFERED", None)
    for name in ("APPLICATIONINSIGHTS_CONNECTION_STRING", "MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID",
                 "RANK", "LOCAL_RANK", "WORLD_SIZE", "AZUREML_RUN_ID", "AZUREML_RUN_TOKEN"):
        if name not in env:
            child.pop(name, None)
    return Running([str(script)], env=child, cwd=script.parent)


def start_group(script: Path, **env: str) -> RunningGroup:
    """Like ``start_child``, and every process the script forks is killed and reaped at the end
    (a child that deadlocks must not outlive the test)."""
    child = child_env(AMLDBG_NODE_ADDRESS="10.0.0.7", **env)
    for name in ("APPLICATIONINSIGHTS_CONNECTION_STRING", "MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID",
                 "RANK", "LOCAL_RANK", "WORLD_SIZE", "AZUREML_RUN_ID", "AZUREML_RUN_TOKEN"):
        if name not in env:
            child.pop(name, None)
    return RunningGroup([str(script)], env=child, cwd=script.parent)
