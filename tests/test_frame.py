"""Wire codec: round trips, and a decoder that survives any byte stream without losing intact frames."""
from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from cobs import cobs
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from firmware_bridge.frame import HEADER, MAX_PAYLOAD, Frame, FrameDecoder, FrameType, encode, encode_status, max_wire_length

FIELDS = dict(first_sample=0, capture_time_us=1_066_824_384_000_000, sample_rate_hz=20_000, scale=0.001)
FUZZ = settings(max_examples=150, deadline=None)


def samples_frame(sequence: int, n: int = 16, channels: int = 4, seed: int = 0) -> bytes:
    counts = np.random.default_rng(seed).integers(-32768, 32768, size=(n, channels))
    return encode(counts, sequence=sequence, **{**FIELDS, "first_sample": sequence * n})


def stream(count: int = 6, n: int = 16) -> list[bytes]:
    return [samples_frame(i, n=n, seed=i) for i in range(count)]


def reencode(frame: Frame) -> bytes:
    """Wire bytes of a decoded frame, to compare it with what was sent."""
    h = frame.header
    if h.frame_type is FrameType.STATUS:
        return encode_status(frame.message, sequence=h.sequence, capture_time_us=h.capture_time_us)
    return encode(frame.samples, sequence=h.sequence, first_sample=h.first_sample,
                  capture_time_us=h.capture_time_us, sample_rate_hz=h.sample_rate_hz, scale=h.scale)


def raw_frame(*header_fields: object, payload: bytes) -> bytes:
    """A frame with arbitrary header fields but a correct CRC, to reach the header checks."""
    raw = HEADER.pack(*header_fields) + payload
    return cobs.encode(raw + struct.pack("<I", zlib.crc32(raw))) + b"\x00"


# --- round trips ---------------------------------------------------------------------------------

@FUZZ
@given(
    counts=hnp.arrays(np.int16, st.tuples(st.integers(0, 300), st.integers(1, 32))).filter(
        lambda a: a.nbytes <= MAX_PAYLOAD),
    sequence=st.integers(0, 2**32 - 1),
    first_sample=st.integers(0, 2**64 - 1),
    capture_time_us=st.integers(-(2**63), 2**63 - 1),
    rate=st.integers(0, 2**32 - 1),
    scale=st.floats(width=32, allow_nan=False),
)
def test_samples_round_trip(counts: np.ndarray, sequence: int, first_sample: int, capture_time_us: int,
                            rate: int, scale: float) -> None:
    wire = encode(counts, sequence=sequence, first_sample=first_sample, capture_time_us=capture_time_us,
                  sample_rate_hz=rate, scale=scale)
    assert wire.index(b"\x00") == len(wire) - 1
    (decoded,) = FrameDecoder().feed(wire)
    np.testing.assert_array_equal(decoded.samples, counts)
    assert decoded.samples.shape == counts.shape and decoded.samples.dtype == np.dtype("<i2")
    h = decoded.header
    assert (h.version, h.frame_type, h.channels, h.sample_count) == (1, FrameType.SAMPLES, counts.shape[1],
                                                                      counts.shape[0])
    assert (h.sequence, h.first_sample, h.capture_time_us, h.sample_rate_hz, h.scale) == (
        sequence, first_sample, capture_time_us, rate, scale)


@FUZZ
@given(st.text(max_size=2000))
def test_status_round_trip(message: str) -> None:
    (decoded,) = FrameDecoder().feed(encode_status(message, sequence=9, capture_time_us=-1))
    assert decoded.message == message and decoded.header.frame_type is FrameType.STATUS
    assert decoded.samples.shape == (0, 0) and decoded.header.channels == 0


def test_decoded_samples_are_read_only() -> None:
    (decoded,) = FrameDecoder().feed(samples_frame(0))
    with pytest.raises(ValueError):
        decoded.samples[0, 0] = 1


