"""Fault injection with real parts: cm-edge as a process reading a pty, a real Mosquitto, the real outbox
on a real file system, and faults a field device meets: a damaged outbox page, a full disk, a file system
that turns read-only, a garbled or nonsensical checkpoint, a broker that refuses alerts, and another
device's credentials trying to take over the agent's session.

In every case no alert is lost (each transition the agent logged reaches the subscriber, or stays stored and
reported while the broker refuses it) and the agent keeps running. The run replayed is short: healthy
snapshots and sensor dropouts alternating, so every cycle is two alerts (-> sensor_fault, -> normal).
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from broker import HOST, Mosquitto, Subscriber, write_password_file
from paho.mqtt.enums import CallbackAPIVersion
from trained import dropout_cycles, shared_bundle
from waiting import eventually

from edge.mqtt.schemas import validate
from firmware_bridge.ims import list_ims_files, read_counts, write_ims_file

BIN = Path(sys.executable).parent
DEVICE = "pump-7"
TOPIC = f"cm/{DEVICE}"
CYCLES = 3  # healthy x3, dropout x3: two alerts per cycle (the last dropout ends with healthy x3)
TRANSITION = re.compile(r"cm-edge: (\w+) -> (\w+) at (\S+) ")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fault_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """IMS files alternating healthy snapshots and dropouts of bearing 3, ten minutes apart."""
    return dropout_cycles(tmp_path_factory.mktemp("faults") / "run", CYCLES)


@pytest.fixture(scope="module")
def later_run(fault_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One more cycle after `fault_run` ended: two more alerts, later in time."""
    files = list_ims_files(fault_run)
    healthy, dropout = read_counts(files[0].path), read_counts(files[3].path)
    run = tmp_path_factory.mktemp("later") / "run"
    run.mkdir()
    moment = files[-1].timestamp
    for counts in [dropout] * 3 + [healthy] * 3:
        moment += timedelta(minutes=10)
        write_ims_file(run, moment, counts)
    return run


@pytest.fixture(scope="module")
def bundle() -> Path:
    return shared_bundle()


class Agent:
    """cm-edge as a process; its log is read through a pipe (a log file would hit RLIMIT_FSIZE too)."""

    def __init__(self, directory: Path, broker: Mosquitto, bundle: Path, mqtt_extra: str = "") -> None:
        self.directory = directory
        self.state = directory / "state"
        self.state.mkdir(exist_ok=True)
        self.tty = directory / "tty"
        self.config = directory / "edge.toml"
        self.config.write_text(f"""device_id = "{DEVICE}"
[serial]
port = "{self.tty}"
[model]
bundle = "{bundle}"
[mqtt]
host = "127.0.0.1"
port = {broker.port}
{mqtt_extra}
[outbox]
path = "{self.state / 'outbox.sqlite'}"
[telemetry]
counters_interval_s = 1
""")
        self.process: subprocess.Popen | None = None
        self.lines: list[str] = []
        self._reader: threading.Thread | None = None

    def start(self, preexec: Callable[[], None] | None = None) -> Agent:
        self.process = subprocess.Popen([BIN / "cm-edge", "--config", self.config], stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True, preexec_fn=preexec)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def transitions(self) -> list[tuple[str, str, str]]:
        """(previous, state, timestamp) of every transition the agent logged (after it stored the alert)."""
        return [match.groups() for match in map(TRANSITION.search, self.lines) if match]

    def replay(self, run: Path) -> None:
        result = subprocess.run([BIN / "cm-replay", run, "--port", f"pty:{self.tty}", "--speed", "max",
                                 "--no-progress"], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(30)
        if self._reader is not None:
            self._reader.join(5)
        return code

    def stored_alerts(self) -> int:
        path = self.state / "outbox.sqlite"
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)) as db:
            return db.execute("SELECT COUNT(*) FROM outbox WHERE topic = ?", (f"{TOPIC}/alert",)).fetchone()[0]


@pytest.fixture
def agents() -> Iterator[list[Agent]]:
    started: list[Agent] = []
    yield started
    for agent in started:
        if agent.running():
            agent.process.kill()
            agent.process.wait()


