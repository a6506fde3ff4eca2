"""Commissioning as the historian keeps it: per machine one record of its baseline and its phase.

The one home of that state: the worker inside `cm-fleet serve` (fleet/commissioning_worker.py) moves the phases,
`cm-fleet commission` and the dashboard write requests ("commission now", "learn again"), closing an alert with a
repair starts a new baseline (fleet/historian/alert_book.py). Phases, in order:

    learning    the baseline is being gathered (since `baseline_start_us`); `reason` says why a check refused it
    training    a bundle is being trained, evaluated, signed and rolled out (`reason`: the step)
    probation   the one-device rollout `rollout_id` of `bundle_sha256` is on the agent, scored in shadow
    monitoring  the agent reported the bundle active

Refused is not a phase: the machine stays in `learning` with the reason, as the issue asks.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from fleet.historian.store import Historian, now_us

PHASES = ("learning", "training", "probation", "monitoring")
LEARNING_STATE = "learning"  # the agent's state on a baseline card (edge.scoring.detector.State.LEARNING)
COLUMNS = ("device_id, phase, phase_us, baseline_start_us, baseline_card, started_by, reason, progress, requested_by, "
           "requested_us, held, bundle_sha256, rollout_id, updated_us")


@dataclass(frozen=True)
class Record:
    device_id: str
    phase: str
    phase_us: int
    baseline_start_us: int
    baseline_card: str | None
    started_by: str
    reason: str | None
    progress: dict[str, Any] | None
    requested_by: str | None
    requested_us: int | None
    held: bool
    bundle_sha256: str | None
    rollout_id: str | None
    updated_us: int


class CommissioningError(ValueError):
    """A request that cannot be done (a machine the historian does not know); the message says why."""


def _record(row: tuple) -> Record:
    (device, phase, phase_us, start, card, by, reason, progress, requested_by, requested_us, held, sha, rollout,
     updated) = row
    return Record(device, phase, int(phase_us), int(start), card, by, reason,
                  None if progress is None else json.loads(progress), requested_by,
                  None if requested_us is None else int(requested_us), bool(held), sha, rollout, int(updated))


def records(historian: Historian, phases: tuple[str, ...] = PHASES) -> list[Record]:
    marks = ", ".join("?" * len(phases))
    rows = historian.read(f"SELECT {COLUMNS} FROM commissioning WHERE phase IN ({marks}) ORDER BY device_id", phases)
    return [_record(row) for row in rows]


def record(historian: Historian, device_id: str) -> Record | None:
    rows = historian.read(f"SELECT {COLUMNS} FROM commissioning WHERE device_id = ?", (device_id,))
    return _record(rows[0]) if rows else None


def discover(historian: Historian) -> list[str]:
    """Machines that report `learning` and have no record yet get one: their baseline starts at their first
    `learning` telemetry, for the baseline card they report running. Returns the devices added."""
    rows = historian.read(
        "SELECT m.device_id, m.model_id, (SELECT MIN(t.time_us) FROM telemetry t WHERE t.device_id = m.device_id "
        "AND t.state = ?) FROM machines m LEFT JOIN commissioning c ON c.device_id = m.device_id "
        "WHERE c.device_id IS NULL AND m.state = ? ORDER BY m.device_id", (LEARNING_STATE, LEARNING_STATE))
    now = now_us()
    added = [(device, card, int(first)) for device, card, first in rows if first is not None]
    historian.write([(
        "INSERT INTO commissioning (device_id, phase, phase_us, baseline_start_us, baseline_card, started_by, updated_us) "
        "VALUES (?, 'learning', ?, ?, ?, 'its agent reported learning', ?) ON CONFLICT (device_id) DO NOTHING",
        (device, now, first, card, now)) for device, card, first in added])
    return [device for device, _, _ in added]


def learn_again(historian: Historian, device_id: str, started_by: str) -> Record:
    """A new baseline from now on (after the newest telemetry stored: the agent's capture clock, whatever it is).
    The phase is `learning` again; the agent keeps its model until a new one passes probation."""
    machine = historian.read("SELECT model_id, (SELECT MAX(time_us) FROM telemetry WHERE device_id = ?) FROM machines "
                             "WHERE device_id = ?", (device_id, device_id))
    if not machine:
        raise CommissioningError(f"machine {device_id!r}: not in the historian (it appears with its first message)")
    model_id, newest = machine[0]
    start = now_us() if newest is None else int(newest) + 1
    now = now_us()
    # The card to train for stays the one the machine was commissioned with; a machine never commissioned here
    # is trained for the card it runs (a baseline card or a model card in [commissioning] baseline_cards).
    historian.write([(
        "INSERT INTO commissioning (device_id, phase, phase_us, baseline_start_us, baseline_card, started_by, updated_us) "
        "VALUES (?, 'learning', ?, ?, ?, ?, ?) ON CONFLICT (device_id) DO UPDATE SET phase = 'learning', "
        "phase_us = excluded.phase_us, baseline_start_us = excluded.baseline_start_us, started_by = excluded.started_by, "
        "reason = NULL, progress = NULL, requested_by = NULL, requested_us = NULL, held = FALSE, "
        "updated_us = excluded.updated_us", (device_id, now, start, model_id, started_by, now))])
    found = record(historian, device_id)
    assert found is not None
    return found


def request(historian: Historian, device_id: str, by: str) -> Record:
    """"Commission now": the worker checks the baseline at its next tick and, if it passes, trains. A machine
    without a record (it never reported `learning`) starts one over all its telemetry."""
    found = record(historian, device_id)
    if found is None:
        known = historian.read("SELECT model_id, (SELECT MIN(time_us) FROM telemetry WHERE device_id = ?) FROM machines "
                               "WHERE device_id = ?", (device_id, device_id))
        if not known:
            raise CommissioningError(f"machine {device_id!r}: not in the historian (it appears with its first message)")
        now = now_us()
        model_id, first = known[0]
        historian.write([(
            "INSERT INTO commissioning (device_id, phase, phase_us, baseline_start_us, baseline_card, started_by, "
            "updated_us) VALUES (?, 'learning', ?, ?, ?, ?, ?) ON CONFLICT (device_id) DO NOTHING",
            (device_id, now, now if first is None else int(first), model_id, f"commission request by {by}", now))])
    elif found.phase != "learning":
        raise CommissioningError(f"machine {device_id}: {found.phase}, not learning: nothing to commission "
                                 "(learn again starts a new baseline)")
    historian.write([("UPDATE commissioning SET requested_by = ?, requested_us = ?, updated_us = ? WHERE device_id = ?",
                      (by, now_us(), now_us(), device_id))])
    result = record(historian, device_id)
    assert result is not None
    return result


def summary(record: Record) -> str:
    """The phase in a few words, for the fleet page: progress while learning, the reason when refused."""
    if record.phase == "learning":
        p = record.progress or {}
        found = (f"{p['snapshots']}/{p['min_snapshots']} snapshots, {p['days']:.1f}/{p['min_days']:g} days"
                 if p else "no check yet")
        asked = "; training requested" if record.requested_us is not None else ""
        return f"learning: {found}{asked}" + (f"; refused: {record.reason}" if record.reason else "")
    if record.phase == "training":
        return f"training: {record.reason or ''}".rstrip(": ")
    if record.phase == "probation":
        return f"probation: rollout {record.rollout_id}"
    return "monitoring"


def summaries(historian: Historian) -> dict[str, str]:
    return {r.device_id: summary(r) for r in records(historian)}


# -- the worker's side ---------------------------------------------------------------------------------------

def baseline_extent(historian: Historian, device_id: str | None = None) -> dict[str, tuple[int, int | None, int | None]]:
    """Each learning machine's baseline so far (or the one machine's), in one query: snapshots, first and last
    capture time."""
    rows = historian.read(
        "SELECT c.device_id, COUNT(t.time_us), MIN(t.time_us), MAX(t.time_us) FROM commissioning c LEFT JOIN telemetry t "
        "ON t.device_id = c.device_id AND t.time_us >= c.baseline_start_us WHERE c.phase = 'learning' "
        "AND c.device_id = COALESCE(?, c.device_id) GROUP BY c.device_id", (device_id,))
    return {d: (int(n), None if a is None else int(a), None if b is None else int(b)) for d, n, a, b in rows}


def baseline_telemetry(historian: Historian, device_id: str, start_us: int) -> list[tuple[int, dict[str, Any]]]:
    """The baseline's raw telemetry records, (capture time, payload), oldest first."""
    rows = historian.read("SELECT time_us, payload FROM telemetry WHERE device_id = ? AND time_us >= ? ORDER BY time_us",
                          (device_id, start_us))
    return [(int(t), json.loads(p)) for t, p in rows]


