"""The drift floor: a few percent of healthy wander beyond a short training span never alarms; a defect does.

Unit level, no training: a stand-in for the autoencoder that reproduces whatever lies inside the training
range and nothing beyond it (its error is how far an input lies outside the range, in scaled units). That is
the case the floor exists for: a model that reproduces its narrow training span closely gets a tiny
reference, so the next few percent of load or temperature wander would read as a fault.
"""
from __future__ import annotations

import numpy as np
import pytest

from edge.model.bundle import DetectorSettings, Scaler
from edge.scoring.detector import Detector, State
from trainer import calibrate

CHANNELS, FEATURES = 2, 3
LEVEL = np.array([0.07, 3.0, 0.2] * CHANNELS)  # e.g. mean_abs in g, kurtosis, an RMS: each column's healthy level


def healthy_span(rng: np.random.Generator, snapshots: int = 20) -> np.ndarray:
    """A short span of a slow wander: it covers only about +-0.5% of each level."""
    return LEVEL * (1 + 0.005 * np.sin(np.linspace(0, 1, snapshots))[:, None] + 0.001 * rng.standard_normal(
        (snapshots, LEVEL.size)))


def channel_errors(scaler: Scaler, features: np.ndarray) -> np.ndarray:
    """The stand-in model's per-channel error: distance outside the training range, scaled, plus a small residual."""
    scaled = scaler.transform(features)
    beyond = np.maximum(scaled - 1, 0) + np.maximum(-scaled, 0) + 0.01
    return beyond.reshape(len(features), CHANNELS, FEATURES).mean(axis=2)


def calibrated(fraction: float) -> tuple[Scaler, np.ndarray, DetectorSettings]:
    rng = np.random.default_rng(0)
    train = healthy_span(rng)
    scaler = Scaler.fit(train)
    scale = scaler.transform(np.ones((1, LEVEL.size)))[0] - scaler.transform(np.zeros((1, LEVEL.size)))[0]
    drift = calibrate.drift_floor(train, scale, FEATURES, fraction) if fraction else None
    errors = channel_errors(scaler, train)
    reference = np.array(calibrate.channel_reference(errors[:14], errors[14:], drift))
    scores = (errors / reference).max(axis=1)
    limits = calibrate.thresholds("calibration", scores[:14], scores[14:], 30)
    return scaler, reference, calibrate.detector_settings(limits)


def states(fraction: float, features: np.ndarray) -> list[State]:
    scaler, reference, settings = calibrated(fraction)
    detector = Detector(settings, interval_s=600.0)
    out = []
    for row in channel_errors(scaler, features) / reference:
        detector.update(float(row.max()), channel_scores=row)
        out.append(detector.state)
    return out


@pytest.mark.parametrize("wander", [0.02, 0.05, -0.05])
def test_a_few_percent_of_wander_never_raises_anything(wander):
    later = np.tile(LEVEL * (1 + wander), (50, 1))  # the whole machine a few % louder (or quieter) for 8 hours
    assert set(states(calibrate.DRIFT_FRACTION, later)) == {State.NORMAL}
    # Without the floor the same wander is an alarm: the test would catch the floor's removal.
    assert State.ALARM in states(0.0, later)


def test_a_defect_on_one_channel_still_alarms_and_names_it():
    later = np.tile(LEVEL, (12, 1))
    later[4:, FEATURES:] *= 1.5  # channel 2's features up by half: an early defect, far from a few %
    scaler, reference, settings = calibrated(calibrate.DRIFT_FRACTION)
    detector = Detector(settings, interval_s=600.0)
    for row in channel_errors(scaler, later) / reference:
        detector.update(float(row.max()), channel_scores=row)
    assert detector.state == State.ALARM and detector.driver == 1


def test_the_floor_is_the_error_of_the_wander_it_covers():
    # Per channel: fraction x |level| / the training span, averaged over the channel's features.
    healthy = np.array([[1.0, -2.0], [1.2, -2.2]])  # one channel, two features; spans 0.2 and 0.2
    scale = np.array([1 / 0.2, 1 / 0.2])
    floor = calibrate.drift_floor(healthy, scale, 2, 0.05)
    assert floor == pytest.approx([(0.05 * 1.1 / 0.2 + 0.05 * 2.1 / 0.2) / 2])


def test_the_thresholds_stay_multiples_of_a_floored_reference():
    # A reference lifted by the floor leaves every healthy score below 1: the thresholds do not shrink with it.
    limits = calibrate.thresholds("calibration", np.array([0.1, 0.2]), np.array([0.15, 0.3]), 40)
    assert (limits.warning, limits.alarm) == (calibrate.WARNING_MARGIN, calibrate.ALARM_MARGIN)


def test_cards_state_clearing_in_seconds():
    settings = calibrate.detector_settings(calibrate.thresholds("calibration", np.ones(3), np.ones(3), 40))
    assert (settings.persist_s, settings.clear_after_s) == (calibrate.PERSIST_S, calibrate.CLEAR_AFTER_S)
    # Labelled tables' rows are cases, not moments of one machine: their debounce stays in rows.
    rows = calibrate.detector_settings(calibrate.thresholds("calibration", np.ones(3), np.ones(3), 40), False)
    assert (rows.persist_s, rows.clear_after_s) == (None, None)
