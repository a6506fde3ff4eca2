"""The agent's side of a rollout: a new bundle over MQTT, checked, scored in shadow, then switched to or dropped.

Topics (DESIGN.md, Fleet): the fleet publishes each bundle once, retained and content-addressed, on
`{prefix}/_fleet/bundles/{sha256}` (edge.model.store.pack's tar; the sha256 is the archive's), and for
each device a retained desired document on `{prefix}/_fleet/desired/{device_id}`: which bundle, which
rollout, the probation settings. The agent answers with a retained report on `{prefix}/{device_id}/model`:
its active and previous bundle and the last rollout's status, one of STATUSES, with the reason and times.
Retained both ways, so a device that was offline catches up when it returns, and the fleet sees every
device's last word without asking.

Nothing changes before the bundle is proven to fit: its archive's sha256, the signature by a trusted key
over every file's sha256 (edge.model.signature; an agent without model.trusted_keys refuses bundles over
the air), the card against the config and the frames the running bundle reads (edge.compatibility) and
the model file loaded by the interpreter. Then it is written beside the old one (edge.model.store: a power
cut never leaves half a bundle) and scored in shadow (edge.probation) while the active model keeps the
alerts. On a pass the agent switches between two snapshots, at one where both models agree on the state,
so no snapshot goes unscored and no transition is announced by the switch itself; on a failure it drops
the candidate and reports why. An agent on a baseline card (edge.model.bundle.Baseline: no model, state
`learning`) takes a model the same way: the candidate passes probation on its own (edge.probation) and takes
over where it says normal, which counts as agreeing with `learning`. Everything runs on the agent's main loop: the MQTT thread only queues.
"""
from __future__ import annotations

import json
import logging
import queue
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from edge.compatibility import MismatchError, check_bundle_against_config, check_same_stream
from edge.config import FLEET_LEVEL, AgentConfig
from edge.ingest.clock import iso_time
from edge.ingest.snapshot import Snapshot
from edge.model import validation as v
from edge.model.bundle import Bundle, BundleError, Deployable, load_deployable
from edge.model.runtime import check_model
from edge.model.signature import verify
from edge.model.store import BundleStore, StoreError, archive_sha256, pack, write_atomically
from edge.model.validation import Optional, required
from edge.mqtt import payloads
from edge.mqtt.payloads import ModelRef
from edge.mqtt.publisher import encode
from edge.probation import CALM, Probation, ProbationSettings, Verdict
from edge.scoring.pipeline import Pipeline
from edge.scoring.reading import Reading

log = logging.getLogger("cm-edge")

STORE_DIRECTORY = "bundles"  # beside the outbox: the agent's state directory
OUTCOME_FILE = "rollout.json"  # the last rollout's status, so a restart does not retry a refused bundle
STATUSES = ("downloading", "verified", "probation", "active", "rejected", "rolled_back")
FINAL = ("active", "rejected", "rolled_back")
SHA256 = re.compile(r"[0-9a-f]{64}")


class Messenger(Protocol):
    """What the rollout needs of the MQTT client (edge.mqtt.publisher.Publisher)."""

    def listen(self, topic: str, callback: Callable[[bytes], None]) -> None: ...

    def publish_retained(self, topic: str, payload: bytes) -> None: ...


@dataclass(frozen=True)
class RolloutTopics:
    desired: str
    report: str
    bundles: str  # prefix: + "/{sha256}"

    def bundle(self, sha256: str) -> str:
        return f"{self.bundles}/{sha256}"


def rollout_topics(prefix: str, device_id: str) -> RolloutTopics:
    return RolloutTopics(f"{prefix}/{FLEET_LEVEL}/desired/{device_id}", f"{prefix}/{device_id}/model",
                         f"{prefix}/{FLEET_LEVEL}/bundles")


def store_path(config: AgentConfig) -> Path:
    return config.outbox_path.parent / STORE_DIRECTORY


