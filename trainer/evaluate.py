"""`cm-train evaluate`: score every snapshot with the int8 model through the edge runtime, run the detector,
and write report.json and score.png.

The rows go through edge.scoring in order, exactly as the agent's snapshots do: sensor checks (raw counts
for IMS directories, a feature far below the healthy range for every input) are faults, neither an alarm
nor a healthy reading, and a window that contains a faulty snapshot is not scored.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from edge import diagnosis  # noqa: E402
from edge.bundle import Bundle, ModelCard, check_channels, load_bundle  # noqa: E402
from edge.detector import State  # noqa: E402
from edge.scoring import StreamScorer, score_stream  # noqa: E402
from trainer.dataset import Dataset, load_dataset, parse_time  # noqa: E402


@dataclass(frozen=True)
class Trace:
    """Per snapshot: score (NaN where not scored), per-channel errors, fault reason and detector state."""

    scores: np.ndarray
    errors: np.ndarray
    faults: list[str | None]
    states: list[State]
    top_channels: list[int | None]  # the channel that explains each snapshot's state (edge.scoring)


def run_detector(dataset: Dataset, bundle: Bundle) -> Trace:
    """Every snapshot through edge.scoring, the agent's own streaming core, in order."""
    count = len(dataset)
    steps = score_stream(StreamScorer(bundle), dataset.features, dataset.faults or None)
    channels = len(bundle.card.feature_spec.channels)
    scores = np.full(count, np.nan)
    errors = np.full((count, channels), np.nan)
    for row, step in enumerate(steps):
        if step.score is not None:
            scores[row] = step.score.score
            errors[row] = step.score.channel_errors if step.score.channel_scores is None else step.score.channel_scores
    return Trace(scores=scores, errors=errors, faults=[step.fault for step in steps],
                 states=[step.state for step in steps], top_channels=[step.top_channel for step in steps])


def alarm_episodes(states: list[State]) -> list[tuple[int, int]]:
    """(first, last) rows of each alarm episode; a sensor fault inside an alarm does not end it."""
    episodes: list[tuple[int, int]] = []
    start: int | None = None
    last = -1
    for row, state in enumerate(states):
        if state == State.ALARM:
            start = row if start is None else start
            last = row
        elif state != State.SENSOR_FAULT and start is not None:
            episodes.append((start, last))
            start = None
    if start is not None:
        episodes.append((start, len(states) - 1))
    return episodes


