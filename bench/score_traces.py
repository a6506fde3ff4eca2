"""Per-snapshot raw errors of a trained bundle, kept so detector settings can be compared without retraining.

A bundle's int8 model is run once over a whole run with no per-channel references (the raw per-channel
errors, as calibration sees them). Replaying a trace under other settings (drift fraction, debounce in
seconds) repeats what training and the agent would do with them: the references and thresholds come from
trainer.calibrate's own functions over the training span's errors, the states from edge's Detector at the
run's cadence. That is how bench_cases.py --tune and bench_real.py femto choose settings on some runs and
report them on others, without a training per setting. (The real stream restarts its window at the training
span's gaps; the trace does not, a difference of a few windows at most.)
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from edge.ingest.cadence import training_interval_s
from edge.model.bundle import Bundle, DetectorSettings
from edge.scoring.detector import Detector, State
from edge.scoring.stream import Stream, score_stream
from trainer import calibrate


@dataclass(frozen=True)
class Setting:
    drift_fraction: float = calibrate.DRIFT_FRACTION
    persist_s: float | None = calibrate.PERSIST_S
    clear_after_s: float | None = calibrate.CLEAR_AFTER_S

    def label(self) -> str:
        return f"drift {self.drift_fraction:g}, persist {self.persist_s} s, clear {self.clear_after_s} s"


# What FEMTO's leave-one-run-out chooses among: the drift floor's fraction, and the debounce with and without
# seconds (None: counts only, as cards before them). At cm-synth's 10-minute cadence the seconds change nothing
# (the counts are the longer), so bench_cases.py --tune chooses the fraction only (DRIFT_GRID).
DRIFT_GRID = (0.0, 0.01, 0.02, 0.03, 0.05, 0.08)
GRID = [Setting(drift, persist, clear) for drift in DRIFT_GRID
        for persist in (None, 60.0, 180.0) for clear in (None, 1800.0, 3600.0)]


@dataclass(frozen=True)
class ScoreTrace:
    raw: np.ndarray  # (snapshots, C) raw per-channel errors; NaN: not scored (window filling, fault)
    fault: np.ndarray  # (snapshots,) bool: a sensor fault
    fit_rows: np.ndarray
    calibration_rows: np.ndarray
    healthy_snapshots: int
    unit_floor: np.ndarray  # (C,) calibrate.drift_floor at fraction 1
    interval_s: float

    def save(self, path: Path) -> None:
        np.savez_compressed(path, raw=self.raw, fault=self.fault, fit_rows=self.fit_rows,
                            calibration_rows=self.calibration_rows, healthy_snapshots=self.healthy_snapshots,
                            unit_floor=self.unit_floor, interval_s=self.interval_s)

    @classmethod
    def load(cls, path: Path) -> ScoreTrace:
        data = np.load(path)
        return cls(raw=data["raw"], fault=data["fault"], fit_rows=data["fit_rows"],
                   calibration_rows=data["calibration_rows"], healthy_snapshots=int(data["healthy_snapshots"]),
                   unit_floor=data["unit_floor"], interval_s=float(data["interval_s"]))


def record(bundle: Bundle, dataset: object, fit_rows: np.ndarray, calibration_rows: np.ndarray,
           healthy_snapshots: int) -> ScoreTrace:
    """The bundle's raw per-channel errors over the whole dataset (trainer.dataset.Dataset), in stream order."""
    card = bundle.card
    plain = replace(bundle, card=replace(card, channel_error_reference=None))
    steps = score_stream(Stream(plain), dataset.features, dataset.faults or None)  # type: ignore[attr-defined]
    channels = len(card.feature_spec.channels)
    raw = np.full((len(steps), channels), np.nan)
    for row, step in enumerate(steps):
        if step.score is not None:
            raw[row] = step.score.raw_errors
    scale = card.scaler.transform(np.ones((1, card.feature_spec.columns)))[0] - card.scaler.transform(
        np.zeros((1, card.feature_spec.columns)))[0]
    healthy = dataset.features[np.concatenate([fit_rows, calibration_rows])]  # type: ignore[attr-defined]
    stamps = dataset.timestamps.astype("datetime64[us]").astype(np.int64)  # type: ignore[attr-defined]
    return ScoreTrace(raw=raw, fault=np.array([step.fault is not None for step in steps]), fit_rows=fit_rows,
                      calibration_rows=calibration_rows, healthy_snapshots=healthy_snapshots,
                      unit_floor=calibrate.drift_floor(healthy, scale, len(card.feature_spec.features), 1.0),
                      interval_s=training_interval_s(stamps) or 0.0)


def replay(trace: ScoreTrace, setting: Setting) -> tuple[list[State], list[int | None]]:
    """States and the channel each names, as a bundle trained with `setting` would give them."""
    scored = lambda rows: trace.raw[rows][np.isfinite(trace.raw[rows]).all(axis=1)]  # noqa: E731
    fit, held_out = scored(trace.fit_rows), scored(trace.calibration_rows)
    reference = np.array(calibrate.channel_reference(fit, held_out, setting.drift_fraction * trace.unit_floor))
    limits = calibrate.thresholds("calibration", (fit / reference).max(axis=1), (held_out / reference).max(axis=1),
                                  trace.healthy_snapshots)
    detector = Detector(DetectorSettings(limits.warning, limits.alarm, **calibrate.DEBOUNCE,
                                         persist_s=setting.persist_s, clear_after_s=setting.clear_after_s),
                        trace.interval_s)
    states: list[State] = []
    tops: list[int | None] = []
    for row, errors in enumerate(trace.raw):
        if trace.fault[row]:
            detector.update(None, fault="sensor")
        elif np.isfinite(errors).all():
            channel = errors / reference
            detector.update(float(channel.max()), channel_scores=channel)
        states.append(detector.state)
        tops.append(detector.driver)
    return states, tops
