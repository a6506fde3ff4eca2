"""The detector's promises: debounced raise, hysteresis on clear, sensor faults as their own state."""
from __future__ import annotations

from dataclasses import replace

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


# Debounce in seconds: the card's persist_s and clear_after_s span the same time at any cadence.
TIMED = DetectorSettings(warning_threshold=1.0, alarm_threshold=2.0, k=2, n=3, clear_after=6, fault_after=2,
                         persist_s=60.0, clear_after_s=3600.0)


def clearing_time_s(interval_s, settings=TIMED):
    """Seconds from the first quiet snapshot after an alarm until the alarm clears, at one snapshot per interval_s."""
    detector = Detector(settings, interval_s)
    for _ in range(detector.debounce.n):
        detector.update(3.0)
    assert detector.state == State.ALARM
    for quiet in range(1, 100_000):
        detector.update(0.5)
        if detector.state == State.NORMAL:
            return (quiet - 1) * interval_s
    raise AssertionError("never cleared")


@pytest.mark.parametrize("interval_s", [1.0, 10.0, 60.0, 600.0])
def test_an_alarm_clears_after_the_same_time_at_any_cadence(interval_s):
    # One quiet hour clears the alarm, whether that is 3,600 snapshots or 6; a snapshot ends its interval.
    assert clearing_time_s(interval_s) + interval_s == pytest.approx(3600.0)


def test_at_a_slow_cadence_the_counts_are_the_floor():
    # At one snapshot per hour the seconds would mean one snapshot: never fewer than k of n and clear_after.
    assert clearing_time_s(3600.0) == 5 * 3600.0
    assert Detector(TIMED, 3600.0).debounce == TIMED


def test_persistence_in_seconds_rejects_a_short_burst_at_a_fast_cadence():
    # At 10 s, 60 s of persistence is 6 snapshots of which 4 (k/n = 2/3) must exceed: a 30 s burst is no alarm.
    burst = [0.5] * 10 + [3.0] * 3 + [0.5] * 10
    detector = Detector(TIMED, 10.0)
    assert (detector.debounce.k, detector.debounce.n) == (4, 6)
    assert {update(detector, s) for s in burst} == {State.NORMAL}
    # The counts alone (a card without seconds) alarm on the same burst: the old behaviour, kept for old cards.
    old = Detector(replace(TIMED, persist_s=None, clear_after_s=None), 10.0)
    assert State.ALARM in {update(old, s) for s in burst}
    # Sustained for 40 s of the last 60 s, it is an alarm.
    assert update_all(Detector(TIMED, 10.0), [0.5] * 5 + [3.0] * 4)[-1] == State.ALARM


def test_a_score_wavering_around_the_threshold_is_one_episode_not_many():
    # Ten minutes up, ten minutes down, for five hours, at 10 s: with clear_after in snapshots (6 = 60 s) it
    # flaps every cycle; with clear_after_s (one hour) it is a single alarm from the first rise on.
    cycle = [3.0] * 60 + [0.5] * 60
    scores = [0.5] * 30 + cycle * 15
    flapping = update_all(Detector(replace(TIMED, persist_s=None, clear_after_s=None), 10.0), scores)
    steady = update_all(Detector(TIMED, 10.0), scores)
    assert episodes(flapping) == 15
    assert episodes(steady) == 1 and steady[-1] == State.ALARM


def test_cards_without_seconds_count_snapshots_at_any_cadence():
    plain = replace(TIMED, persist_s=None, clear_after_s=None)
    for interval_s in (None, 0.0, 1.0, 600.0):
        assert Detector(plain, interval_s).debounce == plain


@pytest.mark.parametrize("kwargs", [dict(persist_s=-1.0), dict(clear_after_s=-5.0), dict(clear_after_s=1e12)])
def test_bad_debounce_seconds_name_the_key(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        replace(TIMED, **kwargs)


def update(detector, score):
    detector.update(score)
    return detector.state


def update_all(detector, scores):
    return [update(detector, s) for s in scores]


def episodes(states):
    raised = [s != State.NORMAL for s in states]
    return sum(1 for before, now in zip([False] + raised, raised) if now and not before)
