"""SerialLink over real pseudo-terminals, TCP sockets and pyserial's loopback."""
from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import tty
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import serial
from waiting import eventually

from firmware_bridge.frame import Frame, encode
from firmware_bridge.link import SerialLink

pytestmark = pytest.mark.waits

WAIT_S = 10.0  # safety net only: every wait below normally ends in milliseconds


def wire(sequence: int) -> bytes:
    counts = np.full((32, 4), sequence, dtype=np.int16)
    return encode(counts, sequence=sequence, first_sample=32 * sequence, capture_time_us=0,
                  sample_rate_hz=20_000, scale=0.001)


def wait_until(condition: Callable[[], bool]) -> None:
    assert eventually(condition, WAIT_S), "condition not reached"


class Reader:
    """Runs link.frames() in a thread, as the agent does, and hands the frames over through a queue."""

    def __init__(self, link: SerialLink) -> None:
        self.link, self.stop, self.frames = link, threading.Event(), queue.Queue[Frame]()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        for frame in self.link.frames(self.stop):
            self.frames.put(frame)

    def take(self, n: int) -> list[int]:
        return [self.frames.get(timeout=WAIT_S).header.sequence for _ in range(n)]

    def close(self) -> None:
        self.stop.set()
        self.thread.join(WAIT_S)
        self.link.close()
        assert not self.thread.is_alive()


class FakeDevice:
    """A pty pair standing in for a USB serial adapter: its slave appears at a fixed path."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.tty = os.ttyname(self.slave)
        temporary = path.with_suffix(".tmp")
        os.symlink(self.tty, temporary)
        os.replace(temporary, path)

    def send(self, data: bytes) -> None:
        os.write(self.master, data)

    def unplug(self) -> None:
        # The device node goes first, as udev removes /dev/ttyACM0 when the adapter is pulled. A link left
        # pointing at the closed pty could open whatever pty the kernel hands out next under that number:
        # another test's, when tests run in parallel.
        if self.path.is_symlink() and os.readlink(self.path) == self.tty:
            self.path.unlink()
        os.close(self.master)
        os.close(self.slave)


@pytest.fixture
def device_path(tmp_path: Path) -> Path:
    return tmp_path / "ttyACM0"


class FailedOpens:
    """Counts the link's attempts to open a port that failed, made through the real pyserial call: a test waits
    for the attempts it needs to have happened instead of sleeping and hoping they did."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        self._open = serial.serial_for_url
        monkeypatch.setattr(serial, "serial_for_url", self._counted)

    def _counted(self, *args: Any, **kwargs: Any) -> serial.SerialBase:
        try:
            return self._open(*args, **kwargs)
        except Exception:
            self.count += 1
            raise

    def wait_for_more(self, attempts: int) -> None:
        target = self.count + attempts
        wait_until(lambda: self.count >= target)


@pytest.fixture
def failed_opens(monkeypatch: pytest.MonkeyPatch) -> FailedOpens:
    return FailedOpens(monkeypatch)


@pytest.fixture
def reader_factory() -> Iterator[Callable[[SerialLink], Reader]]:
    readers: list[Reader] = []

    def start(link: SerialLink) -> Reader:
        readers.append(Reader(link))
        return readers[-1]

    yield start
    for reader in readers:
        reader.close()


def test_frames_arrive_through_a_pty(device_path: Path, reader_factory: Callable[[SerialLink], Reader]) -> None:
    device = FakeDevice(device_path)
    reader = reader_factory(SerialLink(str(device_path)))
    wait_until(lambda: reader.link.connected)  # pyserial flushes the input on open: send after that
    device.send(b"".join(wire(s) for s in range(5)))
    assert reader.take(5) == [0, 1, 2, 3, 4]
    frame_stats = reader.link.stats
    assert frame_stats.frames == 5 and frame_stats.crc_errors == frame_stats.malformed == 0
    device.unplug()


