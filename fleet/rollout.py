"""Staged rollouts of a signed bundle: `cm-fleet rollout create|status|pause|resume|abort|rollback`, and the
scheduler that runs them inside `cm-fleet serve`.

The agent's side is edge/rollout.py; the topics are its: the bundle's archive once, retained and content-addressed,
on `{prefix}/_fleet/bundles/{sha256}`, a retained desired document per device on `{prefix}/_fleet/desired/{device}`,
the agents' retained reports on `{prefix}/{device}/model` (ingested into the historian by fleet.ingest).

Waves, as AWS IoT Jobs' exponential rollout and Mender's phases: a canary (`--canary` of the devices, at least
one), then waves twice the size of the one before. The next wave starts when every device of the current one
reported `active`, or once `--wave-wait` has passed with every one of them settled (active, rejected, rolled
back or timed out). The rollout halts as soon as the failed devices are more than `--max-failed` of the devices
reached so far: a bad bundle stops at the canary, the others never hear of it.

State has one home, the historian (fleet/historian/rollouts.py): the CLI and the dashboard write requests there,
the scheduler reads it every tick and acts; after a restart of cm-fleet it simply carries on. Every publication
is retained and idempotent, so doing one again after a crash changes nothing on an agent. A broker that lost its
state (no persistence file, or a new one) lost the retained messages too: when the service's connection finds no
session of its own there, the scheduler publishes the unfinished rollouts' archives and desired documents again.
"""
from __future__ import annotations

import base64
import json
import logging
import math
import re
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from edge.config import FLEET_LEVEL
from edge.model.bundle import load_bundle
from edge.model.signature import MANIFEST_FILE, SIGNATURE_FILE, load_public_key, verify
from edge.model.store import archive_sha256, pack
from fleet.historian import rollouts as book
from fleet.historian.rollouts import FAILED, SETTLED, NewRollout, RolloutError
from fleet.historian.store import ROLLBACK_SUFFIX, Historian, now_us

log = logging.getLogger(__name__)

TICK_S = 1.0  # how often the scheduler looks at the running rollouts (a wave waits hours; a second is plenty)
PUBLISH_TIMEOUT_S = 30.0
DEFAULT_CANARY = "5%"
DEFAULT_WAVE_WAIT = "1h"
DEFAULT_MAX_FAILED = "10%"
DEFAULT_DEVICE_TIMEOUT = "2d"  # beyond the agents' default probation (a day): longer is a device that is away
DURATION = re.compile(r"^(\d+(?:\.\d+)?)(s|m|h|d)?$")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_percent(option: str, text: str) -> float:
    """`5%` (or `5`) as 5.0; 0-100."""
    try:
        value = float(text.strip().removesuffix("%"))
    except ValueError:
        value = math.nan
    if not 0 <= value <= 100:
        raise RolloutError(f"{option} {text!r}: expected a percentage between 0% and 100%, e.g. 5%")
    return value


def parse_duration(option: str, text: str) -> float:
    """`90s`, `30m`, `1h`, `2d` (or bare seconds) in seconds."""
    match = DURATION.match(text.strip())
    if match is None:
        raise RolloutError(f"{option} {text!r}: expected a duration such as 90s, 30m, 1h or 2d")
    return float(match.group(1)) * UNITS[match.group(2) or "s"]


def wave_sizes(devices: int, canary_percent: float) -> list[int]:
    """The canary (at least one device), then waves each twice the one before, until every device is in one."""
    sizes = [min(devices, max(1, math.ceil(devices * canary_percent / 100)))]
    while sum(sizes) < devices:
        sizes.append(min(2 * sizes[-1], devices - sum(sizes)))
    return sizes


@dataclass(frozen=True)
class Request:
    bundle: Path
    devices: str
    canary: str = DEFAULT_CANARY
    wave_wait: str = DEFAULT_WAVE_WAIT
    max_failed: str = DEFAULT_MAX_FAILED
    device_timeout: str = DEFAULT_DEVICE_TIMEOUT
    probation_snapshots: int | None = None  # None: the agents' own defaults (edge.probation)
    probation_seconds: float | None = None
    trusted_keys: tuple[str, ...] = ()
    created_by: str = "cm-fleet"


def check_signed(bundle: Path, trusted_keys: tuple[str, ...]) -> None:
    """The bundle is signed (and, given public keys, by one of them with no file changed since): the agents
    check it again, but an unsigned bundle never leaves the fleet."""
    missing = [name for name in (MANIFEST_FILE, SIGNATURE_FILE) if not (bundle / name).is_file()]
    if missing:
        raise RolloutError(f"{bundle}: unsigned bundle ({' and '.join(missing)} missing): sign it with "
                           f"cm-fleet sign {bundle} --key KEY; agents with model.trusted_keys refuse it")
    if trusted_keys:
        verify(bundle, [load_public_key(path) for path in trusted_keys])