def startup_bundle(config: AgentConfig) -> Path:
    """The bundle to start with: the store's active one once a rollout switched, else the config's."""
    store = BundleStore(store_path(config))
    for leftover in store.clean():
        log.warning("removed %s: an unpacked bundle that was interrupted (power cut or crash) before it was complete",
                    leftover)
    current = store.current()
    return config.bundle if current is None else store.path(current.active)


def load_checked(config: AgentConfig, path: Path,
                 fits: Callable[[Deployable], None] = lambda bundle: None) -> Deployable:
    """A bundle this agent may run: signed by a trusted key (when any is set), its card fitting the config (and
    `fits`), its model loading (a baseline card has none). Raises BundleError, MismatchError or ValueError naming
    the file and key."""
    if config.trusted_keys:  # before the card is read: nothing of an unsigned or changed bundle is believed
        signed = verify(path, config.trusted_keys)
        log.info("bundle %s: signature by key %s (%s) verified, %d files", path, signed.key.key_id, signed.key.source,
                 len(signed.files))
    bundle = load_deployable(path)
    check_bundle_against_config(config, bundle)
    fits(bundle)  # before the model is loaded: a card that cannot fit says so, not the interpreter
    if isinstance(bundle, Bundle):
        check_model(bundle)
    return bundle


_DESIRED = v.table({
    required("bundle"): v.matching(SHA256, "the bundle archive's sha256 (64 lowercase hex digits)"),
    required("rollout"): v.text(),
    Optional("probation"): v.table({Optional("snapshots"): v.integer(1), Optional("seconds"): v.number(positive=True)},
                                   name="probation", kind="a JSON object", extra=True),
}, kind="a JSON object", extra=True)  # a newer fleet's extra keys are not this agent's business


@dataclass(frozen=True)
class Desired:
    bundle: str
    rollout: str
    probation: ProbationSettings

    @classmethod
    def parse(cls, payload: bytes, source: str) -> Desired:
        document = v.check(_DESIRED, _json(payload, source), source, BundleError)
        try:
            settings = ProbationSettings(**document.get("probation", {}))
        except ValueError as error:
            raise BundleError(f"{source}: {error}") from None
        return cls(document["bundle"], document["rollout"], settings)


def _agree(candidate: object, active: object) -> bool:
    """Both say the same, or nothing is raised by either: a model's normal agrees with a baseline's learning."""
    return candidate == active or (candidate in CALM and active in CALM)


def _json(payload: bytes, source: str) -> Any:
    try:
        return json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BundleError(f"{source}: not JSON: {error}") from None


@dataclass(frozen=True)
class Installed:
    bundle: Deployable
    sha256: str  # of the bundle's archive (edge.model.store.pack): what desired documents name

    @property
    def ref(self) -> dict[str, str]:
        return {"id": self.bundle.card.id, "bundle": self.sha256, "model_sha256": self.bundle.model_sha256}


@dataclass
class Candidate:
    installed: Installed
    pipeline: Pipeline
    probation: Probation
    passed: Verdict | None = None


