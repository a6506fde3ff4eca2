"""Dating frames: a sensor's wall clock is used as is; boot-relative or implausible time is anchored."""
from __future__ import annotations

from edge.ingest.clock import CONFIRM_US, StreamClock, TimeSource, unsynchronised
from firmware_bridge.frame import FLAG_BOOT_TIME, FrameHeader, FrameType

NOW = 1_795_000_000_000_000  # 2026-11, µs
RATE = 1000


def header(capture_time_us: int, first_sample: int = 0, flags: int = FLAG_BOOT_TIME, count: int = 100) -> FrameHeader:
    return FrameHeader(1, FrameType.SAMPLES, 4, 0, first_sample, capture_time_us, RATE, 0.001, count, flags)


class FakeNow:
    def __init__(self) -> None:
        self.value = NOW

    def __call__(self) -> int:
        return self.value


def test_boot_relative_time_is_anchored_at_the_frame_end_and_follows_the_sensor():
    now = FakeNow()
    clock = StreamClock("ttyX", now)
    assert clock.epoch_us(header(5_000_000)) == (NOW - 100_000, TimeSource.AGENT)  # 100 samples at 1 kHz
    now.value += 60_000_000  # the agent's clock moves on; the sensor's time decides
    assert clock.epoch_us(header(5_100_000, 100))[0] == NOW
    assert clock.anchors == 1


def test_a_sensor_restart_re_anchors_so_time_never_goes_back():
    now = FakeNow()
    clock = StreamClock("ttyX", now)
    clock.epoch_us(header(900_000_000, 900_000))
    now.value += 2_000_000
    restarted, source = clock.epoch_us(header(1_000, 0))  # sample index and boot time back near zero
    assert source is TimeSource.AGENT and restarted == now.value - 100_000
    assert clock.anchors == 2


def test_a_sensor_wall_clock_is_used_as_is():
    clock = StreamClock("ttyX", FakeNow())
    t = 1_076_582_000_000_000  # 2004: IMS recordings replay with their own dates
    assert clock.epoch_us(header(t, flags=0)) == (t, TimeSource.SENSOR)


def test_implausible_sensor_times_are_anchored_not_trusted():
    clock = StreamClock("ttyX", FakeNow())
    for raw in (5_000_000, 2**63 - 1, -(2**63)):  # 1970 without the flag, and the extremes of the i64
        epoch, source = clock.epoch_us(header(raw, flags=0))
        assert source is TimeSource.AGENT and abs(epoch - NOW) < 1_000_000
    epoch, _ = clock.epoch_us(header(2**63 - 1, 10**6))  # a boot-relative jump to the end of time
    assert abs(epoch - NOW) < 1_000_000


def test_an_unset_system_clock_is_noticed():
    assert "1970" in unsynchronised(0)
    assert unsynchronised(NOW) is None


# --- a sensor wall clock that glitches -------------------------------------------------------------------

HOUR_US = 3_600_000_000
FEMTO_RATE, FRAME, PER_SNAPSHOT = 25_600, 256, 10  # a snapshot of 2,560 samples every 10 s, as FEMTO recorded


def wall(capture_time_us: int, first_sample: int) -> FrameHeader:
    return FrameHeader(1, FrameType.SAMPLES, 2, 0, first_sample, capture_time_us, FEMTO_RATE, 0.001, FRAME, 0)


def bursts(snapshots: int, start_us: int = NOW) -> list[tuple[int, int]]:
    """(capture time, first sample) of every frame of a stream that records a burst every 10 s (a FEMTO replay)."""
    return [(start_us + s * 10_000_000 + f * FRAME * 1_000_000 // FEMTO_RATE, (s * PER_SNAPSHOT + f) * FRAME)
            for s in range(snapshots) for f in range(PER_SNAPSHOT)]


def dated(frames: list[tuple[int, int]], clock: StreamClock) -> list[tuple[int, TimeSource]]:
    return [clock.epoch_us(wall(t, sample)) for t, sample in frames]


def test_one_snapshot_stamped_hours_off_is_dated_at_the_pace_and_the_stream_keeps_its_day(caplog) -> None:
    """A burst stamped six hours early (as one real FEMTO file is) or a day late: its frames are dated where
    the stream's pace puts them, said to be dated by the agent and logged; the stream is never shifted."""
    honest = bursts(12)
    for jump in (-6 * HOUR_US, 24 * HOUR_US):
        frames = [(t + jump if 60 <= i < 70 else t, sample) for i, (t, sample) in enumerate(honest)]
        clock = StreamClock("ttyX", FakeNow())
        with caplog.at_level("WARNING"):
            out = dated(frames, clock)
        assert [t for t, _ in out] == [t for t, _ in honest]
        assert [i for i, (_, source) in enumerate(out) if source is TimeSource.AGENT] == list(range(60, 70))
        assert clock.pace.doubted == 10 and "off the stream's pace" in caplog.text


def test_one_frame_off_inside_a_burst_or_a_continuous_stream_is_dated_between_its_neighbours() -> None:
    for honest in (bursts(6), [(NOW + i * FRAME * 1_000_000 // FEMTO_RATE, i * FRAME) for i in range(60)]):
        frames = [(t - 6 * HOUR_US if i == 33 else t, sample) for i, (t, sample) in enumerate(honest)]
        out = dated(frames, StreamClock("ttyX", FakeNow()))
        assert [t for t, _ in out] == [t for t, _ in honest]
        assert [i for i, (_, source) in enumerate(out) if source is TimeSource.AGENT] == [33]


def test_a_clock_that_really_steps_or_a_pause_is_followed_once_the_stream_carries_on() -> None:
    honest = bursts(8)
    # The sensor paused for two hours after its fourth burst: its first burst back is doubted, then followed.
    paused = [(t + 2 * HOUR_US if i >= 40 else t, sample) for i, (t, sample) in enumerate(honest)]
    out = dated(paused, StreamClock("ttyX", FakeNow()))
    assert [t for t, _ in out[50:]] == [t for t, _ in paused[50:]]
    assert {source for _, source in out[40:50]} == {TimeSource.AGENT} and out[40][0] == honest[40][0]
    # A pause of minutes is a gap as any other.
    short = [(t + 10 * 60_000_000 if i >= 40 else t, sample) for i, (t, sample) in enumerate(honest)]
    assert dated(short, StreamClock("ttyX", FakeNow())) == [(t, TimeSource.SENSOR) for t, _ in short]
    # A continuous stream whose clock is set back an hour: followed after CONFIRM_US of samples.
    step = FRAME * 1_000_000 // FEMTO_RATE
    frames = [(NOW + i * step - (HOUR_US if i >= 100 else 0), i * FRAME) for i in range(1500)]
    out = dated(frames, StreamClock("ttyX", FakeNow()))
    followed = [i for i, (t, source) in enumerate(out) if i >= 100 and source is TimeSource.SENSOR]
    assert followed and followed[0] == 100 + CONFIRM_US // step and out[-1][0] == frames[-1][0]
    assert all(out[i][0] == NOW + i * step for i in range(100, followed[0]))