def create(historian: Historian, request: Request) -> book.Detail:
    """Check, pack and plan a rollout; written into the historian, where cm-fleet serve picks it up."""
    check_signed(request.bundle, request.trusted_keys)
    card = load_bundle(request.bundle).card
    archive = pack(request.bundle)
    canary = parse_percent("--canary", request.canary)
    new = NewRollout(
        id=f"r-{secrets.token_hex(4)}", bundle_sha256=archive_sha256(archive), bundle_id=card.id,
        archive_b64=base64.b64encode(archive).decode("ascii"), selector=request.devices, canary_percent=canary,
        wave_wait_s=parse_duration("--wave-wait", request.wave_wait),
        max_failed_percent=parse_percent("--max-failed", request.max_failed),
        device_timeout_s=parse_duration("--device-timeout", request.device_timeout),
        probation=probation(request), created_by=request.created_by)
    devices = book.select_devices(historian, request.devices)
    book.create(historian, new, devices, wave_sizes(len(devices), canary))
    return book.detail(historian, new.id)


def probation(request: Request) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    if request.probation_snapshots is not None:
        if request.probation_snapshots < 1:
            raise RolloutError(f"--probation-snapshots {request.probation_snapshots}: expected at least 1")
        settings["snapshots"] = request.probation_snapshots
    if request.probation_seconds is not None:
        if not request.probation_seconds > 0:
            raise RolloutError(f"--probation-seconds {request.probation_seconds}: expected more than 0")
        settings["seconds"] = request.probation_seconds
    return settings


def describe(detail: book.Detail) -> str:
    """`cm-fleet rollout status ID`: the rollout, its waves and every device's status."""
    r = detail.rollout
    lines = [f"rollout {r.id}: {r.state}{f' ({r.reason})' if r.reason else ''}; bundle {r.bundle_id} "
             f"{r.bundle_sha256[:12]}; devices {r.selector!r}; canary {r.canary_percent:g}%, wave wait "
             f"{r.wave_wait_s:g} s, max failed {r.max_failed_percent:g}%",
             "  " + ", ".join(f"{status} {n}" for status, n in sorted(detail.counts().items()))]
    for wave in detail.waves:
        state = "settled" if wave.settled_us else "started" if wave.started_us else "waiting"
        lines.append(f"  wave {wave.number} ({'canary, ' if wave.number == 1 else ''}{wave.size} devices): {state}")
        for d in (d for d in detail.devices if d.wave == wave.number):
            back = f"; rollback {d.rollback_status}{f': {d.rollback_reason}' if d.rollback_reason else ''}" \
                if d.rollback_status else ""
            lines.append(f"    {d.device_id}: {d.status}{f': {d.reason}' if d.reason else ''}{back}")
    return "\n".join(lines)


class Publishing(Protocol):
    """The service's MQTT connection (fleet.ingest.Ingest): the scheduler publishes on it, never on its own."""

    connected: threading.Event  # set while the connection is up
    new_sessions: int  # connects on which the broker had no session of ours: it may have lost its retained messages

    def publish_retained(self, topic: str, payload: bytes, timeout_s: float) -> bool: ...