def classification_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict:
    """Precision, recall, F1 at the alarm threshold and ROC AUC of the scores (rank statistic)."""
    predicted = scores > threshold
    true_positive = int((predicted & labels).sum())
    precision = true_positive / max(int(predicted.sum()), 1)
    recall = true_positive / max(int(labels.sum()), 1)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "roc_auc": roc_auc(labels, scores),
            "labelled_snapshots": int(labels.size), "anomalies": int(labels.sum())}


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Mann-Whitney U / (positives x negatives), ties counted half; None without both classes."""
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if not positives or not negatives:
        return None
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(scores.size)
    ranks[order] = np.arange(1, scores.size + 1)
    # Average the ranks of tied scores.
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    ranks = (sums / counts)[inverse]
    u = ranks[labels].sum() - positives * (positives + 1) / 2
    return float(u / (positives * negatives))


def evaluate(
    bundle_path: str | Path,
    input_path: str | Path,
    out: str | Path,
    failure_at: np.datetime64 | None = None,
    train_until: np.datetime64 | None = None,
    channels: tuple[str | int, ...] | None = None,
    format: str | None = None,
    sample_rate_hz: int | None = None,
    snapshot_samples: int | None = None,
    iso_group: str = "2-rigid",
) -> dict:
    """Score, detect, and write report.json and score.png into `out`; returns the report.

    A recording is read as the card says the training data was (format, channels, sample rate, snapshot
    length) unless the arguments say otherwise.
    """
    bundle = load_bundle(bundle_path)
    provenance = bundle.card.provenance
    spec = bundle.card.feature_spec
    if provenance.get("kind", "table") != "table":
        if channels is None and provenance.get("columns"):
            channels = tuple(provenance["columns"])
        if format is None and provenance.get("format") and not _is_table_file(input_path, provenance):
            format = provenance["format"]
        sample_rate_hz = sample_rate_hz or spec.sample_rate_hz or None
        snapshot_samples = snapshot_samples or spec.snapshot_samples or None
    label_column = provenance.get("label_column") if provenance.get("kind") == "table" else None
    dataset = load_dataset(input_path, channels, label_column, format=format, sample_rate_hz=sample_rate_hz,
                           snapshot_samples=snapshot_samples, feature_set=spec.feature_set, bearing=spec.bearing,
                           shaft_rpm=spec.shaft_rpm)
    check_channels(bundle.card, dataset.channels, str(input_path))
    if train_until is None and provenance.get("train_end"):
        train_until = parse_time(provenance["train_end"])
    trace = run_detector(dataset, bundle)
    report = build_report(dataset, bundle, trace, failure_at, train_until, iso_group)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    plot(dataset, bundle, trace, train_until, out / "score.png")
    return report


def _is_table_file(path: str | Path, provenance: dict) -> bool:
    return Path(path).is_file() and Path(path).suffix.lower() == ".csv" and provenance.get("format") != "csv"


def build_report(dataset: Dataset, bundle: Bundle, trace: Trace, failure_at: np.datetime64 | None,
                 train_until: np.datetime64 | None, iso_group: str = "2-rigid") -> dict:
    stamps = dataset.timestamps
    card = bundle.card
    over = np.flatnonzero(np.nan_to_num(trace.scores, nan=-np.inf) > card.alarm_threshold)
    episodes = alarm_episodes(trace.states)
    persistent = episodes[-1] if episodes and _ends_in_alarm(trace.states) else None
    first_alarm = episodes[0][0] if episodes else None
    end = failure_at if failure_at is not None else stamps[-1]
    in_training = stamps <= train_until if train_until is not None else np.zeros(len(stamps), dtype=bool)
    report = {
        "bundle": str(bundle.path),
        "bundle_id": card.id,
        "input": dataset.source,
        "snapshots": len(dataset),
        "scored_snapshots": int(np.isfinite(trace.scores).sum()),
        "excluded_rows": len(dataset.excluded),
        "warning_threshold": card.warning_threshold,
        "alarm_threshold": card.alarm_threshold,
        "first_pointwise_alarm": _time(stamps, over[0]) if over.size else None,
        "first_alarm": _time(stamps, first_alarm),
        "lead_time_hours": _hours(end - stamps[first_alarm]) if first_alarm is not None else None,
        "lead_time_reference": "failure_at" if failure_at is not None else "last_snapshot",
        "train_until": str(train_until) if train_until is not None else None,
        "alarms_in_training_span": sum(1 for start, _ in episodes if in_training[start]),
        "alarm_episodes": [{"start": _time(stamps, a), "end": _time(stamps, b),
                            **_episode_diagnosis(dataset, card, a, b, iso_group)} for a, b in episodes],
        "false_alarm_episodes": len(episodes) - (1 if persistent else 0),
        "persistent_alarm_start": _time(stamps, persistent[0]) if persistent else None,
        "top_channel_at_first_alarm": _top_channel(card.feature_spec.channels, trace, first_alarm),
        "sensor_fault_snapshots": sum(1 for f in trace.faults if f is not None),
        "sensor_faults": sorted({f for f in trace.faults if f is not None}),
        "final_state": str(trace.states[-1]),
    }
    report |= _zones_report(dataset, card, first_alarm, iso_group)
    if dataset.labels is not None:
        scored = np.isfinite(trace.scores) & ~in_training
        span = "after_training_span"
        if not scored.any():
            scored, span = np.isfinite(trace.scores), "all_snapshots"
        report |= classification_metrics(dataset.labels[scored], trace.scores[scored], card.alarm_threshold)
        report["metrics_span"] = span
    return report


def _episode_diagnosis(dataset: Dataset, card: ModelCard, first: int, last: int, iso_group: str) -> dict:
    """Vibration set: the defect the episode's envelope lines point to (their median over the episode, so one
    noisy snapshot does not decide) and the ISO zones at its start."""
    if dataset.line_hz is None or dataset.prominence is None:
        return {}
    lines = np.median(dataset.line_hz[first:last + 1], axis=0)
    prominence = np.median(dataset.prominence[first:last + 1], axis=0)
    zones = diagnosis.zones(dataset.features[first], card.feature_spec.features, card.feature_spec.channels, iso_group)
    return {"defect": diagnosis.diagnose(lines, prominence, card.feature_spec.channels).payload(), "iso_zones": zones}


def _zones_report(dataset: Dataset, card: ModelCard, first_alarm: int | None, iso_group: str) -> dict:
    """Vibration set: each channel's ISO 20816 zone at the first alarm, at the end and at its worst."""
    spec = card.feature_spec
    if diagnosis.zones(dataset.features[0], spec.features, spec.channels, iso_group) is None:
        return {}
    every = [diagnosis.zones(row, spec.features, spec.channels, iso_group) or {} for row in dataset.features]
    worst = {name: max((z[name] for z in every), key=diagnosis.ZONES.index) for name in spec.channels}
    return {"iso_zones": {"group": iso_group, "at_first_alarm": every[first_alarm] if first_alarm is not None else None,
                          "at_end": every[-1], "worst": worst}}


