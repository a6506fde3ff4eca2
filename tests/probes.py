"""Fixed int8 inputs, and the raw outputs and scores an interpreter gives on them: what test_numpy_interpreter
compares between interpreters and `make pi-check` (scripts/pi_check.py) between machines.

    from probes import int8_inputs, raw_outputs, score_windows
"""
from __future__ import annotations

import numpy as np

from edge.model.runtime import Model


def int8_inputs(shape: tuple[int, ...], zero_point: int, count: int = 400, seed: int = 0) -> list[np.ndarray]:
    """Edges of the range, the zero point, alternating extremes, uniform and near-zero-point random inputs."""
    rng = np.random.default_rng(seed)
    fixed = [np.full(shape, value, np.int8) for value in (-128, 127, zero_point)]
    fixed.append(np.where(np.indices(shape).sum(axis=0) % 2, 127, -128).astype(np.int8))
    uniform = [rng.integers(-128, 128, shape, dtype=np.int8) for _ in range(count // 2)]
    near = [np.clip(rng.normal(zero_point, 40, shape), -128, 127).astype(np.int8) for _ in range(count // 2)]
    return fixed + uniform + near


def raw_outputs(interpreter, inputs: list[np.ndarray]) -> np.ndarray:
    (input_detail,) = interpreter.get_input_details()
    (output_detail,) = interpreter.get_output_details()
    outputs = []
    for value in inputs:
        interpreter.set_tensor(input_detail["index"], value)
        interpreter.invoke()
        outputs.append(interpreter.get_tensor(output_detail["index"]))
    return np.array(outputs)


def score_windows(scorer: Model, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scores and per-channel raw errors of every window of `features`, oldest first."""
    scores = [scorer.score(features[i:i + scorer.window]) for i in range(len(features) - scorer.window + 1)]
    return np.array([s.score for s in scores]), np.array([s.raw_errors for s in scores])
