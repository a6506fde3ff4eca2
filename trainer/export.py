"""Export: float32 and full-integer int8 TFLite models, and the check that int8 decides as float does.

The representative dataset is the training windows plus copies stretched beyond the training range
(HEADROOM), so the int8 input range covers values somewhat beyond what healthy data reached. Far beyond it
the input saturates, which is why the edge runtime measures the error against the float scaled input.
"""
from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

HEADROOM = 2.0  # representative inputs reach this many times the training range
MAX_DISAGREEMENT = 0.005  # export fails when int8 and float decide differently on more than 0.5%


class ExportError(RuntimeError):
    """The int8 model cannot stand in for the float one."""


def _batch_of_one(model: keras.Model) -> keras.Model:
    """The same layers and weights on a fixed (1, W, channels) input: the agent scores one snapshot at a time."""
    _, window, channels = model.input_shape
    features = keras.Input(batch_shape=(1, window, channels), name="features")
    return keras.Model(features, model(features), name="scorer")


def _convert(converter: tf.lite.TFLiteConverter) -> bytes:
    # Keras prints the traced function's signature while exporting; that is noise to a trainer's user.
    # Its "Statistics for quantized inputs" warning is about a TF1 option this converter does not use.
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
        return converter.convert()


def to_float_tflite(model: keras.Model) -> bytes:
    return _convert(tf.lite.TFLiteConverter.from_keras_model(_batch_of_one(model)))


def representative_windows(train_windows: np.ndarray) -> np.ndarray:
    """The training windows, plus stretched copies that give the int8 input range headroom."""
    stretched = train_windows * HEADROOM
    shifted = train_windows - 0.25
    return np.concatenate([train_windows, stretched, shifted]).astype(np.float32)


def to_int8_tflite(model: keras.Model, representative: np.ndarray) -> bytes:
    converter = tf.lite.TFLiteConverter.from_keras_model(_batch_of_one(model))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]

    def samples() -> Iterator[list[np.ndarray]]:
        for sample in representative:
            yield [sample[None]]

    converter.representative_dataset = samples
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    return _convert(converter)


@dataclass(frozen=True)
class QuantizationCheck:
    correlation: float
    max_relative_difference: float
    decision_agreement: float
    snapshots: int

    def to_dict(self) -> dict:
        return {
            "correlation": self.correlation,
            "max_relative_difference": self.max_relative_difference,
            "decision_agreement": self.decision_agreement,
            "snapshots": self.snapshots,
            "max_disagreement_allowed": MAX_DISAGREEMENT,
        }


def decisions(scores: np.ndarray, warning: float, alarm: float) -> np.ndarray:
    """Pointwise decision per snapshot: 0 normal, 1 over warning, 2 over alarm."""
    return (scores > warning).astype(np.int8) + (scores > alarm).astype(np.int8)


def compare(int8_scores: np.ndarray, float_scores: np.ndarray, warning: float, alarm: float) -> QuantizationCheck:
    """int8 against float scores: correlation, largest relative difference, decision agreement."""
    if int8_scores.size > 1 and np.std(int8_scores) > 0 and np.std(float_scores) > 0:
        correlation = float(np.corrcoef(int8_scores, float_scores)[0, 1])
    else:
        correlation = 1.0 if np.allclose(int8_scores, float_scores) else 0.0
    relative = np.abs(int8_scores - float_scores) / np.maximum(np.abs(float_scores), 1e-12)
    agreement = decisions(int8_scores, warning, alarm) == decisions(float_scores, warning, alarm)
    return QuantizationCheck(
        correlation=correlation,
        max_relative_difference=float(relative.max()) if relative.size else 0.0,
        decision_agreement=float(agreement.mean()) if agreement.size else 1.0,
        snapshots=int(agreement.size),
    )


def require_agreement(check: QuantizationCheck) -> None:
    """More than MAX_DISAGREEMENT of the snapshots, and more than one: a single snapshot sitting right at a
    threshold is not a failed quantization, however few snapshots there are."""
    disagreeing = round((1.0 - check.decision_agreement) * check.snapshots)
    if 1.0 - check.decision_agreement > MAX_DISAGREEMENT and disagreeing > 1:
        raise ExportError(
            f"int8 quantization check failed: int8 and float32 decisions disagree on "
            f"{100 * (1 - check.decision_agreement):.2f}% of {check.snapshots} training and calibration snapshots "
            f"(allowed {100 * MAX_DISAGREEMENT:.1f}%); correlation {check.correlation:.4f}, largest relative "
            f"difference {check.max_relative_difference:.3f}. Nothing was written. Train on more healthy data (--train-fraction or "
            f"--train-until), longer (--epochs), or with another --seed."
        )
