"""Staged rollouts as the historian keeps them: the rollout, its waves and every device's status and reason.

The one home of a rollout's state: `cm-fleet rollout ...` and the dashboard write requests here (a new rollout,
pause, resume, abort, rollback), the scheduler inside `cm-fleet serve` (fleet/rollout.py) acts on them and the
ingest writes the agents' reports (Historian.store); so a restart of cm-fleet resumes a rollout where it was.
"""
from __future__ import annotations

import fnmatch
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fleet.historian.store import Historian, now_us

STATES = ("running", "paused", "halted", "aborted", "completed", "rolling_back", "rolled_back")
FAILED = ("rejected", "rolled_back", "timed_out")  # a device's statuses that count against --max-failed
SETTLED = ("active", *FAILED)
# What each request may change: pause a running rollout, resume a paused one, abort one not yet finished,
# roll back one whose devices have been reached.
TRANSITIONS = {"pause": (("running",), "paused"), "resume": (("paused",), "running"),
               "abort": (("running", "paused", "halted"), "aborted"),
               "rollback": (("running", "paused", "halted", "aborted", "completed"), "rolling_back")}


class RolloutError(ValueError):
    """A request that cannot be done (no such rollout, a selector that matches nothing, a state that forbids it)."""


@dataclass(frozen=True)
class Wave:
    number: int
    size: int
    started_us: int | None
    settled_us: int | None


@dataclass(frozen=True)
class DeviceStatus:
    device_id: str
    wave: int
    status: str
    reason: str | None
    previous_bundle: str | None
    rollback_status: str | None
    rollback_reason: str | None
    sent_us: int | None
    updated_us: int


@dataclass(frozen=True)
class Rollout:
    id: str
    bundle_sha256: str
    bundle_id: str
    selector: str
    canary_percent: float
    wave_wait_s: float
    max_failed_percent: float
    device_timeout_s: float
    probation: dict[str, Any]
    state: str
    reason: str | None
    created_by: str
    created_us: int
    updated_us: int
    archive_published_us: int | None


