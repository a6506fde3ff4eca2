"""The fleet at a glance: every machine's state, score, bearing, defect, ISO zone, model, health and open alerts,
filtered and sorted in SQL so ten thousand machines stay one query."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from fleet.historian.alert_book import RAISED
from fleet.historian.store import Historian

STATES = ("normal", "learning", "warning", "alarm", "sensor_fault", "offline", "unknown")
# The state a person sees: an offline agent's last state is stale, so offline wins.
SHOWN_STATE = "CASE WHEN m.status = 'offline' THEN 'offline' ELSE COALESCE(m.state, 'unknown') END"
SEVERITY = (f"CASE {SHOWN_STATE} WHEN 'alarm' THEN 0 WHEN 'sensor_fault' THEN 1 WHEN 'warning' THEN 2 "
            "WHEN 'offline' THEN 3 WHEN 'learning' THEN 4 WHEN 'normal' THEN 5 ELSE 6 END")
SORTS = {"severity": f"{SEVERITY}, m.score DESC, m.device_id", "device": "m.device_id", "score": "m.score DESC, m.device_id",
         "last_seen": "m.last_seen_us DESC, m.device_id", "since": "since_us DESC, m.device_id",
         "unacknowledged": "unacknowledged DESC, m.device_id"}


@dataclass(frozen=True)
class FleetFilter:
    state: str | None = None  # one of STATES
    unacknowledged: bool = False  # only machines with an alert nobody acknowledged
    site: str | None = None
    tag: str | None = None
    sort: str = "severity"  # a key of SORTS
    device_id: str | None = None  # one machine (its page)
    limit: int = 1000  # rows shown, in the sort's order (the most severe first); the counts are of all


@dataclass(frozen=True)
class MachineRow:
    device_id: str
    state: str
    since_us: int | None
    score: float | None
    top_channel: str | None
    defect: str | None
    iso_zone: str | None  # the top channel's zone, else the worst channel's
    model_id: str | None
    last_seen_us: int
    health_problem: bool | None
    health_faults: list[str]
    unacknowledged: int
    site: str | None
    tags: list[str] = field(default_factory=list)


class OverviewError(ValueError):
    """A filter or sort the overview does not know; the message names it."""


def _conditions(chosen: FleetFilter) -> tuple[list[str], list[Any]]:
    conditions, params = ["1 = 1"], []
    if chosen.state is not None:
        if chosen.state not in STATES:
            raise OverviewError(f"state: expected one of {', '.join(STATES)}, got {chosen.state!r}")
        conditions.append(f"{SHOWN_STATE} = ?")
        params.append(chosen.state)
    if chosen.unacknowledged:
        conditions.append("COALESCE(a.unacknowledged, 0) > 0")
    if chosen.site:
        conditions.append("m.site = ?")
        params.append(chosen.site)
    if chosen.tag:
        conditions.append("m.tags LIKE ?")
        params.append(f"%,{chosen.tag},%")
    if chosen.device_id is not None:
        conditions.append("m.device_id = ?")
        params.append(chosen.device_id)
    return conditions, params


UNACKNOWLEDGED = (f"LEFT JOIN (SELECT device_id, COUNT(*) AS unacknowledged FROM alerts WHERE {RAISED} "
                  "AND acknowledged_us IS NULL AND closed_us IS NULL GROUP BY device_id) a ON a.device_id = m.device_id")
MAX_LIMIT = 100_000


def fleet_counts(historian: Historian, chosen: FleetFilter = FleetFilter()) -> dict[str, int]:
    """How many machines the filter matches, by the state shown."""
    conditions, params = _conditions(chosen)
    rows = historian.read(f"SELECT {SHOWN_STATE} AS shown, COUNT(*) FROM machines m {UNACKNOWLEDGED} "
                          f"WHERE {' AND '.join(conditions)} GROUP BY shown", params)
    return {state: int(n) for state, n in rows}


def fleet_rows(historian: Historian, chosen: FleetFilter = FleetFilter()) -> list[MachineRow]:
    if chosen.sort not in SORTS:
        raise OverviewError(f"sort: expected one of {', '.join(SORTS)}, got {chosen.sort!r}")
    if not 1 <= chosen.limit <= MAX_LIMIT:
        raise OverviewError(f"limit: expected 1-{MAX_LIMIT}, got {chosen.limit}")
    conditions, params = _conditions(chosen)
    rows = historian.read(
        f"SELECT m.device_id, {SHOWN_STATE}, CASE WHEN m.status = 'offline' THEN m.status_us ELSE m.state_since_us END "
        "AS since_us, m.score, m.top_channel, m.state_json, m.model_id, m.last_seen_us, m.health_problem, m.health_json, "
        f"COALESCE(a.unacknowledged, 0) AS unacknowledged, m.site, m.tags FROM machines m {UNACKNOWLEDGED} "
        f"WHERE {' AND '.join(conditions)} ORDER BY {SORTS[chosen.sort]} LIMIT ?", [*params, chosen.limit])
    return [_row(row) for row in rows]


def _row(row: tuple) -> MachineRow:
    device_id, state, since, score, top, state_json, model_id, last_seen, problem, health_json, unack, site, tags = row
    picture = json.loads(state_json) if state_json else {}
    zones = picture.get("iso_zones") or {}
    zone = zones.get(top) if top in zones else (max(zones.values()) if zones else None)
    faults = sorted((json.loads(health_json).get("faults") or {}) if health_json else {})
    return MachineRow(device_id, state, None if since is None else int(since), score, top,
                      (picture.get("defect") or {}).get("kind"), zone, model_id, int(last_seen),
                      None if problem is None else bool(problem), faults, int(unack), site,
                      [t for t in (tags or "").split(",") if t])


def sites_and_tags(historian: Historian) -> tuple[list[str], list[str]]:
    """Every site and tag in use, for the filters' choices."""
    rows = historian.read("SELECT DISTINCT site, tags FROM machines WHERE site IS NOT NULL OR tags IS NOT NULL")
    sites = sorted({s for s, _ in rows if s})
    tags = sorted({t for _, text in rows for t in (text or "").split(",") if t})
    return sites, tags


