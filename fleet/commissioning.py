"""Commissioning: is a machine's baseline good enough to learn from, and the features table it is trained on.

A machine on a baseline card publishes telemetry with state `learning` and its features; the historian keeps it
(fleet/historian/commissioning.py keeps the phase). Before a model is trained from it, the baseline must be:
- long enough: `[commissioning] min_days` between its first and last snapshot and `min_snapshots` snapshots;
- free of sensor faults: one `sensor_fault` snapshot in it refuses it (the reason says when and which channel);
- one state of the machine: a feature whose level over the last third differs from the first third's by more
  than `max_shift` of its spread means the machine changed (a new load, a speed, a repair) mid-baseline; the
  reason names the column and the times.
A refused baseline leaves the machine in `learning`, with the reason; learning again starts a new one.

The table is the trainer's features table for the machine's card (`cm-train fit TABLE --feature-spec CARD`):
a timestamp column, then one column per channel (`features` of the telemetry) for a set with one feature per
channel, or `<channel>.<feature>` per channel and feature (`channel_features`) for a set with several: the
same numbers the agent computed, so what is trained is what the agent will score (no train/serve skew).
"""
from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge.ingest.clock import iso_time
from edge.model.bundle import CARD_FILE, BundleError, FeatureSpec, load_deployable
from edge.model.features import feature_columns
from fleet.config import CommissioningConfig
from fleet.historian import commissioning as book
from fleet.historian.store import Historian

DAY_US = 86400 * 1_000_000
TIME_COLUMN = "timestamp"
FAULT_STATE = "sensor_fault"


class CommissioningError(ValueError):
    """A machine that cannot be trained (no card for it, a trainer that fails); the message says why."""


def _values(payload: dict[str, Any], spec: FeatureSpec) -> list[float] | None:
    """One snapshot's features in the table's column order; None when the record lacks one."""
    try:
        if len(spec.features) == 1:
            return [float(payload["features"][c]) for c in spec.channels]
        per_channel = payload["channel_features"]
        return [float(per_channel[c][f]) for c in spec.channels for f in spec.features]
    except (KeyError, TypeError, ValueError):
        return None


@dataclass(frozen=True)
class Baseline:
    """A machine's baseline as the checks and the table read it."""

    device_id: str
    columns: list[str]
    times_us: list[int]  # the healthy snapshots' capture times, oldest first
    values: np.ndarray  # (snapshots, columns)
    faults: list[tuple[int, str]]  # (capture time, what) of every snapshot that is no healthy reading

    @classmethod
    def of(cls, device_id: str, records: Sequence[tuple[int, dict[str, Any]]], spec: FeatureSpec) -> Baseline:
        times, rows, faults = [], [], []
        for time_us, payload in records:
            values = None if payload.get("state") == FAULT_STATE else _values(payload, spec)
            if values is None:
                faults.append((time_us, str(payload.get("reason") or payload.get("state") or "no features")))
            else:
                times.append(time_us)
                rows.append(values)
        columns = list(feature_columns(spec.feature_set, spec.channels))  # the trainer's naming: one rule for both
        return cls(device_id, columns, times, np.array(rows, dtype=np.float64).reshape(-1, len(columns)), faults)


@dataclass(frozen=True)
class Verdict:
    passed: bool
    reason: str  # why it was refused, or what passed
    progress: dict[str, Any]
    final: bool = False  # refused for good: a fault or a change of state stays in this baseline, however long it gets


def progress(snapshots: int, first_us: int | None, last_us: int | None, config: CommissioningConfig) -> dict[str, Any]:
    days = 0.0 if first_us is None or last_us is None else (last_us - first_us) / DAY_US
    return {"snapshots": snapshots, "days": round(days, 3), "min_snapshots": config.min_snapshots,
            "min_days": config.min_days, "first": None if first_us is None else iso_time(first_us),
            "last": None if last_us is None else iso_time(last_us)}


def too_short(found: dict[str, Any]) -> str | None:
    """The reason a baseline is still too short, or None."""
    short = []
    if found["days"] < found["min_days"]:
        short.append(f"{found['days']:.2f} of {found['min_days']:g} days")
    if found["snapshots"] < found["min_snapshots"]:
        short.append(f"{found['snapshots']} of {found['min_snapshots']} snapshots")
    return f"baseline too short: {' and '.join(short)} so far" if short else None


def _fault(baseline: Baseline) -> str | None:
    if not baseline.faults:
        return None
    (first, what), (last, _) = baseline.faults[0], baseline.faults[-1]
    return (f"sensor fault in the baseline: {len(baseline.faults)} snapshots from {iso_time(first)} to "
            f"{iso_time(last)}, the first {what!r}; fix the sensor, then learn again")


