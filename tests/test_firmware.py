"""The C99 reference encoder (what an MCU links) and the Python codec agree byte for byte."""
from __future__ import annotations

import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest
from cobs import cobs

from firmware_bridge import frame

REPO = Path(__file__).resolve().parents[1]
FIRMWARE = REPO / "firmware_bridge" / "firmware"
CFLAGS = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-O2"]


@pytest.fixture(scope="module")
def frame_cli(tmp_path_factory: pytest.TempPathFactory) -> Path:
    binary = tmp_path_factory.mktemp("c") / "frame_cli"
    subprocess.run(
        ["gcc", *CFLAGS, f"-I{FIRMWARE}", str(FIRMWARE / "cm_frame.c"), str(REPO / "tests" / "c" / "frame_cli.c"),
         "-o", str(binary)],
        check=True, capture_output=True, text=True,
    )
    return binary


def run_cli(binary: Path, *args: object, stdin: bytes = b"") -> bytes:
    result = subprocess.run([str(binary), *map(str, args)], input=stdin, capture_output=True, check=True)
    return result.stdout


def c_samples_frame(binary: Path, counts: np.ndarray, **fields: int | str) -> bytes:
    values = " ".join(map(str, counts.astype(int).ravel())).encode()
    n, ch = counts.shape
    return run_cli(binary, "samples", fields["sequence"], fields["first_sample"], fields["capture_time_us"],
                   fields["sample_rate_hz"], fields["scale"], n, ch, fields.get("flags", 0), stdin=values)


RNG = np.random.default_rng(7)
SAMPLE_CASES = {
    "random-4ch-256": RNG.integers(-32768, 32768, size=(256, 4)),
    "extremes-4ch-64": np.tile([[-32768, 32767, 0, -1]], (64, 1)),
    "zeros-8ch-256": np.zeros((256, 8), dtype=int),  # every byte stuffed: COBS code 1 everywhere
    "no-zero-bytes-1ch-512": np.full((512, 1), 0x0101),  # 1024 non-zero bytes: 254-byte COBS runs
    "negative-2ch-1": np.array([[-5, -32768]]),
    "max-payload-32ch-256": RNG.integers(-32768, 32768, size=(256, 32)),
    "ims-like-8ch-512": RNG.normal(0, 120, size=(512, 8)).round().astype(int),
}


@pytest.mark.parametrize("name", SAMPLE_CASES)
def test_c_and_python_samples_frames_are_identical(frame_cli: Path, name: str) -> None:
    counts = SAMPLE_CASES[name]
    fields = dict(sequence=4_294_967_295, first_sample=2**40 + 3, capture_time_us=1_066_824_384_000_000,
                  sample_rate_hz=20_000)
    c_wire = c_samples_frame(frame_cli, counts, scale="0.001", **fields)
    assert c_wire == frame.encode(counts, scale=0.001, **fields)

    decoder = frame.FrameDecoder()
    (decoded,) = decoder.feed(c_wire)
    np.testing.assert_array_equal(decoded.samples, counts)
    header = decoded.header
    assert (header.sequence, header.first_sample, header.capture_time_us, header.sample_rate_hz) == (
        fields["sequence"], fields["first_sample"], fields["capture_time_us"], fields["sample_rate_hz"])
    assert header.scale == np.float32(0.001)
    assert decoder.stats.crc_errors == decoder.stats.malformed == 0


def test_boot_relative_time_flag_is_encoded_alike_and_decoded(frame_cli: Path) -> None:
    counts = np.array([[1, -2, 3, 4]])
    fields = dict(sequence=9, first_sample=512, capture_time_us=25_600, sample_rate_hz=20_000)
    c_wire = c_samples_frame(frame_cli, counts, scale="0.001", flags=frame.FLAG_BOOT_TIME, **fields)
    assert c_wire == frame.encode(counts, scale=0.001, flags=frame.FLAG_BOOT_TIME, **fields)
    assert c_wire != frame.encode(counts, scale=0.001, **fields)
    (decoded,) = frame.FrameDecoder().feed(c_wire)
    assert decoded.header.boot_time and decoded.header.flags == frame.FLAG_BOOT_TIME
    status = run_cli(frame_cli, "status", 10, 25_700, frame.FLAG_BOOT_TIME, stdin=b"boot")
    assert status == frame.encode_status("boot", sequence=10, capture_time_us=25_700, flags=frame.FLAG_BOOT_TIME)
    assert frame.FrameDecoder().feed(status)[0].header.boot_time


