"""A private Mosquitto for tests: a generated config on a free loopback port, stoppable and restartable on
the same port (outage tests), with optional password file, ACL and TLS listener; plus a collecting
subscriber and a throw-away test CA (openssl CLI).

    from broker import Mosquitto, Subscriber
"""
from __future__ import annotations

import base64
import getpass
import hashlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from waiting import eventually

HOST = "127.0.0.1"


def mosquitto_binary() -> str:
    for candidate in ("/usr/sbin/mosquitto", shutil.which("mosquitto")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError("mosquitto not found: install the Debian package `mosquitto` (.ci/run does)")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def password_hash(password: str, salt: bytes | None = None, iterations: int = 101) -> str:
    """Mosquitto 2's PBKDF2-SHA512 format (`$7$`), as `mosquitto_passwd` writes it."""
    salt = salt or secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations, 64)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def write_password_file(path: Path, users: Mapping[str, str], use_tool: bool | None = None) -> Path:
    """A Mosquitto password file; made by `mosquitto_passwd -b` when present (or use_tool=True)."""
    tool = shutil.which("mosquitto_passwd")
    if use_tool is None:
        use_tool = tool is not None
    path.unlink(missing_ok=True)
    if use_tool:
        path.touch(mode=0o600)
        for user, password in users.items():
            subprocess.run([tool or "mosquitto_passwd", "-b", str(path), user, password], check=True,
                           capture_output=True)
    else:
        path.write_text("".join(f"{user}:{password_hash(pw)}\n" for user, pw in users.items()))
    path.chmod(0o600)
    return path


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_test_ca(directory: Path, common_name: str = "cm test") -> TlsFiles:
    """A CA plus a server cert for 127.0.0.1/localhost and a client cert, via the openssl CLI (EC P-256)."""
    directory.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=directory)

    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", f"/CN={common_name} CA")
    for name, extensions in (("server", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"),
                             ("client", "extendedKeyUsage=clientAuth\n")):
        (directory / f"{name}.ext").write_text(extensions)
        openssl("req", *key, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={common_name} {name}")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext")
    return TlsFiles(ca=directory / "ca.crt", server_cert=directory / "server.crt", server_key=directory / "server.key",
                    client_cert=directory / "client.crt", client_key=directory / "client.key")


@dataclass
class Mosquitto:
    """One broker process in `directory`. `config` replaces the generated one (use {port}/{tls_port})."""

    directory: Path
    port: int = field(default_factory=free_port)
    tls_port: int | None = None
    config: str | None = None
    persistence: bool = False  # keep retained messages and sessions across stop()/start(), like Debian's default
    process: subprocess.Popen | None = None
    extra: str = ""  # lines added to the config, generated or given: a bridge, limits (use {port}/{directory})
    log_types: str = "all"  # Mosquitto's log_type values; a benchmark at 10,000 msg/s logs less ("error warning")

    @property
    def config_path(self) -> Path:
        return self.directory / "mosquitto.conf"

    @property
    def log_path(self) -> Path:
        return self.directory / "mosquitto.log"

    def render_config(self) -> str:
        if self.config is not None:
            text = self.config.format(port=self.port, tls_port=self.tls_port, directory=self.directory)
        else:
            text = f"listener {self.port} {HOST}\nallow_anonymous true\n"
        # Under root Mosquitto would switch to the `mosquitto` user and lose access to the test's files.
        persistence = f"persistence true\npersistence_location {self.directory}/\n" if self.persistence else ""
        logging = "".join(f"log_type {kind}\n" for kind in self.log_types.split())
        extra = self.extra.format(port=self.port, tls_port=self.tls_port, directory=self.directory)
        return f"user {getpass.getuser()}\n{persistence}log_dest stderr\n{logging}{text}{extra}"

    def start(self, timeout: float = 10.0) -> Mosquitto:
        if self.process is not None:
            raise RuntimeError("broker already running")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.render_config())
        log = self.log_path.open("ab")
        self.process = subprocess.Popen([mosquitto_binary(), "-c", str(self.config_path)], stdout=log, stderr=log)
        log.close()
        self._wait_listening(timeout)
        return self

    def _wait_listening(self, timeout: float) -> None:
        ports = [p for p in (self.port, self.tls_port) if p is not None]
        process = self.process
        if not eventually(lambda: process.poll() is not None or all(_accepts(port) for port in ports), timeout):
            self.stop()
            raise RuntimeError(f"mosquitto not listening on {ports} after {timeout} s:\n"
                               f"{self.log_path.read_text(errors='replace')}")
        if process.poll() is not None:
            self.process = None
            raise RuntimeError(f"mosquitto exited at start-up:\n{self.log_path.read_text(errors='replace')}")

    def stop(self) -> None:
        """Terminate the broker (an outage, as clients see it); `start()` brings it back on the same ports."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)  # in case a test paused it
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def pause(self) -> None:
        """SIGSTOP: the TCP connections stay open but nothing is acknowledged."""
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.2):
            return True
    except OSError:
        return False


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    retain: bool
    qos: int


class Subscriber:
    """A paho client that records every message it receives, in arrival order.

    persistent=True keeps its session (subscriptions and queued QoS 1 messages) on a broker with persistence
    across a broker restart, so nothing published right after the restart escapes it; it reconnects by itself.
    """

    def __init__(self, port: int, topics: str | list[str] = "#", *, username: str | None = None,
                 password: str | None = None, tls_ca: Path | None = None, protocol: int = mqtt.MQTTv5,
                 client_id: str = "", persistent: bool = False) -> None:
        self.persistent = persistent
        if persistent and not client_id:
            client_id = f"subscriber-{secrets.token_hex(4)}"
        self.messages: list[Message] = []
        self.arrivals: list[float] = []  # time.monotonic() at each message's arrival, for latency benchmarks
        self.granted: list[int] = []
        self._topics = [topics] if isinstance(topics, str) else topics
        self._changed = threading.Condition()
        self.protocol = protocol  # (paho 2.0.0's Client.protocol property recurses forever)
        clean_session = None if protocol == mqtt.MQTTv5 else not persistent
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol,
                                  clean_session=clean_session)
        self.client.reconnect_delay_set(0.2, 0.2)  # type: ignore[arg-type]  # paho accepts seconds as float
        if username is not None:
            self.client.username_pw_set(username, password)
        if tls_ca is not None:
            self.client.tls_set(ca_certs=str(tls_ca))
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.on_publish = self._on_publish
        self._acked: set[int] = set()
        self.port = port

    def start(self, timeout: float = 10.0) -> Subscriber:
        if self.protocol == mqtt.MQTTv5 and self.persistent:
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = 3600
            self.client.connect(HOST, self.port, keepalive=30, clean_start=False, properties=properties)
        else:
            self.client.connect(HOST, self.port, keepalive=30)
        self.client.loop_start()
        for topic in self._topics:
            self.client.subscribe(topic, qos=1)
        if not self.wait_for(lambda s: len(s.granted) == len(self._topics), timeout):
            raise TimeoutError(f"no SUBACK from the broker on port {self.port}")
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> Subscriber:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _on_message(self, client, userdata, message) -> None:
        with self._changed:
            self.messages.append(Message(message.topic, bytes(message.payload), bool(message.retain), message.qos))
            self.arrivals.append(time.monotonic())
            self._changed.notify_all()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        with self._changed:
            self.granted.extend(int(code.value) for code in reason_codes)
            self._changed.notify_all()

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._changed:
            self._acked.add(mid)
            self._changed.notify_all()

    def publish_acked(self, topic: str, payload: bytes, timeout: float = 10.0) -> bool:
        """Publish QoS 1 and wait for the PUBACK: everything the broker sent us before it has been received."""
        info = self.client.publish(topic, payload, qos=1)
        return self.wait_for(lambda s: info.mid in s._acked, timeout)

    def on(self, topic: str) -> list[bytes]:
        with self._changed:
            return [m.payload for m in self.messages if m.topic == topic]

    def wait_for(self, predicate: Callable[[Subscriber], bool], timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(self):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)
        return True