class Rollout:
    def __init__(self, config: AgentConfig, running: Deployable, messenger: Messenger,
                 make_pipeline: Callable[[Deployable], Pipeline], switch: Callable[[Deployable, Pipeline], None],
                 now: Callable[[], float] = time.time) -> None:
        self.config = config
        self.messenger = messenger
        self.make_pipeline = make_pipeline
        self.switch = switch  # the agent puts the new bundle and pipeline in charge (between two snapshots)
        self.now = now
        self.topics = rollout_topics(config.mqtt.topic_prefix, config.device_id)
        self.store = BundleStore(store_path(config))
        self.active = Installed(running, self._identify(running))
        current = self.store.current()
        self.previous = current.previous if current is not None and current.active == self.active.sha256 else None
        self.outcome: dict[str, Any] | None = self._load_outcome()
        self.candidate: Candidate | None = None
        self.wanted: Desired | None = None  # the desired document being worked on, waiting for its archive
        self.inbox: queue.SimpleQueue[tuple[str, bytes]] = queue.SimpleQueue()

    def _identify(self, running: Deployable) -> str:
        """The running bundle's sha256: its directory's name when it came from the store (whatever tool made the
        fleet's archive), else that of the archive `pack` makes of it (the fleet's, when it packs the same files)."""
        if running.path.parent == self.store.root and SHA256.fullmatch(running.path.name):
            return running.path.name
        try:
            return archive_sha256(pack(running.path))
        except StoreError as error:  # e.g. a folder someone put into the bundle: no reason not to run it
            log.warning("%s; the report names the bundle by its model file's sha256 instead", error)
            return running.model_sha256

    def start(self) -> None:
        self.messenger.listen(self.topics.desired, lambda payload: self.inbox.put((self.topics.desired, payload)))
        self._report()

    # --- the main loop's side ------------------------------------------------------------------------

    def poll(self) -> None:
        """Handle what arrived over MQTT since the last tick."""
        while True:
            try:
                topic, payload = self.inbox.get_nowait()
            except queue.Empty:
                return
            if topic == self.topics.desired:
                self._on_desired(payload)
            elif self.wanted is not None and topic == self.topics.bundle(self.wanted.bundle):
                self._on_archive(self.wanted, payload)

    def shadow(self, snapshot: Snapshot, active: Reading) -> dict[str, Any] | None:
        """The candidate scores the snapshot the active model just scored; its score and state for telemetry."""
        candidate = self.candidate
        if candidate is None:
            return None
        try:
            reading, _ = candidate.pipeline.process(snapshot)
        except Exception as error:  # any failure of the candidate is a reason to drop it, never to stop the agent
            self._drop("rolled_back", Probation.failed(error).reason)
            return None
        verdict = candidate.probation.observe(active, reading)
        if verdict is not None and not verdict.passed:
            self._drop("rolled_back", verdict.reason)
        elif verdict is not None and candidate.passed is None:
            candidate.passed = verdict
        return payloads.shadow(reading, ModelRef(candidate.installed.bundle.card.id,
                                                 candidate.installed.bundle.model_sha256), candidate.probation.compared)

    def missing(self, reason: str) -> None:
        """A lost snapshot: the candidate's detector hears of it too, as the active one's does."""
        if self.candidate is not None:
            self.candidate.pipeline.missing(reason)

    def after_snapshot(self, active_state: object) -> None:
        """After the snapshot was announced: take over when probation passed and both models agree on the state."""
        candidate = self.candidate
        if candidate is None or candidate.passed is None or not _agree(candidate.pipeline.detector.state, active_state):
            return
        old = self.active
        if not self.store.has(old.sha256):  # the config's bundle: kept in the store for a rollback
            self.store.add(pack(old.bundle.path), old.sha256, check=lambda directory: None)
        self.store.activate(candidate.installed.sha256, previous=old.sha256)
        self.switch(candidate.installed.bundle, candidate.pipeline)
        self.active, self.previous, self.candidate = candidate.installed, old.sha256, None
        log.info("bundle %s (model %s) is active: %s; previous %s kept for rollback", self.active.sha256[:12],
                 self.active.bundle.card.id, candidate.passed.reason, old.sha256[:12])
        self._set_outcome("active", candidate.passed.reason)

    # --- steps --------------------------------------------------------------------------------------

    def _on_desired(self, payload: bytes) -> None:
        if not payload:
            return  # the retained document was cleared: nothing is wanted
        try:
            desired = Desired.parse(payload, self.topics.desired)
        except BundleError as error:
            log.error("%s", error)
            self.wanted = None
            self._set_outcome("rejected", str(error), rollout=None, bundle=None)
            return
        if self._already(desired):
            return
        self._drop_candidate_for(desired)
        self.wanted = None  # an archive still awaited for an earlier document is no longer wanted
        if desired.bundle == self.active.sha256:
            self._set_outcome("active", "the desired bundle is the active one", rollout=desired.rollout,
                              bundle=desired.bundle)
            return
        self.wanted = desired
        self._set_outcome("downloading", None, rollout=desired.rollout, bundle=desired.bundle)
        if not self.config.trusted_keys:
            self._refuse("this agent takes bundles over the air only once its config lists trusted keys "
                         f"({self.config.path}: model.trusted_keys): an unsigned bundle could be anyone's")
        elif self.store.has(desired.bundle):  # e.g. a rollback to the previous bundle: no download
            self._stage(desired, None)
        else:
            self.messenger.listen(self.topics.bundle(desired.bundle),
                                  lambda data: self.inbox.put((self.topics.bundle(desired.bundle), data)))

    def _already(self, desired: Desired) -> bool:
        """The same rollout of the same bundle was seen through (or is under way): a retained document again."""
        outcome = self.outcome
        if outcome is not None and outcome.get("rollout") == desired.rollout and outcome.get("bundle") == desired.bundle:
            return outcome["status"] in FINAL or self.wanted == desired or (
                self.candidate is not None and self.candidate.installed.sha256 == desired.bundle)
        return False

    def _drop_candidate_for(self, desired: Desired) -> None:
        if self.candidate is not None and self.candidate.installed.sha256 != desired.bundle:
            self._drop("rolled_back", f"rollout {desired.rollout} wants bundle {desired.bundle[:12]} instead")

    def _on_archive(self, desired: Desired, archive: bytes) -> None:
        if not archive:
            return  # the fleet cleared the retained archive
        self._stage(desired, archive)

    def _stage(self, desired: Desired, archive: bytes | None) -> None:
        """Check everything, write the bundle beside the active one, and start its probation."""
        self.wanted = None
        try:
            if archive is not None:
                path = self.store.add(archive, desired.bundle, check=self._check)
            else:
                path = self.store.path(desired.bundle)
                self._check(path)
            bundle = load_deployable(path)
            pipeline = self.make_pipeline(bundle)
        except (BundleError, MismatchError, ValueError, OSError) as error:
            self._refuse(str(error))
            return
        self._set_outcome("verified", None)
        self.candidate = Candidate(Installed(bundle, desired.bundle), pipeline, Probation(desired.probation))
        log.info("bundle %s (model %s) verified; probation: %d snapshots or %g s in shadow", desired.bundle[:12],
                 bundle.card.id, desired.probation.snapshots, desired.probation.seconds)
        self._set_outcome("probation", None)

    def _check(self, directory: Path) -> None:
        load_checked(self.config, directory, lambda bundle: check_same_stream(self.active.bundle, bundle))

    def _refuse(self, reason: str) -> None:
        log.error("rollout refused: %s", reason)
        self.wanted = None
        self._set_outcome("rejected", reason)

    def _drop(self, status: str, reason: str) -> None:
        candidate = self.candidate
        if candidate is None:
            return
        self.candidate = None
        log.warning("bundle %s (model %s) %s: %s; model %s stays active", candidate.installed.sha256[:12],
                    candidate.installed.bundle.card.id, status.replace("_", " "), reason, self.active.bundle.card.id)
        self._set_outcome(status, reason)

    # --- the report ---------------------------------------------------------------------------------

    def _set_outcome(self, status: str, reason: str | None, **names: str | None) -> None:
        now = iso_time(int(self.now() * 1_000_000))
        base = self.outcome if self.outcome is not None and not names else {"started": now, **names}
        self.outcome = {**base, "status": status, "reason": reason, "updated": now}
        self.store.root.mkdir(parents=True, exist_ok=True)
        write_atomically(self.store.root / OUTCOME_FILE, json.dumps(self.outcome).encode())
        self._report()

    def _load_outcome(self) -> dict[str, Any] | None:
        try:
            outcome = json.loads((self.store.root / OUTCOME_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return outcome if isinstance(outcome, dict) and outcome.get("status") in STATUSES else None

    def _report(self) -> None:
        candidate = None if self.candidate is None else self.candidate.installed.ref
        report = payloads.model_report(self.config.device_id, self.active.ref, self.previous, self.outcome, candidate,
                                       iso_time(int(self.now() * 1_000_000)))
        self.messenger.publish_retained(self.topics.report, encode(report))

