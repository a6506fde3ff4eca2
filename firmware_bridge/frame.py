"""Wire protocol: COBS-framed binary frames with a CRC-32 trailer (normative spec: PROTOCOL.md)."""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from enum import IntEnum

import numpy as np
from cobs import cobs

PROTOCOL_VERSION = 1
HEADER = struct.Struct("<BBBBIQqIfHH")
CRC = struct.Struct("<I")
MAX_PAYLOAD = 16384
MAX_CHANNELS = 32
DELIMITER = b"\x00"
SAMPLE_DTYPE = np.dtype("<i2")
_U32 = 2**32
FLAG_BOOT_TIME = 0x01  # capture_time_us counts from the sender's boot, not from the Unix epoch


class FrameType(IntEnum):
    SAMPLES = 1
    STATUS = 2


@dataclass(frozen=True)
class FrameHeader:
    version: int
    frame_type: FrameType
    channels: int
    sequence: int
    first_sample: int
    capture_time_us: int
    sample_rate_hz: int
    scale: float
    sample_count: int
    flags: int = 0  # FLAG_BOOT_TIME; undefined bits are kept as sent (receivers ignore them)

    @property
    def boot_time(self) -> bool:
        """The sender has no wall clock: capture_time_us is relative to its boot."""
        return bool(self.flags & FLAG_BOOT_TIME)


@dataclass(frozen=True)
class Frame:
    header: FrameHeader
    samples: np.ndarray  # (sample_count, channels) int16, read-only; (0, 0) for status frames
    message: str = ""  # status frames only


def max_wire_length(payload_bytes: int = MAX_PAYLOAD) -> int:
    """Worst-case wire length (COBS + delimiter) of a frame carrying `payload_bytes`."""
    raw = HEADER.size + payload_bytes + CRC.size
    return raw + raw // 254 + 2


