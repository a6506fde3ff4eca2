"""Replay harness: recorded snapshots sent as wire frames over any serial link, as an MCU would send them.

    cm-replay PATH --port URL [--format ims|femto|mat|csv] [--sample-rate HZ] [--snapshot-samples N]
              [--channels 1,3,5,7|DE,FE] [--speed realtime|max|FACTOR] [--loop] [--continuous] [--boot-time]
              [--frame-samples 256] [--baudrate N] [--write-timeout S] [--no-progress] [--no-wait]

PATH is a recording in any format firmware_bridge.recording reads (an IMS folder, a FEMTO run folder, a
.mat file, a folder of CSV/TSV/NPY snapshots); each is streamed at its own sample rate, channel count and
scale (the scale rule of firmware_bridge.recording).

URL is any pyserial URL (/dev/ttyUSB0, socket://host:port, loop://) or pty:PATH, which creates a
pseudo-terminal and symlinks PATH to its slave side: the agent then opens PATH like a real device.

By default each snapshot is one burst at its recorded time (IMS: every 10 minutes). --continuous streams them
back to back as a running MCU does: consecutive sample indices, time advancing with the samples, paced at
the sample rate. --boot-time sends time since "boot" with the protocol's boot-time flag, as an MCU without
a wall clock does. A write that makes no progress for --write-timeout seconds (nobody reads the port)
ends the replay with an error instead of hanging; SIGTERM and SIGINT end it at once.
"""
from __future__ import annotations

import argparse
import fcntl
import os
import queue
import select
import signal
import struct
import sys
import termios
import threading
import time
import tty
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol, TextIO

import numpy as np
import serial

from firmware_bridge.frame import FLAG_BOOT_TIME, MAX_PAYLOAD, encode
from firmware_bridge.link import DEFAULT_BAUDRATE
from firmware_bridge.recording import FORMATS, RecordedSnapshot, Recording, RecordingSpec, open_recording, parse_channel_list

_U32 = 2**32
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_POLL_S = 0.1
WRITE_TIMEOUT_S = 10.0


class WriteTimeout(OSError):
    """Nobody drained the port for the write timeout: the reader is gone or never came."""


class Stopped(BaseException):
    """SIGTERM or SIGINT: unwinds any blocking write, and the pty link is removed on the way out."""


class Writer(Protocol):
    def write(self, data: bytes, /) -> int | None: ...


@dataclass(frozen=True)
class ReplaySummary:
    files: int
    frames: int
    bytes: int
    seconds: float

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        return (f"replay: {self.files} files, {self.frames} frames, {self.bytes / 1e6:.2f} MB "
                f"in {self.seconds:.2f} s ({self.mb_per_s:.2f} MB/s)")


def frames_for_file(
    counts: np.ndarray,
    *,
    first_sample: int,
    sequence: int,
    capture_time_us: int,
    sample_rate_hz: int,
    scale: float,
    frame_samples: int,
    flags: int = 0,
) -> Iterator[bytes]:
    """Wire bytes of one snapshot cut into frames of `frame_samples` samples (the last may be shorter)."""
    check_frame_size(frame_samples, counts.shape[1])
    for number, start in enumerate(range(0, len(counts), frame_samples)):
        yield encode(
            counts[start:start + frame_samples],
            sequence=(sequence + number) % _U32,
            first_sample=first_sample + start,
            capture_time_us=capture_time_us + start * 1_000_000 // sample_rate_hz,
            sample_rate_hz=sample_rate_hz,
            scale=scale,
            flags=flags,
        )


def check_frame_size(frame_samples: int, channels: int) -> None:
    payload = frame_samples * channels * 2
    if frame_samples < 1 or payload > MAX_PAYLOAD:
        raise ValueError(f"frame_samples={frame_samples} with {channels} channels is {payload} payload bytes; "
                         f"expected 1..{MAX_PAYLOAD // (2 * channels)} samples per frame")


