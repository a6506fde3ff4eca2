"""The frame guard: frames that do not fit the model are counted and discarded, resends dropped,
status text made safe for a log line."""
from __future__ import annotations

import logging

import numpy as np

from edge.ingest.guard import CHANNELS, SAMPLE_RATE, SCALE, FrameGuard, Throttle, escape
from firmware_bridge.frame import Frame, FrameHeader, FrameType


def header(channels=4, rate=20_000, scale=0.001, first=0, time_us=1_700_000_000_000_000, sequence=0) -> FrameHeader:
    return FrameHeader(1, FrameType.SAMPLES, channels, sequence, first, time_us, rate, scale, 256)


def test_frames_that_do_not_fit_the_model_are_rejected_with_a_reason():
    guard = FrameGuard(4, 20_000, None, "ttyX")
    assert guard.check(header()) is None  # the first usable scale becomes the expected one
    assert guard.check(header(channels=3)) == CHANNELS
    assert guard.check(header(rate=25_600)) == SAMPLE_RATE
    for scale in (float("inf"), float("nan"), 0.0, -0.001, 1.0):
        assert guard.check(header(scale=scale)) == SCALE
    assert guard.check(header(scale=0.0010000000474974513)) is None  # float32 round trip of 0.001
    assert guard.rejected == {CHANNELS: 1, SAMPLE_RATE: 1, SCALE: 5}


def test_the_cards_scale_is_expected_from_the_first_frame():
    guard = FrameGuard(4, 20_000, 0.001, "ttyX")
    assert guard.check(header(scale=0.0039)) == SCALE


def frame(head: FrameHeader, seed: int) -> Frame:
    return Frame(head, np.random.default_rng(seed).integers(-500, 500, size=(256, 4), dtype=np.int16))


def test_a_resent_frame_is_a_duplicate_but_a_new_one_is_not():
    guard = FrameGuard(4, 20_000, None, "ttyX")
    assert not guard.duplicate(frame(header(first=0, sequence=1), seed=1))
    assert not guard.duplicate(frame(header(first=256, sequence=2), seed=2))
    assert guard.duplicate(frame(header(first=0, sequence=3), seed=1))  # same samples, new sequence number
    # A sensor that restarted repeats index and boot time, but its samples are new: not a duplicate.
    assert not guard.duplicate(frame(header(first=0, sequence=0), seed=3))
    assert guard.duplicates == 1


def test_rejections_are_logged_at_most_a_few_times_a_minute(caplog):
    guard = FrameGuard(4, 20_000, None, "ttyX")
    with caplog.at_level(logging.WARNING, logger="edge.ingest.guard"):
        for _ in range(1000):
            guard.check(header(channels=2))
    assert len(caplog.records) == 5 and guard.rejected[CHANNELS] == 1000


def test_status_text_cannot_forge_a_log_line():
    text = "boot ok\nERROR cm-edge: alarm -> normal\r\x1b[2J"
    shown = escape(text)
    assert "\n" not in shown and "\r" not in shown and "\x1b" not in shown
    assert shown.startswith("boot ok\\nERROR")
    assert escape("x" * 500).endswith("(300 more characters)")
    assert escape("Schwingung 3 µm") == "Schwingung 3 µm"  # printable text stays readable


def test_throttle_reopens_after_its_period():
    now = [0.0]
    throttle = Throttle(period=60, burst=2, clock=lambda: now[0])
    assert [throttle.allow("k") for _ in range(4)] == [True, True, False, False]
    now[0] = 61
    assert throttle.allow("k") and throttle.suppressed_note("k") == " (2 similar line(s) held back)"
