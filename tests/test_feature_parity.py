"""No train/serve skew: the features the trainer computes from a recording equal, bit for bit, the features the
agent computes from the same recording replayed through a real pseudo-terminal and decoded from the wire,
for every recording format (IMS, FEMTO, MATLAB, CSV snapshots)."""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge.ingest.snapshot import SnapshotAssembler
from edge.model.bearing import PRESETS
from edge.model.features import FeatureConfig, FeatureExtractor
from firmware_bridge.ims import list_ims_files
from firmware_bridge.link import SerialLink
from firmware_bridge.replay import ReplayOptions, replay
from trainer.dataset import DatasetSpec, load_dataset

pytestmark = pytest.mark.waits


def served_features(source: Path, tty: Path, length: int, expected: int, config: FeatureConfig = FeatureConfig(),
                    **options: Any) -> tuple[np.ndarray, set[float]]:
    """What cm-edge computes: pty → link → frames → snapshots → features with the frames' own scale."""
    stop = threading.Event()
    features: list[np.ndarray] = []
    scales: set[float] = set()

    extract = FeatureExtractor(config)

    def read() -> None:
        assembler = SnapshotAssembler(length)
        with SerialLink(str(tty)) as link:
            for frame in link.frames(stop):
                for snapshot in assembler.add(frame):
                    features.append(extract(snapshot.counts, snapshot.scale))
                    scales.add(snapshot.scale)
                if len(features) == expected:
                    return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    replay(source, f"pty:{tty}", ReplayOptions(**options), announce=None, stop=stop)
    reader.join(60)
    stop.set()
    return np.array(features), scales


MACHINES = {  # the bearing and speed of each data set (its README), for the vibration set
    "ims": ("za-2115", 2000.0), "femto": ("pronostia", 1800.0), "cwru": ("6205-2rs", 1796.0), "daq": ("6203-2rs", 1500.0)}


def assert_parity(source: Path, tmp_path: Path, feature_set: str, machine: str, **options: Any) -> set[float]:
    bearing, rpm = MACHINES[machine]
    machine_options: dict[str, Any] = {"bearing": PRESETS[bearing], "shaft_rpm": rpm} if feature_set == "vibration" else {}
    trained = load_dataset(source, DatasetSpec(feature_set=feature_set, **machine_options, **options))
    assert trained.feature_config.feature_set == feature_set
    served, scales = served_features(source, tmp_path / "tty", trained.snapshot_samples, len(trained),
                                     trained.feature_config, **options)
    assert len(served) == len(trained)
    assert served.tobytes() == np.asarray(trained.features, dtype=np.float64).tobytes()
    assert scales == set(trained.scales)
    return scales


SETS = pytest.mark.parametrize("feature_set", ["mean_abs", "vibration"])


@SETS
def test_ims_replayed_features_equal_the_trainers_bit_for_bit(ims_dir: Path, tmp_path: Path, feature_set: str) -> None:
    trained = load_dataset(ims_dir, DatasetSpec(channels=(1, 3, 5, 7)))  # 1-based, as on the command line
    assert len(trained) == len(list_ims_files(ims_dir))
    assert_parity(ims_dir, tmp_path, feature_set, "ims", channels=(1, 3, 5, 7))


@SETS
def test_femto_end_of_run_beyond_int16_replays_bit_for_bit(femto_dir: Path, tmp_path: Path, feature_set: str) -> None:
    """The last real snapshots of Bearing1_2 exceed ±32.767 g: the scale rule holds them, frames carry it."""
    run = tmp_path / "Bearing1_2_end"
    run.mkdir()
    for path in sorted((femto_dir / "Bearing1_2").glob("acc_*.csv"))[-6:]:
        (run / path.name).symlink_to(path)
    scales = assert_parity(run, tmp_path, feature_set, "femto")
    assert scales == {float(np.float32(0.002))}  # one scale for the recording: its values reach 41.3 g


@SETS
def test_mat_recording_replays_bit_for_bit(cwru_dir: Path, tmp_path: Path, feature_set: str) -> None:
    assert_parity(cwru_dir / "normal_0_97.mat", tmp_path, feature_set, "cwru", channels=("DE", "FE"), sample_rate_hz=48_000,
                  snapshot_samples=16_384)


@SETS
def test_csv_snapshot_folder_replays_bit_for_bit(tmp_path: Path, feature_set: str) -> None:
    rng = np.random.default_rng(0)
    folder = tmp_path / "daq"
    folder.mkdir()
    for i in range(4):
        values = rng.normal(0, 5.0 * (i + 1), (1000, 3))  # the last snapshots exceed int16 at 0.001 g
        np.savetxt(folder / f"s{i}.csv", values, delimiter=",", header="a,b,c", comments="")
    scales = assert_parity(folder, tmp_path, feature_set, "daq", format="csv", sample_rate_hz=10_000, channels=("c", "a"))
    assert len(scales) == 1 and max(scales) > 0.001


@pytest.mark.parametrize("frame_samples", [100])
def test_snapshots_not_a_multiple_of_the_frame_size_still_match(tmp_path: Path, frame_samples: int) -> None:
    rng = np.random.default_rng(1)
    folder = tmp_path / "odd"
    folder.mkdir()
    for i in range(3):
        np.save(folder / f"{i}.npy", np.round(rng.normal(0, 1, (333, 2)), 3))
    trained = load_dataset(folder, DatasetSpec(format="csv", sample_rate_hz=1000))
    served, _ = served_features(folder, tmp_path / "tty", 333, 3, format="csv", sample_rate_hz=1000,
                                frame_samples=frame_samples)
    assert served.tobytes() == trained.features.tobytes()
