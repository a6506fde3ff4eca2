"""Threshold rules: from healthy scores to warning and alarm thresholds and the detector's settings.

`calibration` (default): the held-out tail of the healthy span was never fitted, so its scores show how a
healthy machine the model has not seen scores. alarm = ALARM_MARGIN x the largest healthy score (fitted and
held-out), warning = WARNING_MARGIN x that largest score. The margins absorb slow drift the training span
did not cover; debouncing (k of n) absorbs single spikes. `seed`: the seeds' rule, alarm = 1.1 x the largest
training score, warning = 0.9 x alarm.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge.detector import DetectorSettings

RULES = ("calibration", "seed")
WARNING_MARGIN = 1.5
ALARM_MARGIN = 2.0
SEED_FACTOR = 1.1


@dataclass(frozen=True)
class Thresholds:
    warning: float
    alarm: float
    rule: str
    basis: dict


def thresholds(rule: str, training_scores: np.ndarray, calibration_scores: np.ndarray) -> Thresholds:
    """Warning and alarm thresholds from the healthy scores by the named rule."""
    train_max = float(np.max(training_scores))
    calibration_max = float(np.max(calibration_scores)) if calibration_scores.size else train_max
    basis = {
        "training_max": train_max,
        "calibration_max": calibration_max,
        "calibration_p99": float(np.percentile(calibration_scores, 99)) if calibration_scores.size else None,
        "training_snapshots": int(training_scores.size),
        "calibration_snapshots": int(calibration_scores.size),
    }
    if rule == "seed":
        alarm = SEED_FACTOR * train_max
        return Thresholds(warning=0.9 * alarm, alarm=alarm, rule="seed: alarm = 1.1 x max training score, warning = 0.9 x alarm", basis=basis)
    if rule == "calibration":
        healthy_max = max(train_max, calibration_max)
        return Thresholds(
            warning=WARNING_MARGIN * healthy_max,
            alarm=ALARM_MARGIN * healthy_max,
            rule=f"calibration: warning = {WARNING_MARGIN} x, alarm = {ALARM_MARGIN} x max healthy score "
            "(training and held-out calibration spans)",
            basis=basis,
        )
    raise ValueError(f"--threshold-rule: expected one of {', '.join(RULES)}, got {rule!r}")


def detector_settings(limits: Thresholds) -> DetectorSettings:
    """The thresholds with DetectorSettings' debounce defaults (k=3 of n=5 to raise, 6 quiet snapshots to clear)."""
    return DetectorSettings(warning_threshold=limits.warning, alarm_threshold=limits.alarm)
