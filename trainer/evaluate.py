"""`cm-train evaluate`: score every snapshot with the int8 model through the edge runtime, run the detector,
and write report.json and score.png.

The rows go through edge.scoring.stream in order, exactly as the agent's snapshots do: sensor checks (raw counts
for IMS directories, a feature far below the healthy range for every input) are faults, neither an alarm
nor a healthy reading, and a window that contains a faulty snapshot is not scored.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from edge.ingest.cadence import training_interval_s
from edge.ingest.clock import iso_time
from edge.model.bundle import CARD_FILE, Bundle, ModelCard, check_channels, load_bundle
from edge.scoring import diagnosis
from edge.scoring.detector import State
from edge.scoring.stream import Stream, score_stream
from firmware_bridge.recording import RecordingSpec
from trainer.dataset import SPEC_TABLE, Dataset, load_dataset, parse_time
from trainer.options import DatasetSpec, EvaluateOptions
from trainer.spec_card import SpecCard


@dataclass(frozen=True)
class Trace:
    """Per snapshot: score (NaN where not scored), per-channel errors, fault reason and detector state."""

    scores: np.ndarray
    errors: np.ndarray
    faults: list[str | None]
    states: list[State]
    top_channels: list[int | None]  # the channel that explains each snapshot's state (edge.scoring.stream)


def run_detector(dataset: Dataset, bundle: Bundle) -> Trace:
    """Every snapshot through edge.scoring.stream, the agent's own streaming core, in order, with the debounce
    at the recording's own cadence (its median spacing), as an agent scoring it would have it."""
    count = len(dataset)
    cadence = training_interval_s(dataset.timestamps.astype("datetime64[us]").astype(np.int64))
    steps = score_stream(Stream(bundle, interval_s=cadence), dataset.features, dataset.faults or None)
    channels = len(bundle.card.feature_spec.channels)
    scores = np.full(count, np.nan)
    errors = np.full((count, channels), np.nan)
    for row, step in enumerate(steps):
        if step.score is not None:
            scores[row] = step.score.score
            errors[row] = step.score.channel_errors
    return Trace(scores=scores, errors=errors, faults=[step.fault for step in steps],
                 states=[step.state for step in steps], top_channels=[step.top_channel for step in steps])


def alarm_episodes(states: list[State], raised: frozenset[State] = frozenset({State.ALARM})) -> list[tuple[int, int]]:
    """(first, last) rows of each episode in one of the `raised` states; a sensor fault inside one does not end it."""
    episodes: list[tuple[int, int]] = []
    start: int | None = None
    last = -1
    for row, state in enumerate(states):
        if state in raised:
            start = row if start is None else start
            last = row
        elif state != State.SENSOR_FAULT and start is not None:
            episodes.append((start, last))
            start = None
    if start is not None:
        episodes.append((start, len(states) - 1))
    return episodes


def warning_episodes(states: list[State]) -> list[tuple[int, int]]:
    """Episodes of warning or alarm: everything a user was told to look at."""
    return alarm_episodes(states, frozenset({State.WARNING, State.ALARM}))


def labelled_metrics(dataset: Dataset, bundle: Bundle, trace: Trace, in_training: np.ndarray) -> dict:
    """P/R/F1 at the alarm threshold and ROC AUC, on the held-out test split the threshold never saw (the
    card's provenance.test_start); without one, on every scored snapshot after the training span."""
    assert dataset.labels is not None
    scored = np.isfinite(trace.scores)
    test_start = bundle.card.provenance.get("test_start")
    if test_start:
        rows, span = scored & (dataset.timestamps >= parse_time(test_start)), "test_split"
    else:
        rows, span = scored & ~in_training, "after_training_span"
    if not rows.any():
        rows, span = scored, "all_snapshots"
    metrics = classification_metrics(dataset.labels[rows], trace.scores[rows], bundle.card.alarm_threshold)
    return metrics | {"metrics_span": span}


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


def evaluate(bundle_path: str | Path, input_path: str | Path, out: str | Path,
             options: EvaluateOptions = EvaluateOptions()) -> dict:
    """Score, detect, and write report.json and score.png into `out`; returns the report."""
    bundle = load_bundle(bundle_path)
    spec = dataset_spec(bundle.card, input_path, options, str(bundle.path / CARD_FILE))
    if options.label_column is not None:  # labels made after training (cm-fleet's labels.csv), not the card's
        spec = replace(spec, label_column=options.label_column)
    dataset = load_dataset(input_path, spec)
    check_channels(bundle.card, dataset.channels, str(input_path))
    train_until = options.train_until
    if train_until is None and bundle.card.provenance.get("train_end"):
        train_until = parse_time(bundle.card.provenance["train_end"])
    trace = run_detector(dataset, bundle)
    report = build_report(dataset, bundle, trace, options.failure_at, train_until, options.iso_group)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    plot(dataset, bundle, trace, train_until, options.failure_at, out / "score.png")
    return report


