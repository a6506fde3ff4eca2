"""`cm-train fit`: features -> training span -> scaler -> autoencoder -> int8 export -> thresholds -> bundle.

Each step is a few plain lines, as in keras-io's timeseries anomaly detection example. The last part of the
healthy training span is held out: it stops training early and calibrates the thresholds on scores of data
the model never fitted. Thresholds are set on the int8 model's scores through the edge runtime, the same
code the agent runs, and the float32 model is checked against them.
"""
from __future__ import annotations

import platform
import sys
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from edge.bundle import FLOAT_MODEL_FILE, INT8_MODEL_FILE, Bundle, FeatureSpec, ModelCard, Scaler, file_sha256, write_card
from edge.cadence import training_interval_s
from edge.detector import DetectorSettings
from edge.bearing import BearingGeometry
from edge.features import FEATURE_SET
from edge.runtime import Scorer
from edge.scoring import StreamScorer, score_stream, scores_of, unbroken_runs
from trainer import calibrate, export
from trainer.dataset import Dataset, DatasetError, load_dataset
from trainer.model import build_autoencoder, windows

DEFAULT_WINDOW = 2  # chosen by evaluation on synthetic runs: see trainer/README.md
SATURATION_FACTOR = 10.0  # the card records the score of an input this many times the training range


@dataclass(frozen=True)
class FitOptions:
    out: Path
    channels: tuple[str | int, ...] | None = None
    format: str | None = None  # recording format; None: detected (see firmware_bridge.recording)
    sample_rate_hz: int | None = None
    snapshot_samples: int | None = None
    feature_set: str = FEATURE_SET  # see edge/features.py
    bearing: BearingGeometry | None = None  # vibration set: --bearing
    shaft_rpm: float | None = None  # vibration set: --shaft-rpm
    label_column: str | None = None
    train_until: np.datetime64 | None = None
    train_fraction: float = 0.5
    window: int = DEFAULT_WINDOW
    epochs: int = 100
    seed: int = 0
    threshold_rule: str = "calibration"
    holdout_fraction: float = 0.2
    batch_size: int = 16
    patience: int = 10
    verbose: int = 2


def training_mask(dataset: Dataset, train_until: np.datetime64 | None, train_fraction: float) -> np.ndarray:
    """Snapshots of the training span: up to --train-until (inclusive), else the first --train-fraction."""
    if train_until is not None:
        mask = dataset.timestamps <= train_until
    else:
        if not 0.0 < train_fraction <= 1.0:
            raise DatasetError(f"--train-fraction: expected a number in (0, 1], got {train_fraction}")
        mask = np.arange(len(dataset)) < max(1, int(round(train_fraction * len(dataset))))
    return mask


def healthy_rows(dataset: Dataset, in_training: np.ndarray) -> np.ndarray:
    """Indices of the rows to fit: in the training span, labelled normal, no sensor fault."""
    keep = in_training.copy()
    if dataset.labels is not None:
        keep &= ~dataset.labels
    if dataset.faults:
        faulty = np.array([fault is not None for fault in dataset.faults])
        for row in np.flatnonzero(keep & faulty):
            print(f"{dataset.source}: snapshot {dataset.timestamps[row]}: excluded from training: {dataset.faults[row]}", file=sys.stderr)
        keep &= ~faulty
    return np.flatnonzero(keep)


def split_holdout(rows: np.ndarray, window: int, holdout_fraction: float, source: str) -> tuple[np.ndarray, np.ndarray]:
    """The first part fits the model, the last part (at least one window) calibrates the thresholds."""
    holdout = max(window, int(round(holdout_fraction * rows.size)))
    if rows.size - holdout < window:
        raise DatasetError(
            f"{source}: {rows.size} healthy snapshots in the training span are too few for window {window}: "
            f"need at least {2 * window} (fit and calibration); widen --train-until/--train-fraction or lower --window"
        )
    return rows[:-holdout], rows[-holdout:]


