"""A score.py for an Azure ML real-time deployment, debuggable with amldbg.

Run it locally under the real inference server:

    azmlinfsrv --entry_script samples/score.py
    curl -X POST http://127.0.0.1:5001/score -H 'Content-Type: application/json' \
        -d '{"data": [[1.0, 2.0, 3.0]]}'

and with a debugger (VS Code attaches to port 5678; the server waits up to 30 s first):

    AMLDBG_REMOTE_DEBUG=1 azmlinfsrv --entry_script samples/score.py

The model is a tiny linear model built in code so that the sample downloads nothing; a
real script loads its files from ``AZUREML_MODEL_DIR`` in init().
"""

from typing import Any, Dict, List

import numpy as np
from inference_schema.parameter_types.numpy_parameter_type import NumpyParameterType
from inference_schema.parameter_types.standard_py_parameter_type import (
    StandardPythonParameterType,
)
from inference_schema.schema_decorators import input_schema, output_schema

import amldbg

model: Dict[str, Any] = {}


@amldbg.debug_init  # starts the debugger first when AMLDBG_REMOTE_DEBUG=1
def init() -> None:
    global model
    model = {"weights": np.array([0.5, -1.0, 2.0]), "bias": 0.25}
    print("model loaded: 3 weights")


@amldbg.debug_run  # timing, full tracebacks with the request id; the server still answers 500
@input_schema("data", NumpyParameterType(np.array([[1.0, 2.0, 3.0]])))
@output_schema(StandardPythonParameterType([4.75]))
def run(data: np.ndarray) -> List[float]:
    scores = data @ model["weights"] + model["bias"]
    predictions = [round(float(score), 4) for score in scores]
    return predictions
