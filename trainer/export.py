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
MAX_DISAGREEMENT = 0.005  # export fails when int8 and float decide clearly differently on more than 0.5%
# A float score within this share of a threshold is borderline: int8 rounding may put it on either side, and
# the thresholds are calibrated on the int8 scores the device runs, so such a difference is no failed
# quantization. Clearly over (or under) a threshold in float but not in int8 is: the int8 model hides (or
# invents) what float sees.
# 5%: int8 rounding moves the scores of a sound model by about 1% (the largest seen on labelled tables: 6%), while
# int8 scores 10% off float throughout are a broken quantization and are refused.
BORDERLINE = 0.05


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
    decision_agreement: float  # every decision, borderline ones included
    snapshots: int
    # Snapshots float puts clearly (beyond BORDERLINE of a threshold) on the other side from int8; None when
    # not measured: then every disagreement counts.
    clear_disagreements: int | None = None

    def to_dict(self) -> dict:
        return {
            "correlation": self.correlation,
            "max_relative_difference": self.max_relative_difference,
            "decision_agreement": self.decision_agreement,
            "snapshots": self.snapshots,
            "clear_disagreements": self.clear_disagreements,
            "borderline_band": BORDERLINE,
            "max_disagreement_allowed": MAX_DISAGREEMENT,
        }

    def disagreeing(self) -> int:
        """The disagreements that count against the model: the clear ones when measured, else all."""
        if self.clear_disagreements is not None:
            return self.clear_disagreements
        return round((1.0 - self.decision_agreement) * self.snapshots)


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
        clear_disagreements=int(clear_disagreements(int8_scores, float_scores, (warning, alarm)).sum()),
    )


def clear_disagreements(int8_scores: np.ndarray, float_scores: np.ndarray, thresholds: tuple[float, ...]) -> np.ndarray:
    """Per snapshot: whether float is beyond BORDERLINE of some threshold on one side and int8 on the other."""
    clear = np.zeros(int8_scores.shape, dtype=bool)
    for threshold in thresholds:
        clear |= (float_scores > threshold * (1 + BORDERLINE)) & (int8_scores <= threshold)
        clear |= (float_scores < threshold * (1 - BORDERLINE)) & (int8_scores > threshold)
    return clear


def require_agreement(check: QuantizationCheck) -> None:
    """Clear disagreements on more than MAX_DISAGREEMENT of the snapshots, and more than one: a snapshot
    sitting near a threshold is not a failed quantization, however many there are."""
    disagreeing = check.disagreeing()
    share = disagreeing / check.snapshots if check.snapshots else 0.0
    if share > MAX_DISAGREEMENT and disagreeing > 1:
        counted = "" if check.clear_disagreements is None else \
            f", counting only float scores more than {100 * BORDERLINE:g}% from a threshold"
        raise ExportError(
            f"int8 quantization check failed: int8 and float32 decisions disagree on {100 * share:.2f}% of "
            f"{check.snapshots} training and calibration snapshots (allowed {100 * MAX_DISAGREEMENT:.1f}%{counted}); "
            f"correlation {check.correlation:.4f}, largest relative "
            f"difference {check.max_relative_difference:.3f}. Nothing was written. Train on more healthy data (--train-fraction or "
            f"--train-until), longer (--epochs), or with another --seed."
        )
