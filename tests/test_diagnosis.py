"""Diagnosis: a synthetic bearing with a known defect frequency is named by its envelope line; unclear
evidence says unknown; ISO 20816 zones follow the group's boundaries; the pipeline puts both in messages."""
from __future__ import annotations

import numpy as np
import pytest
from signals import defect_signal, to_counts

from edge.model.bearing import PRESETS
from edge.model.features import VIBRATION_FEATURES, FeatureConfig, FeatureExtractor
from edge.scoring.diagnosis import MIN_PROMINENCE, diagnose, zone, zones

RATE, N, RPM = 20_000, 20_480, 1800.0
BEARING = PRESETS["6205-2rs"]
LINES = BEARING.frequencies(RPM)


def analyse(*signals: np.ndarray):
    return FeatureExtractor(FeatureConfig("vibration", RATE, BEARING, RPM)).analyse(to_counts(*signals), 0.001)


@pytest.mark.parametrize("defect,kind,modulate", [
    ("bpfo", "outer_race", False), ("bpfi", "inner_race", True)])
def test_a_known_defect_frequency_is_diagnosed_on_the_right_channel(defect: str, kind: str, modulate: bool) -> None:
    healthy = defect_signal(RATE, N, None, seed=1)
    faulty = defect_signal(RATE, N, LINES[defect], shaft_hz=RPM / 60, modulate=modulate, seed=2)
    analysis = analyse(healthy, faulty)
    found = diagnose(analysis.line_hz, analysis.prominence, ("drive_end", "fan_end"))
    assert found.kind == kind and found.channel == "fan_end"
    assert found.frequency_hz == pytest.approx(LINES[defect], abs=max(0.01 * LINES[defect], RATE / N))
    assert found.prominence >= MIN_PROMINENCE
    assert set(found.payload()) == {"kind", "frequency_hz", "channel", "prominence"}


def test_a_rolling_element_defect_at_twice_the_spin_frequency_is_named() -> None:
    faulty = defect_signal(RATE, N, 2 * LINES["bsf"], shaft_hz=RPM / 60, seed=4)
    analysis = analyse(faulty)
    found = diagnose(analysis.line_hz, analysis.prominence, ("ch1",))
    assert found.kind == "rolling_element"
    assert found.frequency_hz == pytest.approx(2 * LINES["bsf"], rel=0.01)


def test_no_clear_line_is_unknown_rather_than_a_guess() -> None:
    analysis = analyse(defect_signal(RATE, N, None, seed=5))
    assert diagnose(analysis.line_hz, analysis.prominence, ("ch1",)).kind == "unknown"
    # Two lines of similar height (outer race 10x, inner race 8x background): no winner, no guess.
    close = np.array([[10.0, 8.0, 1.0, 1.0]])
    assert diagnose(np.array([[107.0, 162.0, 70.0, 12.0]]), close, ("ch1",)).kind == "unknown"
    clear = np.array([[10.0, 5.0, 1.0, 1.0]])
    assert diagnose(np.array([[107.0, 162.0, 70.0, 12.0]]), clear, ("ch1",)).kind == "outer_race"
    cage = np.array([[2.0, 1.0, 1.0, 7.0]])
    assert diagnose(np.array([[107.0, 162.0, 70.0, 12.0]]), cage, ("ch1",)).kind == "cage"


def test_cage_impacts_are_not_called_outer_race() -> None:
    """BPFO is balls x FTF: an impact train at FTF has a harmonic exactly on BPFO. Whatever the rule says
    then, it must not claim an outer-race defect with confidence it does not have."""
    analysis = analyse(defect_signal(RATE, N, LINES["ftf"], shaft_hz=RPM / 60, seed=6))
    assert diagnose(analysis.line_hz, analysis.prominence, ("ch1",)).kind in ("cage", "unknown")


def test_iso_zones_follow_the_group_boundaries() -> None:
    assert [zone(v, "2-rigid") for v in (0.5, 1.4, 1.5, 2.9, 4.6)] == ["A", "A", "B", "C", "D"]
    assert [zone(v, "1-flexible") for v in (3.0, 5.0, 8.0, 12.0)] == ["A", "B", "C", "D"]
    row = np.zeros(2 * len(VIBRATION_FEATURES))
    row[VIBRATION_FEATURES.index("velocity_rms")] = 0.3
    row[len(VIBRATION_FEATURES) + VIBRATION_FEATURES.index("velocity_rms")] = 9.0
    assert zones(row, VIBRATION_FEATURES, ("a", "b")) == {"a": "A", "b": "D"}
    assert zones(np.ones(2), ("mean_abs",), ("a", "b")) is None
