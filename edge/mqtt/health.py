"""Agent health: what is wrong with the agent itself, as opposed to the bearing it watches.

A full disk, a broker that refuses alerts, an unset clock or a noisy serial line do not stop the agent
(it holds, retries and counts), but somebody has to hear about them, or "no alert" would look like "all
is well". Each component (`storage`, `broker`, `clock`, `link`) has at most one current fault; the set is
published retained on `{prefix}/{device_id}/health` (schema: edge/mqtt/schemas/health.schema.json), and Home
Assistant shows it as a diagnostic `problem` binary sensor whose attributes name each fault.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from edge.ingest.clock import iso_time, unsynchronised

log = logging.getLogger(__name__)

COMPONENTS = ("storage", "broker", "clock", "link")


class FaultSink(Protocol):
    """Where a component reports what is wrong with the agent itself: the agent's Health, or LOG_ONLY."""

    def fault(self, component: str, message: str, source: str = "") -> None: ...

    def clear(self, component: str, source: str = "") -> None: ...


class LoggedFaults:
    """A component used on its own (a test, a tool, the bench) has nobody to tell but the log."""

    def fault(self, component: str, message: str, source: str = "") -> None:
        log.error("%s", message)

    def clear(self, component: str, source: str = "") -> None:
        pass


LOG_ONLY = LoggedFaults()  # keeps no state: one for every component that is given no Health


@dataclass(frozen=True)
class Fault:
    message: str
    since: float  # wall-clock seconds when the fault was first raised


class Health:
    """The current faults, shared by the threads that find them; `on_change` gets every new payload."""

    def __init__(self, device_id: str, on_change: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.device_id = device_id
        self.on_change = on_change
        # (component, source) -> fault: the outbox and the checkpoint both report `storage`, and one
        # clearing its fault must not hide the other's.
        self._faults: dict[tuple[str, str], Fault] = {}
        self._lock = threading.Lock()

    def fault(self, component: str, message: str, source: str = "") -> None:
        """Raise (or update the message of) a fault; logged when it is raised, not on every update."""
        if component not in COMPONENTS:
            raise ValueError(f"unknown health component {component!r}; known: {', '.join(COMPONENTS)}")
        key = (component, source)
        with self._lock:
            current = self._faults.get(key)
            if current is not None and current.message == message:
                return
            self._faults[key] = Fault(message, current.since if current else time.time())
        if current is None:
            log.error("health: %s fault: %s", component, message)
        self._changed()

    def clear(self, component: str, source: str = "") -> None:
        with self._lock:
            fault = self._faults.pop((component, source), None)
        if fault is not None:
            log.info("health: %s fault cleared (was: %s)", component, fault.message)
            self._changed()

    def faults(self) -> Mapping[str, Fault]:
        """One fault per component (several sources' messages joined), the earliest `since`."""
        with self._lock:
            items = sorted(self._faults.items())
        merged: dict[str, Fault] = {}
        for (component, _), fault in items:
            if component in merged:
                earlier = merged[component]
                fault = Fault(f"{earlier.message}; {fault.message}", min(earlier.since, fault.since))
            merged[component] = fault
        return merged

    def payload(self) -> dict[str, Any]:
        faults = self.faults()
        return {
            "device_id": self.device_id,
            "timestamp": iso_time(time.time_ns() // 1000),
            "problem": bool(faults),
            "faults": {name: {"message": f.message, "since": iso_time(int(f.since * 1_000_000))} for name, f in sorted(faults.items())},
        }

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change(self.payload())


@dataclass(frozen=True)
class LinkCounters:
    frames: int
    crc_errors: int
    resyncs: int


# More damaged frames than this share of all frames over one counters interval is a link problem
# (a loose cable, EMI, a wrong baud rate), not the odd flipped bit.
LINK_ERROR_SHARE = 0.05


def link_fault(before: LinkCounters, after: LinkCounters) -> str | None:
    """A message when the serial link kept failing between two readings of its counters, else None."""
    frames = after.frames - before.frames
    errors = (after.crc_errors - before.crc_errors) + (after.resyncs - before.resyncs)
    if errors <= 0:
        return None
    if errors > LINK_ERROR_SHARE * max(frames, 1):
        return (f"{errors} CRC errors or resyncs against {frames} good frames since the last check: "
                f"check the cable, its shielding and the baud rate")
    return None


class Watch:
    """The agent's periodic look at what it cannot be told by an exception: the clock and the link."""

    def __init__(self, health: Health) -> None:
        self.health = health
        self._link: LinkCounters | None = None

    def check(self, stats: Any) -> None:
        """`stats`: the serial decoder's counters (frames, crc_errors, resyncs)."""
        problem = unsynchronised()  # edge.ingest.clock: the one home of that rule
        if problem:
            self.health.fault("clock", f"{problem}; frames without their own wall-clock time are dated by it")
        else:
            self.health.clear("clock")
        now = LinkCounters(stats.frames, stats.crc_errors, stats.resyncs)
        if self._link is not None:
            problem = link_fault(self._link, now)
            if problem is None:
                self.health.clear("link")
            else:
                self.health.fault("link", problem)
        self._link = now