def alerts(subscriber: Subscriber) -> list[dict]:
    """Received alerts, each once (consumers de-duplicate by id), in arrival order."""
    unique: dict[str, dict] = {}
    for payload in subscriber.on(f"{TOPIC}/alert"):
        alert = json.loads(payload)
        validate("alert", alert)
        unique.setdefault(alert["id"], alert)
    return list(unique.values())


def delivered(subscriber: Subscriber) -> list[tuple[str, str, str]]:
    return [(a["previous_state"], a["state"], a["timestamp"]) for a in alerts(subscriber)]


def health(subscriber: Subscriber) -> list[dict]:
    reports = [json.loads(payload) for payload in subscriber.on(f"{TOPIC}/health")]
    for report in reports:
        validate("health", report)
    return reports


def faulted(component: str) -> Callable[[Subscriber], bool]:
    return lambda s: any(component in report["faults"] for report in health(s))


def cleared(subscriber: Subscriber) -> bool:
    reports = health(subscriber)
    return bool(reports) and reports[-1]["problem"] is False


def expect_every_alert(agent: Agent, subscriber: Subscriber, count: int = 2 * CYCLES) -> None:
    """Every transition the agent logged arrives, once each after de-duplication, in order."""
    assert eventually(lambda: len(agent.transitions()) >= count, 60), agent.log
    assert subscriber.wait_for(lambda s: len(delivered(s)) >= count, 60), agent.log
    assert delivered(subscriber) == agent.transitions()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path / "broker", persistence=True) as running:
        yield running


def test_a_damaged_outbox_page_is_set_aside_and_every_stored_alert_still_arrives(tmp_path, broker, bundle,
                                                                               fault_run, agents):
    broker.stop()  # the run's alerts pile up in the outbox
    first = Agent(tmp_path, broker, bundle).start()
    agents.append(first)
    first.replay(fault_run)
    assert eventually(lambda: first.stored_alerts() == 2 * CYCLES, 60), first.log
    assert first.stop() == 0
    outbox = first.state / "outbox.sqlite"
    with contextlib.closing(sqlite3.connect(outbox)) as db:  # the page of the table that numbers the rows
        page = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'sqlite_sequence'").fetchone()[0]
    with outbox.open("r+b") as file:
        file.seek((page - 1) * 4096)
        file.write(os.urandom(4096))
    damaged = outbox.read_bytes()
    broker.start()
    with Subscriber(broker.port, f"{TOPIC}/#") as subscriber:
        second = Agent(tmp_path, broker, bundle).start()
        agents.append(second)
        assert subscriber.wait_for(lambda s: len(delivered(s)) >= 2 * CYCLES, 60), second.log
        assert delivered(subscriber) == first.transitions()
        assert subscriber.wait_for(faulted("storage")), second.log
        message = health(subscriber)[-1]["faults"]["storage"]["message"]
        assert f"{2 * CYCLES} stored message(s) recovered" in message
        (aside,) = first.state.glob("outbox.sqlite.damaged-*[0-9TZ]")
        assert aside.read_bytes() == damaged and aside.name in message  # kept for inspection
        second.replay(fault_run)  # and the fresh outbox works: the same run again, the same alerts
        assert subscriber.publish_acked(f"{TOPIC}/probe", b"")
        assert second.running()
    assert second.stop() == 0


def saved_state(agent: Agent) -> str:
    return json.loads((agent.state / "outbox.detector.json").read_text())["state"]


def full_disk() -> None:
    """In the agent's process, before exec: every write beyond byte 0 fails with EFBIG, as on a full disk.

    (Python ignores SIGXFSZ, so the writes fail instead of killing the process.)"""
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))