@pytest.mark.parametrize("counts,match", [
    (np.zeros(4, dtype=np.int16), "2-D"),
    (np.zeros((4, 2), dtype=np.float32), "integer"),
    (np.zeros((4, 33), dtype=np.int16), "channels=33"),
    (np.zeros((4, 0), dtype=np.int16), "channels=0"),
    (np.full((4, 2), 40_000), "int16 range"),
    (np.zeros((2049, 4), dtype=np.int16), "payload bytes=16392"),
])
def test_encode_rejects_what_the_wire_cannot_carry(counts: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        encode(counts, sequence=0, **FIELDS)


def test_encode_rejects_out_of_range_fields() -> None:
    with pytest.raises(ValueError, match="sequence"):
        encode(np.zeros((1, 1), dtype=np.int16), sequence=2**32, **FIELDS)
    with pytest.raises(ValueError, match="status message bytes"):
        encode_status("x" * (MAX_PAYLOAD + 1), sequence=0, capture_time_us=0)


# --- streaming and resynchronisation ------------------------------------------------------------

def test_stream_split_at_every_byte_boundary() -> None:
    frames = stream(3, n=8) + [encode_status("ok", sequence=3, capture_time_us=0)]
    data = b"".join(frames)
    for cut in range(len(data) + 1):
        decoder = FrameDecoder()
        decoded = decoder.feed(data[:cut]) + decoder.feed(data[cut:])
        assert [reencode(f) for f in decoded] == frames, cut
        assert decoder.stats.frames == 4 and decoder.stats.bytes_dropped == 0 and decoder.stats.resyncs == 0


def test_byte_by_byte_feed() -> None:
    frames = stream(3)
    decoder = FrameDecoder()
    decoded = [f for byte in b"".join(frames) for f in decoder.feed(bytes([byte]))]
    assert [reencode(f) for f in decoded] == frames


@FUZZ
@given(st.binary(max_size=5000), st.lists(st.integers(1, 700), max_size=20))
def test_random_bytes_never_raise(data: bytes, chunk_sizes: list[int]) -> None:
    decoder = FrameDecoder()
    position, decoded = 0, []
    for size in chunk_sizes + [len(data)]:
        decoded += decoder.feed(data[position:position + size])
        position += size
    for frame in decoded:  # a frame that comes out must be one that a sender could have sent
        assert reencode(frame) in data
    assert decoder.stats.bytes_in == len(data)


@FUZZ
@given(st.data())
def test_bit_flip_costs_at_most_the_frames_it_touches(data: st.DataObject) -> None:
    frames = stream(6)
    wire = bytearray(b"".join(frames))
    bit = data.draw(st.integers(0, len(wire) * 8 - 1))
    wire[bit // 8] ^= 1 << (bit % 8)
    decoder = FrameDecoder()
    decoded = [reencode(f) for f in decoder.feed(bytes(wire))]
    # Which frames the flipped byte belongs to: a flipped delimiter merges a frame with the next one.
    ends = np.cumsum([len(f) for f in frames])
    hit = int(np.searchsorted(ends, bit // 8, side="right"))
    touched = {hit, hit + 1} if bit // 8 == ends[hit] - 1 else {hit}
    assert decoded == [f for i, f in enumerate(frames) if i not in touched] or decoded == [
        f for i, f in enumerate(frames) if i not in {hit}]
    assert len(decoded) < len(frames)
    if bit // 8 < len(wire) - 1:  # a flip of the final delimiter leaves the last frame pending, not damaged
        assert decoder.stats.crc_errors + decoder.stats.malformed >= 1
    assert decoder.stats.resyncs == (1 if max(touched) < len(frames) - 1 else 0)


@FUZZ
@given(st.data())
def test_truncated_frame_then_sender_restart(data: st.DataObject) -> None:
    """An MCU reset mid-frame: the sender's leading 0x00 after boot confines the loss to the cut frame."""
    frames = stream(4)
    cut = data.draw(st.integers(1, len(frames[1]) - 2))
    wire = frames[0] + frames[1][:cut] + b"\x00" + b"".join(frames[2:])
    decoder = FrameDecoder()
    decoded = [reencode(f) for f in decoder.feed(wire)]
    assert decoded == [frames[0], *frames[2:]]
    assert decoder.stats.resyncs == 1 and decoder.stats.bytes_dropped == cut + 1
    assert decoder.stats.crc_errors + decoder.stats.malformed == 1


def test_joining_mid_stream_resyncs_at_the_next_frame() -> None:
    frames = stream(4)
    wire = b"".join(frames)[len(frames[0]) // 2:]
    decoder = FrameDecoder()
    decoded = [reencode(f) for f in decoder.feed(wire)]
    assert decoded == frames[1:]
    assert decoder.stats.resyncs == 1 and decoder.stats.sequence_gaps == 0
    assert decoder.stats.bytes_dropped == len(frames[0]) - len(frames[0]) // 2


def test_counters_add_up() -> None:
    good = [samples_frame(s) for s in (0, 1, 3, 4)]  # one sequence gap (2 missing)
    bad_crc = bytearray(samples_frame(5))
    bad_crc[40] ^= 0xFF if bad_crc[40] != 0xFF else 0x0F
    wire = b"\x00\x00" + good[0] + good[1] + b"junk\x00" + good[2] + bytes(bad_crc) + good[3] + b"\x01\x02"
    decoder = FrameDecoder()
    decoded = decoder.feed(wire)
    assert [f.header.sequence for f in decoded] == [0, 1, 3, 4]
    s = decoder.stats
    assert (s.frames, s.malformed, s.crc_errors, s.resyncs, s.sequence_gaps) == (4, 1, 1, 2, 1)
    assert s.bytes_dropped == len(b"junk\x00") + len(bad_crc)
    assert s.bytes_in == len(wire)


def test_sequence_wraps_without_a_gap() -> None:
    decoder = FrameDecoder()
    decoder.feed(samples_frame(2**32 - 1) + samples_frame(0) + samples_frame(1))
    assert decoder.stats.sequence_gaps == 0 and decoder.stats.frames == 3


@pytest.mark.parametrize("fields,payload", [
    ((2, 1, 1, 0, 0, 0, 0, 20000, 1.0, 2, 0), b"\x01\x00\x02\x00"),  # unknown version
    ((1, 3, 1, 0, 0, 0, 0, 20000, 1.0, 2, 0), b"\x01\x00\x02\x00"),  # unknown frame type
    ((1, 1, 1, 0, 0, 0, 0, 20000, 1.0, 3, 0), b"\x01\x00\x02\x00"),  # sample_count disagrees with payload
    ((1, 1, 0, 0, 0, 0, 0, 20000, 1.0, 0, 0), b""),  # samples frame without channels
    ((1, 2, 4, 0, 0, 0, 0, 0, 0.0, 2, 0), b"ok"),  # status frame with channels
])
def test_header_inconsistencies_are_malformed(fields: tuple, payload: bytes) -> None:
    decoder = FrameDecoder()
    decoded = decoder.feed(raw_frame(*fields, payload=payload) + samples_frame(0))
    assert [f.header.sequence for f in decoded] == [0]
    assert decoder.stats.malformed == 1 and decoder.stats.crc_errors == 0 and decoder.stats.resyncs == 1


def test_short_and_bad_cobs_pieces_are_malformed() -> None:
    decoder = FrameDecoder()
    decoder.feed(b"\x05\x01\x00" + cobs.encode(b"\x01" * 10) + b"\x00")
    assert decoder.stats.malformed == 2 and decoder.stats.frames == 0


def test_endless_garbage_keeps_memory_bounded_and_recovers() -> None:
    decoder = FrameDecoder(max_payload=4096)
    garbage = b"\xAA" * 100_000
    for start in range(0, len(garbage), 1000):
        decoder.feed(garbage[start:start + 1000])
    # All but less than one legal frame's worth was dropped already, without waiting for a delimiter.
    assert decoder.stats.bytes_dropped > len(garbage) - max_wire_length(4096)
    assert decoder.stats.malformed == 1
    decoded = decoder.feed(b"\x00" + samples_frame(0))
    assert len(decoded) == 1 and decoder.stats.resyncs == 1
    assert decoder.stats.bytes_dropped == len(garbage) + 1


def test_frames_larger_than_max_payload_are_refused() -> None:
    decoder = FrameDecoder(max_payload=64)
    decoded = decoder.feed(samples_frame(0, n=16, channels=4) + samples_frame(1, n=4, channels=4))
    assert [f.header.sequence for f in decoded] == [1] and decoder.stats.malformed == 1