@dataclass(frozen=True)
class Detail:
    rollout: Rollout
    waves: list[Wave]
    devices: list[DeviceStatus]

    def counts(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for device in self.devices:
            found[device.status] = found.get(device.status, 0) + 1
        return found


@dataclass(frozen=True)
class NewRollout:
    id: str
    bundle_sha256: str
    bundle_id: str
    archive_b64: str
    selector: str
    canary_percent: float
    wave_wait_s: float
    max_failed_percent: float
    device_timeout_s: float
    probation: dict[str, Any]
    created_by: str


def select_devices(historian: Historian, selector: str) -> list[str]:
    """The known machines `selector` names: comma-separated terms, each `all`, a device id, a glob (`pump-*`),
    `site:NAME` or `tag:NAME`; the union, sorted. RolloutError when it names none."""
    machines = historian.read("SELECT device_id, site, tags FROM machines ORDER BY device_id")
    chosen: set[str] = set()
    for term in (t.strip() for t in selector.split(",")):
        if not term:
            continue
        if term == "all":
            chosen |= {device for device, _, _ in machines}
        elif term.startswith("site:"):
            chosen |= {device for device, site, _ in machines if site == term[5:]}
        elif term.startswith("tag:"):
            chosen |= {device for device, _, tags in machines if tags and f",{term[4:]}," in tags}
        else:
            chosen |= {device for device, _, _ in machines if fnmatch.fnmatchcase(device, term)}
    if not chosen:
        known = len(machines)
        raise RolloutError(f"--devices {selector!r}: matches none of the {known} machines in the historian (a machine "
                           "appears there with its first message; terms: all, DEVICE, GLOB, site:NAME, tag:NAME)")
    return sorted(chosen)


def create(historian: Historian, new: NewRollout, devices: Sequence[str], sizes: Sequence[int]) -> None:
    """The rollout with its waves planned (`sizes`, canary first) and every device queued, in one transaction."""
    now = now_us()
    statements: list[tuple[str, Sequence[Any]]] = [(
        "INSERT INTO rollouts (id, bundle_sha256, bundle_id, archive, selector, canary_percent, wave_wait_s, "
        "max_failed_percent, device_timeout_s, probation, state, created_by, created_us, updated_us) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'running', ?, ?, ?)",
        (new.id, new.bundle_sha256, new.bundle_id, new.archive_b64, new.selector, new.canary_percent, new.wave_wait_s,
         new.max_failed_percent, new.device_timeout_s, json.dumps(new.probation), new.created_by, now, now))]
    start = 0
    for number, size in enumerate(sizes, start=1):
        statements.append(("INSERT INTO rollout_waves (rollout_id, number, size) VALUES (?, ?, ?)", (new.id, number, size)))
        statements += [("INSERT INTO rollout_devices (rollout_id, device_id, wave, status, updated_us) "
                        "VALUES (?, ?, ?, 'queued', ?)", (new.id, device, number, now)) for device in devices[start:start + size]]
        start += size
    historian.write(statements)


_ROLLOUT_COLUMNS = ("id, bundle_sha256, bundle_id, selector, canary_percent, wave_wait_s, max_failed_percent, "
                    "device_timeout_s, probation, state, reason, created_by, created_us, updated_us, archive_published_us")


def _rollout(row: tuple) -> Rollout:
    (rid, sha, bundle_id, selector, canary, wait, max_failed, timeout, probation, state, reason, by, created, updated,
     published) = row
    return Rollout(rid, sha, bundle_id, selector, float(canary), float(wait), float(max_failed), float(timeout),
                   json.loads(probation), state, reason, by, int(created), int(updated),
                   None if published is None else int(published))


def rollouts(historian: Historian, states: Sequence[str] = STATES) -> list[Rollout]:
    """Newest first."""
    marks = ", ".join("?" * len(states))
    rows = historian.read(f"SELECT {_ROLLOUT_COLUMNS} FROM rollouts WHERE state IN ({marks}) ORDER BY created_us DESC, id",
                          tuple(states))
    return [_rollout(row) for row in rows]


def rollout(historian: Historian, rollout_id: str) -> Rollout:
    rows = historian.read(f"SELECT {_ROLLOUT_COLUMNS} FROM rollouts WHERE id = ?", (rollout_id,))
    if not rows:
        raise RolloutError(f"rollout {rollout_id!r}: no such rollout (cm-fleet rollout status lists them)")
    return _rollout(rows[0])


def detail(historian: Historian, rollout_id: str) -> Detail:
    found = rollout(historian, rollout_id)
    waves = [Wave(int(n), int(size), _int(started), _int(settled)) for n, size, started, settled in historian.read(
        "SELECT number, size, started_us, settled_us FROM rollout_waves WHERE rollout_id = ? ORDER BY number", (rollout_id,))]
    devices = [DeviceStatus(d, int(w), s, r, p, rs, rr, _int(sent), int(u)) for d, w, s, r, p, rs, rr, sent, u in historian.read(
        "SELECT device_id, wave, status, reason, previous_bundle, rollback_status, rollback_reason, sent_us, updated_us "
        "FROM rollout_devices WHERE rollout_id = ? ORDER BY wave, device_id", (rollout_id,))]
    return Detail(found, waves, devices)


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def archive(historian: Historian, rollout_id: str) -> str:
    return str(historian.read("SELECT archive FROM rollouts WHERE id = ?", (rollout_id,))[0][0])


def request(historian: Historian, rollout_id: str, action: str, by: str) -> Rollout:
    """pause, resume, abort or rollback: the state changes here, the scheduler acts on it at its next tick."""
    allowed, target = TRANSITIONS[action]
    current = rollout(historian, rollout_id)
    marks = ", ".join("?" * len(allowed))
    (changed,) = historian.write([(f"UPDATE rollouts SET state = ?, reason = ?, updated_us = ? WHERE id = ? AND state IN ({marks})",
                                   (target, f"{action} by {by}", now_us(), rollout_id, *allowed))])
    if not changed:
        raise RolloutError(f"rollout {rollout_id}: cannot {action} it while it is {current.state} "
                           f"(only when {' or '.join(allowed)})")
    return rollout(historian, rollout_id)


# -- the scheduler's side ------------------------------------------------------------------------------------

def set_state(historian: Historian, rollout_id: str, expected: str, state: str, reason: str | None) -> bool:
    """Change the state only if it is still `expected` (a request may have come in between)."""
    (changed,) = historian.write([("UPDATE rollouts SET state = ?, reason = ?, updated_us = ? WHERE id = ? AND state = ?",
                                   (state, reason, now_us(), rollout_id, expected))])
    return changed > 0


def mark_published(historian: Historian, rollout_id: str) -> None:
    historian.write([("UPDATE rollouts SET archive_published_us = ? WHERE id = ?", (now_us(), rollout_id))])


def active_bundles(historian: Historian, devices: Sequence[str]) -> dict[str, str]:
    """Each device's active bundle sha256 from its last model report (absent for a device that never reported)."""
    found = {}
    for device, document in historian.read("SELECT device_id, model_json FROM machines WHERE model_json IS NOT NULL"):
        if device in devices:
            found[device] = json.loads(document)["active"]["bundle"]
    return found


def mark_sent(historian: Historian, rollout_id: str, wave: int, previous: dict[str, str]) -> None:
    """The wave's desired documents are published: its devices are `sent`, with the bundle each ran before."""
    now = now_us()
    devices = [d for (d,) in historian.read("SELECT device_id FROM rollout_devices WHERE rollout_id = ? AND wave = ?",
                                            (rollout_id, wave))]
    historian.write([("UPDATE rollout_waves SET started_us = ? WHERE rollout_id = ? AND number = ? AND started_us IS NULL",
                      (now, rollout_id, wave))] +
                    [("UPDATE rollout_devices SET status = 'sent', sent_us = ?, previous_bundle = ?, updated_us = ? "
                      "WHERE rollout_id = ? AND device_id = ? AND status = 'queued'",
                      (now, previous.get(device), now, rollout_id, device)) for device in devices])


def last_sent_by(historian: Historian, rollout_id: str) -> list[str]:
    """The rollout's devices whose desired document is still this rollout's: sent, not pointed back by a rollback
    and not sent by a newer rollout since (the retained desired document is the last one published)."""
    return [d for (d,) in historian.read(
        "SELECT d.device_id FROM rollout_devices d WHERE d.rollout_id = ? AND d.sent_us IS NOT NULL "
        "AND d.rollback_status IS NULL AND NOT EXISTS (SELECT 1 FROM rollout_devices o WHERE o.device_id = d.device_id "
        "AND o.sent_us > d.sent_us) ORDER BY d.device_id", (rollout_id,))]


def time_out(historian: Historian, rollout_id: str, device_timeout_s: float) -> int:
    """Devices sent their desired document longer ago than the timeout and not settled: `timed_out`."""
    now = now_us()
    marks = ", ".join("?" * len(SETTLED))
    (changed,) = historian.write([(
        f"UPDATE rollout_devices SET status = 'timed_out', reason = ?, updated_us = ? WHERE rollout_id = ? "
        f"AND sent_us IS NOT NULL AND sent_us < ? AND status NOT IN ({marks})",
        (f"no final report within {device_timeout_s:g} s of its desired document", now, rollout_id,
         now - int(device_timeout_s * 1e6), *SETTLED))])
    return changed


def settle_wave(historian: Historian, rollout_id: str, wave: int) -> None:
    historian.write([("UPDATE rollout_waves SET settled_us = ? WHERE rollout_id = ? AND number = ? AND settled_us IS NULL",
                      (now_us(), rollout_id, wave))])


def mark_rollback(historian: Historian, rollout_id: str, devices: Sequence[str], status: str) -> None:
    """`sent`: the device's desired document points back to its previous bundle; `no_previous`: none was known."""
    now = now_us()
    historian.write([("UPDATE rollout_devices SET rollback_status = ?, updated_us = ? WHERE rollout_id = ? "
                      "AND device_id = ? AND rollback_status IS NULL", (status, now, rollout_id, device)) for device in devices])