def dataset_spec(card: ModelCard, input_path: str | Path, given: RecordingSpec, source: str = CARD_FILE) -> DatasetSpec:
    """The input read as the card says the training data was (format, channels, sample rate, snapshot length,
    features) unless `given` says otherwise; a features table given to a bundle that reads sensor frames, by the
    card's feature spec (its columns named by edge.model.features.feature_columns). `source`: the card's file."""
    provenance, spec = card.provenance, card.feature_spec
    label_column = provenance.get("label_column") if provenance.get("kind") == "table" else None
    if spec.sample_rate_hz and _is_table_file(input_path, provenance) and not given.names_samples():
        # A features table for a bundle that reads sensor frames: its columns are named by the bundle's own spec.
        card_spec = SpecCard(spec=spec, source=source, card_id=card.id, card_kind="model")
        return DatasetSpec(feature_set=spec.feature_set, bearing=spec.bearing, shaft_rpm=spec.shaft_rpm,
                           label_column=provenance.get("label_column"), feature_spec=card_spec)
    from_card = DatasetSpec(feature_set=spec.feature_set, bearing=spec.bearing, shaft_rpm=spec.shaft_rpm,
                            label_column=label_column)
    if provenance.get("kind", "table") != "table":
        from_card = replace(
            from_card,
            channels=tuple(provenance["columns"]) if provenance.get("columns") else None,
            # A bundle trained on a table by a card's spec knows its sensor, not the recording's format: detected.
            format=None if _is_table_file(input_path, provenance) or provenance.get("kind") == SPEC_TABLE
            else provenance.get("format") or None,
            sample_rate_hz=spec.sample_rate_hz or None,
            snapshot_samples=spec.snapshot_samples or None,
        )
    return from_card.overridden_by(given)


def _is_table_file(path: str | Path, provenance: dict) -> bool:
    return Path(path).is_file() and Path(path).suffix.lower() == ".csv" and provenance.get("format") != "csv"


@dataclass(frozen=True)
class Episodes:
    """The run's alarm and warning episodes, (first, last) rows each, and the ones that matter for the report."""

    alarms: list[tuple[int, int]]
    warnings: list[tuple[int, int]]  # warning or alarm: everything a user was told to look at
    persistent: tuple[int, int] | None  # the alarm that lasts to the end of the run
    persistent_raise: tuple[int, int] | None  # the warning-or-alarm episode that lasts to the end

    @classmethod
    def of(cls, states: list[State]) -> Episodes:
        alarms, warnings = alarm_episodes(states), warning_episodes(states)
        # The alarm that persists to the end of the run is the real one; every other episode was a false alarm,
        # and the lead time is measured from the real one, never from a false alarm before it.
        return cls(alarms, warnings, alarms[-1] if alarms and _ends_in(states, State.ALARM) else None,
                   warnings[-1] if warnings and _ends_in(states, State.WARNING, State.ALARM) else None)

    @property
    def first_alarm(self) -> int | None:
        return self.alarms[0][0] if self.alarms else None

    @property
    def first_warning(self) -> int | None:
        return self.warnings[0][0] if self.warnings else None


def build_report(dataset: Dataset, bundle: Bundle, trace: Trace, failure_at: np.datetime64 | None,
                 train_until: np.datetime64 | None, iso_group: str = EvaluateOptions.iso_group) -> dict:
    """report.json: what was scored, when the detector raised what (and the lead time), its episodes, the
    margins, the sensor faults, the doubted time stamps; the vibration set adds ISO zones and labelled data its metrics."""
    episodes = Episodes.of(trace.states)
    stamps = dataset.timestamps
    in_training = stamps <= train_until if train_until is not None else np.zeros(len(stamps), dtype=bool)
    report = (_scored(dataset, bundle, trace) | _timing(stamps, episodes, failure_at, train_until)
              | _episodes_report(dataset, bundle.card, trace, episodes, in_training, iso_group)
              | _margins(bundle.card, trace, in_training, episodes.first_warning) | _faults(trace))
    report |= _zones_report(dataset, bundle.card, episodes.first_alarm, iso_group)
    report["doubted_time_stamps"] = list(dataset.doubted)  # files dated from their neighbours (the recording's clock)
    if dataset.labels is not None:
        report |= labelled_metrics(dataset, bundle, trace, in_training)
    return report


