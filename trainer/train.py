"""`cm-train fit`: features -> training span -> scaler -> autoencoder -> int8 export -> thresholds -> bundle.

Each step is a few plain lines, as in keras-io's timeseries anomaly detection example. The last part of the
healthy training span is held out: it stops training early and calibrates the thresholds on scores of data
the model never fitted. Thresholds are set on the int8 model's scores through the edge runtime, the same
code the agent runs, and the float32 model is checked against them.
"""
from __future__ import annotations

import hashlib
import json
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from edge.ingest.cadence import training_interval_s
from edge.ingest.clock import iso_time
from edge.model.bundle import (
    FLOAT_MODEL_FILE,
    INT8_MODEL_FILE,
    Bundle,
    DetectorSettings,
    FeatureSpec,
    ModelCard,
    Scaler,
    file_sha256,
    write_card,
)
from edge.model.runtime import Model, Score
from edge.scoring.stream import Stream, score_stream, unbroken_runs
from trainer import calibrate, export
from trainer.dataset import Dataset, DatasetError, load_dataset
from trainer.model import build_autoencoder, windows
from trainer.options import FitOptions

MIN_HELD_OUT_WINDOWS = 3  # the thresholds never rest on a single held-out window
SATURATION_FACTOR = 10.0
MAGNITUDE_SHARE = 0.25  # a table column whose healthy minimum is below this share of its maximum cannot drop out
DRIFT_LIMIT = 1.5  # held-out end of the training span beyond the fitted range, in fitted ranges  # the card records the score of an input this many times the training range


@dataclass(frozen=True)
class Span:
    """The training span: which snapshots are in it, its healthy rows, and their split into the part that
    fits the model and the held-out end that calibrates the thresholds."""

    in_training: np.ndarray  # (snapshots,) bool
    rows: np.ndarray
    fit_rows: np.ndarray
    calibration_rows: np.ndarray


@dataclass(frozen=True)
class Trained:
    """What training made: the autoencoder, the scaler, the windows it was fitted on, and the run's record."""

    model: keras.Model
    scaler: Scaler
    fit_windows: np.ndarray
    epochs_run: int
    warnings: list[str]
    started: float  # time.perf_counter() when fit() began: the card's training_seconds count from here


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
    """The first part fits the model, the last part (at least MIN_HELD_OUT_WINDOWS windows) calibrates the thresholds."""
    if rows.size < calibrate.MIN_HEALTHY:
        raise DatasetError(
            f"{source}: {rows.size} healthy snapshots in the training span: at least {calibrate.MIN_HEALTHY} are needed "
            f"to calibrate thresholds ({calibrate.RECOMMENDED_HEALTHY} or more recommended); widen "
            "--train-until/--train-fraction or record more healthy data"
        )
    holdout = max(window - 1 + MIN_HELD_OUT_WINDOWS, int(round(holdout_fraction * rows.size)))
    if rows.size - holdout < window:
        raise DatasetError(
            f"{source}: {rows.size} healthy snapshots in the training span are too few for window {window}: "
            f"need at least {2 * window} (fit and calibration); widen --train-until/--train-fraction or lower --window"
        )
    return rows[:-holdout], rows[-holdout:]


