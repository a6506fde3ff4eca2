"""Lost-data accounting (edge.ingest.losses) and the intake that feeds it (edge.ingest.intake): unusable samples
add up to lost snapshots, dated from the stream; a lost scoring slot is reported once; silence is noticed.
The intake runs the real guard, stream clock, assembler and cadence on frames encoded and decoded by the real
codec."""
from __future__ import annotations

import numpy as np

from edge.ingest.cadence import Cadence
from edge.ingest.clock import StreamClock
from edge.ingest.guard import SCALE, FrameGuard
from edge.ingest.intake import Intake, Lost
from edge.ingest.losses import MISSING_DATA, Losses, Silence
from edge.ingest.snapshot import Snapshot, SnapshotAssembler
from firmware_bridge.frame import FrameDecoder, encode, encode_status

RATE = 1000  # samples per second: a frame of 100 samples is 0.1 s
T0 = 1_795_000_000_000_000  # 2026-11-18, µs
NOW = T0 + 3_600_000_000  # the agent's clock, an hour later


def test_samples_add_up_to_lost_snapshots_dated_after_the_last_accepted_frame() -> None:
    losses = Losses(snapshot_samples=1000, sample_rate_hz=RATE, channels=2, now_us=lambda: NOW)
    assert losses.lose(600) == []  # not yet a snapshot's worth
    assert losses.lose(600) == [NOW + 1_200_000]  # nothing accepted yet: dated by the agent's clock
    losses.accepted(T0)
    assert losses.lose(800) == [T0 + 800_000]  # 200 left over + 800: the stream time lost since T0
    assert losses.lose(2000) == [T0 + 2_800_000, T0 + 2_800_000]
    # A rejected frame's own plausible wall-clock time wins when it is later.
    assert losses.lose(1000, claimed_us=T0 + 9_000_000) == [T0 + 9_000_000]


def test_dropped_bytes_are_lost_samples_of_every_channel() -> None:
    losses = Losses(snapshot_samples=1000, sample_rate_hz=RATE, channels=2, now_us=lambda: NOW)
    losses.accepted(T0)
    assert losses.noise(0) == []
    assert losses.noise(3999) == []  # 999 samples of 2 channels x 2 bytes
    assert losses.noise(3999) == []  # the decoder's running count: nothing new
    assert losses.noise(4004) == [T0 + 1_000_000]  # one more sample makes the snapshot


def test_silence_is_noticed_once_per_interval_and_a_snapshot_ends_it() -> None:
    silence = Silence(30.0, now=0.0)
    assert not silence.check(0, 29.0)
    assert silence.check(0, 30.0)
    assert not silence.check(0, 59.0) and silence.check(0, 60.0)
    assert not silence.check(1, 85.0)  # a snapshot completed: the clock starts again
    assert not silence.check(1, 114.0) and silence.check(1, 115.0)
    assert not Silence(None, now=0.0).check(0, 1e9)  # stale_after_s unset: never


def intake(interval_s: float = 0.0) -> Intake:
    return Intake(FrameGuard(2, RATE, 0.001, "ttyX"), StreamClock("ttyX", now=lambda: NOW), SnapshotAssembler(1000),
                  Cadence(interval_s), Losses(1000, RATE, 2, now_us=lambda: NOW))


def wire(first: int, scale: float = 0.001, samples: int = 100) -> bytes:
    counts = np.full((samples, 2), 7, dtype=np.int16)
    return encode(counts, sequence=first // samples, first_sample=first, capture_time_us=T0 + first * 1000,
                  sample_rate_hz=RATE, scale=scale)


def feed(front: Intake, data: bytes) -> list[Snapshot | Lost]:
    return [event for frame in FrameDecoder().feed(data) for event in front.frame(frame)]


def test_the_intake_yields_due_snapshots_and_lost_slots_in_stream_order() -> None:
    front = intake()
    events = feed(front, b"".join(wire(first) for first in range(0, 1000, 100)))
    (snapshot,) = events
    assert isinstance(snapshot, Snapshot) and snapshot.capture_time_us == T0 and snapshot.counts.shape == (1000, 2)
    # Ten frames with the wrong scale are a snapshot's worth of samples: one slot lost, for that reason,
    # dated by the last accepted frame's end (1 s) plus the second of samples lost since.
    events = feed(front, b"".join(wire(first, scale=0.004) for first in range(1000, 2000, 100)))
    assert events == [Lost(T0 + 2_000_000, SCALE)]
    # A gap in the sample index discards the snapshot being filled: missing data at the frame after the gap.
    events = feed(front, wire(2000) + wire(2500))
    assert events == [Lost(T0 + 2_500_000, MISSING_DATA)]
    assert front.counters() == {"snapshots": 1, "snapshots_discarded": 1, "frames_rejected": 10, "frames_duplicate": 0,
                                "status_frames": 0, "snapshots_skipped": 0}


def test_the_intake_scores_one_snapshot_per_interval_and_counts_status_frames() -> None:
    front = intake(interval_s=2.0)
    data = b"".join(wire(first) for first in range(0, 3000, 100))
    data += encode_status("boot ok", sequence=99, capture_time_us=T0)
    events = feed(front, data)
    assert [event.capture_time_us for event in events if isinstance(event, Snapshot)] == [T0, T0 + 2_000_000]
    assert front.counters()["snapshots_skipped"] == 1 and front.counters()["status_frames"] == 1
    assert front.noise(0) == []