def parse_speed(speed: str | float) -> float | None:
    """Time compression factor: "realtime" → 1, "max" → None (no pacing), "60" → 60 times faster."""
    if speed == "max":
        return None
    if speed == "realtime":
        return 1.0
    try:
        factor = float(speed)
    except ValueError:
        factor = 0.0
    if not factor > 0 or factor == float("inf"):
        raise ValueError(f"speed {speed!r}: expected realtime, max or a positive factor like 60")
    return factor


def _epoch_us(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(microseconds=1)


def _schedule(recording: Recording, loop: bool) -> Iterator[tuple[int, int]]:
    """Snapshot indices with their time offset (µs) from the first; each --loop pass continues the clock."""
    times = [_epoch_us(t) for t in recording.times]
    gaps = np.diff(times)
    # One pass lasts its span plus a typical gap, so replayed time never runs backwards across passes.
    pass_us = times[-1] - times[0] + (int(np.median(gaps)) if len(gaps) else 1_000_000)
    shift = 0
    while True:
        for index, at in enumerate(times):
            yield index, at - times[0] + shift
        if not loop:
            return
        shift += pass_us


class PtyPort:
    """Writer end of a pseudo-terminal whose slave side is reachable at `link` (a symlink).

    The slave stays open here so written bytes wait in the tty buffer and flow control blocks the writer
    until a reader drains it. Packet mode (TIOCPKT) reports the flush a pyserial reader does when it
    opens the port: `wait_for_reader` uses it so no byte is written before anyone can receive it.
    """

    def __init__(self, link: str | os.PathLike[str], stop: threading.Event | None = None,
                 write_timeout: float | None = WRITE_TIMEOUT_S) -> None:
        self.link = Path(link)
        self.stop = stop or threading.Event()
        self.write_timeout = write_timeout
        self.master, self._slave = os.openpty()
        tty.setraw(self._slave)
        self.device = os.ttyname(self._slave)
        fcntl.ioctl(self.master, termios.TIOCPKT, struct.pack("i", 1))
        os.set_blocking(self.master, False)
        temporary = self.link.with_name(f".{self.link.name}.{os.getpid()}.tmp")
        temporary.unlink(missing_ok=True)
        os.symlink(self.device, temporary)
        os.replace(temporary, self.link)  # atomic: a reader never sees a missing or half-made link

    def wait_for_reader(self) -> bool:
        """Block until a reader opens the port (its open-time flush); False if stopped first."""
        while not self.stop.is_set():
            readable, _, _ = select.select([self.master], [], [], _POLL_S)
            if readable:
                try:
                    packet = os.read(self.master, 4096)
                except BlockingIOError:
                    continue
                if packet and packet[0] & termios.TIOCPKT_FLUSHREAD:
                    return True
        return False

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        progress = time.monotonic()
        while view and not self.stop.is_set():
            try:
                view = view[os.write(self.master, view):]
                progress = time.monotonic()
            except BlockingIOError:
                if self.write_timeout is not None and time.monotonic() - progress > self.write_timeout:
                    raise WriteTimeout(f"{self.link}: nobody has read for {self.write_timeout:g} s "
                                       f"(the reader exited or hangs); {len(view)} bytes unsent") from None
                select.select([], [self.master], [], _POLL_S)
        return len(data) - len(view)

    def pending(self) -> int:
        """Bytes written but not yet read by the reader."""
        return struct.unpack("i", fcntl.ioctl(self._slave, termios.FIONREAD, b"\0\0\0\0"))[0]

    def drain(self, settle: float = 0.5) -> bool:
        """Wait until the reader has read everything; give up after the write timeout without progress (a
        reader may pause as long at the end as it may while the bytes are written: a busy Pi's fsync).

        The tty moves written bytes to the reader's queue from a kernel work item, so an empty queue
        may still have bytes in flight: it has to stay empty for `settle` seconds.
        """
        idle_timeout = WRITE_TIMEOUT_S if self.write_timeout is None else self.write_timeout
        last, last_change = self.pending(), time.monotonic()
        empty_since = last_change if last == 0 else None
        while not self.stop.is_set():
            now_s = time.monotonic()
            if empty_since is not None and now_s - empty_since >= settle:
                return True
            if now_s - last_change > idle_timeout:
                return False
            self.stop.wait(0.02)
            now = self.pending()
            if now != last:
                last, last_change = now, time.monotonic()
            empty_since = (empty_since or time.monotonic()) if now == 0 else None
        return False

    def close(self) -> None:
        try:
            if os.readlink(self.link) == self.device:
                self.link.unlink()
        except OSError:
            pass  # already removed or replaced by someone else: not ours to touch
        os.close(self.master)
        os.close(self._slave)


class SerialWriter:
    """A pyserial port whose blocked write ends with WriteTimeout, naming the port, instead of hanging."""

    def __init__(self, url: str, port: serial.SerialBase, timeout: float | None) -> None:
        self.url, self.port, self.timeout = url, port, timeout

    def write(self, data: bytes) -> int | None:
        try:
            return self.port.write(data)
        except (serial.SerialTimeoutException, queue.Full):  # loop:// blocks on a full queue.Queue
            raise WriteTimeout(f"{self.url}: nobody has read for {self.timeout:g} s (the reader exited or "
                               f"hangs)") from None


@contextmanager
def open_port(port: str | Writer, *, baudrate: int, stop: threading.Event, wait_reader: bool = True,
              announce: TextIO | None = None, write_timeout: float | None = WRITE_TIMEOUT_S) -> Iterator[Writer]:
    """A writer for a pyserial URL, `pty:PATH`, or an object that already has .write(bytes)."""
    if not isinstance(port, str):
        yield port
        return
    if port.startswith("pty:"):
        pty_port = PtyPort(port.removeprefix("pty:"), stop, write_timeout)
        try:
            if announce:
                print(f"replay: pty ready at {pty_port.link}", file=announce, flush=True)
            if not wait_reader or pty_port.wait_for_reader():
                yield pty_port
                if not pty_port.drain():
                    print(f"replay: {pty_port.link}: {pty_port.pending()} bytes left unread: the reader stopped reading",
                          file=sys.stderr, flush=True)
            else:
                yield pty_port  # stopped before a reader came: the caller's loop ends at once
        finally:
            pty_port.close()
        return
    link = serial.serial_for_url(port, baudrate=baudrate, write_timeout=write_timeout)
    try:
        yield SerialWriter(port, link, write_timeout)
        link.flush()
    finally:
        link.close()


class Progress:
    """One-line progress bar on stderr, redrawn in place."""

    def __init__(self, total: int | None, stream: TextIO, enabled: bool) -> None:
        self.total, self.stream, self.enabled = total, stream, enabled
        self.started = time.monotonic()
        self.drawn = False

    def update(self, files: int, frames: int, sent: int) -> None:
        if not self.enabled:
            return
        rate = sent / 1e6 / max(time.monotonic() - self.started, 1e-9)
        if self.total:
            done = round(20 * files / self.total)
            bar = f"[{'#' * done}{'.' * (20 - done)}] {files}/{self.total} files"
        else:
            bar = f"{files} files"
        self.drawn = True
        self.stream.write(f"\rreplay {bar}  {frames} frames  {sent / 1e6:.1f} MB  {rate:.1f} MB/s ")
        self.stream.flush()

    def finish(self) -> None:
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()


@dataclass(frozen=True, kw_only=True)
class ReplayOptions(RecordingSpec):
    """How a recording is read (RecordingSpec) and sent; cm-replay's flags take their defaults from here."""

    speed: str | float = "max"  # realtime, max or a factor like 60 (parse_speed)
    loop: bool = False  # start again after the last snapshot, forever; each pass continues the clock
    continuous: bool = False  # back to back, time from the samples, paced per frame at the sample rate / speed
    boot_time: bool = False  # time counts from the replay's start, with the boot-time flag
    frame_samples: int = 256
    baudrate: int = DEFAULT_BAUDRATE
    write_timeout: float | None = WRITE_TIMEOUT_S
    progress: bool = False  # a progress bar on stderr
    wait_reader: bool = True  # pty: write nothing before a reader opened the port


def replay(source: str | os.PathLike[str] | Recording, port: str | Writer, options: ReplayOptions = ReplayOptions(), *,
           stop: threading.Event | None = None, announce: TextIO | None = sys.stderr) -> ReplaySummary:
    """Send every snapshot of a recording as frames, as `options` say; returns what was sent.

    `stop` ends the replay early; `announce` is told where a pty is ready (None: nobody).
    """
    recording = source if isinstance(source, Recording) else open_recording(source, options)
    if not len(recording):
        raise ValueError(f"{recording.source}: no snapshots to replay")
    parse_speed(options.speed)
    stop = stop or threading.Event()
    # Read the first snapshot before opening the port: a bad file, column or frame size fails before anyone waits.
    preloaded: dict[int, RecordedSnapshot | None] = {0: recording.snapshot(0)}
    check_frame_size(options.frame_samples, len(recording.channels))
    bar = Progress(None if options.loop else len(recording), sys.stderr, options.progress)
    with open_port(port, baudrate=options.baudrate, stop=stop, wait_reader=options.wait_reader, announce=announce,
                   write_timeout=options.write_timeout) as out:
        sender = _Sender(recording, options, out, stop)
        for index, offset_us in _schedule(recording, options.loop):
            if stop.is_set() or not sender.send(preloaded.pop(index, None) or recording.snapshot(index), offset_us):
                break
            bar.update(sender.files, sender.frames, sender.bytes)
        finished = time.monotonic()  # before a pty's drain: the last few KB in the tty buffer are not our time
    bar.finish()
    return ReplaySummary(sender.files, sender.frames, sender.bytes, finished - sender.started)


class _Sender:
    """Writes snapshots as frames, paced as the options say, carrying the sample index, sequence number and
    totals from one snapshot to the next."""

    def __init__(self, recording: Recording, options: ReplayOptions, out: Writer, stop: threading.Event) -> None:
        self.options, self.out, self.stop = options, out, stop
        self.factor = parse_speed(options.speed)
        self.flags = FLAG_BOOT_TIME if options.boot_time else 0
        self.files = self.frames = self.bytes = self.sample = self.sequence = 0
        self.started = time.monotonic()
        # Boot-relative time starts near zero; a continuous stream with a wall clock starts now.
        self.start_us = 0 if options.boot_time else (
            time.time_ns() // 1000 if options.continuous else _epoch_us(recording.times[0]))

    def send(self, snapshot: RecordedSnapshot, offset_us: int) -> bool:
        """One snapshot, `offset_us` after the first (continuous: after the samples sent so far); False if stopped."""
        rate = snapshot.sample_rate_hz
        if self.options.continuous:
            offset_us = self.sample * 1_000_000 // rate
        frames = list(frames_for_file(
            snapshot.counts, first_sample=self.sample, sequence=self.sequence, capture_time_us=self.start_us + offset_us,
            sample_rate_hz=rate, scale=snapshot.scale, frame_samples=self.options.frame_samples, flags=self.flags))
        if self.options.continuous:
            sent = self._stream(frames, offset_us, self.options.frame_samples / rate)
        else:
            sent = self._burst(frames, offset_us)
        if not sent:
            return False
        self.files, self.frames, self.bytes = self.files + 1, self.frames + len(frames), self.bytes + sum(map(len, frames))
        self.sample, self.sequence = self.sample + len(snapshot.counts), (self.sequence + len(frames)) % _U32
        return True

    def _wait_until(self, offset_s: float) -> bool:
        """Wait until `offset_s` of recorded time (divided by the speed factor) has passed; False if stopped."""
        if self.factor is None:
            return True
        return not self.stop.wait(max(0.0, self.started + offset_s / self.factor - time.monotonic()))

    def _burst(self, frames: list[bytes], offset_us: int) -> bool:
        """The snapshot's frames in one write at its recorded time."""
        if not self._wait_until(offset_us / 1e6):
            return False
        self.out.write(b"".join(frames))
        return True

    def _stream(self, frames: list[bytes], offset_us: int, frame_s: float) -> bool:
        """Each frame when its last sample would have been taken."""
        for number, wire in enumerate(frames):
            if not self._wait_until(offset_us / 1e6 + (number + 1) * frame_s):
                return False
            self.out.write(wire)
        return True


def _channels(text: str) -> tuple[str, ...]:
    """`--channels 1,3,5,7` (1-based) or `--channels DE,FE` (names)."""
    try:
        return parse_channel_list(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _speed(text: str) -> str:
    try:
        parse_speed(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


_DEFAULTS = ReplayOptions()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cm-replay", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", metavar="PATH", help="recording: IMS or FEMTO folder, .mat file, CSV/TSV/NPY folder")
    parser.add_argument("--port", required=True, metavar="URL",
                        help="pyserial URL (/dev/ttyACM0, socket://host:port, loop://) or pty:PATH")
    parser.add_argument("--format", choices=FORMATS, help="recording format (default: detected from the names)")
    parser.add_argument("--sample-rate", type=int, metavar="HZ",
                        help="sample rate of the recording (required for mat and csv; ims 20000, femto 25600)")
    parser.add_argument("--snapshot-samples", type=int, metavar="N",
                        help="cut records into snapshots of N samples (default: one file, one snapshot)")
    parser.add_argument("--speed", default=_DEFAULTS.speed, type=_speed,
                        help=f"realtime (original spacing of the snapshots), max, or a factor like 60 (default: {_DEFAULTS.speed})")
    parser.add_argument("--loop", action="store_true", help="start again after the last snapshot, forever")
    parser.add_argument("--channels", type=_channels, metavar="1,3,5,7|DE,FE",
                        help="channels to send, by 1-based number or name (default: all)")
    parser.add_argument("--continuous", action="store_true",
                        help="stream the snapshots back to back as a running MCU does (time from the samples, "
                             "paced at the sample rate with --speed realtime)")
    parser.add_argument("--boot-time", action="store_true",
                        help="send time since boot with the boot-time flag, as an MCU without a wall clock")
    parser.add_argument("--frame-samples", type=int, default=_DEFAULTS.frame_samples,
                        help=f"samples per frame (default: {_DEFAULTS.frame_samples})")
    parser.add_argument("--baudrate", type=int, default=_DEFAULTS.baudrate,
                        help=f"for real serial ports (default: {_DEFAULTS.baudrate}, enough for 4 x 20 kHz)")
    parser.add_argument("--write-timeout", type=float, default=_DEFAULTS.write_timeout, metavar="S",
                        help=f"give up when nobody reads for this long (default: {_DEFAULTS.write_timeout:g} s)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    parser.add_argument("--no-wait", action="store_true",
                        help="pty: start writing at once instead of waiting for a reader to open the port")
    return parser


def _options(args: argparse.Namespace) -> ReplayOptions:
    return ReplayOptions(format=args.format, channels=args.channels, sample_rate_hz=args.sample_rate,
                         snapshot_samples=args.snapshot_samples, speed=args.speed, loop=args.loop,
                         continuous=args.continuous, boot_time=args.boot_time, frame_samples=args.frame_samples,
                         baudrate=args.baudrate, write_timeout=args.write_timeout, progress=not args.no_progress,
                         wait_reader=not args.no_wait)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    stop = threading.Event()
    if not args.write_timeout > 0:
        print(f"cm-replay: error: --write-timeout: expected seconds > 0, got {args.write_timeout}", file=sys.stderr)
        return 2

    def interrupt(*_: object) -> None:
        # Raise, not only flag: a write blocked on a full port must end now, and the pty link goes with it.
        stop.set()
        raise Stopped

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, interrupt)
    try:
        summary = replay(args.source, args.port, _options(args), stop=stop)
    except Stopped:
        print("cm-replay: stopped", file=sys.stderr, flush=True)
        return 0
    except (ValueError, OSError, serial.SerialException) as error:
        print(f"cm-replay: error: {error}", file=sys.stderr)
        return 2
    print(summary.line(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
