"""The commissioning worker inside `cm-fleet serve`: it moves each machine through learning -> training ->
probation -> monitoring (fleet/historian/commissioning.py keeps the phase).

Every TICK_S it adds the machines that report `learning`, answers the requests (`cm-fleet commission`, the
dashboard), follows the one-device rollouts of the trained bundles from the agents' reports and, every
`check_interval_s`, updates the learning machines' progress and (with `auto`) checks the baselines long enough.

A baseline that passes is trained by one job at a time in a thread of its own, so ingest and the dashboard never
wait: the features table exported from the historian, then `cm-train fit TABLE --feature-spec CARD` and
`cm-train evaluate` as subprocesses (the fleet host needs the trainer extra; this process never imports
TensorFlow), the bundle signed with `signing_key` and a one-device rollout with shadow probation created
through fleet.rollout. A model that warns on its own healthy baseline is refused; every refusal leaves the
machine in `learning` with the reason, and a failed attempt is not retried automatically on the same baseline.
Each attempt's table, bundle, report and trainer output stay in `work_dir/<device>/<time>/`.
"""
from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from edge.ingest.clock import iso_time
from edge.model.bundle import BundleError
from fleet import rollout
from fleet.commissioning import CommissioningError, assess, baseline_of, check, progress, too_short, write_table
from fleet.config import CommissioningConfig
from fleet.historian import commissioning as book
from fleet.historian.rollouts import FAILED, Detail, RolloutError
from fleet.historian.store import Historian, now_us
from fleet.signing import SigningError, sign

log = logging.getLogger(__name__)

TICK_S = 1.0  # requests and rollout reports are looked at this often; the baselines every check_interval_s
TAIL_CHARS = 600  # of a failed trainer's output, in the reason


class Refused(Exception):
    """A training attempt that cannot go on; the message is the reason the machine shows."""


def trainer_command(name: str) -> str:
    """The trainer's executable: as given if it is a path, else the one beside this Python (the same virtual
    environment), else on PATH."""
    if "/" in name:
        return name
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name) or name


