"""Threshold rules: from healthy errors to per-channel references, warning and alarm thresholds, debounce.

Per channel, the reference is the largest reconstruction error the channel showed on healthy data (the
fitted span and the held-out span the model never saw); a channel's score is its error divided by that
reference (edge.model.runtime), and the snapshot's score is the largest channel score. So every channel is
judged against its own healthy spread, and the thresholds are multiples of "the worst healthy error":

`calibration` (default): warning = WARNING_MARGIN x, alarm = ALARM_MARGIN x the largest healthy score
(which is 1 by construction), both widened by sqrt(RECOMMENDED_HEALTHY / n) when the training span holds
only n < RECOMMENDED_HEALTHY healthy snapshots: a small sample underestimates how far healthy data
reaches. The margins absorb the slow wander of a healthy machine beyond what the training span saw;
debouncing (k of n per channel) absorbs single spikes.

The drift floor: a short training span (20 snapshots of a slow load and temperature wander) sees only part
of how far a healthy machine moves, and a model that reproduces that part closely gets a tiny reference, so
the next few percent of wander would read as several times the worst healthy error. Each channel's reference
is therefore at least the error a wander of DRIFT_FRACTION of its features' healthy level would cause
(`drift_floor`, in the scaled units the errors are in), and the thresholds are multiples of that reference
(the largest healthy score counted as at least 1). A few percent of wander stays below the warning threshold;
a defect, which moves its channel's features by tens of percent to several times, still alarms.

Clearing is stated in seconds too (CLEAR_AFTER_S; the card's persist_s can do the same for k of n): at the
agent's cadence the detector takes the longer of counts and time, so an alarm clears only after an hour below
the warning threshold at a 10 s cadence as at a 10 min one, instead of after 60 s, and does not flap through a
failure's last hour.
`seed`: the seeds' rule, alarm = 1.1 x the largest training score, warning = 0.9 x alarm.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edge.model.bundle import DetectorSettings

RULES = ("calibration", "seed")
MIN_HEALTHY = 10  # fewer healthy snapshots in the training span: refused, the thresholds would be guesswork
RECOMMENDED_HEALTHY = 30  # fewer: a warning, and the thresholds are widened
WARNING_MARGIN = 2.0
ALARM_MARGIN = 2.5
SEED_FACTOR = 1.1
REFERENCE_FLOOR = 1e-3  # scaled units: a channel the model reproduces perfectly must not divide by ~0
DEBOUNCE = {"k": 2, "n": 3}  # chosen with bench/bench_detection.py: see trainer/README.md
# k of n stays in snapshots (None): on FEMTO's four runs, 60 s of persistence (4 of 6 at 10 s) removed no false
# episode and cost lead (Bearing2_1 vibration 9.7 -> 0.3 min, Bearing3_2 6.3 -> 2.5; bench/bench_real.py femto),
# and it would keep a 5 s recording (CWRU) from ever alarming. The card's persist_s can still ask for it.
PERSIST_S: float | None = None
CLEAR_AFTER_S = 3600.0  # an hour below the warning threshold clears: IMS's 6 snapshots of 10 min, at any cadence
DRIFT_FRACTION = 0.05  # of a healthy level: chosen by bench/bench_cases.py --tune on cm-synth seeds 1-200
# Labelled tables: a row's columns are features of one case, not sensors of their own, and an anomalous case moves
# many of them a little; the mean error over every column gathers that evidence, where the largest channel's
# error over its reference reads the noisiest column. Chosen by bench/bench_labelled.py on random states 0-9
# (make_blobs, 500-5,000 rows; state 8's ROC AUC 0.945 -> 0.978), confirmed on states 100-109.
LABELLED_SCORE = "mean absolute error over all columns (no per-channel references)"


@dataclass(frozen=True)
class Thresholds:
    warning: float
    alarm: float
    rule: str
    basis: dict


def channel_reference(fit_errors: np.ndarray, calibration_errors: np.ndarray,
                      drift: np.ndarray | None = None) -> tuple[float, ...]:
    """Per channel, the largest healthy error over the fitted and held-out spans ((snapshots, C) each).

    Floored at REFERENCE_FLOOR and at a tenth of the median channel's, so one channel the model happens
    to reproduce almost exactly does not turn every small wobble of it into an alarm, and at `drift` (per
    channel, from `drift_floor`), so a few percent of load or temperature wander does not either.
    """
    errors = np.vstack([fit_errors, calibration_errors])
    largest = errors.max(axis=0)
    floor = np.maximum(max(REFERENCE_FLOOR, 0.1 * float(np.median(largest))), 0.0 if drift is None else drift)
    return tuple(float(v) for v in np.maximum(largest, floor))


def drift_floor(healthy: np.ndarray, scale: np.ndarray, features_per_channel: int,
                fraction: float = DRIFT_FRACTION) -> np.ndarray:
    """Per channel, the scaled error a wander of `fraction` of each feature's healthy level would cause:
    fraction x |median level| x the scaler's factor (1 / training span), averaged over the channel's features
    as its error is. `healthy`: (snapshots, C*F) raw features; `scale`: (C*F,) the scaler's factors."""
    level = np.abs(np.median(np.asarray(healthy, dtype=np.float64), axis=0))
    return (fraction * level * np.asarray(scale, dtype=np.float64)).reshape(-1, features_per_channel).mean(axis=1)