def training_windows(dataset: Dataset, scaler: Scaler, rows: np.ndarray, window: int) -> np.ndarray:
    """Every run of W consecutive healthy snapshots among `rows`, scaled: none spans an excluded snapshot."""
    parts = [windows(scaler.transform(dataset.features[run]), window)
             for run in unbroken_runs(rows) if run.size >= window]
    if not parts:
        return np.zeros((0, window, dataset.features.shape[1]), dtype=np.float32)
    return np.concatenate(parts)


def streamed_scores(bundle: Bundle, scorer: Scorer, dataset: Dataset, rows: np.ndarray) -> np.ndarray:
    """Scores of `rows` as the agent would score them (edge.scoring), restarting the window at every gap."""
    runs = [scores_of(score_stream(StreamScorer(bundle, scorer=scorer), dataset.features[run]))
            for run in unbroken_runs(rows)]
    return np.concatenate(runs) if runs else np.zeros(0)


def train_autoencoder(fit_windows: np.ndarray, calibration_windows: np.ndarray, options: FitOptions) -> tuple[keras.Model, int]:
    keras.backend.clear_session()  # fresh layer names: the same seed gives the same model bytes in one process too
    keras.utils.set_random_seed(options.seed)
    tf.config.experimental.enable_op_determinism()
    model = build_autoencoder(fit_windows.shape[1], fit_windows.shape[2])
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=options.patience, restore_best_weights=True)
    history = model.fit(
        fit_windows,
        fit_windows,
        epochs=options.epochs,
        batch_size=options.batch_size,
        validation_data=(calibration_windows, calibration_windows),
        shuffle=True,
        callbacks=[stop],
        verbose=options.verbose,
    )
    return model, len(history.history["loss"])


def fit(input_path: str | Path, options: FitOptions) -> Path:
    """Train, export and calibrate; returns the bundle directory."""
    started = time.perf_counter()
    if options.window < 1:
        raise DatasetError(f"--window: expected a positive integer, got {options.window}")
    dataset = load_dataset(input_path, options.channels, options.label_column, format=options.format,
                           sample_rate_hz=options.sample_rate_hz, snapshot_samples=options.snapshot_samples,
                           feature_set=options.feature_set, bearing=options.bearing, shaft_rpm=options.shaft_rpm)
    in_training = training_mask(dataset, options.train_until, options.train_fraction)
    rows = healthy_rows(dataset, in_training)
    fit_rows, calibration_rows = split_holdout(rows, options.window, options.holdout_fraction, dataset.source)

    scaler = Scaler.fit(dataset.features[fit_rows])
    fit_windows = training_windows(dataset, scaler, fit_rows, options.window)
    calibration_windows = training_windows(dataset, scaler, calibration_rows, options.window)
    print(f"training on {fit_windows.shape[0]} windows of {options.window} x {dataset.features.shape[1]}, "
          f"{calibration_windows.shape[0]} held out for calibration", file=sys.stderr)
    model, epochs_run = train_autoencoder(fit_windows, calibration_windows, options)

    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / FLOAT_MODEL_FILE).write_bytes(export.to_float_tflite(model))
    (out / INT8_MODEL_FILE).write_bytes(export.to_int8_tflite(model, export.representative_windows(fit_windows)))

    card = _draft_card(dataset, scaler, rows, options)
    bundle = Bundle(path=out, card=card, model_path=out / INT8_MODEL_FILE)
    int8 = Scorer(bundle)
    fit_scores = streamed_scores(bundle, int8, dataset, fit_rows)
    calibration_scores = streamed_scores(bundle, int8, dataset, calibration_rows)
    limits = calibrate.thresholds(options.threshold_rule, fit_scores, calibration_scores)

    floats = Scorer(bundle, model_path=out / FLOAT_MODEL_FILE)
    float_scores = np.concatenate([streamed_scores(bundle, floats, dataset, r) for r in (fit_rows, calibration_rows)])
    check = export.compare(np.concatenate([fit_scores, calibration_scores]), float_scores, limits.warning, limits.alarm)
    export.require_agreement(check)
    saturation = _saturation_score(int8, scaler, options.window)
    if saturation <= limits.alarm:
        raise export.ExportError(
            f"int8 saturation check failed: an input {SATURATION_FACTOR:g}x beyond the training range scores "
            f"{saturation:.4g}, not above the alarm threshold {limits.alarm:.4g}: does the training span "
            "(--train-until/--train-fraction) reach into the failure?"
        )

    card = replace(
        card,
        warning_threshold=limits.warning,
        alarm_threshold=limits.alarm,
        threshold_rule=limits.rule,
        detector=calibrate.detector_settings(limits),
        quantization={
            **check.to_dict(),
            "input": _tensor_quantization(int8),
            "representative_headroom": export.HEADROOM,
            f"score_at_{SATURATION_FACTOR:g}x_training_range": saturation,
            "float_model_file": FLOAT_MODEL_FILE,
            "float_model_sha256": file_sha256(out / FLOAT_MODEL_FILE),
        },
        provenance={
            **card.provenance,
            "threshold_basis": limits.basis,
            "epochs_run": epochs_run,
            "training_seconds": round(time.perf_counter() - started, 2),
        },
        model_sha256=file_sha256(out / INT8_MODEL_FILE),
    )
    write_card(card, out)
    print(f"bundle written to {out}: warning {limits.warning:.4g}, alarm {limits.alarm:.4g}, "
          f"int8/float decision agreement {check.decision_agreement:.4f}", file=sys.stderr)
    return out


