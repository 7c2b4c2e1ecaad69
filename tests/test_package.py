"""The package surface: cheap import, the public names, the typed marker."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import amldbg

HEAVY = ("debugpy", "pydevd", "azureml", "opencensus", "opentelemetry", "mlflow", "torch",
         "inference_schema", "azureml_inference_server_http")


def test_import_amldbg_imports_no_heavy_package() -> None:
    code = (f"import sys, amldbg; heavy = {HEAVY!r}; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_add_args_and_a_disabled_enable_import_no_heavy_package() -> None:
    code = ("import sys, argparse, amldbg; p = argparse.ArgumentParser(); amldbg.add_args(p); "
            f"amldbg.enable_remote_debug(p.parse_args([])); heavy = {HEAVY!r}; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_public_name_resolves_and_is_documented() -> None:
    for name in amldbg.__all__:
        value = getattr(amldbg, name)
        if name != "__version__":
            assert value.__doc__, name
    assert set(amldbg.__all__) - {"__version__"} == set(amldbg._EXPORTS)


def test_unknown_attribute_is_an_attribute_error() -> None:
    try:
        amldbg.no_such_thing  # noqa: B018
    except AttributeError as error:
        assert "no_such_thing" in str(error)
    else:
        raise AssertionError("expected AttributeError")


def test_py_typed_ships() -> None:
    assert (Path(amldbg.__file__).parent / "py.typed").exists()