def training_warnings(dataset: Dataset, rows: np.ndarray, fit_rows: np.ndarray, calibration_rows: np.ndarray) -> list[str]:
    """What is wrong with the data but does not stop training: time stamps the recording's reader doubted,
    too few snapshots, or a span already drifting.

    Drift: per channel, how far the held-out end of the span reaches beyond the range of the fitted part,
    in units of that range. On cm-synth runs a healthy span reaches at most about 0.5 ranges beyond; a span
    that runs into the failure (--train-fraction 0.9) reaches 3 to 20. Above DRIFT_LIMIT training goes on,
    but says so, and the card and the evaluation report carry the warning. Checked from
    RECOMMENDED_HEALTHY snapshots on.
    """
    found = [f"time stamp doubted and dated from its neighbours: {doubt}" for doubt in dataset.doubted]
    if rows.size < calibrate.RECOMMENDED_HEALTHY:
        found.append(f"only {rows.size} healthy snapshots in the training span ({calibrate.RECOMMENDED_HEALTHY} or more "
                     f"recommended): thresholds widened by {calibrate.small_sample_factor(int(rows.size)):.2f}x; "
                     "retrain when more healthy data is recorded")
    # Below the recommended size the fitted range itself is too uncertain to call drift (the IMS sample's
    # 8 fitted snapshots would); the small-sample warning above applies instead.
    if dataset.labels is None and rows.size >= calibrate.RECOMMENDED_HEALTHY:
        fitted, held_out = dataset.features[fit_rows], dataset.features[calibration_rows]
        low, high = fitted.min(axis=0), fitted.max(axis=0)
        span = np.where(high > low, high - low, 1.0)
        beyond = np.maximum(held_out.max(axis=0) - high, low - held_out.min(axis=0)) / span
        features = dataset.feature_config.names
        for column in np.flatnonzero(beyond > DRIFT_LIMIT):
            # Columns are channel-major: channel column // F, feature column % F.
            name = dataset.channels[column // len(features)]
            if len(features) > 1:
                name += f" {features[column % len(features)]}"
            found.append(f"the training span already drifts: at its end {name} reaches "
                         f"{beyond[column]:.1f}x its earlier range beyond that range (healthy spans stay under "
                         f"{DRIFT_LIMIT:g}x); does it reach into a developing fault? Use an earlier --train-until "
                         "or a smaller --train-fraction")
    return found


def labelled_splits(dataset: Dataset, in_training: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Labelled tables: the rows after the training span, split in time order into a validation half (which
    chooses the threshold) and a test half (which reports precision, recall, F1 and ROC AUC)."""
    if dataset.labels is None:
        return None
    after = np.flatnonzero(np.arange(len(dataset)) > np.flatnonzero(in_training)[-1])
    if after.size < 4 or not dataset.labels[after[: after.size // 2]].any():
        return None
    return after[: after.size // 2], after[after.size // 2:]


def dropout_levels(dataset: Dataset, rows: np.ndarray) -> tuple[float, ...]:
    """The card's healthy_min: per column the healthy minimum, which the agent's dropout check
    (edge.scoring.sensor) measures a channel's level against (a dead sensor reads near zero).

    A table's columns are whatever the user measured: one whose healthy values come close to zero (its minimum
    below MAGNITUDE_SHARE of its maximum: a make_blobs coordinate, an amount) is no level a sensor drops out
    from, and a low value there is an anomaly to score, not a fault that hides it: 0 there, which the check
    skips. Recordings' features are computed here (levels by construction) and keep their minimum.
    """
    low, high = dataset.features[rows].min(axis=0), dataset.features[rows].max(axis=0)
    if dataset.kind != "table":
        return tuple(float(v) for v in low)
    return tuple(float(v) if v >= MAGNITUDE_SHARE * h else 0.0 for v, h in zip(low, high))


def training_windows(dataset: Dataset, scaler: Scaler, rows: np.ndarray, window: int) -> np.ndarray:
    """Every run of W consecutive healthy snapshots among `rows`, scaled: none spans an excluded snapshot."""
    parts = [windows(scaler.transform(dataset.features[run]), window)
             for run in unbroken_runs(rows) if run.size >= window]
    if not parts:
        return np.zeros((0, window, dataset.features.shape[1]), dtype=np.float32)
    return np.concatenate(parts)


def streamed(bundle: Bundle, scorer: Model, dataset: Dataset, rows: np.ndarray) -> list[Score]:
    """`rows` scored as the agent would score them (edge.scoring.stream), restarting the window at every gap."""
    return [step.score for run in unbroken_runs(rows)
            for step in score_stream(Stream(bundle, model=scorer), dataset.features[run])
            if step.score is not None]


def streamed_scores(bundle: Bundle, scorer: Model, dataset: Dataset, rows: np.ndarray) -> np.ndarray:
    return np.array([score.score for score in streamed(bundle, scorer, dataset, rows)], dtype=np.float64)


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
    dataset = load_dataset(input_path, options)
    in_training = training_mask(dataset, options.train_until, options.train_fraction)
    rows = healthy_rows(dataset, in_training)
    span = Span(in_training, rows, *split_holdout(rows, options.window, options.holdout_fraction, dataset.source))
    trained = _train(dataset, span, options, started)
    out = Path(options.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # The bundle is built in a scratch directory beside `out` and renamed into place only when every check
    # passed: a failed export leaves no half-written bundle (and an existing bundle at `out` untouched).
    scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        limits, check = _export(trained, dataset, span, options, scratch)
        if out.exists():
            shutil.rmtree(out)
        scratch.rename(out)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"bundle written to {out}: warning {limits.warning:.4g}, alarm {limits.alarm:.4g}, "
          f"int8/float decision agreement {check.decision_agreement:.4f}", file=sys.stderr)
    return out


def _train(dataset: Dataset, span: Span, options: FitOptions, started: float) -> Trained:
    """Scaler and autoencoder fitted on the span's first part, stopped early on its held-out end."""
    warnings = training_warnings(dataset, span.rows, span.fit_rows, span.calibration_rows)
    for warning in warnings:
        print(f"{dataset.source}: warning: {warning}", file=sys.stderr)
    scaler = Scaler.fit(dataset.features[span.fit_rows])
    fit_windows = training_windows(dataset, scaler, span.fit_rows, options.window)
    calibration_windows = training_windows(dataset, scaler, span.calibration_rows, options.window)
    print(f"training on {fit_windows.shape[0]} windows of {options.window} x {dataset.features.shape[1]}, "
          f"{calibration_windows.shape[0]} held out for calibration", file=sys.stderr)
    model, epochs_run = train_autoencoder(fit_windows, calibration_windows, options)
    return Trained(model, scaler, fit_windows, epochs_run, warnings, started)


def _export(trained: Trained, dataset: Dataset, span: Span, options: FitOptions,
            out: Path) -> tuple[calibrate.Thresholds, export.QuantizationCheck]:
    """The bundle in `out`, step by step: export the models, calibrate, check, write the card."""
    (out / FLOAT_MODEL_FILE).write_bytes(export.to_float_tflite(trained.model))
    (out / INT8_MODEL_FILE).write_bytes(export.to_int8_tflite(trained.model, export.representative_windows(trained.fit_windows)))
    card = _draft_card(dataset, trained.scaler, span.rows, options)
    bundle, limits = _calibrate(Bundle(path=out, card=card, model_path=out / INT8_MODEL_FILE), dataset, span, options)
    check, quantization = _check(bundle, dataset, span, limits, options.window)
    _write_card(bundle, limits, quantization, _run_record(trained, dataset, span, limits), dataset.labels is None)
    return limits, check


def _calibrate(draft: Bundle, dataset: Dataset, span: Span, options: FitOptions) -> tuple[Bundle, calibrate.Thresholds]:
    """Per-channel error references, then thresholds on the int8 model's scores of the training span (with
    labels: the F1-best threshold on the validation split, on the mean-error score: see `by_labels`)."""
    splits = labelled_splits(dataset, span.in_training)
    validation = splits[0] if splits is not None and options.threshold_rule == "calibration" else None
    drift = drift_floor(draft.card, dataset, span)
    bundle = draft if validation is not None else _with_references(draft, dataset, span, drift)
    int8 = Model(bundle)
    fit_scores = streamed_scores(bundle, int8, dataset, span.fit_rows)
    calibration_scores = streamed_scores(bundle, int8, dataset, span.calibration_rows)
    limits = calibrate.thresholds(options.threshold_rule, fit_scores, calibration_scores, int(span.rows.size))
    if drift is not None:
        limits = replace(limits, basis=limits.basis | {"drift_fraction": calibrate.DRIFT_FRACTION,
                                                       "drift_floor": [round(float(f), 6) for f in drift]})
    if validation is not None and dataset.labels is not None:
        limits = calibrate.best_f1(streamed_scores(bundle, int8, dataset, validation),
                                   dataset.labels[validation], options.target_precision,
                                   limits.basis | {"score": calibrate.LABELLED_SCORE})
    return bundle, limits


def _with_references(draft: Bundle, dataset: Dataset, span: Span, drift: np.ndarray | None) -> Bundle:
    """The card with each channel's healthy error reference: the score becomes the largest channel's error
    over its own reference (edge.model.runtime)."""
    raw = Model(draft)  # the card has no per-channel references yet: raw per-channel errors
    fit_errors, calibration_errors = (np.array([s.raw_errors for s in streamed(draft, raw, dataset, r)])
                                      for r in (span.fit_rows, span.calibration_rows))
    reference = calibrate.channel_reference(fit_errors, calibration_errors, drift)
    return replace(draft, card=replace(draft.card, channel_error_reference=reference))


def drift_floor(card: ModelCard, dataset: Dataset, span: Span) -> np.ndarray | None:
    """Recordings: per channel, the error DRIFT_FRACTION of wander in its healthy level causes (calibrate).
    Labelled tables: None; their threshold is chosen on labelled data, and their columns have no load to wander."""
    if dataset.labels is not None:
        return None
    scale = card.scaler.transform(np.ones((1, card.feature_spec.columns))) - card.scaler.transform(
        np.zeros((1, card.feature_spec.columns)))
    return calibrate.drift_floor(dataset.features[span.rows], scale[0], len(card.feature_spec.features))


def _check(bundle: Bundle, dataset: Dataset, span: Span, limits: calibrate.Thresholds,
           window: int) -> tuple[export.QuantizationCheck, dict]:
    """The float32 twin must not clearly disagree with the int8 model's decisions (borderline ones near a
    threshold aside), and an input far beyond the training range, on every channel and on each alone, must
    score beyond the alarm threshold (the int8 input must not saturate below it); returns the card's record."""
    int8 = Model(bundle)
    floats = Model(bundle, model_path=bundle.path / FLOAT_MODEL_FILE)
    int8_scores, float_scores = (
        np.concatenate([streamed_scores(bundle, scorer, dataset, r) for r in (span.fit_rows, span.calibration_rows)])
        for scorer in (int8, floats))
    check = export.compare(int8_scores, float_scores, limits.warning, limits.alarm)
    export.require_agreement(check)
    extent = healthy_extent(bundle.card, dataset, span)
    saturation = _saturation_score(int8, bundle.card.scaler, window, extent)
    names = bundle.card.feature_spec.channels
    alone = _one_channel_saturation_scores(int8, bundle.card.scaler, window, len(names), extent)
    weakest = int(np.argmin(alone))
    for what, score in ((f"an input {SATURATION_FACTOR:g}x beyond the healthy range", saturation),
                        (f"channel {names[weakest]} alone {SATURATION_FACTOR:g}x beyond its healthy range", alone[weakest])):
        if score <= limits.alarm:
            raise export.ExportError(
                f"int8 saturation check failed: {what} scores {score:.4g}, not above the alarm threshold "
                f"{limits.alarm:.4g}: does the training span (--train-until/--train-fraction) reach into the failure?"
            )
    return check, {
        **check.to_dict(),
        "input": _tensor_quantization(int8),
        "representative_headroom": export.HEADROOM,
        f"score_at_{SATURATION_FACTOR:g}x_training_range": saturation,
        f"lowest_score_one_channel_at_{SATURATION_FACTOR:g}x_training_range": float(alone[weakest]),
        "float_model_file": FLOAT_MODEL_FILE,
        "float_model_sha256": file_sha256(bundle.path / FLOAT_MODEL_FILE),
    }


def _run_record(trained: Trained, dataset: Dataset, span: Span, limits: calibrate.Thresholds) -> dict:
    """What the card's provenance adds once training is done: the threshold's basis, warnings, epochs, time, splits."""
    splits = labelled_splits(dataset, span.in_training)
    return {
        "threshold_basis": limits.basis,
        "training_warnings": trained.warnings,
        "epochs_run": trained.epochs_run,
        "training_seconds": round(time.perf_counter() - trained.started, 2),
    } | ({} if splits is None else {
        "validation_start": _iso(dataset.timestamps[splits[0][0]]) if splits[0].size else None,
        "test_start": _iso(dataset.timestamps[splits[1][0]]) if splits[1].size else None,
    })


def _write_card(bundle: Bundle, limits: calibrate.Thresholds, quantization: dict, record: dict,
                in_seconds: bool) -> None:
    """The final card, under the id its content gives it; `in_seconds`: the debounce in seconds too (a recording,
    not a labelled table, whose rows are cases rather than moments of one machine)."""
    out, card = bundle.path, bundle.card
    model_sha256 = file_sha256(out / INT8_MODEL_FILE)
    card = replace(
        card,
        threshold_rule=limits.rule,
        detector=calibrate.detector_settings(limits, in_seconds),
        quantization=quantization,
        provenance={**card.provenance, **record},
        model_sha256=model_sha256,
    )
    write_card(replace(card, id=content_id(card)), out)


def content_id(card: ModelCard) -> str:
    """The bundle id from what decides its alarms: the int8 model's bytes (by sha256), the scaler, the
    per-channel references, the detector (thresholds and debounce). Two bundles share an id only if they score alike."""
    basis = card.to_dict()
    decisive = {key: basis.get(key) for key in ("model_sha256", "feature_spec", "scaler", "channel_error_reference",
                                                 "detector", "healthy_min")}
    digest = hashlib.sha256(json.dumps(decisive, sort_keys=True).encode()).hexdigest()
    return f"cm-{digest[:16]}"


def _iso(stamp: np.datetime64) -> str:
    return iso_time(int(stamp.astype("datetime64[us]").astype(np.int64)))


def _draft_card(dataset: Dataset, scaler: Scaler, rows: np.ndarray, options: FitOptions) -> ModelCard:
    """The card before calibration: everything the scorer needs, placeholder thresholds."""
    train_end = dataset.timestamps[rows[-1]]
    fingerprint = dataset.fingerprint()
    return ModelCard(
        id="cm-draft",  # replaced by content_id() once the model and thresholds are final
        created=iso_time(time.time_ns() // 1000),
        feature_spec=_feature_spec(dataset, rows, options),
        scaler=scaler,
        threshold_rule=options.threshold_rule,
        detector=DetectorSettings(warning_threshold=1.0, alarm_threshold=1.0),
        healthy_min=dropout_levels(dataset, rows),
        quantization={},
        provenance={
            "source": dataset.source,
            "kind": dataset.kind,
            "columns": list(dataset.columns) if dataset.columns else None,
            "format": dataset.kind,
            # The scale rule of firmware_bridge.recording: 0.001 g per count, or 0.001 g x 2**k when values do not fit.
            "scales_g_per_count": list(dataset.scales),
            "label_column": options.label_column,
            **_spec_provenance(options),
            "data_sha256": fingerprint,
            "snapshots": len(dataset),
            "excluded_rows": len(dataset.excluded),
            "train_start": _iso(dataset.timestamps[rows[0]]),
            "train_end": _iso(train_end),
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


def _feature_spec(dataset: Dataset, rows: np.ndarray, options: FitOptions) -> FeatureSpec:
    """The new card's spec: --feature-spec's card's as it is (its window aside), so the agent running that card
    accepts this bundle; else what the recording (or table) says. A card without a cadence keeps none (its agent
    scores every snapshot, and each table row is one of them): the table's spacing would make the agent skip
    snapshots that came a little early (edge.ingest.cadence)."""
    if options.feature_spec is not None:
        return replace(options.feature_spec.spec, window=options.window)
    return FeatureSpec(
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
    )


def _spec_provenance(options: FitOptions) -> dict[str, str]:
    """Where --feature-spec's spec came from (the table itself is the card's `source`)."""
    if options.feature_spec is None:
        return {}
    card = options.feature_spec
    return {"feature_spec_from": card.source, "feature_spec_card_id": card.card_id,
            "feature_spec_card_kind": card.card_kind}


def healthy_extent(card: ModelCard, dataset: Dataset, span: Span) -> np.ndarray:
    """Per column, how far healthy values reach: the training range, or where wider (recordings), the wander the
    drift floor calls healthy (DRIFT_FRACTION of the level). The saturation checks go SATURATION_FACTOR times
    beyond it: an input the floor scores as healthy wander is no anomaly the int8 model must alarm on."""
    low, high = np.asarray(card.scaler.minimum), np.asarray(card.scaler.maximum)
    if dataset.labels is not None:
        return high - low
    level = np.abs(np.median(dataset.features[span.rows], axis=0))
    return np.maximum(high - low, calibrate.DRIFT_FRACTION * level)


def _saturation_score(scorer: Model, scaler: Scaler, window: int, extent: np.ndarray) -> float:
    """Score of an input SATURATION_FACTOR times the healthy extent beyond its minimum on every channel."""
    beyond = np.asarray(scaler.minimum) + SATURATION_FACTOR * extent
    return scorer.score(np.tile(beyond, (window, 1))).score


def _one_channel_saturation_scores(scorer: Model, scaler: Scaler, window: int, channels: int,
                                   extent: np.ndarray) -> np.ndarray:
    """Per channel: the score when its features alone are SATURATION_FACTOR times beyond the training range and
    every other channel's sit mid-range (one failing bearing among healthy ones). Columns are channel-major; a
    channel's score averages its features, so one feature alone (a crest factor) is no anomaly to require."""
    low, high = np.asarray(scaler.minimum), np.asarray(scaler.maximum)
    per_channel = low.size // channels
    scores = []
    for channel in range(channels):
        row = (low + high) / 2
        mine = slice(channel * per_channel, (channel + 1) * per_channel)
        row[mine] = low[mine] + SATURATION_FACTOR * extent[mine]
        scores.append(scorer.score(np.tile(row, (window, 1))).score)
    return np.array(scores)


def _tensor_quantization(scorer: Model) -> dict:
    scale, zero_point = scorer.input_quantization
    return {"scale": scale, "zero_point": zero_point}
