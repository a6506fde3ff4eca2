"""Replay harness: real IMS files through a real pty, decoded back to the exact recorded values."""
from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from waiting import eventually

from firmware_bridge.frame import Frame, FrameDecoder
from firmware_bridge.ims import IMS_SNAPSHOT_SAMPLES, list_ims_files, parse_timestamp, read_counts, read_values
from firmware_bridge.link import SerialLink
from firmware_bridge.replay import ReplayOptions, ReplaySummary, frames_for_file, parse_speed, replay

pytestmark = pytest.mark.waits

FRAMES_PER_FILE = IMS_SNAPSHOT_SAMPLES // 256
CM_REPLAY = Path(sys.executable).with_name("cm-replay")
WAIT_S = 60.0  # safety net only


def epoch_us(name: str) -> int:
    return int(parse_timestamp(name).timestamp()) * 1_000_000


@pytest.fixture
def few_files(ims_dir: Path, tmp_path: Path) -> Path:
    """The first three real files, linked (never copied) into a scratch directory."""
    directory = tmp_path / "ims"
    directory.mkdir()
    for ims in list_ims_files(ims_dir)[:3]:
        (directory / ims.path.name).symlink_to(ims.path)
    return directory


class WriteRefused:
    """True once process `pid` has made a write that wrote nothing, seen in the kernel's I/O accounting
    (/proc/PID/io, the host's, so it holds under qemu-user too): between two looks it issued write calls
    (`syscw` grew) while the bytes written (`wchar`) stayed put. A pty's writer sees that only when the tty
    buffer is full and nobody reads (EAGAIN), so the process is then waiting inside a blocked write."""

    def __init__(self, pid: int) -> None:
        self.path = Path(f"/proc/{pid}/io")
        self.last = self._counters()

    def _counters(self) -> tuple[int, int]:
        fields = dict(line.split(": ") for line in self.path.read_text().splitlines())
        return int(fields["syscw"]), int(fields["wchar"])

    def __call__(self) -> bool:
        (calls_before, bytes_before), (calls, written) = self.last, self._counters()
        self.last = (calls, written)
        return calls > calls_before and written == bytes_before


def read_from_pty(path: Path, expected: int, received: list[Frame], stats: list) -> threading.Thread:
    """A reader thread, as the agent runs it: SerialLink on the pty path once the replay created it."""

    def run() -> None:
        eventually(path.is_symlink, WAIT_S)
        stop = threading.Event()
        timer = threading.Timer(WAIT_S, stop.set)  # a lost frame fails the test instead of hanging it
        timer.start()
        with SerialLink(str(path), backoff_initial=0.01) as link:
            for frame in link.frames(stop):
                received.append(frame)
                if len(received) == expected:
                    break
            stats.append(link.stats)
        timer.cancel()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_replay_through_a_pty_reproduces_the_files_exactly(ims_dir: Path, tmp_path: Path) -> None:
    files = list_ims_files(ims_dir)
    link_path = tmp_path / "ttyIMS"
    received: list[Frame] = []
    stats: list = []
    reader = read_from_pty(link_path, len(files) * FRAMES_PER_FILE, received, stats)
    summary = replay(ims_dir, f"pty:{link_path}", ReplayOptions(speed="max"), announce=None)
    reader.join(WAIT_S)

    assert summary.files == len(files) and summary.frames == len(received) == len(files) * FRAMES_PER_FILE
    assert stats[0].crc_errors == stats[0].malformed == stats[0].sequence_gaps == 0
    assert not link_path.exists()  # the harness removes its pty link at exit

    headers = [f.header for f in received]
    assert [h.sequence for h in headers] == list(range(len(received)))
    assert [h.first_sample for h in headers] == [256 * i for i in range(len(received))]
    for k, ims in enumerate(files):
        frames = received[k * FRAMES_PER_FILE:(k + 1) * FRAMES_PER_FILE]
        counts = np.concatenate([f.samples for f in frames])
        np.testing.assert_array_equal(counts, read_counts(ims.path))
        np.testing.assert_array_equal(np.rint(read_values(ims.path) * 1000), counts)
        # Timestamps survive: the file's capture time, then 12.8 ms (256 samples at 20 kHz) per frame.
        assert frames[0].header.first_sample == k * IMS_SNAPSHOT_SAMPLES
        assert [f.header.capture_time_us for f in frames] == [
            epoch_us(ims.path.name) + 12_800 * i for i in range(FRAMES_PER_FILE)]
        assert {(f.header.sample_rate_hz, f.header.channels) for f in frames} == {(20_000, 8)}


def test_channels_select_columns(few_files: Path) -> None:
    sink = _Sink()
    summary = replay(few_files, sink, ReplayOptions(channels=(1, 3, 5, 7), frame_samples=512))
    assert summary.frames == 3 * IMS_SNAPSHOT_SAMPLES // 512
    frames = sink.frames
    assert {f.header.channels for f in frames} == {4}
    first = np.concatenate([f.samples for f in frames[:40]])
    np.testing.assert_array_equal(first, read_counts(list_ims_files(few_files)[0].path, [0, 2, 4, 6]))


