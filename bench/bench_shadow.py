"""What a rollout costs on the device: the shadow scoring of a candidate per snapshot (edge.rollout's
Rollout.shadow: the candidate's whole pipeline, the probation's comparison and its telemetry fields), next to
the active pipeline's own time; the bundle archive's size; and the time to check and store a delivered
bundle (sha256, Ed25519 signature over every file, card, model load, atomic write).

    .venv/bin/python bench/bench_shadow.py      (prints median, min and max of each; nothing is asserted)
"""
from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_agent import prepare  # noqa: E402
from figures import figure, row  # noqa: E402

from edge.agent import pipeline  # noqa: E402
from edge.config import load_config  # noqa: E402
from edge.ingest.snapshot import Snapshot  # noqa: E402
from edge.model.bundle import load_bundle  # noqa: E402
from edge.model.store import BundleStore, archive_sha256, pack  # noqa: E402
from edge.probation import Probation, ProbationSettings  # noqa: E402
from edge.rollout import Candidate, Installed, Rollout  # noqa: E402
from firmware_bridge.ims import IMS_SAMPLE_RATE, IMS_SCALE, list_ims_files, read_counts  # noqa: E402
from fleet.signing import keygen, sign  # noqa: E402

REPEATS = 3


class Silent:
    """The rollout's MQTT side, unused here: only the scoring is measured."""

    def listen(self, topic: str, callback: object) -> None: ...

    def publish_retained(self, topic: str, payload: bytes) -> None: ...


def setup(tmp: Path, bundle_dir: Path) -> tuple[Path, Path]:
    """A signed copy of the bench bundle and an agent config trusting its key."""
    keys = keygen(tmp / "keys")
    signed = tmp / "bundle"
    shutil.copytree(bundle_dir, signed)
    sign(signed, keys.private)
    config = tmp / "edge.toml"
    config.write_text(f'device_id = "bench"\n[serial]\nport = "/dev/null"\n[model]\nbundle = "{signed}"\n'
                      f'trusted_keys = ["{keys.public}"]\n[mqtt]\nhost = "localhost"\n[outbox]\n'
                      f'path = "{tmp / "state" / "outbox.sqlite"}"\n')
    return config, signed


def shadow_cost(run_dir: Path, config_path: Path, signed: Path) -> dict:
    config, bundle = load_config(config_path), load_bundle(signed)
    counts = [read_counts(f.path) for f in list_ims_files(run_dir)]
    active_ms: list[float] = []
    shadow_ms: list[float] = []
    for _ in range(REPEATS):
        active = pipeline(config, bundle)
        rollout = Rollout(config, bundle, Silent(), lambda new: pipeline(config, new), lambda *_: None)
        # Probation that never ends: every snapshot is scored in shadow.
        rollout.candidate = Candidate(Installed(bundle, "0" * 64), pipeline(config, bundle),
                                      Probation(ProbationSettings(snapshots=10**9, seconds=1e12)))
        for index, snapshot_counts in enumerate(counts[:70]):  # the healthy half: no verdict cuts it short
            snapshot = Snapshot(index, index * len(snapshot_counts), index * 600_000_000, IMS_SAMPLE_RATE,
                                IMS_SCALE, snapshot_counts)
            started = time.perf_counter_ns()
            reading, _ = active.process(snapshot)
            middle = time.perf_counter_ns()
            assert rollout.shadow(snapshot, reading) is not None
            shadow_ms.append((time.perf_counter_ns() - middle) / 1e6)
            active_ms.append((middle - started) / 1e6)
    return {"active_pipeline_ms_per_snapshot": figure(active_ms, "ms (the active model's pipeline, for scale)"),
            "shadow_ms_per_snapshot": figure(shadow_ms, "ms (candidate pipeline + probation + telemetry fields)")}


def delivery_cost(tmp: Path, config_path: Path, signed: Path) -> dict:
    config = load_config(config_path)
    bundle = load_bundle(signed)
    rollout = Rollout(config, bundle, Silent(), lambda new: pipeline(config, new), lambda *_: None)
    archive = pack(signed)
    seconds: list[float] = []
    for attempt in range(10):
        store = BundleStore(tmp / f"store-{attempt}")
        started = time.perf_counter_ns()
        store.add(archive, archive_sha256(archive), check=rollout._check)
        seconds.append((time.perf_counter_ns() - started) / 1e6)
    size = float(len(archive))
    return {"bundle_archive_bytes": figure([size], "bytes (tar of the signed bundle, as published)"),
            "check_and_store_ms": figure(seconds, "ms (sha256, signature, card, model load, fsync, rename)")}


def main() -> dict:
    run_dir, bundle_dir = prepare()
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        config, signed = setup(tmp, bundle_dir)
        results = shadow_cost(run_dir, config, signed) | delivery_cost(tmp, config, signed)
    for name, value in results.items():
        print(row(name, value))
    return results


if __name__ == "__main__":
    main()
