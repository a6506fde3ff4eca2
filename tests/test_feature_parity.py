"""No train/serve skew: the features the trainer computes from IMS files equal, bit for bit, the features the
agent computes from the same files replayed through a real pseudo-terminal and decoded from the wire."""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from edge.features import snapshot_features
from edge.snapshot import SnapshotAssembler
from firmware_bridge.ims import IMS_SNAPSHOT_SAMPLES, list_ims_files
from firmware_bridge.link import SerialLink
from firmware_bridge.replay import replay
from trainer.dataset import load_dataset


def served_features(ims_dir: Path, tty: Path, columns: list[int], expected: int) -> np.ndarray:
    """What cm-edge computes: pty → link → frames → snapshots → features with the frames' own scale."""
    stop = threading.Event()
    features: list[np.ndarray] = []

    def read() -> None:
        assembler = SnapshotAssembler(IMS_SNAPSHOT_SAMPLES)
        with SerialLink(str(tty)) as link:
            for frame in link.frames(stop):
                for snapshot in assembler.add(frame):
                    features.append(snapshot_features(snapshot.counts, snapshot.scale))
                if len(features) == expected:
                    return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    replay(ims_dir, f"pty:{tty}", columns=columns, announce=None, stop=stop)
    reader.join(60)
    stop.set()
    return np.array(features)


def test_replayed_features_equal_the_trainers_features_bit_for_bit(ims_dir: Path, tmp_path: Path) -> None:
    trained = load_dataset(ims_dir, channels=(1, 3, 5, 7))  # 1-based, as on the command line
    served = served_features(ims_dir, tmp_path / "ttyIMS", columns=[0, 2, 4, 6], expected=len(trained.features))
    assert len(served) == len(list_ims_files(ims_dir))
    assert served.tobytes() == np.asarray(trained.features, dtype=np.float64).tobytes()
