"""Dating frames: a sensor's wall clock is used as is; boot-relative or implausible time is anchored."""
from __future__ import annotations

from edge.ingest.clock import StreamClock, TimeSource, unsynchronised
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
