"""Benchmarks of the serial bridge: decoder throughput, framing overhead, replay throughput through a pty."""
from __future__ import annotations

import os
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import serial
from figures import figure

from firmware_bridge.frame import FrameDecoder, encode
from firmware_bridge.ims import IMS_SNAPSHOT_SAMPLES, list_ims_files, write_ims_file
from firmware_bridge.replay import ReplayOptions, replay

REPO = Path(__file__).resolve().parents[1]
RATE = 20_000



def _timed(action: Callable[[], object], repeats: int) -> list[float]:
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        seconds.append(time.perf_counter() - started)
    return seconds


def _stream(frames: int, frame_samples: int = 256, channels: int = 4) -> bytes:
    rng = np.random.default_rng(0)
    counts = rng.normal(0, 150, size=(frames * frame_samples, channels)).round().astype(np.int16)
    return b"".join(
        encode(counts[i * frame_samples:(i + 1) * frame_samples], sequence=i, first_sample=i * frame_samples,
               capture_time_us=i * frame_samples * 50, sample_rate_hz=RATE, scale=0.001)
        for i in range(frames))


def decoder_throughput(repeats: int) -> dict:
    frames = 2000  # ~4.2 MB of 4-channel, 256-sample frames
    data = _stream(frames)
    chunk = 4096  # what SerialLink reads at a time

    def decode() -> None:
        decoder = FrameDecoder()
        for start in range(0, len(data), chunk):
            decoder.feed(data[start:start + chunk])
        assert decoder.stats.frames == frames

    seconds = _timed(decode, repeats)
    return {
        "stream_mb": len(data) / 1e6,
        "mb_per_s": figure([len(data) / 1e6 / s for s in seconds], "MB/s"),
        "samples_per_s": figure([frames * 256 / s for s in seconds], "samples/s (per channel)"),
        "realtime_factor": figure([frames * 256 / RATE / s for s in seconds], "x real time (4 ch @ 20 kHz)"),
    }


def framing_overhead() -> dict:
    rng = np.random.default_rng(1)
    table = {}
    for frame_samples in (64, 256, 512):
        counts = rng.normal(0, 150, size=(frame_samples, 4)).round().astype(np.int16)
        wire = encode(counts, sequence=0, first_sample=0, capture_time_us=0, sample_rate_hz=RATE, scale=0.001)
        payload = counts.nbytes
        table[frame_samples] = {"payload_bytes": payload, "wire_bytes": len(wire),
                                "overhead_percent": 100 * (len(wire) - payload) / payload,
                                "wire_bytes_per_s": len(wire) * RATE / frame_samples}
    return table


def _ims_dir(scratch: Path) -> tuple[Path, str]:
    for candidate in (os.environ.get("CM_IMS_DATA"), REPO.parent / "shared" / "data" / "ims"):
        if candidate and Path(candidate).is_dir():
            root = Path(candidate)
            root = root / "1st_test" if (root / "1st_test").is_dir() else root
            if list_ims_files(root):
                return root, "real IMS files"
    rng = np.random.default_rng(2)
    start = datetime(2003, 10, 22, 12, 6, 24, tzinfo=UTC)
    for k in range(6):
        counts = rng.normal(0, 100, size=(IMS_SNAPSHOT_SAMPLES, 8)).round().astype(np.int16)
        write_ims_file(scratch, start + timedelta(minutes=10 * k), counts)
    return scratch, "synthetic IMS files (no real data found)"


def _drain(path: Path, expected: int, stop: threading.Event) -> None:
    while not path.is_symlink() and not stop.is_set():
        time.sleep(0.005)
    port = serial.serial_for_url(str(path), timeout=0.1)
    decoder = FrameDecoder()
    try:
        while decoder.stats.frames < expected and not stop.is_set():
            decoder.feed(port.read(max(port.in_waiting, 1)))
    finally:
        port.close()


def replay_throughput(repeats: int) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        directory, source = _ims_dir(Path(scratch))
        n_files = len(list_ims_files(directory))
        files_per_s, mb_per_s = [], []
        for run in range(repeats):
            link = Path(scratch) / f"tty{run}"
            stop = threading.Event()
            reader = threading.Thread(target=_drain, args=(link, n_files * IMS_SNAPSHOT_SAMPLES // 256, stop))
            reader.start()
            summary = replay(directory, f"pty:{link}", ReplayOptions(speed="max"), announce=None, stop=stop)
            stop.set()
            reader.join()
            seconds = summary.seconds
            files_per_s.append(summary.files / seconds)
            mb_per_s.append(summary.bytes / 1e6 / seconds)
    return {"source": source, "files": n_files, "files_per_s": figure(files_per_s, "files/s"),
            "mb_per_s": figure(mb_per_s, "MB/s"),
            "realtime_factor": figure([f * IMS_SNAPSHOT_SAMPLES / RATE for f in files_per_s],
                                       "x real time (8 ch @ 20 kHz)")}


def run(repeats: int = 5) -> dict:
    return {"decoder": decoder_throughput(repeats), "overhead": framing_overhead(),
            "replay": replay_throughput(repeats)}


def _row(name: str, figure: dict) -> str:
    return f"  {name:<28} {figure['median']:>14,.1f} {figure['min']:>14,.1f} {figure['max']:>14,.1f}  {figure['unit']}"


def main() -> None:
    results = run()
    decoder, replayed = results["decoder"], results["replay"]
    print(f"{'':30} {'median':>14} {'min':>14} {'max':>14}")
    print(f"decoder ({decoder['stream_mb']:.1f} MB of 4-channel 256-sample frames, 4 KB chunks)")
    for key in ("mb_per_s", "samples_per_s", "realtime_factor"):
        print(_row(key, decoder[key]))
    print(f"replay through a pty, max speed ({replayed['files']} {replayed['source']})")
    for key in ("files_per_s", "mb_per_s", "realtime_factor"):
        print(_row(key, replayed[key]))
    print("framing overhead, 4 channels")
    for frame_samples, row in results["overhead"].items():
        print(f"  {frame_samples:>4} samples/frame: {row['wire_bytes']:>5} wire bytes for {row['payload_bytes']:>5}"
              f" payload = {row['overhead_percent']:.2f} %, {row['wire_bytes_per_s']:,.0f} B/s at 20 kHz")


if __name__ == "__main__":
    main()