def test_negative_capture_time_round_trips(frame_cli: Path) -> None:
    counts = np.array([[1, -2, 3]])
    fields = dict(sequence=0, first_sample=0, capture_time_us=-123_456_789, sample_rate_hz=1)
    c_wire = c_samples_frame(frame_cli, counts, scale="2.5", **fields)
    assert c_wire == frame.encode(counts, scale=2.5, **fields)
    assert frame.FrameDecoder().feed(c_wire)[0].header.capture_time_us == -123_456_789


@pytest.mark.parametrize("message", ["", "boot ok", "imu: I2C timeout on 0x68 — retrying", "x" * 600])
def test_c_and_python_status_frames_are_identical(frame_cli: Path, message: str) -> None:
    c_wire = run_cli(frame_cli, "status", 17, 1_700_000_000_000_000, 0, stdin=message.encode())
    assert c_wire == frame.encode_status(message, sequence=17, capture_time_us=1_700_000_000_000_000)
    (decoded,) = frame.FrameDecoder().feed(c_wire)
    assert decoded.header.frame_type is frame.FrameType.STATUS
    assert decoded.message == message


@pytest.mark.parametrize("length", [0, 1, 253, 254, 255, 508, 4096])
def test_crc_matches_zlib(frame_cli: Path, length: int) -> None:
    data = RNG.integers(0, 256, size=length, dtype=np.uint8).tobytes()
    assert int(run_cli(frame_cli, "crc", stdin=data)) == zlib.crc32(data)


COBS_CASES = [b"", b"\x00", b"\x00\x00", b"\x01" * 253, b"\x01" * 254, b"\x01" * 255, b"\x01" * 508,
              b"\x01" * 254 + b"\x00", b"\x01" * 253 + b"\x00", b"\x00" + b"\x02" * 600 + b"\x00"]


@pytest.mark.parametrize("data", COBS_CASES, ids=range(len(COBS_CASES)))
def test_cobs_matches_python_package(frame_cli: Path, data: bytes) -> None:
    assert run_cli(frame_cli, "cobs", stdin=data) == cobs.encode(data)


@pytest.mark.parametrize("channels,count", [(0, 4), (33, 1), (4, 2049)])
def test_c_encoder_refuses_invalid_frames(frame_cli: Path, channels: int, count: int) -> None:
    values = b" ".join([b"1"] * max(channels * count, 1))
    result = subprocess.run([str(frame_cli), "samples", "0", "0", "0", "20000", "0.001", str(count), str(channels), "0"],
                            input=values, capture_output=True)
    assert result.returncode != 0 and result.stdout == b""
    assert b"encoder refused" in result.stderr


def test_arduino_example_streams_decodable_frames(tmp_path: Path) -> None:
    """The accel_stream sketch, built for the host against a minimal Arduino stand-in (tests/c/arduino)."""
    shim = REPO / "tests" / "c" / "arduino"
    sketch = FIRMWARE / "examples" / "accel_stream" / "accel_stream.ino"
    subprocess.run(["gcc", *CFLAGS, "-c", str(FIRMWARE / "cm_frame.c"), "-o", str(tmp_path / "cm_frame.o")],
                   check=True, capture_output=True)
    subprocess.run(["g++", "-std=c++11", "-Wall", "-Wextra", "-Werror", f"-I{shim}", f"-I{FIRMWARE}",
                    "-x", "c++", str(sketch), "-x", "none", str(shim / "host_main.cpp"),
                    str(tmp_path / "cm_frame.o"), "-o", str(tmp_path / "sketch")],
                   check=True, capture_output=True)
    # 0.2 s of simulated time; the write of samples frame 3 blocks for 1 ms (20 sample periods).
    output = run_cli(tmp_path / "sketch", 200_000, 3, 1_000)

    decoder = frame.FrameDecoder()
    status, *frames = decoder.feed(output)
    assert output.startswith(b"\x00") and status.header.frame_type is frame.FrameType.STATUS
    assert "boot" in status.message
    assert len(frames) >= 10 and decoder.stats.crc_errors == decoder.stats.malformed == 0
    assert decoder.stats.sequence_gaps == 0
    assert {(f.header.channels, f.header.sample_count, f.header.sample_rate_hz) for f in frames} == {(4, 256, 20_000)}
    assert status.header.boot_time and all(f.header.boot_time for f in frames)  # no RTC: it says so
    assert frames[0].header.scale == pytest.approx(3.3 / 1024 / 0.3, rel=1e-6)
    steps = np.diff([f.header.first_sample for f in frames])
    # Contiguous frames step by 256 samples; the stall shows as a hole in first_sample, not as hidden jitter.
    assert steps[3] > 256 and set(np.delete(steps, 3)) == {256}