def test_a_full_disk_holds_alerts_in_memory_delivers_them_and_stores_them_later(tmp_path, broker, bundle,
                                                                               fault_run, later_run, agents):
    with Subscriber(broker.port, f"{TOPIC}/#") as subscriber:
        agent = Agent(tmp_path, broker, bundle).start()
        agents.append(agent)
        assert subscriber.wait_for(lambda s: s.on(f"{TOPIC}/status")[-1:] == [b"online"], 30), agent.log
        _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.prlimit(agent.process.pid, resource.RLIMIT_FSIZE, (1, hard))  # the disk is full from now on
        agent.replay(fault_run)
        expect_every_alert(agent, subscriber)  # published from memory while the disk refuses them
        assert subscriber.wait_for(faulted("storage"), 30), agent.log
        message = health(subscriber)[-1]["faults"]["storage"]["message"]
        assert "outbox.sqlite" in message and "held in memory" in message
        assert agent.running()
        transitions = agent.transitions()
        resource.prlimit(agent.process.pid, resource.RLIMIT_FSIZE, (hard, hard))  # space again
        # The held alerts go to disk (and the outbox empties as they are acknowledged), the checkpoint is
        # saved again, and the fault clears at once: not at the next transition.
        assert eventually(lambda: "disk takes writes again" in agent.log, 30), agent.log
        assert eventually(lambda: agent.stored_alerts() == 0, 30), agent.log
        assert subscriber.wait_for(cleared, 30), agent.log
        assert agent.transitions() == transitions
        assert saved_state(agent) == transitions[-1][1]
        agent.replay(later_run)
        expect_every_alert(agent, subscriber, 2 * CYCLES + 2)
        assert subscriber.wait_for(cleared, 30), agent.log
        assert agent.running()
    assert agent.stop() == 0


@contextlib.contextmanager
def read_only(directory: Path) -> Iterator[None]:
    """Make `directory` read-only under the running agent: new files cannot be created in it any more.

    As root, permissions do not apply, so a read-only bind mount goes over it (what the agent already has
    open stays writable either way, as on a real system); as another user, chmod does it.
    """
    if os.geteuid() == 0:
        for command in (["mount", "--bind", directory, directory], ["mount", "-o", "remount,bind,ro", directory]):
            subprocess.run(command, check=True, capture_output=True)
        try:
            yield
        finally:
            subprocess.run(["umount", directory], check=True, capture_output=True)
    else:
        directory.chmod(0o500)
        try:
            yield
        finally:
            directory.chmod(0o700)


def test_a_read_only_directory_mid_run_costs_no_alert(tmp_path, broker, bundle, fault_run, later_run, agents):
    with Subscriber(broker.port, f"{TOPIC}/#") as subscriber:
        agent = Agent(tmp_path, broker, bundle).start()
        agents.append(agent)
        assert subscriber.wait_for(lambda s: s.on(f"{TOPIC}/status")[-1:] == [b"online"], 30), agent.log
        with read_only(agent.state):
            agent.replay(fault_run)
            expect_every_alert(agent, subscriber)
            assert subscriber.wait_for(faulted("storage"), 30), agent.log
            assert "cannot save the detector checkpoint" in health(subscriber)[-1]["faults"]["storage"]["message"]
            assert agent.running()
            transitions = agent.transitions()
        # Writable again: the checkpoint is saved and the fault clears at once, before any transition.
        assert subscriber.wait_for(cleared, 30), agent.log
        assert agent.transitions() == transitions
        assert saved_state(agent) == transitions[-1][1]
        agent.replay(later_run)
        expect_every_alert(agent, subscriber, 2 * CYCLES + 2)
        assert subscriber.wait_for(cleared, 30), agent.log
        assert agent.running()
    assert agent.stop() == 0


