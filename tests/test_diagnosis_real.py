"""Diagnosis on real seeded faults (CWRU, 48 kHz, drive-end 6205-2RS at 1796 rpm): the inner-race and outer-race
faults are named with their envelope line within 2% of the README's frequency; the healthy recording names none."""
from __future__ import annotations

from pathlib import Path

import pytest

from edge.model.bearing import PRESETS
from edge.model.features import FeatureConfig, FeatureExtractor
from edge.scoring.diagnosis import diagnose
from firmware_bridge.recording import RecordingSpec, open_recording

EXTRACT = FeatureExtractor(FeatureConfig("vibration", 48_000, PRESETS["6205-2rs"], 1796.0))


def diagnoses(path: Path) -> list:
    recording = open_recording(path, RecordingSpec(sample_rate_hz=48_000, snapshot_samples=16_384, channels=["DE", "FE"]))
    found = []
    for snapshot in recording.snapshots():
        analysis = EXTRACT.analyse(snapshot.counts, snapshot.scale)
        found.append(diagnose(analysis.line_hz, analysis.prominence, recording.channels))
    return found


@pytest.mark.parametrize("name,kind,readme_hz", [
    ("48k_Drive_End_IR007_0_109.mat", "inner_race", 162.1),
    ("48k_Drive_End_OR007@6_0_135.mat", "outer_race", 107.3),
])
def test_seeded_faults_are_named_at_the_readmes_frequency(cwru_dir: Path, name: str, kind: str, readme_hz: float) -> None:
    found = diagnoses(cwru_dir / name)
    assert {d.kind for d in found} == {kind} and {d.channel for d in found} == {"DE"}
    assert all(abs(d.frequency_hz - readme_hz) <= 0.02 * readme_hz for d in found)


def test_the_healthy_recording_names_no_defect(cwru_dir: Path) -> None:
    assert {d.kind for d in diagnoses(cwru_dir / "normal_0_97.mat")} == {"unknown"}
