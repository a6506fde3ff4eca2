"""The recorder: keeps snapshots as IMS-format files, so users collect healthy data for training on the
very pipeline that will score it (`cm-train fit RECORDER_DIR` reads them like any IMS directory).
"""
from __future__ import annotations

import logging
import os
from datetime import UTC, datetime, timedelta

import numpy as np

from edge.config import RecorderConfig
from edge.ingest.snapshot import Snapshot
from edge.mqtt.health import LOG_ONLY, FaultSink
from firmware_bridge.ims import IMS_SCALE, format_timestamp, list_ims_files, write_ims_file

log = logging.getLogger(__name__)
RECORDING_MODE = 0o640


class Recorder:
    def __init__(self, config: RecorderConfig, health: FaultSink = LOG_ONLY) -> None:
        self.config = config
        self.health = health
        self.quota_bytes = int(config.quota_mb * 1024 * 1024)
        try:
            config.directory.mkdir(parents=True, exist_ok=True)
            self._files = [f.path for f in list_ims_files(config.directory)]  # oldest first
            self._bytes = sum(path.stat().st_size for path in self._files)
        except OSError as error:  # e.g. the directory is a file: no recordings, but the agent runs and says so
            self._files, self._bytes = [], 0
            self._report(f"{config.directory}: cannot use the recorder directory ({error.strerror})")
        self._last_us: int | None = None

    def save(self, snapshot: Snapshot) -> None:
        """Writes the snapshot when `interval_s` of capture time has passed since the last one kept."""
        if self._last_us is not None and snapshot.capture_time_us - self._last_us < self.config.interval_s * 1e6:
            return
        counts = snapshot.counts
        if not np.isclose(snapshot.scale, IMS_SCALE):
            # IMS files hold thousandths of a g: rescale other sensors' counts to that unit.
            counts = np.clip(np.rint(counts * (snapshot.scale / IMS_SCALE)), -32768, 32767).astype(np.int16)
        try:
            path = write_ims_file(self.config.directory, self._free_name(snapshot.capture_time_us), counts)
            # Readable by the agent's group (a training user copying them), by nobody else.
            os.chmod(path, RECORDING_MODE)
        except OSError as error:  # a full or read-only disk costs recordings, never the agent
            self._report(f"{self.config.directory}: cannot write a recording ({error.strerror}); retried at the "
                         f"next one")
            return
        self.health.clear("storage", source="recorder")
        self._last_us = snapshot.capture_time_us
        self._files.append(path)
        self._bytes += path.stat().st_size
        self._enforce_quota()

    def _free_name(self, capture_time_us: int) -> datetime:
        """The capture time, moved on by whole seconds while a file of that name exists (IMS names have
        one-second resolution, and a sensor that restarted may repeat times): a file is never overwritten."""
        moment = datetime.fromtimestamp(capture_time_us / 1e6, UTC)
        while (self.config.directory / format_timestamp(moment)).exists():
            moment += timedelta(seconds=1)
        return moment

    def _report(self, message: str) -> None:
        self.health.fault("storage", message, source="recorder")

    def _enforce_quota(self) -> None:
        while self._bytes > self.quota_bytes and len(self._files) > 1:
            oldest = self._files.pop(0)
            self._bytes -= oldest.stat().st_size
            oldest.unlink()
            log.info("recorder quota of %.0f MB reached: removed %s", self.config.quota_mb, oldest.name)
