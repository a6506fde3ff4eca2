"""The pure-numpy int8 interpreter (for 32-bit Pi OS) gives exactly LiteRT's int8 outputs on the trainer's models.

Compared raw, tensor for tensor, on bundles the trainer fitted for windows 1, 2, 4 and 1 to 22 input
columns, and with the vibration feature set (4 channels x 10 features), with inputs that span the whole int8 range (saturating ones included), and through the Model on
the features of a synthetic run to failure and far beyond the training range.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from probes import int8_inputs, raw_outputs, score_windows
from trained import TABLE_SHAPES, run_features, shared_bundle, shared_run, table_bundle, vibration_bundle

from edge.model.bundle import load_bundle
from edge.model.numpy_interpreter import NumpyInterpreter, UnsupportedModelError
from edge.model.runtime import INTERPRETER_ENV, Model, load_interpreter

pytestmark = pytest.mark.slow


def bundles() -> list[pytest.param]:
    cases = [pytest.param(lambda: shared_bundle(), id="synthetic-run-c4-w2"),
             pytest.param(lambda: vibration_bundle(), id="vibration-c4x10-w2")]
    cases += [pytest.param(lambda c=c, w=w: table_bundle(c, w), id=f"table-c{c}-w{w}") for c, w in TABLE_SHAPES]
    return cases


@pytest.mark.parametrize("make", bundles())
def test_int8_outputs_equal_litert_exactly(make) -> None:
    model = load_bundle(make()).model_path
    litert = load_interpreter(model, kind="ai_edge_litert")
    ours = NumpyInterpreter(model)
    (detail,) = litert.get_input_details()
    (ours_detail,) = ours.get_input_details()
    assert ours_detail["index"] == detail["index"] and tuple(ours_detail["shape"]) == tuple(detail["shape"])
    assert ours_detail["quantization"] == detail["quantization"]
    assert ours.get_output_details()[0]["quantization"] == litert.get_output_details()[0]["quantization"]
    inputs = int8_inputs(tuple(detail["shape"]), detail["quantization"][1])
    expected = raw_outputs(litert, inputs)
    actual = raw_outputs(ours, inputs)
    assert actual.dtype == np.int8
    mismatched = np.flatnonzero((actual != expected).reshape(len(inputs), -1).any(axis=1))
    assert mismatched.size == 0, f"{mismatched.size} of {len(inputs)} inputs differ, first: input {mismatched[:5]}"
    # The model is not trivial: the outputs vary with the input and reach both ends of the int8 range.
    assert len({o.tobytes() for o in expected}) > len(inputs) // 2


def test_scores_equal_litert_through_the_scorer() -> None:
    bundle = load_bundle(shared_bundle())
    features = run_features(shared_run())
    beyond = features * np.array([1.0, 1.0, 25.0, 1.0])  # bearing 3 far beyond the training range: saturates
    scorers = {}
    for kind in ("ai_edge_litert", "numpy"):
        os.environ[INTERPRETER_ENV] = kind
        try:
            scorers[kind] = Model(bundle)
        finally:
            del os.environ[INTERPRETER_ENV]
    assert isinstance(scorers["numpy"]._interpreter, NumpyInterpreter)
    for data in (features, beyond):
        lite_scores, lite_errors = score_windows(scorers["ai_edge_litert"], data)
        numpy_scores, numpy_errors = score_windows(scorers["numpy"], data)
        assert numpy_scores.tobytes() == lite_scores.tobytes()
        assert numpy_errors.tobytes() == lite_errors.tobytes()
    assert numpy_scores.max() > bundle.card.alarm_threshold  # the saturated input still alarms


BLOCK_LITERT = (
    "import sys\n"
    "for name in ('ai_edge_litert', 'ai_edge_litert.interpreter', 'tflite_runtime', 'tflite_runtime.interpreter'):\n"
    "    sys.modules[name] = None  # as if not installed: importing it raises ImportError\n"
)


def test_load_interpreter_falls_back_to_numpy_without_litert() -> None:
    code = BLOCK_LITERT + (
        "from edge.model.runtime import load_interpreter\n"
        f"print(type(load_interpreter({str(load_bundle(shared_bundle()).model_path)!r})).__name__)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "NumpyInterpreter"


def test_load_interpreter_order_and_choice() -> None:
    model = load_bundle(shared_bundle()).model_path
    assert type(load_interpreter(model)).__module__.startswith("ai_edge_litert")  # LiteRT first when installed
    assert isinstance(load_interpreter(model, kind="numpy"), NumpyInterpreter)
    with pytest.raises(ValueError, match="CM_INTERPRETER='tensorflow': expected one of ai_edge_litert, tflite_runtime, numpy"):
        load_interpreter(model, kind="tensorflow")


def test_float_model_is_refused_with_its_name(tmp_path: Path) -> None:
    bundle = load_bundle(shared_bundle())
    with pytest.raises(UnsupportedModelError) as error:
        NumpyInterpreter(bundle.float_model_path)
    assert str(error.value).startswith(f"{bundle.float_model_path}: tensor ")
    assert "not quantized int8" in str(error.value)


def test_wrong_input_is_refused() -> None:
    ours = NumpyInterpreter(load_bundle(shared_bundle()).model_path)
    (detail,) = ours.get_input_details()
    with pytest.raises(ValueError, match=r"expects int8\[1, 2, 4\], got float32\[1, 2, 4\]"):
        ours.set_tensor(detail["index"], np.zeros(detail["shape"], np.float32))