class Worker:
    def __init__(self, config: CommissioningConfig, historian: Historian, stopping: threading.Event,
                 trusted_keys: tuple[str, ...] = ()) -> None:
        self.config = config
        self.trusted_keys = trusted_keys  # [rollout] trusted_keys: the signature is checked as for any rollout
        self.historian = historian
        self._stopping = stopping
        self._thread = threading.Thread(target=self._run, name="fleet-commissioning", daemon=True)
        self._job: threading.Thread | None = None
        self._process: subprocess.Popen | None = None
        self._checked = 0.0  # monotonic time of the last look at every learning baseline

    def start(self) -> None:
        for record in book.records(self.historian, ("training",)):  # a restart cut it short: asked again
            book.refuse(self.historian, record.device_id, "training was cut short by a restart of cm-fleet; trying again")
            book.request(self.historian, record.device_id, "cm-fleet, after a restart")
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        process = self._process
        if process is not None and process.poll() is None:
            process.terminate()
        self._thread.join(timeout)
        if self._job is not None:
            self._job.join(timeout)

    def _run(self) -> None:
        while not self._stopping.wait(TICK_S):
            try:
                self.tick()
            except Exception as error:  # a database hiccup: the state is in the historian, try again
                log.error("commissioning: %s", error)

    @property
    def busy(self) -> bool:
        return self._job is not None and self._job.is_alive()

    def tick(self) -> None:
        for device in book.discover(self.historian):
            log.info("commissioning %s: learning its baseline", device)
        self._follow()
        due = time.monotonic() - self._checked >= self.config.check_interval_s
        if due:
            self._checked = time.monotonic()
            self._update_progress()
        if self.busy:
            return
        for record in book.records(self.historian, ("learning",)):
            if record.requested_us is not None or (due and self.config.auto and not record.held and self._long_enough(record)):
                if self._begin(record):
                    return  # one job at a time

    def _update_progress(self) -> None:
        for device, extent in book.baseline_extent(self.historian).items():
            book.set_progress(self.historian, device, progress(*extent, self.config))

    def _long_enough(self, record: book.Record) -> bool:
        return record.progress is not None and too_short(record.progress) is None

    def _begin(self, record: book.Record) -> bool:
        """Check the baseline; if it passes, start training it in the job thread."""
        verdict = assess(self.historian, record, self.config)
        book.set_progress(self.historian, record.device_id, verdict.progress)
        if not verdict.passed:
            if verdict.reason != record.reason or record.requested_us is not None:
                log.info("commissioning %s: refused: %s", record.device_id, verdict.reason)
            # A final refusal is held: the worker does not read the same faulty baseline again every interval.
            book.refuse(self.historian, record.device_id, verdict.reason, hold=verdict.final)
            return False
        if not book.move(self.historian, record.device_id, "learning", "training", verdict.reason):
            return False
        log.info("commissioning %s: %s; training", record.device_id, verdict.reason)
        self._job = threading.Thread(target=self._train, args=(record,), name=f"fleet-training-{record.device_id}",
                                     daemon=True)
        self._job.start()
        return True

    # -- following the rollouts ---------------------------------------------------------------------------
    def _follow(self) -> None:
        for record in book.records(self.historian, ("probation",)):
            assert record.rollout_id is not None
            outcome = book.rollout_outcome(self.historian, record.rollout_id, record.device_id)
            if outcome is None:
                continue
            status, reason = outcome
            if status == "active":
                book.move(self.historian, record.device_id, "probation", "monitoring",
                          f"bundle {str(record.bundle_sha256)[:12]} passed probation and is active")
                log.info("commissioning %s: monitoring with its own model", record.device_id)
            elif status in FAILED:
                why = f"the trained bundle did not pass probation (rollout {record.rollout_id}: {status}: {reason})"
                book.refuse(self.historian, record.device_id, why, hold=True)
                log.warning("commissioning %s: %s", record.device_id, why)

    # -- the training job ---------------------------------------------------------------------------------
    def _train(self, record: book.Record) -> None:
        device = record.device_id
        try:
            detail = self._attempt(record)
        except (Refused, CommissioningError, RolloutError, SigningError, BundleError, OSError) as error:
            book.refuse(self.historian, device, str(error), hold=not self._stopping.is_set(), expected="training")
            log.warning("commissioning %s: refused: %s", device, error)
            return
        moved = book.move(self.historian, device, "training", "probation",
                          f"rollout {detail.rollout.id}: the agent scores bundle {detail.rollout.bundle_id} in shadow",
                          bundle_sha256=detail.rollout.bundle_sha256, rollout_id=detail.rollout.id)
        log.info("commissioning %s: rollout %s created%s", device, detail.rollout.id,
                 "" if moved else " (the machine learns again meanwhile: its phase stays)")

    def _attempt(self, record: book.Record) -> Detail:
        device, config = record.device_id, self.config
        card, baseline = baseline_of(self.historian, record, config)
        verdict = check(baseline, config)  # again: telemetry kept coming since the tick's check
        if not verdict.passed:
            raise Refused(verdict.reason)
        directory = Path(config.work_dir) / device / iso_time(now_us()).replace(":", "")
        table = write_table(baseline, directory / "baseline.csv")
        bundle, report = directory / "bundle", directory / "evaluation"
        fit = ["fit", str(table), "--feature-spec", str(card), "--out", str(bundle), "--quiet"]
        self._step(device, "training: cm-train fit", fit + (["--epochs", str(config.fit_epochs)] if config.fit_epochs else []),
                   directory / "fit.log")
        self._step(device, "evaluating the model on its baseline: cm-train evaluate",
                   ["evaluate", str(bundle), str(table), "--out", str(report)], directory / "evaluate.log")
        self._refuse_if_raised(json.loads((report / "report.json").read_text(encoding="utf-8")))
        book.note(self.historian, device, "signing the bundle")
        sign(bundle, config.signing_key)
        now = book.record(self.historian, device)
        if now is None or now.phase != "training":  # learn again came in meanwhile: this bundle is for the old one
            raise Refused("the baseline changed while it was trained (learn again): its bundle is not rolled out")
        book.note(self.historian, device, "creating its rollout")
        return rollout.create(self.historian, rollout.Request(
            bundle, device, canary="100%", wave_wait="0s", probation_snapshots=config.probation_snapshots or None,
            probation_seconds=config.probation_seconds or None, trusted_keys=self.trusted_keys,
            created_by=f"cm-fleet commission ({record.requested_by or 'auto'})"))

    def _refuse_if_raised(self, report: dict) -> None:
        raised = report.get("warning_episodes") or []
        if raised:
            first = raised[0]
            raise Refused(f"the trained model warns on its own healthy baseline: {len(raised)} warning or alarm "
                          f"episodes, the first from {first['start']} to {first['end']} on {first.get('top_channel')}; "
                          "the baseline is not one state of the machine (learn again, or ask again for a new model)")

    def _step(self, device: str, what: str, arguments: list[str], output: Path) -> None:
        """One trainer subprocess, its output in `output`; Refused when it fails, times out or serve stops."""
        book.note(self.historian, device, what)
        command = [trainer_command(self.config.trainer), *arguments]
        output.parent.mkdir(parents=True, exist_ok=True)
        with output.open("wb") as out:
            try:
                self._process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
            except OSError as error:
                raise Refused(f"{what}: cannot run {command[0]} (commissioning.trainer; the fleet host needs the "
                              f"trainer extra): {error.strerror}") from None
            code = self._wait(self._process, what)
        if code != 0:
            tail = output.read_text(encoding="utf-8", errors="replace")[-TAIL_CHARS:].strip()
            raise Refused(f"{what} failed (exit {code}; {output}): {tail}")

    def _wait(self, process: subprocess.Popen, what: str) -> int:
        deadline = time.monotonic() + self.config.train_timeout_s
        while True:
            try:
                return process.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                pass
            if self._stopping.is_set() or time.monotonic() > deadline:
                process.kill()
                process.wait()
                if self._stopping.is_set():
                    raise Refused(f"{what}: cut short by cm-fleet stopping")
                raise Refused(f"{what}: took longer than commissioning.train_timeout_s ({self.config.train_timeout_s:g} s)")