def small_sample_factor(healthy_snapshots: int) -> float:
    return math.sqrt(RECOMMENDED_HEALTHY / healthy_snapshots) if healthy_snapshots < RECOMMENDED_HEALTHY else 1.0


def thresholds(rule: str, training_scores: np.ndarray, calibration_scores: np.ndarray,
               healthy_snapshots: int) -> Thresholds:
    """Warning and alarm thresholds from the healthy scores by the named rule."""
    train_max = float(np.max(training_scores))
    calibration_max = float(np.max(calibration_scores)) if calibration_scores.size else train_max
    widen = small_sample_factor(healthy_snapshots)
    basis = {
        "training_max": train_max,
        "calibration_max": calibration_max,
        "calibration_median": float(np.median(calibration_scores)) if calibration_scores.size else None,
        "calibration_p95": float(np.percentile(calibration_scores, 95)) if calibration_scores.size else None,
        "training_windows": int(training_scores.size),
        "calibration_windows": int(calibration_scores.size),
        "healthy_snapshots": healthy_snapshots,
        "small_sample_factor": round(widen, 4),
    }
    if rule == "seed":
        alarm = SEED_FACTOR * train_max
        return _with_margin(Thresholds(warning=0.9 * alarm, alarm=alarm, basis=basis,
                                       rule="seed: alarm = 1.1 x max training score, warning = 0.9 x alarm"))
    if rule == "calibration":
        # A drift floor above the largest healthy error leaves every healthy score below 1: the thresholds
        # stay multiples of the reference (1), or the floor would cancel out.
        healthy_max = max(train_max, calibration_max, 1.0)
        return _with_margin(Thresholds(
            warning=WARNING_MARGIN * widen * healthy_max,
            alarm=ALARM_MARGIN * widen * healthy_max,
            rule=f"calibration: per-channel error / the channel's largest healthy error; warning = {WARNING_MARGIN} x, "
                 f"alarm = {ALARM_MARGIN} x the largest healthy score (training and held-out spans), "
                 f"x sqrt({RECOMMENDED_HEALTHY} / healthy snapshots) below {RECOMMENDED_HEALTHY}",
            basis=basis,
        ))
    raise ValueError(f"--threshold-rule: expected one of {', '.join(RULES)}, got {rule!r}")


def _with_margin(limits: Thresholds) -> Thresholds:
    """The basis records the margin: alarm threshold / the largest score on held-out healthy data."""
    top = limits.basis["calibration_max"]
    margin = limits.alarm / top if top > 0 else None
    return Thresholds(limits.warning, limits.alarm, limits.rule, limits.basis | {"margin": margin})


def detector_settings(limits: Thresholds, in_seconds: bool = True) -> DetectorSettings:
    """The thresholds with the debounce the calibration was chosen with (DEBOUNCE), 6 quiet snapshots to clear,
    and (`in_seconds`) the same in seconds (PERSIST_S, CLEAR_AFTER_S), so it spans the same time at any cadence."""
    return DetectorSettings(warning_threshold=limits.warning, alarm_threshold=limits.alarm, **DEBOUNCE,
                            persist_s=PERSIST_S if in_seconds else None,
                            clear_after_s=CLEAR_AFTER_S if in_seconds else None)


def best_f1(scores: np.ndarray, labels: np.ndarray, target_precision: float | None, basis: dict) -> Thresholds:
    """Labelled tables: the alarm threshold chosen on a labelled validation split (scores, labels).

    Default: the threshold that maximises F1. With a target precision: the lowest threshold whose precision
    reaches it (the most recall at that precision), or the F1 choice when none does. Each candidate sits
    halfway between two adjacent distinct scores, so a snapshot never sits exactly on the threshold.
    warning = 0.9 x alarm. The scores are LABELLED_SCORE's (train._calibrate leaves the references out).
    """
    if target_precision is not None and not 0.0 < target_precision <= 1.0:
        raise ValueError(f"--target-precision: expected a number in (0, 1], got {target_precision}")
    order = np.argsort(-scores, kind="mergesort")
    ranked, hits = scores[order], labels[order].astype(np.float64)
    # Cutting after position i flags the i+1 highest scores; only cut between distinct scores.
    cuts = np.flatnonzero(np.diff(ranked) < 0)
    true_positives = np.cumsum(hits)[cuts]
    precision = true_positives / (cuts + 1)
    recall = true_positives / max(hits.sum(), 1.0)
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    if not cuts.size:
        raise ValueError("the validation split's scores are all equal: no threshold separates anything")
    pick = int(np.argmax(f1))
    rule = "f1: the alarm threshold maximising F1 on the labelled validation split, warning = 0.9 x alarm"
    if target_precision is not None:
        reaching = np.flatnonzero(precision >= target_precision)
        if reaching.size:
            pick = int(reaching[-1])
            rule = (f"precision: the lowest alarm threshold reaching precision {target_precision:g} on the labelled "
                    "validation split, warning = 0.9 x alarm")
        else:
            rule += f" (no threshold reached precision {target_precision:g})"
    cut = cuts[pick]
    alarm = float((ranked[cut] + ranked[cut + 1]) / 2)
    chosen = {"validation_snapshots": int(scores.size), "validation_anomalies": int(hits.sum()),
              "validation_precision": float(precision[pick]), "validation_recall": float(recall[pick]),
              "validation_f1": float(f1[pick]), "target_precision": target_precision}
    return _with_margin(Thresholds(warning=0.9 * alarm, alarm=alarm, rule=rule, basis=basis | chosen))