def _spread(values: np.ndarray) -> np.ndarray:
    """Per column: the robust standard deviation (MAD), the plain one where the MAD is 0 (quantized values), and
    never below a millionth of the level (a constant feature does not refuse a baseline for a rounding step)."""
    median = np.median(values, axis=0)
    mad = 1.4826 * np.median(np.abs(values - median), axis=0)
    spread = np.where(mad > 0, mad, values.std(axis=0))
    return np.maximum(spread, 1e-6 * np.abs(median) + 1e-12)


def _shift(baseline: Baseline, max_shift: float) -> str | None:
    """The machine changed state: a column's level in the last third far from the first third's."""
    third = len(baseline.times_us) // 3
    if third < 2:
        return None
    first, last = baseline.values[:third], baseline.values[-third:]
    a, b = np.median(first, axis=0), np.median(last, axis=0)
    shifts = np.abs(b - a) / _spread(first)
    worst = int(np.argmax(shifts))
    if shifts[worst] <= max_shift:
        return None
    t = baseline.times_us
    return (f"the machine changed state mid-baseline: {baseline.columns[worst]} was {a[worst]:.6g} from {iso_time(t[0])} "
            f"to {iso_time(t[third - 1])} and {b[worst]:.6g} from {iso_time(t[-third])} to {iso_time(t[-1])}, "
            f"{shifts[worst]:.1f} times its spread (more than {max_shift:g}); learn again once it runs as it will")


def check(baseline: Baseline, config: CommissioningConfig) -> Verdict:
    """Long enough, no sensor fault, one state: passed, or refused with the reason."""
    t = baseline.times_us
    found = progress(len(t), t[0] if t else None, t[-1] if t else None, config)
    short = too_short(found)
    if short is not None:
        return Verdict(False, short, found)
    for reason in (_fault(baseline), _shift(baseline, config.max_shift)):
        if reason is not None:
            return Verdict(False, reason, found, final=True)
    return Verdict(True, f"baseline good: {found['snapshots']} snapshots over {found['days']:.2f} days", found)


def write_table(baseline: Baseline, path: Path) -> Path:
    """The trainer's features table of the baseline's healthy snapshots."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow([TIME_COLUMN, *baseline.columns])
        writer.writerows([iso_time(t), *map(repr, row.tolist())] for t, row in zip(baseline.times_us, baseline.values))
    return path


def find_card(directory: str | Path, card_id: str | None) -> Path:
    """The bundle directory in `directory` (or one level below) whose card has the id the machine reports."""
    root = Path(directory)
    if card_id is None:
        raise CommissioningError("the machine never reported which card it runs (its state's model.id)")
    for candidate in (root, *sorted(p for p in root.iterdir() if p.is_dir())) if root.is_dir() else ():
        try:
            found = json.loads((candidate / CARD_FILE).read_text(encoding="utf-8")).get("id")
        except (OSError, ValueError, AttributeError):
            continue
        if found == card_id:
            return candidate
    raise CommissioningError(f"commissioning.baseline_cards: no card {card_id!r} in {root} (copy the directory "
                             f"cm-train baseline wrote for this machine there)")


def card_spec(directory: Path) -> FeatureSpec:
    try:
        return load_deployable(directory).card.feature_spec
    except BundleError as error:
        raise CommissioningError(str(error)) from None


def baseline_of(historian: Historian, record: book.Record, config: CommissioningConfig) -> tuple[Path, Baseline]:
    """The machine's card and its baseline read from the historian."""
    card = find_card(config.baseline_cards, record.baseline_card)
    records = book.baseline_telemetry(historian, record.device_id, record.baseline_start_us)
    return card, Baseline.of(record.device_id, records, card_spec(card))


def assess(historian: Historian, record: book.Record, config: CommissioningConfig) -> Verdict:
    """The checks on the machine's baseline as the historian holds it now."""
    try:
        _, baseline = baseline_of(historian, record, config)
    except CommissioningError as error:
        extent = book.baseline_extent(historian, record.device_id).get(record.device_id, (0, None, None))
        return Verdict(False, str(error), progress(*extent, config))
    return check(baseline, config)


def describe(record: book.Record) -> str:
    """`cm-fleet commission status`: one line per machine."""
    line = f"{record.device_id}: {record.phase} since {iso_time(record.phase_us)}"
    if record.phase == "learning":
        line += f"; baseline from {iso_time(record.baseline_start_us)} ({record.started_by})"
        if record.progress:
            p = record.progress
            line += f"; {p['snapshots']}/{p['min_snapshots']} snapshots, {p['days']:.2f}/{p['min_days']:g} days"
        if record.requested_us is not None:
            line += f"; requested by {record.requested_by}"
    if record.rollout_id:
        line += f"; rollout {record.rollout_id} of {str(record.bundle_sha256)[:12]}"
    return line + (f": {record.reason}" if record.reason else "")