def _draft_card(dataset: Dataset, scaler: Scaler, rows: np.ndarray, options: FitOptions) -> ModelCard:
    """The card before calibration: everything the scorer needs, placeholder thresholds."""
    train_end = dataset.timestamps[rows[-1]]
    fingerprint = dataset.fingerprint()
    return ModelCard(
        id=f"cm-{fingerprint[:12]}-{options.seed}",
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        feature_spec=FeatureSpec(
            feature_set=dataset.feature_config.feature_set,
            channels=dataset.channels,
            sample_rate_hz=dataset.sample_rate_hz,
            snapshot_samples=dataset.snapshot_samples,
            window=options.window,
            snapshot_interval_s=training_interval_s(dataset.timestamps[rows].astype("datetime64[us]").astype(np.int64)),
            features=dataset.feature_config.names,
            bearing=dataset.feature_config.bearing,
            shaft_rpm=dataset.feature_config.shaft_rpm,
            scale=dataset.scales[0] if len(dataset.scales) == 1 else None,
        ),
        scaler=scaler,
        warning_threshold=1.0,
        alarm_threshold=1.0,
        threshold_rule=options.threshold_rule,
        detector=DetectorSettings(warning_threshold=1.0, alarm_threshold=1.0),
        healthy_min=tuple(float(v) for v in dataset.features[rows].min(axis=0)),
        quantization={},
        provenance={
            "source": dataset.source,
            "kind": dataset.kind,
            "columns": list(dataset.columns) if dataset.columns else None,
            "format": dataset.kind,
            # The scale rule of firmware_bridge.recording: 0.001 g per count, or 0.001 g x 2**k when values do not fit.
            "scales_g_per_count": list(dataset.scales),
            "label_column": options.label_column,
            "data_sha256": fingerprint,
            "snapshots": len(dataset),
            "excluded_rows": len(dataset.excluded),
            "train_start": str(dataset.timestamps[rows[0]]),
            "train_end": str(train_end),
            "training_snapshots": int(rows.size),
            "holdout_fraction": options.holdout_fraction,
            "seed": options.seed,
            "epochs": options.epochs,
            "python": platform.python_version(),
            "numpy": np.__version__,
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
        },
        model_file=INT8_MODEL_FILE,
        model_sha256="",
    )


def _saturation_score(scorer: Scorer, scaler: Scaler, window: int) -> float:
    """Score of an input SATURATION_FACTOR times beyond the training range on every channel."""
    low, high = np.asarray(scaler.minimum), np.asarray(scaler.maximum)
    beyond = low + SATURATION_FACTOR * (high - low)
    return scorer.score(np.tile(beyond, (window, 1))).score


def _tensor_quantization(scorer: Scorer) -> dict:
    scale, zero_point = scorer.input_quantization
    return {"scale": scale, "zero_point": zero_point}
