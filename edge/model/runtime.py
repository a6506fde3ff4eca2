"""Scoring features with the bundle's TFLite model: the same code serves `cm-train evaluate` and the agent.

Errors are absolute reconstruction errors in scaled units, measured against the float scaled input rather
than the int8-quantized one: the int8 input saturates at the edge of its range, so an input far beyond the
training range would otherwise look like a modest one. They are grouped per channel (the columns are
channel-major, C channels x F features: reshape(W, C, F)), and each channel's error is divided by that
channel's own healthy error level from the card (`channel_error_reference`), so a quiet bearing and a noisy
one are judged on the same scale and a fault in one bearing is not diluted by the others. The score is the
largest of these per-channel scores. A card without references (older bundles) keeps the old score: the
mean error over all columns. No TensorFlow here: LiteRT (ai-edge-litert), tflite-runtime, or the pure-numpy
interpreter where neither has a wheel (edge/model/numpy_interpreter.py).
"""
from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge.model.bundle import CARD_FILE, Bundle, BundleError

INTERPRETERS = ("ai_edge_litert", "tflite_runtime", "numpy")  # the order load_interpreter tries them
INTERPRETER_ENV = "CM_INTERPRETER"  # names one of INTERPRETERS to use that one only


def _interpreter_class(kind: str) -> Any:
    if kind == "ai_edge_litert":
        from ai_edge_litert.interpreter import Interpreter
    elif kind == "tflite_runtime":
        from tflite_runtime.interpreter import Interpreter
    else:
        from edge.model.numpy_interpreter import NumpyInterpreter as Interpreter
    return Interpreter


def load_interpreter(model_path: str | Path, num_threads: int = 1, kind: str | None = None) -> Any:
    """A TFLite interpreter with tensors allocated: ai_edge_litert first, tflite_runtime second, numpy last.

    The numpy interpreter is for devices without a LiteRT wheel (32-bit Pi OS); its int8 outputs equal
    LiteRT's. `kind` (or the CM_INTERPRETER environment variable) picks one of INTERPRETERS instead.
    """
    kind = kind or os.environ.get(INTERPRETER_ENV) or None
    if kind is not None and kind not in INTERPRETERS:
        raise ValueError(f"{INTERPRETER_ENV}={kind!r}: expected one of {', '.join(INTERPRETERS)}")
    for candidate in (kind,) if kind else INTERPRETERS:
        try:
            interpreter_class = _interpreter_class(candidate)
        except ImportError:
            if kind:
                raise ImportError(f"{INTERPRETER_ENV}={kind}: {kind} is not installed") from None
            continue
        interpreter = interpreter_class(model_path=str(model_path), num_threads=num_threads)
        interpreter.allocate_tensors()
        return interpreter
    raise ImportError("no TFLite interpreter: install ai-edge-litert (pip install ai-edge-litert) or tflite-runtime")


@dataclass(frozen=True)
class Score:
    score: float  # on the thresholds' scale
    channel_errors: np.ndarray  # (channels,) per channel, on the thresholds' scale
    raw_errors: np.ndarray  # (channels,) mean absolute error per channel over the window, scaled units
    per_channel: bool  # True: score = max of channel_errors (card with references); False: the old mean score


@dataclass(frozen=True)
class _Quantization:
    """A tensor's affine int8 parameters; scale 0 means the tensor is float."""

    dtype: np.dtype
    scale: float
    zero_point: int

    @classmethod
    def of(cls, detail: dict) -> _Quantization:
        scale, zero_point = detail["quantization"]
        return cls(np.dtype(detail["dtype"]), float(scale), int(zero_point))

    def quantize(self, values: np.ndarray, out: np.ndarray) -> np.ndarray:
        if self.scale == 0.0:
            out[...] = values
            return out
        info = np.iinfo(self.dtype)
        # Saturate instead of wrapping: a value beyond the range must stay at the range's edge.
        np.clip(np.rint(values / self.scale + self.zero_point), info.min, info.max, out=values)
        out[...] = values
        return out

    def dequantize(self, values: np.ndarray) -> np.ndarray:
        if self.scale == 0.0:
            return values.astype(np.float64)
        return (values.astype(np.float64) - self.zero_point) * self.scale