def test_unplug_and_replug_reconnects_with_one_warning(
    device_path: Path, reader_factory: Callable[[SerialLink], Reader], caplog: pytest.LogCaptureFixture,
    failed_opens: FailedOpens,
) -> None:
    caplog.set_level(logging.INFO, logger="firmware_bridge.link")
    device = FakeDevice(device_path)
    link = SerialLink(str(device_path), backoff_initial=0.01, backoff_max=0.05)
    reader = reader_factory(link)
    wait_until(lambda: link.connected)
    device.send(wire(0) + wire(1) + wire(2)[:40])  # unplugged in the middle of frame 2
    assert reader.take(2) == [0, 1]

    device.unplug()
    wait_until(lambda: not link.connected)
    # Many reconnect attempts fail while the device is away; they must not flood the log.
    failed_opens.wait_for_more(10)
    device = FakeDevice(device_path)
    wait_until(lambda: link.connected)
    device.send(wire(3) + wire(4))
    assert reader.take(2) == [3, 4]

    # Counted before unplugging again: that is a second, legitimate outage the link may already have seen.
    records = [r for r in caplog.records if r.name == "firmware_bridge.link"]
    warnings = [r for r in records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(device_path) in warnings[0].getMessage()
    assert any("back after" in r.getMessage() for r in records if r.levelno == logging.INFO)
    assert link.reconnects == 1
    assert link.stats.sequence_gaps == 1  # frame 2 was lost with the device, and the decoder says so
    assert link.stats.malformed == 1  # the partial frame 2 is dropped, not glued to frame 3
    device.unplug()


def test_device_missing_at_start_is_one_outage(
    device_path: Path, reader_factory: Callable[[SerialLink], Reader], caplog: pytest.LogCaptureFixture,
    failed_opens: FailedOpens,
) -> None:
    caplog.set_level(logging.INFO, logger="firmware_bridge.link")
    link = SerialLink(str(device_path), backoff_initial=0.01, backoff_max=0.02)
    reader = reader_factory(link)
    failed_opens.wait_for_more(5)  # an outage of several failed attempts, before the device appears
    device = FakeDevice(device_path)
    wait_until(lambda: link.connected)
    device.send(wire(7))
    assert reader.take(1) == [7]
    # Counted before unplugging: the unplug is a second, legitimate outage the link may already have seen.
    assert sum(r.levelno == logging.WARNING for r in caplog.records) == 1
    device.unplug()


def test_socket_url_and_server_restart(reader_factory: Callable[[SerialLink], Reader],
                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="firmware_bridge.link")
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    reader = reader_factory(SerialLink(f"socket://127.0.0.1:{port}", backoff_initial=0.01, backoff_max=0.05))
    for first in (0, 3):  # a network serial bridge that drops the connection once
        connection, _ = server.accept()
        wait_until(lambda: reader.link.connected)  # pyserial discards what arrives while it opens
        connection.sendall(b"".join(wire(s) for s in range(first, first + 3)))
        assert reader.take(3) == [first, first + 1, first + 2]
        connection.close()
    server.close()
    assert sum(r.levelno == logging.WARNING for r in caplog.records) == 1
    assert reader.link.reconnects == 1


def test_loop_url(reader_factory: Callable[[SerialLink], Reader]) -> None:
    link = SerialLink("loop://")
    link.write(b"noise" + b"\x00" + wire(0) + wire(1))
    reader = reader_factory(link)
    assert reader.take(2) == [0, 1]
    assert link.stats.malformed == 1 and link.stats.resyncs == 1


def test_close_ends_the_frame_iterator(device_path: Path) -> None:
    device = FakeDevice(device_path)
    link = SerialLink(str(device_path))
    reader = Reader(link)
    wait_until(lambda: link.connected)
    link.close()
    reader.thread.join(WAIT_S)
    assert not reader.thread.is_alive()
    device.unplug()
