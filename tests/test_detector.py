"""The detector's promises: debounced raise, hysteresis on clear, sensor faults as their own state."""
from __future__ import annotations

import numpy as np
import pytest

from edge.model.bundle import DetectorSettings
from edge.scoring.detector import Detector, State

SETTINGS = DetectorSettings(warning_threshold=1.0, alarm_threshold=2.0, k=3, n=5, clear_after=4, fault_after=2)


def run(scores, settings=SETTINGS):
    detector = Detector(settings)
    states = []
    for score in scores:
        if isinstance(score, str):
            detector.update(None, fault=score)
        else:
            detector.update(score)
        states.append(detector.state)
    return states


def test_single_spikes_never_alarm():
    scores = [0.5, 5.0, 0.5, 0.5, 5.0, 0.5, 0.5, 0.5, 5.0, 0.5]
    assert set(run(scores)) == {State.NORMAL}


def test_k_of_n_raises_alarm_on_the_kth_exceedance():
    states = run([0.5, 3.0, 0.5, 3.0, 3.0, 3.0])
    assert states[:4] == [State.NORMAL] * 4
    assert states[4] == State.ALARM


def test_warning_between_thresholds():
    assert run([1.5, 1.5, 1.5])[-1] == State.WARNING


def test_alarm_holds_until_clear_after_consecutive_quiet_snapshots():
    states = run([3.0] * 3 + [1.5] * 6 + [0.5] * 3 + [1.5] + [0.5] * 4)
    assert states[2] == State.ALARM
    # Scores between the thresholds keep the alarm (hysteresis); a quiet run interrupted does not clear it.
    assert all(s == State.ALARM for s in states[2:16])
    assert states[-1] == State.NORMAL


def test_sensor_fault_needs_consecutive_faults_and_keeps_bearing_state():
    states = run([3.0, 3.0, 3.0, "dropout:b1", 3.0, "dropout:b1", "dropout:b1", 3.0])
    assert states[3] == State.ALARM  # one fault alone is not yet a sensor fault
    assert states[6] == State.SENSOR_FAULT
    assert states[7] == State.ALARM  # back from the fault, the bearing is still in alarm


def test_transitions_carry_previous_state_and_reason():
    detector = Detector(SETTINGS)
    assert detector.update(None, fault="flatline:b2") is None
    transition = detector.update(None, fault="flatline:b2")
    assert (transition.state, transition.previous_state, transition.reason) == (
        State.SENSOR_FAULT, State.NORMAL, "flatline:b2")
    assert detector.update(None, fault="flatline:b2") is None  # no repeated event for the same state


@pytest.mark.parametrize("kwargs", [dict(warning_threshold=2.0, alarm_threshold=1.0), dict(k=6, n=5), dict(clear_after=0)])
def test_bad_settings_name_what_is_wrong(kwargs):
    base = dict(warning_threshold=1.0, alarm_threshold=2.0)
    with pytest.raises(ValueError):
        DetectorSettings(**{**base, **kwargs})


def test_resumed_alarm_neither_repeats_nor_clears_early():
    detector = Detector(SETTINGS)
    detector.resume(State.ALARM, State.ALARM, None)
    transitions = [detector.update(s) for s in [3.0, 3.0, 3.0, 0.5, 0.5, 0.5]]
    assert transitions == [None] * 6 and detector.state == State.ALARM
    assert detector.update(0.5).state == State.NORMAL  # the 4th quiet snapshot (clear_after=4)


def test_a_resumed_alarm_names_its_saved_bearing_until_another_raises_k_of_n():
    detector = Detector(SETTINGS)
    detector.resume(State.ALARM, State.ALARM, None, driver=2)
    # Below the alarm threshold everywhere, channel 0 the loudest: still bearing 2's alarm, not one snapshot's arg-max.
    detector.update(1.5, channel_scores=np.array([1.5, 0.2, 1.2]))
    assert detector.state == State.ALARM and detector.driver == 2
    for _ in range(SETTINGS.k):
        detector.update(3.0, channel_scores=np.array([3.0, 0.2, 0.4]))
    assert detector.driver == 0  # channel 0 raised k of n itself


def test_resumed_sensor_fault_returns_to_the_saved_bearing_state():
    detector = Detector(SETTINGS)
    detector.resume(State.SENSOR_FAULT, State.WARNING, "dropout:b3")
    assert detector.update(None, fault="dropout:b3") is None
    transition = detector.update(1.5)
    assert (transition.previous_state, transition.state) == (State.SENSOR_FAULT, State.WARNING)