class Scheduler:
    """Runs the rollouts inside cm-fleet serve: a thread that, every TICK_S, moves each one on from the historian's
    state, publishing the retained archives and desired documents on the service's connection."""

    def __init__(self, topic_prefix: str, historian: Historian, stopping: threading.Event, mqtt: Publishing) -> None:
        self.historian = historian
        self._stopping = stopping
        self._prefix = f"{topic_prefix}/{FLEET_LEVEL}"
        self._mqtt = mqtt
        self._asserted = 0  # the new session (Publishing.new_sessions) in which the retained messages were re-asserted
        self._thread = threading.Thread(target=self._run, name="fleet-rollouts", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stopping.wait(TICK_S):
            if not self._mqtt.connected.is_set():
                continue  # nothing can be published: the next tick tries again
            try:
                self.tick()
            except Exception as error:  # a database or broker hiccup: the state is in the historian, try again
                log.error("rollouts: %s", error)

    def tick(self) -> None:
        session = self._mqtt.new_sessions
        if session != self._asserted:
            self._reassert()
            self._asserted = session
        for rollout in book.rollouts(self.historian, ("running", "rolling_back")):
            if rollout.state == "rolling_back":
                self._roll_back(rollout)
            else:
                self._advance(rollout)

    # -- publishing ----------------------------------------------------------------------------------------
    def _publish(self, topic: str, payload: bytes) -> None:
        if not self._mqtt.publish_retained(topic, payload, PUBLISH_TIMEOUT_S):
            raise RolloutError(f"{topic}: not acknowledged by the broker within {PUBLISH_TIMEOUT_S:g} s")

    def _desire(self, device: str, bundle: str, rollout_id: str, settings: dict[str, Any]) -> None:
        document = {"bundle": bundle, "rollout": rollout_id, "probation": settings}
        self._publish(f"{self._prefix}/desired/{device}", json.dumps(document).encode())

    def _reassert(self) -> None:
        """In a new session (the broker had none of this service's: it restarted without its persistence file, or
        is a new one), the retained archive and desired documents of the unfinished rollouts again: such a broker
        lost them, and a device that was away would never hear of its rollout. A broker that kept our session kept
        them too: nothing is sent again (an archive goes out once). Where they were not lost, nothing changes: an
        agent takes a desired document it has seen through, or is working on, as done (edge.rollout), and ignores
        an archive it is not waiting for."""
        for rollout in book.rollouts(self.historian, ("running", "paused")):
            if rollout.archive_published_us is None:
                continue  # never published: _advance does it
            self._publish(f"{self._prefix}/bundles/{rollout.bundle_sha256}",
                          base64.b64decode(book.archive(self.historian, rollout.id)))
            devices = book.last_sent_by(self.historian, rollout.id)
            for device in devices:
                self._desire(device, rollout.bundle_sha256, rollout.id, rollout.probation)
            log.info("rollout %s: bundle and %d desired documents published again (the broker had no session of "
                     "this service: it may have lost its retained messages)", rollout.id, len(devices))

    # -- moving a rollout on -------------------------------------------------------------------------------
    def _advance(self, rollout: book.Rollout) -> None:
        if rollout.archive_published_us is None:
            self._publish(f"{self._prefix}/bundles/{rollout.bundle_sha256}",
                          base64.b64decode(book.archive(self.historian, rollout.id)))
            book.mark_published(self.historian, rollout.id)
            log.info("rollout %s: bundle %s published (retained)", rollout.id, rollout.bundle_sha256[:12])
        book.time_out(self.historian, rollout.id, rollout.device_timeout_s)
        detail = book.detail(self.historian, rollout.id)
        reached = [d for d in detail.devices if d.status != "queued"]
        failed = [d for d in reached if d.status in FAILED]
        if reached and 100 * len(failed) / len(reached) > rollout.max_failed_percent:
            reason = (f"{len(failed)} of {len(reached)} devices reached failed (more than {rollout.max_failed_percent:g}%): "
                      + "; ".join(f"{d.device_id} {d.status}: {d.reason}" for d in failed[:3]))
            if book.set_state(self.historian, rollout.id, "running", "halted", reason):
                log.warning("rollout %s halted: %s", rollout.id, reason)
            return
        started = [w for w in detail.waves if w.started_us is not None]
        if started and not self._wave_done(rollout, detail, started[-1]):
            return
        waiting = [w for w in detail.waves if w.started_us is None]
        if not waiting:
            summary = ", ".join(f"{status} {n}" for status, n in sorted(detail.counts().items()))
            if book.set_state(self.historian, rollout.id, "running", "completed", summary):
                log.info("rollout %s completed: %s", rollout.id, summary)
            return
        self._start_wave(rollout, detail, waiting[0])

    def _wave_done(self, rollout: book.Rollout, detail: book.Detail, wave: book.Wave) -> bool:
        devices = [d for d in detail.devices if d.wave == wave.number]
        if not all(d.status in SETTLED for d in devices):
            return False
        assert wave.started_us is not None
        waited = (now_us() - wave.started_us) / 1e6 >= rollout.wave_wait_s
        if all(d.status == "active" for d in devices) or waited:
            book.settle_wave(self.historian, rollout.id, wave.number)
            return True
        return False

    def _start_wave(self, rollout: book.Rollout, detail: book.Detail, wave: book.Wave) -> None:
        devices = [d.device_id for d in detail.devices if d.wave == wave.number]
        previous = book.active_bundles(self.historian, devices)
        for device in devices:
            self._desire(device, rollout.bundle_sha256, rollout.id, rollout.probation)
        book.mark_sent(self.historian, rollout.id, wave.number, previous)
        log.info("rollout %s: wave %d started (%s)", rollout.id, wave.number, ", ".join(devices))

    def _roll_back(self, rollout: book.Rollout) -> None:
        """Each device reached goes back to the bundle it ran before (its agent keeps it: no download)."""
        detail = book.detail(self.historian, rollout.id)
        due = [d for d in detail.devices if d.status != "queued" and d.rollback_status is None]
        for device in due:
            if device.previous_bundle is not None and device.previous_bundle != rollout.bundle_sha256:
                self._desire(device.device_id, device.previous_bundle, rollout.id + ROLLBACK_SUFFIX, rollout.probation)
        book.mark_rollback(self.historian, rollout.id, [d.device_id for d in due if d.previous_bundle is not None], "sent")
        book.mark_rollback(self.historian, rollout.id, [d.device_id for d in due if d.previous_bundle is None], "no_previous")
        skipped = [d.device_id for d in due if d.previous_bundle is None]
        reason = "desired documents point back to each device's previous bundle" + (
            f"; no previous bundle known for {', '.join(skipped)}" if skipped else "")
        if book.set_state(self.historian, rollout.id, "rolling_back", "rolled_back", reason):
            log.info("rollout %s rolled back: %s", rollout.id, reason)
