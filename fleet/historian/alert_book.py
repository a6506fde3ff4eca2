"""Alerts as people work them: one table across the fleet, acknowledged (who, when, comment) and closed with
a failure mode; the closed ones become the labels a model is scored against. Closing with a repair (REPAIRS)
says the machine is not the one its model learned any more: it learns a new baseline from then on
(fleet/historian/commissioning.py), its old model watching until the new one passes probation.

An alert here is a raising transition (to warning, alarm or sensor_fault); the transition back to normal
ends its episode. Acknowledging and closing happen once: a second acknowledgement or close changes nothing.
"""
from __future__ import annotations

from dataclasses import dataclass

from fleet.historian import commissioning
from fleet.historian.store import Historian, now_us

FAILURE_MODES = ("outer_race", "inner_race", "ball", "cage", "unbalance", "misalignment", "looseness", "lubrication",
                 "sensor_fault", "false_alarm", "other")
REPAIRS = ("bearing_replaced", "realigned", "rebalanced", "lubricated", "other")
NOT_A_FAILURE = frozenset({"sensor_fault", "false_alarm"})  # closed so, an episode is labelled healthy
FILTERS = ("active", "unacknowledged", "closed", "all")
CALM = ("normal", "learning")  # an alert into these ends an episode: nothing to acknowledge or close
RAISED = f"state NOT IN {CALM!r}"
WHERE = {"active": "closed_us IS NULL", "unacknowledged": "acknowledged_us IS NULL AND closed_us IS NULL",
         "closed": "closed_us IS NOT NULL", "all": "1 = 1"}
COLUMNS = ("id, device_id, time_us, state, previous_state, score, warning_threshold, alarm_threshold, top_channel, "
           "reason, model_id, defect, acknowledged_by, acknowledged_us, ack_comment, closed_by, closed_us, failure_mode, "
           "close_comment, repair")


@dataclass(frozen=True)
class AlertRow:
    id: str
    device_id: str
    time_us: int
    state: str
    previous_state: str
    score: float | None
    warning_threshold: float
    alarm_threshold: float
    top_channel: str | None
    reason: str | None
    model_id: str
    defect: str | None
    acknowledged_by: str | None
    acknowledged_us: int | None
    ack_comment: str | None
    closed_by: str | None
    closed_us: int | None
    failure_mode: str | None
    close_comment: str | None
    repair: str | None = None


class AlertBookError(ValueError):
    """An acknowledgement or close that cannot be done; the message says why."""


class AlreadyDone(AlertBookError):
    """The alert was acknowledged (or closed) before: the first one stands."""


def alert_rows(historian: Historian, which: str = "active", device_id: str | None = None, raised_only: bool = True,
               limit: int = 1000) -> list[AlertRow]:
    """Newest first."""
    if which not in WHERE:
        raise AlertBookError(f"filter: expected one of {', '.join(FILTERS)}, got {which!r}")
    conditions, params = [WHERE[which]], []
    if raised_only:
        conditions.append(RAISED)
    if device_id is not None:
        conditions.append("device_id = ?")
        params.append(device_id)
    rows = historian.read(f"SELECT {COLUMNS} FROM alerts WHERE {' AND '.join(conditions)} ORDER BY time_us DESC, id LIMIT ?",
                          [*params, limit])
    return [AlertRow(*row) for row in rows]


def alert_row(historian: Historian, alert_id: str) -> AlertRow | None:
    rows = historian.read(f"SELECT {COLUMNS} FROM alerts WHERE id = ?", (alert_id,))
    return AlertRow(*rows[0]) if rows else None


def acknowledge(historian: Historian, alert_id: str, user: str, comment: str) -> AlertRow:
    (changed,) = historian.write([("UPDATE alerts SET acknowledged_by = ?, acknowledged_us = ?, ack_comment = ? "
                                   "WHERE id = ? AND acknowledged_us IS NULL", (user, now_us(), comment, alert_id))])
    return _after(historian, alert_id, changed, "acknowledged")


def close(historian: Historian, alert_id: str, user: str, failure_mode: str, comment: str,
          repair: str | None = None) -> AlertRow:
    """Closing acknowledges too, if nobody had; with a repair, the machine learns a new baseline."""
    if failure_mode not in FAILURE_MODES:
        raise AlertBookError(f"failure_mode: expected one of {', '.join(FAILURE_MODES)}, got {failure_mode!r}")
    if repair is not None and repair not in REPAIRS:
        raise AlertBookError(f"repair: expected one of {', '.join(REPAIRS)} (or none), got {repair!r}")
    now = now_us()
    changed, _ = historian.write([
        ("UPDATE alerts SET closed_by = ?, closed_us = ?, failure_mode = ?, close_comment = ?, repair = ? "
         "WHERE id = ? AND closed_us IS NULL", (user, now, failure_mode, comment, repair, alert_id)),
        ("UPDATE alerts SET acknowledged_by = ?, acknowledged_us = ? WHERE id = ? AND acknowledged_us IS NULL",
         (user, now, alert_id))])
    row = _after(historian, alert_id, changed, "closed")
    if repair is not None:
        commissioning.learn_again(historian, row.device_id, f"{repair.replace('_', ' ')} (alert {alert_id} closed by {user})")
    return row


def _after(historian: Historian, alert_id: str, changed: int, done: str) -> AlertRow:
    row = alert_row(historian, alert_id)
    if row is None:
        raise LookupError(alert_id)
    if not changed:
        raise AlreadyDone(f"alert {alert_id} was already {done} by someone")
    return row


def failure_episodes(historian: Historian, device_id: str) -> list[tuple[int, int | None]]:
    """[start, end) of each episode whose alert was closed with a real failure mode; end None: still going."""
    rows = historian.read("SELECT time_us, state, closed_us, failure_mode FROM alerts WHERE device_id = ? ORDER BY time_us, id",
                          (device_id,))
    episodes: list[tuple[int, int | None]] = []
    back_to_normal: int | None = None  # the next return to normal, walking back from the newest alert
    for time_us, state, closed_us, mode in reversed(rows):
        if state == "normal":
            back_to_normal = int(time_us)
        elif closed_us is not None and mode not in NOT_A_FAILURE:
            episodes.append((int(time_us), back_to_normal))
    return episodes[::-1]