def _scored(dataset: Dataset, bundle: Bundle, trace: Trace) -> dict:
    card = bundle.card
    over = np.flatnonzero(np.nan_to_num(trace.scores, nan=-np.inf) > card.alarm_threshold)
    return {
        "bundle": str(bundle.path),
        "bundle_id": card.id,
        "input": dataset.source,
        "snapshots": len(dataset),
        "scored_snapshots": int(np.isfinite(trace.scores).sum()),
        "excluded_rows": len(dataset.excluded),
        "warning_threshold": card.warning_threshold,
        "alarm_threshold": card.alarm_threshold,
        "score": "max over channels of error / the channel's healthy reference" if card.channel_error_reference
                 else "mean reconstruction error (card without per-channel references)",
        "first_pointwise_alarm": _time(dataset.timestamps, over[0]) if over.size else None,
    }


def _timing(stamps: np.ndarray, episodes: Episodes, failure_at: np.datetime64 | None,
            train_until: np.datetime64 | None) -> dict:
    end = failure_at if failure_at is not None else stamps[-1]
    persistent, persistent_raise = episodes.persistent, episodes.persistent_raise
    return {
        "first_warning": _time(stamps, episodes.first_warning),
        "first_alarm": _time(stamps, episodes.first_alarm),
        "persistent_alarm_start": _time(stamps, persistent[0]) if persistent else None,
        "lead_time_hours": _hours(end - stamps[persistent[0]]) if persistent else None,
        "warning_lead_time_hours": _hours(end - stamps[persistent_raise[0]]) if persistent_raise else None,
        "lead_time_from": "persistent_alarm_start",
        "lead_time_reference": "failure_at" if failure_at is not None else "last_snapshot",
        "failure_at": _time(np.array([failure_at]), 0) if failure_at is not None else None,
        "train_until": _time(np.array([train_until]), 0) if train_until is not None else None,
    }
def _episodes_report(dataset: Dataset, card: ModelCard, trace: Trace, episodes: Episodes, in_training: np.ndarray,
                     iso_group: str) -> dict:
    stamps, names = dataset.timestamps, card.feature_spec.channels
    return {
        "alarms_in_training_span": sum(1 for start, _ in episodes.alarms if in_training[start]),
        "warnings_in_training_span": sum(1 for start, _ in episodes.warnings if in_training[start]),
        "alarm_episodes": [{"start": _time(stamps, a), "end": _time(stamps, b),
                            **_episode_diagnosis(dataset, card, a, b, iso_group)} for a, b in episodes.alarms],
        "warning_episodes": [{"start": _time(stamps, a), "end": _time(stamps, b), "top_channel": _top_channel(names, trace, a)}
                             for a, b in episodes.warnings],
        "false_alarm_episodes": len(episodes.alarms) - (1 if episodes.persistent else 0),
        "false_warning_episodes": len(episodes.warnings) - (1 if episodes.persistent_raise else 0),
        "top_channel_at_first_warning": _top_channel(names, trace, episodes.first_warning),
        "top_channel_at_first_alarm": _top_channel(names, trace, episodes.first_alarm),
        "top_channel_at_persistent_alarm": _top_channel(names, trace, episodes.persistent[0] if episodes.persistent else None),
    }


def _margins(card: ModelCard, trace: Trace, in_training: np.ndarray, first_warning: int | None) -> dict:
    """How far below the alarm threshold the scores stayed on data the model never fitted, before any warning."""
    healthy_part = np.isfinite(trace.scores) & ~in_training
    if first_warning is not None:
        healthy_part[first_warning:] = False
    unseen_max = float(np.max(trace.scores[healthy_part])) if healthy_part.any() else None
    return {
        "calibration_margin": card.provenance.get("threshold_basis", {}).get("margin"),
        "highest_score_before_first_warning": unseen_max,
        "margin_before_first_warning": (card.alarm_threshold / unseen_max) if unseen_max else None,
        "training_warnings": card.provenance.get("training_warnings", []),
    }


def _faults(trace: Trace) -> dict:
    return {
        "sensor_fault_snapshots": sum(1 for f in trace.faults if f is not None),
        "sensor_faults": sorted({f for f in trace.faults if f is not None}),
        "final_state": str(trace.states[-1]),
    }


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


def _ends_in(states: list[State], *wanted: State) -> bool:
    for state in reversed(states):
        if state != State.SENSOR_FAULT:
            return state in wanted
    return False