def place(historian: Historian, device_id: str, site: str | None, tags: list[str] | None) -> bool:
    """Set a machine's site and tags (None leaves one as it is); False if no such machine."""
    assignments, params = [], []
    if site is not None:
        assignments.append("site = ?")
        params.append(site or None)
    if tags is not None:
        assignments.append("tags = ?")
        params.append("," + ",".join(tags) + "," if tags else None)
    if not assignments:
        return historian.read("SELECT 1 FROM machines WHERE device_id = ?", (device_id,)) != []
    (changed,) = historian.write([(f"UPDATE machines SET {', '.join(assignments)} WHERE device_id = ?", (*params, device_id))])
    return changed > 0


@dataclass(frozen=True)
class ModelUse:
    model_id: str
    model_sha256: str
    first_us: int  # its first and last alert (or the current state, for the model in use now)
    last_us: int


def model_history(historian: Historian, device_id: str) -> list[ModelUse]:
    """The models this machine has run, oldest first, from its alerts and its current state."""
    rows = historian.read("SELECT model_id, model_sha256, MIN(t), MAX(t) FROM (SELECT model_id, model_sha256, time_us AS t "
                          "FROM alerts WHERE device_id = ? UNION ALL SELECT model_id, model_sha256, state_us FROM machines "
                          "WHERE device_id = ? AND model_id IS NOT NULL) uses GROUP BY model_id, model_sha256 ORDER BY MIN(t)",
                          (device_id, device_id))
    return [ModelUse(m, s, int(first), int(last)) for m, s, first, last in rows]


def machine_picture(historian: Historian, device_id: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The machine's latest retained state and health report, as received."""
    rows = historian.read("SELECT state_json, health_json FROM machines WHERE device_id = ?", (device_id,))
    if not rows:
        return None, None
    state_json, health_json = rows[0]
    return (json.loads(state_json) if state_json else None), (json.loads(health_json) if health_json else None)
