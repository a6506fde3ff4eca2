"""Snapshot assembly from decoded frames: alignment, spanning frames, gaps discard and count."""
from __future__ import annotations

import numpy as np

from edge.ingest.snapshot import SnapshotAssembler
from firmware_bridge.frame import FrameDecoder, encode

RATE = 20_000
T0 = 1_700_000_000_000_000


def frames(samples: np.ndarray, first_sample: int, frame_samples: int, skip: set[int] = frozenset()):
    """Encode then decode, so the assembler sees exactly what the link would hand it."""
    decoder = FrameDecoder()
    out = []
    for seq, start in enumerate(range(0, len(samples), frame_samples)):
        if seq in skip:
            continue
        first = first_sample + start
        wire = encode(samples[start:start + frame_samples], sequence=seq, first_sample=first,
                      capture_time_us=T0 + first * 1_000_000 // RATE, sample_rate_hz=RATE, scale=0.001)
        out += decoder.feed(wire)
    return out


def assemble(assembler, frame_list):
    return [snap for frame in frame_list for snap in assembler.add(frame)]


def test_snapshots_are_aligned_to_the_sample_index_and_carry_the_first_sample_time():
    samples = np.random.default_rng(0).integers(-500, 500, size=(3000, 4), dtype=np.int16)
    # Start mid-snapshot (sample 700 of 1000): the first 300 samples belong to no complete snapshot.
    snaps = assemble(SnapshotAssembler(1000), frames(samples, first_sample=700, frame_samples=256))
    assert [s.index for s in snaps] == [1, 2]
    assert snaps[0].first_sample == 1000
    np.testing.assert_array_equal(snaps[0].counts, samples[300:1300])
    np.testing.assert_array_equal(snaps[1].counts, samples[1300:2300])
    assert snaps[0].capture_time_us == T0 + 1000 * 1_000_000 // RATE


def test_a_lost_frame_discards_only_the_snapshot_it_belongs_to():
    samples = np.random.default_rng(1).integers(-500, 500, size=(4096, 2), dtype=np.int16)
    assembler = SnapshotAssembler(1024)
    snaps = assemble(assembler, frames(samples, first_sample=0, frame_samples=256, skip={5}))
    assert [s.index for s in snaps] == [0, 2, 3]
    assert assembler.discarded == 1 and assembler.completed == 3


def test_a_sender_restart_discards_the_partial_snapshot():
    samples = np.random.default_rng(2).integers(-500, 500, size=(2048, 1), dtype=np.int16)
    assembler = SnapshotAssembler(1024)
    assemble(assembler, frames(samples[:512], first_sample=5000 * 1024, frame_samples=256))
    snaps = assemble(assembler, frames(samples, first_sample=0, frame_samples=256))
    assert [s.index for s in snaps] == [0, 1]
    assert assembler.discarded == 1