def _time(stamps: np.ndarray, row: int | None) -> str | None:
    """The report's one time format: ISO 8601 UTC with milliseconds, as in the agent's MQTT payloads."""
    if row is None:
        return None
    return iso_time(int(stamps[row].astype("datetime64[us]").astype(np.int64)))


def _hours(delta: np.timedelta64) -> float:
    return round(float(delta / np.timedelta64(1, "s")) / 3600.0, 3)


def _top_channel(names: tuple[str, ...], trace: Trace, row: int | None) -> str | None:
    top = None if row is None else trace.top_channels[row]
    return None if top is None else names[top]


def plot(dataset: Dataset, bundle: Bundle, trace: Trace, train_until: np.datetime64 | None,
         failure_at: np.datetime64 | None, path: Path) -> None:
    """Score with warning/alarm lines, warnings and alarms shaded, the first alarm and --failure-at marked;
    sensor faults in a strip of their own (they are not scores); per-channel scores below."""
    card = bundle.card
    when = _axis(dataset.timestamps)
    figure, (top, faults, bottom) = plt.subplots(3, 1, figsize=(11, 8), sharex=True, constrained_layout=True,
                                                 gridspec_kw={"height_ratios": [4, 0.6, 3]})
    top.plot(when.x, trace.scores, lw=0.9, color="black", label="score (int8)")
    top.axhline(card.warning_threshold, color="orange", ls="--", label="warning threshold")
    top.axhline(card.alarm_threshold, color="red", ls="--", label="alarm threshold")
    for axis in (top, bottom):
        for a, b in warning_episodes(trace.states):
            axis.axvspan(when.x[a], when.x[b], color="orange", alpha=0.15, lw=0)
        for a, b in alarm_episodes(trace.states):
            axis.axvspan(when.x[a], when.x[b], color="red", alpha=0.18, lw=0)
    episodes = alarm_episodes(trace.states)
    if episodes:
        top.axvline(when.x[episodes[0][0]], color="red", lw=1.2, label="first alarm")
    if failure_at is not None:
        top.axvline(when.at(failure_at), color="black", lw=1.2, ls="-.", label="failure (--failure-at)")
    if train_until is not None:
        top.axvline(when.at(train_until), color="grey", ls=":", label="end of training span")
    top.set_yscale("log")
    top.set_ylabel(f"score ({'x healthy error per channel' if card.channel_error_reference else 'scaled error'})")
    top.set_title(f"{Path(dataset.source).name}: bundle {card.id}, window {card.feature_spec.window}")
    top.legend(loc="upper left", fontsize=8)
    reasons = sorted({f for f in trace.faults if f is not None})
    for level, reason in enumerate(reasons):
        rows = [i for i, f in enumerate(trace.faults) if f == reason]
        faults.scatter([when.x[i] for i in rows], [level] * len(rows), marker="|", s=80, color="purple")
    faults.set_yticks(range(len(reasons)), reasons, fontsize=7)
    faults.set_ylim(-0.8, max(len(reasons), 1) - 0.2)
    faults.set_ylabel("sensor\nfaults", fontsize=8)
    for channel, name in enumerate(card.feature_spec.channels[:12]):
        bottom.plot(when.x, trace.errors[:, channel], lw=0.8, label=name)
    bottom.axhline(card.alarm_threshold, color="red", ls="--", lw=0.8)
    bottom.set_yscale("log")
    bottom.set_ylabel("per-channel score")
    bottom.set_xlabel(when.label)
    bottom.legend(loc="upper left", fontsize=8, ncol=4)
    figure.savefig(path, dpi=110)
    plt.close(figure)


@dataclass(frozen=True)
class _Axis:
    """The plot's time axis: real dates, or hours since the first row when the table's time is seconds
    from the start of a recording (which would otherwise be drawn as January 1970)."""

    x: list
    label: str
    origin: np.datetime64 | None

    def at(self, moment: np.datetime64) -> object:
        if self.origin is None:
            return moment.astype("datetime64[ms]").astype(object)
        return float((moment - self.origin) / np.timedelta64(1, "s")) / 3600.0


def _axis(stamps: np.ndarray) -> _Axis:
    if stamps[0] < np.datetime64("1990-01-01"):
        origin = stamps[0]
        hours = ((stamps - origin) / np.timedelta64(1, "s")) / 3600.0
        return _Axis(x=list(hours), label="hours since the first row", origin=origin)
    return _Axis(x=list(stamps.astype("datetime64[ms]").astype(object)), label="time (UTC)", origin=None)
