"""The real IMS sample (healthy, test 1): fit and evaluate run, and int8 decides as float does."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge.model.bundle import load_bundle
from edge.model.features import snapshot_features
from firmware_bridge.ims import IMS_SCALE, list_ims_files, read_counts
from trainer.cli import main
from trainer.dataset import DatasetSpec, load_dataset

pytestmark = pytest.mark.slow


def test_features_from_files_are_the_edge_feature_contract(ims_dir: Path) -> None:
    data = load_dataset(ims_dir, DatasetSpec(channels=(1, 3, 5, 7)))
    assert data.channels == ("bearing1_x", "bearing2_x", "bearing3_x", "bearing4_x")
    first = list_ims_files(ims_dir)[0].path
    expected = snapshot_features(read_counts(first, [0, 2, 4, 6]), IMS_SCALE)
    assert np.array_equal(data.features[0], expected)


def test_fit_and_evaluate_on_real_ims(ims_dir: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    fit = ["fit", str(ims_dir), "--channels", "1,3,5,7", "--out", str(bundle), "--train-fraction", "1.0",
           "--epochs", "30", "--seed", "7", "--quiet"]
    assert main(fit) == 0
    card = load_bundle(bundle).card
    assert card.quantization["decision_agreement"] >= 0.995
    assert card.quantization["correlation"] > 0.9
    assert card.provenance["columns"] == [1, 3, 5, 7]
    assert main(["evaluate", str(bundle), str(ims_dir), "--out", str(tmp_path / "report")]) == 0
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["snapshots"] == 12
    assert report["first_alarm"] is None and report["first_pointwise_alarm"] is None
    assert report["sensor_fault_snapshots"] == 0
    assert report["final_state"] == "normal"


def test_unknown_channel_is_a_clear_error(ims_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fit", str(ims_dir), "--channels", "1,9", "--out", str(tmp_path / "b")]) == 1
    assert "--channels: column 9 does not exist" in capsys.readouterr().err