@pytest.mark.parametrize("checkpoint", [
    b'{"model_id": "cm-',  # cut short by a power failure on a disk without journaling
    b"\x00" * 64,  # a block of zeros
    "since_us", "health",
    "driver",  # an alarm raised by a channel the bundle does not have: if taken, the agent would resume in alarm
], ids=["garbled", "zeros", "since_us-1e20", "health-sensor_fault", "driver-bearing9"])
def test_a_bad_checkpoint_is_reported_set_aside_and_alerts_keep_their_ids(tmp_path, broker, bundle, fault_run,
                                                                        agents, checkpoint):
    with Subscriber(broker.port, f"{TOPIC}/#") as subscriber:
        first = Agent(tmp_path, broker, bundle).start()
        agents.append(first)
        assert subscriber.wait_for(lambda s: s.on(f"{TOPIC}/status")[-1:] == [b"online"], 30), first.log
        first.replay(fault_run)
        expect_every_alert(first, subscriber)
        assert first.stop() == 0
        path = first.state / "outbox.detector.json"
        if isinstance(checkpoint, bytes):
            path.write_bytes(checkpoint)
        else:  # a well-formed file with a value no agent could have written
            values = json.loads(path.read_text())
            if checkpoint == "driver":
                values |= {"state": "alarm", "health": "alarm", "driver": "bearing9"}
            else:
                values[checkpoint] = 1e20 if checkpoint == "since_us" else "sensor_fault"
            path.write_text(json.dumps(values))
        before = delivered(subscriber)
        second = Agent(tmp_path, broker, bundle).start()
        agents.append(second)
        assert subscriber.wait_for(faulted("storage"), 30), second.log
        message = health(subscriber)[-1]["faults"]["storage"]["message"]
        assert "unusable detector checkpoint" in message and str(path) in message
        assert isinstance(checkpoint, bytes) or f"{checkpoint}:" in message  # the key at fault
        if checkpoint == "driver":
            assert "'bearing9'" in message
        assert list(first.state.glob("outbox.detector.json.bad-*"))
        # The same snapshots again (a sensor re-sending its buffer): the agent starts from normal and raises
        # the same transitions, under the same ids, so a consumer sees each alert once.
        second.replay(fault_run)
        assert eventually(lambda: len(second.transitions()) >= 2 * CYCLES, 60), second.log
        assert subscriber.publish_acked(f"{TOPIC}/probe", b"")
        assert delivered(subscriber) == before
        assert second.running()
    assert second.stop() == 0


def acl_broker(broker: Mosquitto, tmp_path: Path, alerts_allowed: bool) -> None:
    acl = tmp_path / f"acl-{alerts_allowed}"
    topics = ["status", "state", "telemetry", "health", "probe"] + (["alert"] if alerts_allowed else [])
    acl.write_text("".join(f"topic readwrite {TOPIC}/{name}\n" for name in topics))
    broker.config = f"listener {{port}} 127.0.0.1\nallow_anonymous true\nacl_file {acl}\n"


def test_alerts_the_broker_refuses_stay_stored_and_reported_until_it_accepts_them(tmp_path, broker, bundle,
                                                                                 fault_run, agents):
    broker.stop()
    acl_broker(broker, tmp_path, alerts_allowed=False)
    broker.start()
    with Subscriber(broker.port, f"{TOPIC}/#") as subscriber:
        agent = Agent(tmp_path, broker, bundle).start()
        agents.append(agent)
        assert subscriber.wait_for(lambda s: s.on(f"{TOPIC}/status")[-1:] == [b"online"], 30), agent.log
        agent.replay(fault_run)
        assert eventually(lambda: len(agent.transitions()) >= 2 * CYCLES, 60), agent.log
        assert subscriber.wait_for(faulted("broker"), 30), agent.log
        assert "Not authorized" in health(subscriber)[-1]["faults"]["broker"]["message"]
        assert agent.stored_alerts() == 2 * CYCLES  # every refused alert kept
        assert subscriber.publish_acked(f"{TOPIC}/probe", b"") and delivered(subscriber) == []
        assert agent.running()
    broker.stop()  # the operator fixes the ACL
    acl_broker(broker, tmp_path, alerts_allowed=True)
    broker.start()
    with Subscriber(broker.port, f"{TOPIC}/#") as subscriber:
        assert subscriber.wait_for(lambda s: len(delivered(s)) >= 2 * CYCLES, 60), agent.log
        assert delivered(subscriber) == agent.transitions()
        assert subscriber.wait_for(cleared, 30), agent.log
        assert eventually(lambda: agent.stored_alerts() == 0, 30)
    assert agent.stop() == 0


def deploy_broker(tmp_path: Path, users: dict[str, str]) -> Mosquitto:
    """deploy/mosquitto/cm.conf and acl, with the test's password file and port."""
    deploy = Path(__file__).resolve().parents[1] / "deploy" / "mosquitto"
    passwd = write_password_file(tmp_path / "cm.passwd", users)
    text = (deploy / "cm.conf").read_text()
    for old, new in {"password_file /etc/mosquitto/cm.passwd": f"password_file {passwd}",
                     "acl_file /etc/mosquitto/cm.acl": f"acl_file {deploy / 'acl'}",
                     "\nlistener 1883\n": "\nlistener {port} 127.0.0.1\n",
                     "\npersistence true\n": "\npersistence true\npersistence_location {directory}/\n"}.items():
        assert old in text, old
        text = text.replace(old, new)
    return Mosquitto(tmp_path / "broker", config=text)