def test_paced_replay_sends_everything_in_order(few_files: Path) -> None:
    sink = _Sink()
    # 10 minutes of recorded time 100,000 times faster: the pacing path runs without slowing the test.
    summary = replay(few_files, sink, ReplayOptions(speed="100000"))
    assert summary.files == 3 and [f.header.sequence for f in sink.frames] == list(range(3 * FRAMES_PER_FILE))


def test_loop_continues_samples_sequence_and_time(few_files: Path) -> None:
    stop = threading.Event()
    sink = _Sink(stop_after=7 * FRAMES_PER_FILE, stop=stop)
    summary = replay(few_files, sink, ReplayOptions(loop=True), stop=stop)
    assert summary.files == 7  # two full passes and one file of the third
    headers = [f.header for f in sink.frames]
    assert [h.first_sample for h in headers] == [256 * i for i in range(len(headers))]
    times = [h.capture_time_us for h in headers]
    assert all(later > earlier for earlier, later in zip(times, times[1:]))
    assert sink.decoder.stats.sequence_gaps == 0


def test_cm_replay_cli_through_a_pty(few_files: Path, tmp_path: Path) -> None:
    link_path = tmp_path / "ttyREPLAY"
    process = subprocess.Popen(
        [str(CM_REPLAY), str(few_files), "--port", f"pty:{link_path}", "--channels", "5,6", "--speed", "max"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stderr is not None
        assert process.stderr.readline().strip() == f"replay: pty ready at {link_path}"
        received: list[Frame] = []
        stats: list = []
        read_from_pty(link_path, 3 * FRAMES_PER_FILE, received, stats).join(WAIT_S)
        out, err = process.communicate(timeout=WAIT_S)
    finally:
        process.kill()
    assert process.returncode == 0, err
    assert out.startswith("replay: 3 files, 240 frames, ") and "MB/s" in out
    assert "3/3 files" in err  # the progress bar
    counts = np.concatenate([f.samples for f in received])
    expected = np.concatenate([read_counts(f.path, [4, 5]) for f in list_ims_files(few_files)])
    np.testing.assert_array_equal(counts, expected)
    assert not link_path.exists()


@pytest.mark.parametrize("args,message", [
    (["--speed", "fast"], "expected realtime, max or a positive factor"),
    (["--channels", "0,1"], "column 0 does not exist: expected 1-based numbers 1..8"),
    (["--channels", "9"], "column 9 does not exist: expected 1-based numbers 1..8"),
    (["--channels", "1,1"], "expected distinct channel names or 1-based numbers"),
    (["--channels", "bearing9"], "no channel named 'bearing9'"),
    (["--format", "mat"], "--sample-rate is required for .mat recordings"),
    (["--frame-samples", "2048"], "expected 1..1024 samples per frame"),
])
def test_cm_replay_rejects_bad_arguments(few_files: Path, tmp_path: Path, args: list[str], message: str) -> None:
    result = subprocess.run([str(CM_REPLAY), str(few_files), "--port", f"pty:{tmp_path / 'tty'}", *args],
                            capture_output=True, text=True, timeout=WAIT_S)
    assert result.returncode == 2 and message in result.stderr
    assert not (tmp_path / "tty").exists()


def test_frames_for_file_cuts_and_stamps() -> None:
    counts = np.arange(1000 * 2, dtype=np.int16).reshape(1000, 2)
    wires = list(frames_for_file(counts, first_sample=5000, sequence=2**32 - 2, capture_time_us=10**15,
                                 sample_rate_hz=20_000, scale=0.001, frame_samples=256))
    decoder = FrameDecoder()
    frames = decoder.feed(b"".join(wires))
    assert [f.header.sample_count for f in frames] == [256, 256, 256, 232]
    assert [f.header.sequence for f in frames] == [2**32 - 2, 2**32 - 1, 0, 1]
    assert [f.header.first_sample for f in frames] == [5000, 5256, 5512, 5768]
    assert [f.header.capture_time_us for f in frames] == [10**15 + 12_800 * i for i in range(4)]
    np.testing.assert_array_equal(np.concatenate([f.samples for f in frames]), counts)


def test_parse_speed() -> None:
    assert parse_speed("max") is None and parse_speed("realtime") == 1.0 and parse_speed("60") == 60.0
    for bad in ("0", "-2", "inf", "nan", "fast"):
        with pytest.raises(ValueError, match="positive factor"):
            parse_speed(bad)


def test_summary_rate() -> None:
    assert ReplaySummary(files=1, frames=80, bytes=2_000_000, seconds=0.5).mb_per_s == 4.0


class _Sink:
    """A writer object (what `replay` accepts besides URLs) that decodes what it receives."""

    def __init__(self, stop_after: int | None = None, stop: threading.Event | None = None) -> None:
        self.decoder, self.frames = FrameDecoder(), []
        self.stop_after, self.stop = stop_after, stop

    def write(self, data: bytes) -> int:
        self.frames += self.decoder.feed(data)
        if self.stop is not None and self.stop_after and len(self.frames) >= self.stop_after:
            self.stop.set()
        return len(data)


def test_cm_replay_streams_a_femto_run_at_its_own_rate_channels_and_scale(tmp_path: Path) -> None:
    """A FEMTO layout through the command line and a real pty: 25.6 kHz, 2 channels, and a run whose
    values exceed 32.767 g at 0.002 g per count, every frame saying so."""
    run = tmp_path / "run"
    run.mkdir()
    rng = np.random.default_rng(0)
    for number in range(1, 4):
        values = np.round(rng.normal(0, 1, (512, 2)), 3)
        values[7, 0] = 40.0 if number == 3 else values[7, 0]
        lines = [";".join(["9", "0", str(number * 10), "0", *(f"{v:.3f}" for v in row)]) for row in values]
        (run / f"acc_{number:05d}.csv").write_text("\n".join(lines) + "\n")
    link_path = tmp_path / "ttyFEMTO"
    process = subprocess.Popen([str(CM_REPLAY), str(run), "--port", f"pty:{link_path}", "--channels", "vertical,horizontal",
                                "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        received: list[Frame] = []
        stats: list = []
        read_from_pty(link_path, 3 * 2, received, stats).join(WAIT_S)
        out, err = process.communicate(timeout=WAIT_S)
    finally:
        process.kill()
    assert process.returncode == 0, err
    headers = {(f.header.sample_rate_hz, f.header.channels, f.header.scale) for f in received}
    assert headers == {(25_600, 2, float(np.float32(0.002)))}
    counts = np.concatenate([f.samples for f in received])
    assert counts[2 * 512 + 7, 1] == 20_000  # 40 g on the horizontal channel, sent second


def test_continuous_replay_streams_like_an_mcu_with_boot_relative_time(few_files: Path) -> None:
    sink = _Sink()
    summary = replay(few_files, sink, ReplayOptions(continuous=True, boot_time=True))
    headers = [f.header for f in sink.frames]
    assert summary.files == 3 and len(headers) == 3 * FRAMES_PER_FILE
    assert [h.first_sample for h in headers] == [256 * i for i in range(len(headers))]
    # No ten-minute jumps between files: time advances with the samples (12.8 ms per frame), from boot.
    assert [h.capture_time_us for h in headers] == [12_800 * i for i in range(len(headers))]
    assert all(h.boot_time for h in headers)


def test_continuous_replay_with_a_wall_clock_starts_now(few_files: Path) -> None:
    sink = _Sink()
    before = time.time_ns() // 1000
    replay(few_files, sink, ReplayOptions(continuous=True))
    headers = [f.header for f in sink.frames]
    assert before <= headers[0].capture_time_us <= time.time_ns() // 1000
    assert headers[-1].capture_time_us - headers[0].capture_time_us == 12_800 * (len(headers) - 1)
    assert not any(h.boot_time for h in headers)


def test_cm_replay_gives_up_when_nobody_reads(few_files: Path) -> None:
    result = subprocess.run([str(CM_REPLAY), str(few_files), "--port", "loop://", "--write-timeout", "1",
                             "--no-progress"], capture_output=True, text=True, timeout=WAIT_S)
    assert result.returncode == 2
    assert "cm-replay: error: loop://: nobody has read for 1 s" in result.stderr


def test_cm_replay_gives_up_when_the_reader_of_its_pty_is_gone(few_files: Path, tmp_path: Path) -> None:
    link_path = tmp_path / "ttyREPLAY"
    process = subprocess.Popen([str(CM_REPLAY), str(few_files), "--port", f"pty:{link_path}", "--no-wait",
                                "--write-timeout", "1", "--no-progress"], stderr=subprocess.PIPE, text=True)
    _, err = process.communicate(timeout=WAIT_S)  # nobody ever opens the pty: the tty buffer fills up
    assert process.returncode == 2 and f"{link_path}: nobody has read for 1 s" in err
    assert not link_path.exists()


def test_cm_replay_exits_on_sigterm_even_while_a_write_blocks(few_files: Path, tmp_path: Path) -> None:
    link_path = tmp_path / "ttyREPLAY"
    process = subprocess.Popen([str(CM_REPLAY), str(few_files), "--port", f"pty:{link_path}", "--no-wait",
                                "--loop", "--write-timeout", "3600", "--no-progress"],
                               stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    assert process.stderr.readline().startswith("replay: pty ready")
    # Only a write that is refused for a full tty buffer makes this test mean something: wait until one was.
    assert eventually(WriteRefused(process.pid), WAIT_S), "cm-replay never had a write refused"
    process.terminate()
    _, err = process.communicate(timeout=WAIT_S)
    assert process.returncode == 0 and "cm-replay: stopped" in err
    assert not link_path.exists()