class Model:
    """The bundle's model, run: scores windows of W raw feature vectors with one reused interpreter and
    preallocated buffers."""

    def __init__(self, bundle: Bundle, model_path: Path | None = None, num_threads: int = 1) -> None:
        card = bundle.card
        self.window = card.feature_spec.window
        # Model columns are channel-major: C channels x F features per channel.
        self.channels = card.feature_spec.columns
        self.per_channel = len(card.feature_spec.features)
        reference = card.channel_error_reference
        self._reference = None if reference is None else np.asarray(reference, dtype=np.float64)
        self._scaler = card.scaler
        self._interpreter = load_interpreter(model_path or bundle.model_path, num_threads=num_threads)
        (input_detail,) = self._interpreter.get_input_details()
        (output_detail,) = self._interpreter.get_output_details()
        expected = (1, self.window, self.channels)
        if tuple(input_detail["shape"]) != expected or tuple(output_detail["shape"]) != expected:
            raise ValueError(
                f"{model_path or bundle.model_path}: model input/output shape {tuple(input_detail['shape'].tolist())}/"
                f"{tuple(output_detail['shape'].tolist())} does not match the card's (1, window, channels) = {expected}"
            )
        self._input_index = input_detail["index"]
        self._output_index = output_detail["index"]
        self._input_q = _Quantization.of(input_detail)
        self._output_q = _Quantization.of(output_detail)
        self._input = np.zeros(expected, dtype=self._input_q.dtype)
        self._scratch = np.zeros((self.window, self.channels), dtype=np.float64)

    @property
    def input_quantization(self) -> tuple[float, int]:
        """(scale, zero_point) of the model's input tensor; scale 0 for a float model."""
        return self._input_q.scale, self._input_q.zero_point

    def score(self, features: np.ndarray) -> Score:
        """features: (W, channels) raw features in g, oldest first."""
        features = np.asarray(features, dtype=np.float64)
        if features.shape != (self.window, self.channels):
            raise ValueError(f"expected features of shape {(self.window, self.channels)}, got {features.shape}")
        scaled = self._scaler.transform(features)
        np.copyto(self._scratch, scaled)
        self._input_q.quantize(self._scratch, self._input[0])
        reconstruction = self._output_q.dequantize(self._invoke()[0])
        errors = np.abs(reconstruction - scaled)
        raw = errors.mean(axis=0).reshape(-1, self.per_channel).mean(axis=1)  # C entries whatever F is
        if self._reference is None:
            return Score(score=float(errors.mean()), channel_errors=raw, raw_errors=raw, per_channel=False)
        relative = raw / self._reference
        return Score(score=float(relative.max()), channel_errors=relative, raw_errors=raw, per_channel=True)

    def _invoke(self) -> np.ndarray:
        self._interpreter.set_tensor(self._input_index, self._input)
        self._interpreter.invoke()
        return self._interpreter.get_tensor(self._output_index)


def check_model(bundle: Bundle) -> None:
    """Load the bundle's model once and compare its tensors with the card: a BundleError naming the card's
    keys if they disagree, so `cm-edge --check` catches what would otherwise stop the agent at its first
    snapshot. (LiteRT prints an INFO line about its CPU delegate when it loads a model: not shown here.)"""
    card_file = bundle.path / CARD_FILE
    try:
        with _quiet_native_stderr():
            Model(bundle)
    except (ValueError, RuntimeError) as error:
        detail = " ".join(str(error).split())  # one line, whatever the interpreter's message looks like
        raise BundleError(f"{card_file}: feature_spec.window/feature_spec.channels or model_file: {detail}") from None


@contextlib.contextmanager
def _quiet_native_stderr() -> Iterator[None]:
    """Send file descriptor 2 to nowhere for the duration (the interpreter writes to it from C++)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as sink:
            os.dup2(sink.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
