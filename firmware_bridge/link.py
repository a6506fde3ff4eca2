"""Serial link: frames from any pyserial URL, reconnecting with capped exponential backoff.

A USB accelerometer bridge gets unplugged, a pty writer restarts: the link closes, retries, and logs one
warning per outage and one info line when the device is back, never one line per attempt.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

import serial

from firmware_bridge.frame import DecoderStats, Frame, FrameDecoder

log = logging.getLogger(__name__)
DEFAULT_BAUDRATE = 2_000_000  # carries 4 channels at 20 kHz (PROTOCOL.md §6); ptys and USB CDC ignore it


class SerialLink:
    """Reads wire frames from `url` (device path, pty slave path, socket://, loop://)."""

    def __init__(
        self,
        url: str,
        *,
        baudrate: int = DEFAULT_BAUDRATE,
        read_size: int = 4096,
        timeout: float = 0.1,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
    ) -> None:
        self.url = url
        self.baudrate = baudrate
        self.read_size = read_size
        self.timeout = timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.decoder = FrameDecoder()
        self.reconnects = 0
        self._port: serial.SerialBase | None = None
        self._outage_since: float | None = None
        self._closed = threading.Event()
        self._reading = False

    @property
    def stats(self) -> DecoderStats:
        return self.decoder.stats

    @property
    def connected(self) -> bool:
        return self._port is not None

    def frames(self, stop: threading.Event | None = None) -> Iterator[Frame]:
        """Decoded frames until `stop` is set or close() is called; outages are waited out, not raised."""
        stop = stop or threading.Event()
        delay = self.backoff_initial
        self._reading = True
        try:
            while not (stop.is_set() or self._closed.is_set()):
                port = self._port
                if port is None:
                    if not self._connect():
                        self._wait(stop, delay)
                        delay = min(delay * 2, self.backoff_max)
                    continue
                delay = self.backoff_initial
                try:
                    data = self._read(port)
                except (serial.SerialException, OSError) as error:
                    if not self._closed.is_set():
                        self._lost(error)
                    continue
                yield from self.decoder.feed(data)
        finally:
            self._reading = False
            if self._closed.is_set():
                self._drop_port()

    def _read(self, port: serial.SerialBase) -> bytes:
        if isinstance(port, serial.Serial):
            # A tty reports exactly what it holds: take that instead of waiting for read_size bytes,
            # because pyserial discards a partly filled read when the device vanishes mid-wait.
            waiting = port.in_waiting
            return port.read(min(waiting, self.read_size) if waiting else 1)
        return port.read(self.read_size)

    def write(self, data: bytes) -> None:
        """Send bytes to the device (commands, or a loopback test); opens the port if needed."""
        if self._port is None and not self._connect():
            raise serial.SerialException(f"serial link {self.url} is not connected")
        assert self._port is not None
        self._port.write(data)

    def close(self) -> None:
        """Stop frames() (from any thread) and release the port."""
        self._closed.set()
        port = self._port
        if not self._reading:
            self._drop_port()
        elif port is not None and hasattr(port, "cancel_read"):
            port.cancel_read()  # wake the reading thread; it releases the port itself

    def __enter__(self) -> SerialLink:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _connect(self) -> bool:
        try:
            self._port = serial.serial_for_url(self.url, baudrate=self.baudrate, timeout=self.timeout)
        except (serial.SerialException, OSError, ValueError) as error:
            self._lost(error)
            return False
        # Bytes buffered before the outage belong to a frame that will never finish: start clean.
        self.decoder.discard_pending()
        if self._outage_since is not None:
            self.reconnects += 1
            log.info("serial link %s back after %.1f s", self.url, time.monotonic() - self._outage_since)
            self._outage_since = None
        else:
            log.info("serial link %s open", self.url)
        return True

    def _lost(self, error: BaseException) -> None:
        self._drop_port()
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            log.warning("serial link %s unavailable (%s); retrying with backoff up to %.0f s",
                        self.url, error, self.backoff_max)

    def _drop_port(self) -> None:
        port, self._port = self._port, None
        if port is not None:
            try:
                port.close()
            except (serial.SerialException, OSError):
                pass  # the device is already gone; closing is best effort

    def _wait(self, stop: threading.Event, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not (stop.is_set() or self._closed.is_set()) and time.monotonic() < deadline:
            stop.wait(min(self.timeout, deadline - time.monotonic()))
