"""`cm-fleet serve`: one process that ingests, stores, runs the staged rollouts, (with a [commissioning] section)
commissions the machines that learn their baseline and (with a [web] section) serves the dashboard.

SIGTERM or SIGINT stops it cleanly: the batch being written is committed and acknowledged, the rest stays
unacknowledged with the broker, which keeps it in this service's session for the next start.
"""
from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

from fleet.commissioning_worker import Worker
from fleet.config import FleetConfig, HistorianConfig
from fleet.historian import Historian, open_historian
from fleet.ingest import Ingest
from fleet.rollout import Scheduler
from fleet.web.server import WebServer

log = logging.getLogger(__name__)


class Compactor:
    """Rolls raw telemetry up into buckets and deletes it past the retention, every compact_interval_s (and once
    at start)."""

    def __init__(self, historian: Historian, config: HistorianConfig, stopping: threading.Event) -> None:
        self.historian = historian
        self.config = config
        self._stopping = stopping
        self._thread = threading.Thread(target=self._run, name="fleet-compactor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        retention_us = int(self.config.raw_retention_days * 86400 * 1_000_000)
        while not self._stopping.is_set():
            try:
                rolled = self.historian.roll_up(self.config.bucket_s)
                if rolled:
                    log.info("rolled %d raw telemetry records up into %d s buckets", rolled, self.config.bucket_s)
                folded = self.historian.compact(retention_us, self.config.bucket_s)
                if folded:
                    log.info("folded %d raw telemetry records into %d s buckets", folded, self.config.bucket_s)
            except Exception as error:  # the database's errors differ by driver; try again next time
                log.error("%s: telemetry compaction failed: %s", self.historian.where, error)
            self._stopping.wait(self.config.compact_interval_s)


def serve(config: FleetConfig, stop: threading.Event | None = None) -> int:
    stop = stop or threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("%s: stopping", signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    historian = open_historian(config.historian)
    log.info("historian %s (schema version %d)", historian.where, historian.version())
    ingest = Ingest(config.mqtt, config.ingest, historian)
    compactor = Compactor(historian, config.historian, stop)
    scheduler = Scheduler(config.mqtt.topic_prefix, historian, stop, ingest)  # the staged rollouts, on ingest's connection
    worker = (Worker(config.commissioning, historian, stop, config.rollout.trusted_keys)
              if config.commissioning is not None else None)
    try:
        web = WebServer(config.web, historian, config.rollout) if config.web is not None else None
    except BaseException:
        historian.close()
        raise
    ingest.start()
    compactor.start()
    scheduler.start()
    if worker is not None:
        worker.start()
    if web is not None:
        web.start()
    try:
        stop.wait()
    finally:
        if web is not None:
            web.stop()
        if worker is not None:
            worker.stop()  # its trainer subprocess, if one runs, is ended
        scheduler.stop()  # before the connection it publishes on
        ingest.stop()
        compactor.join(30)
        historian.close()
        counts = ingest.counts
        log.info("stopped: stored %s; rejected %s", dict(counts.stored) or "nothing", dict(counts.rejected) or "nothing")
    return 0