def _ends_in_alarm(states: list[State]) -> bool:
    for state in reversed(states):
        if state != State.SENSOR_FAULT:
            return state == State.ALARM
    return False


def _time(stamps: np.ndarray, row: int | None) -> str | None:
    return None if row is None else str(stamps[row].astype("datetime64[s]")).replace("T", " ")


def _hours(delta: np.timedelta64) -> float:
    return round(float(delta / np.timedelta64(1, "s")) / 3600.0, 3)


def _top_channel(names: tuple[str, ...], trace: Trace, row: int | None) -> str | None:
    if row is None or trace.top_channels[row] is None:
        return None
    return names[trace.top_channels[row]]


def plot(dataset: Dataset, bundle: Bundle, trace: Trace, train_until: np.datetime64 | None, path: Path) -> None:
    """Score with warning/alarm lines and shaded alarm periods; per-channel errors below."""
    card = bundle.card
    stamps = dataset.timestamps.astype("datetime64[s]").astype(object)
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(11, 7), sharex=True, constrained_layout=True)
    top.plot(stamps, trace.scores, lw=0.9, color="black", label="score (int8)")
    top.axhline(card.warning_threshold, color="orange", ls="--", label="warning")
    top.axhline(card.alarm_threshold, color="red", ls="--", label="alarm")
    for a, b in alarm_episodes(trace.states):
        top.axvspan(stamps[a], stamps[b], color="red", alpha=0.15, lw=0)
        bottom.axvspan(stamps[a], stamps[b], color="red", alpha=0.15, lw=0)
    faults = [i for i, f in enumerate(trace.faults) if f is not None]
    if faults:
        top.scatter([stamps[i] for i in faults], [card.alarm_threshold] * len(faults), marker="x", color="purple", label="sensor fault")
    if train_until is not None:
        top.axvline(train_until.astype("datetime64[s]").astype(object), color="grey", ls=":", label="end of training span")
    top.set_yscale("log")
    top.set_ylabel("reconstruction error (scaled units)")
    top.set_title(f"{Path(dataset.source).name}: bundle {card.id}, window {card.feature_spec.window}")
    top.legend(loc="upper left", fontsize=8)
    for channel, name in enumerate(card.feature_spec.channels[:12]):
        bottom.plot(stamps, trace.errors[:, channel], lw=0.8, label=name)
    bottom.set_yscale("log")
    bottom.set_ylabel("per-channel error")
    bottom.legend(loc="upper left", fontsize=8, ncol=4)
    figure.savefig(path, dpi=110)
    plt.close(figure)