def test_another_devices_credentials_cannot_take_over_the_agents_session(tmp_path, bundle, fault_run, agents):
    users = {DEVICE: "pump-7 secret", "pump-8": "pump-8 secret", "homeassistant": "ha secret"}
    secret = tmp_path / "mqtt.secret"
    secret.write_text(users[DEVICE] + "\n")
    with deploy_broker(tmp_path, users) as broker, \
            Subscriber(broker.port, f"{TOPIC}/#", username="homeassistant", password=users["homeassistant"]) as reader:
        agent = Agent(tmp_path, broker, bundle,
                      mqtt_extra=f'username = "{DEVICE}"\npassword_file = "{secret}"\nkeepalive = 5').start()
        agents.append(agent)
        assert reader.wait_for(lambda s: s.on(f"{TOPIC}/status")[-1:] == [b"online"], 30), agent.log
        stop = threading.Event()

        def intrude() -> None:  # pump-8's credentials, the agent's client id, again and again
            while not stop.is_set():
                client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"cm-edge-{DEVICE}")
                client.username_pw_set("pump-8", users["pump-8"])
                client.will_set(f"{TOPIC}/status", b"offline", qos=1, retain=True)
                with contextlib.suppress(OSError):
                    client.connect(HOST, broker.port)
                    client.loop_start()
                    stop.wait(0.2)
                    client.disconnect()
                    client.loop_stop()

        intruder = threading.Thread(target=intrude)
        intruder.start()
        try:
            agent.replay(fault_run)
            expect_every_alert(agent, reader)
        finally:
            stop.set()
            intruder.join(10)
        assert reader.publish_acked("cm/homeassistant/probe", b"") is not None
        assert reader.on(f"{TOPIC}/status")[-1:] == [b"online"] and b"offline" not in reader.on(f"{TOPIC}/status")
        assert "lost the connection" not in agent.log and agent.running()
    assert agent.stop() == 0


def test_config_check_while_the_agent_runs_leaves_its_session_alone_and_a_second_agent_is_refused(tmp_path, bundle,
                                                                                                   agents):
    users = {DEVICE: "pump-7 secret", "homeassistant": "ha secret"}
    secret = tmp_path / "mqtt.secret"
    secret.write_text(users[DEVICE] + "\n")
    # Under the deploy config the broker's client id is the username: a second login as pump-7 takes the
    # agent's session, whatever client id it asks for.
    with deploy_broker(tmp_path, users) as broker, \
            Subscriber(broker.port, f"{TOPIC}/#", username="homeassistant", password=users["homeassistant"]) as reader:
        agent = Agent(tmp_path, broker, bundle, mqtt_extra=f'username = "{DEVICE}"\npassword_file = "{secret}"')
        controller, sensor = os.openpty()  # a serial port that is there, as on a Pi with its sensor plugged in
        agent.tty.symlink_to(os.ttyname(sensor))
        agents.append(agent.start())
        assert reader.wait_for(lambda s: s.on(f"{TOPIC}/status")[-1:] == [b"online"], 30), agent.log
        check = subprocess.run([BIN / "cm-edge", "--config", agent.config, "--check"], capture_output=True, text=True,
                               timeout=60)
        assert check.returncode == 0, check.stdout + check.stderr
        assert f"the agent is running (pid {agent.process.pid})" in check.stdout
        second = subprocess.run([BIN / "cm-edge", "--config", agent.config], capture_output=True, text=True, timeout=60)
        assert second.returncode == 2
        assert f"in use by another agent (pid {agent.process.pid})" in second.stdout
        assert reader.publish_acked("cm/homeassistant/probe", b"") is not None
        assert b"offline" not in reader.on(f"{TOPIC}/status")
        assert "lost the connection" not in agent.log and agent.running()
    assert agent.stop() == 0
    os.close(controller)
    os.close(sensor)