def set_progress(historian: Historian, device_id: str, progress: dict[str, Any]) -> None:
    historian.write([("UPDATE commissioning SET progress = ? WHERE device_id = ? AND phase = 'learning'",
                      (json.dumps(progress), device_id))])


def refuse(historian: Historian, device_id: str, reason: str, hold: bool = False, expected: str | None = None) -> None:
    """Back to (or still in) `learning`, with the reason; the request, if any, is answered. `hold`: no automatic
    retry on this baseline (a request or a new baseline tries again). `expected`: only if still in that phase (a
    training that fails after "learn again" leaves the new baseline alone)."""
    now = now_us()
    historian.write([(
        "UPDATE commissioning SET phase = 'learning', phase_us = CASE WHEN phase = 'learning' THEN phase_us ELSE ? END, "
        "reason = ?, requested_by = NULL, requested_us = NULL, held = CASE WHEN ? THEN TRUE ELSE held END, "
        "updated_us = ? WHERE device_id = ? AND phase = COALESCE(?, phase)",
        (now, reason, hold, now, device_id, expected))])


def move(historian: Historian, device_id: str, expected: str, phase: str, reason: str | None = None,
         bundle_sha256: str | None = None, rollout_id: str | None = None) -> bool:
    """Change the phase only if it is still `expected` (learn again may have come in between)."""
    now = now_us()
    (changed,) = historian.write([(
        "UPDATE commissioning SET phase = ?, phase_us = ?, reason = ?, requested_by = NULL, requested_us = NULL, "
        "bundle_sha256 = COALESCE(?, bundle_sha256), rollout_id = COALESCE(?, rollout_id), updated_us = ? "
        "WHERE device_id = ? AND phase = ?", (phase, now, reason, bundle_sha256, rollout_id, now, device_id, expected))])
    return changed > 0


def note(historian: Historian, device_id: str, reason: str) -> None:
    """The step a training is at, for the dashboard."""
    historian.write([("UPDATE commissioning SET reason = ?, updated_us = ? WHERE device_id = ? AND phase = 'training'",
                      (reason, now_us(), device_id))])


def rollout_outcome(historian: Historian, rollout_id: str, device_id: str) -> tuple[str, str | None] | None:
    """The device's status and reason in the rollout (fleet/historian/rollouts.py), as its agent reported them."""
    rows = historian.read("SELECT status, reason FROM rollout_devices WHERE rollout_id = ? AND device_id = ?",
                          (rollout_id, device_id))
    return (rows[0][0], rows[0][1]) if rows else None