def _check_range(name: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise ValueError(f"frame field {name}={value} out of range [{low}, {high}]")


def _wire(header: bytes, payload: bytes) -> bytes:
    raw = header + payload
    return cobs.encode(raw + CRC.pack(zlib.crc32(raw))) + DELIMITER


def _as_int16(samples: np.ndarray) -> np.ndarray:
    array = np.asarray(samples)
    if array.ndim != 2:
        raise ValueError(f"samples must be 2-D (sample_count, channels), got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"samples must be integer counts, got dtype {array.dtype}")
    if array.dtype != SAMPLE_DTYPE and array.size and (array.min() < -32768 or array.max() > 32767):
        raise ValueError("samples out of int16 range [-32768, 32767]")
    return array.astype(SAMPLE_DTYPE, copy=False)


def encode(
    samples: np.ndarray,
    *,
    sequence: int,
    first_sample: int,
    capture_time_us: int,
    sample_rate_hz: int,
    scale: float,
    flags: int = 0,
) -> bytes:
    """Wire bytes (COBS-encoded, trailing 0x00) of one samples frame; `flags=FLAG_BOOT_TIME` for boot-relative time."""
    counts = _as_int16(samples)
    sample_count, channels = counts.shape
    _check_range("channels", channels, 1, MAX_CHANNELS)
    _check_range("payload bytes", counts.nbytes, 0, MAX_PAYLOAD)
    _check_range("sequence", sequence, 0, _U32 - 1)
    _check_range("first_sample", first_sample, 0, 2**64 - 1)
    _check_range("capture_time_us", capture_time_us, -(2**63), 2**63 - 1)
    _check_range("sample_rate_hz", sample_rate_hz, 0, _U32 - 1)
    _check_range("flags", flags, 0, 255)
    header = HEADER.pack(
        PROTOCOL_VERSION, FrameType.SAMPLES, channels, flags, sequence, first_sample,
        capture_time_us, sample_rate_hz, scale, sample_count, 0,
    )
    # C order of an (n, ch) array is exactly the interleaved wire order s0c0 s0c1 ... s1c0.
    return _wire(header, np.ascontiguousarray(counts).tobytes())


def encode_status(message: str, *, sequence: int, capture_time_us: int, flags: int = 0) -> bytes:
    """Wire bytes of a status frame carrying a UTF-8 text message."""
    payload = message.encode("utf-8")
    _check_range("status message bytes", len(payload), 0, MAX_PAYLOAD)
    _check_range("sequence", sequence, 0, _U32 - 1)
    _check_range("flags", flags, 0, 255)
    header = HEADER.pack(
        PROTOCOL_VERSION, FrameType.STATUS, 0, flags, sequence, 0, capture_time_us, 0, 0.0, len(payload), 0,
    )
    return _wire(header, payload)


@dataclass
class DecoderStats:
    frames: int = 0
    crc_errors: int = 0
    malformed: int = 0
    resyncs: int = 0
    sequence_gaps: int = 0
    bytes_dropped: int = 0
    bytes_in: int = 0


_EMPTY = np.empty((0, 0), dtype=SAMPLE_DTYPE)
_EMPTY.flags.writeable = False


class FrameDecoder:
    """Streaming decoder: feed any chunks, get the frames that passed every check.

    A damaged frame costs only itself: the decoder drops the bytes up to the next 0x00 and
    starts again there. Counters in `stats` say what was lost and why.
    """

    def __init__(self, max_payload: int = MAX_PAYLOAD) -> None:
        self.max_payload = max_payload
        self.stats = DecoderStats()
        self._max_encoded = max_wire_length(max_payload) - 1  # without the delimiter
        self._pending = bytearray()
        self._skipping = False  # an over-long run was dropped: discard up to the next delimiter
        self._discarded = False  # data was discarded since the last good frame
        self._last_sequence: int | None = None

    def feed(self, data: bytes) -> list[Frame]:
        self.stats.bytes_in += len(data)
        if DELIMITER not in data:
            self._append(data)
            return []
        pieces = bytes(data).split(DELIMITER)
        frames: list[Frame] = []
        head = bytes(self._pending) + pieces[0]
        self._pending.clear()
        if self._skipping:
            self._skipping = False
            self.stats.bytes_dropped += len(head) + 1
        else:
            self._take(head, frames)
        for piece in pieces[1:-1]:
            self._take(piece, frames)
        self._append(pieces[-1])
        return frames

    def discard_pending(self) -> None:
        """Drop a partial frame, e.g. after the link was lost mid-frame (counted as malformed)."""
        if self._pending:
            self.stats.bytes_dropped += len(self._pending)
            self.stats.malformed += 1
            self._pending.clear()
            self._discarded = True
        self._skipping = False

    def _append(self, data: bytes) -> None:
        if self._skipping:
            self.stats.bytes_dropped += len(data)
            return
        self._pending += data
        if len(self._pending) > self._max_encoded:
            # No delimiter within the longest legal frame: garbage or a stuck line. Bound memory.
            self.stats.bytes_dropped += len(self._pending)
            self.stats.malformed += 1
            self._pending.clear()
            self._skipping = True
            self._discarded = True

    def _take(self, piece: bytes, frames: list[Frame]) -> None:
        if not piece:
            return  # idle delimiters between frames are legal fill
        frame = self._parse(piece)
        if frame is None:
            self.stats.bytes_dropped += len(piece) + 1
            self._discarded = True
            return
        if self._discarded:
            self.stats.resyncs += 1
            self._discarded = False
        sequence = frame.header.sequence
        if self._last_sequence is not None and sequence != (self._last_sequence + 1) % _U32:
            self.stats.sequence_gaps += 1
        self._last_sequence = sequence
        self.stats.frames += 1
        frames.append(frame)

    def _parse(self, piece: bytes) -> Frame | None:
        if len(piece) > self._max_encoded:
            self.stats.malformed += 1
            return None
        try:
            raw = cobs.decode(piece)
        except cobs.DecodeError:
            self.stats.malformed += 1
            return None
        body_end = len(raw) - CRC.size
        if body_end < HEADER.size:
            self.stats.malformed += 1
            return None
        if zlib.crc32(memoryview(raw)[:body_end]) != CRC.unpack_from(raw, body_end)[0]:
            self.stats.crc_errors += 1
            return None
        header = self._header(raw, body_end - HEADER.size)
        if header is None:
            self.stats.malformed += 1
            return None
        if header.frame_type is FrameType.STATUS:
            message = raw[HEADER.size:body_end].decode("utf-8", errors="replace")
            return Frame(header, _EMPTY, message)
        samples = np.frombuffer(raw, dtype=SAMPLE_DTYPE, count=header.sample_count * header.channels,
                                offset=HEADER.size).reshape(header.sample_count, header.channels)
        return Frame(header, samples)

    def _header(self, raw: bytes, payload_bytes: int) -> FrameHeader | None:
        """The header when version, type and lengths agree with the payload; None otherwise."""
        (version, frame_type, channels, flags, sequence, first_sample, capture_time_us,
         sample_rate_hz, scale, sample_count, _reserved) = HEADER.unpack_from(raw)
        if version != PROTOCOL_VERSION or payload_bytes > self.max_payload:
            return None
        if frame_type == FrameType.SAMPLES:
            if not 1 <= channels <= MAX_CHANNELS or payload_bytes != sample_count * channels * 2:
                return None
        elif frame_type == FrameType.STATUS:
            if channels != 0 or payload_bytes != sample_count:
                return None
        else:
            return None
        return FrameHeader(version, FrameType(frame_type), channels, sequence, first_sample,
                           capture_time_us, sample_rate_hz, scale, sample_count, flags)
