"""Hardware-in-the-loop replay, with real parts: a Mosquitto broker on loopback, a pseudo-terminal, cm-edge as
a subprocess reading it with pyserial, cm-replay feeding a synthetic run to failure into it, and a paho
subscriber. Every payload is validated against its JSON Schema.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from broker import Mosquitto, Subscriber
from chain import BIN, TOPIC, Chain
from trained import shared_bundle, shared_dropout_run
from waiting import eventually

from edge.model.bundle import load_bundle
from edge.mqtt.schemas import validate
from firmware_bridge.frame import encode_status
from firmware_bridge.ims import list_ims_files, read_counts
from firmware_bridge.replay import PtyPort, frames_for_file, replay

FILES = 140  # the run shared_bundle() was fitted on (its healthy first half), plus a sensor dropout at the end

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_dir() -> Path:
    # Same seed and length as the shared bundle's training run; the dropout only changes the last 3 files.
    return shared_dropout_run()


@pytest.fixture(scope="module")
def bundle() -> Path:
    return shared_bundle()


@pytest.fixture
def broker(tmp_path) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path / "broker", persistence=True) as running:
        yield running


@pytest.fixture
def chain(tmp_path, broker, bundle) -> Iterator[Chain]:
    chain = Chain(tmp_path, broker, bundle)
    yield chain
    if chain.agent is not None and chain.agent.poll() is None:
        chain.agent.kill()
        chain.agent.wait()


def stored_alerts(chain: Chain) -> int:
    """Alerts committed to the agent's outbox (read-only, beside the running agent; WAL allows it)."""
    path = chain.tmp_path / "outbox.sqlite"
    if not path.exists():
        return 0
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)) as db:
        try:
            return db.execute("SELECT COUNT(*) FROM outbox WHERE topic = ?", (f"{TOPIC}/alert",)).fetchone()[0]
        except sqlite3.OperationalError:  # the table is not created yet
            return 0


def payloads(subscriber: Subscriber, kind: str) -> list[dict]:
    return [json.loads(p) for p in subscriber.on(f"{TOPIC}/{kind}")]


def unique_alerts(subscriber: Subscriber) -> list[dict]:
    """Alerts in arrival order, each once: consumers de-duplicate by id after a reconnect."""
    seen: dict[str, dict] = {}
    for alert in payloads(subscriber, "alert"):
        seen.setdefault(alert["id"], alert)
    return list(seen.values())


def timeline(alerts: list[dict]) -> list[tuple[str, str, str]]:
    return [(a["timestamp"], a["previous_state"], a["state"]) for a in alerts]


def iso(moment) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.000Z")


@pytest.fixture(scope="module")
def reference(run_dir, bundle, tmp_path_factory) -> dict:
    """One undisturbed replay of the whole run; the other tests compare their alerts with its alerts."""
    tmp_path = tmp_path_factory.mktemp("reference")
    with Mosquitto(tmp_path / "broker") as broker, Subscriber(broker.port, f"{TOPIC}/#") as subscriber:
        chain = Chain(tmp_path, broker, bundle)
        chain.start_online(subscriber)
        result = chain.replay(run_dir)
        assert result.returncode == 0, result.stderr
        assert subscriber.wait_for(lambda s: len(s.on(f"{TOPIC}/telemetry")) >= FILES, 60), chain.agent_log()
        assert subscriber.publish_acked(f"{TOPIC}/probe", b"")  # every earlier message has been delivered
        assert chain.stop_agent() == 0, chain.agent_log()
        assert subscriber.wait_for(lambda s: b"offline" in s.on(f"{TOPIC}/status"), 10)
        return {
            "status": [p.decode() for p in subscriber.on(f"{TOPIC}/status")],
            "telemetry": payloads(subscriber, "telemetry"),
            "state": payloads(subscriber, "state"),
            "alerts": unique_alerts(subscriber),
            "all_alerts": payloads(subscriber, "alert"),
            "replay": result.stderr,
            "log": chain.agent_log(),
        }


def test_replayed_run_to_failure_raises_a_debounced_alarm_on_the_failing_bearing(reference, run_dir):
    files = list_ims_files(run_dir)
    assert reference["status"][0] == "online" and reference["status"][-1] == "offline"
    # Telemetry for every snapshot, stamped with the original capture times from the file names.
    telemetry = reference["telemetry"]
    assert [t["timestamp"] for t in telemetry] == [iso(f.timestamp) for f in files]
    assert telemetry[-1]["counters"]["crc_errors"] == 0 and telemetry[-1]["counters"]["snapshots"] == FILES

    alerts = reference["alerts"]
    alarms = [a for a in alerts if a["state"] == "alarm"]
    assert alarms, f"no alarm raised; alerts: {timeline(alerts)}"
    first_alarm = files.index(next(f for f in files if iso(f.timestamp) == alarms[0]["timestamp"]))
    assert FILES // 2 <= first_alarm < FILES - 3, "the alarm comes after the healthy half and before the end"
    assert alarms[0]["top_channel"] == "bearing3"
    assert alarms[0]["score"] > alarms[0]["alarm_threshold"]
    # No alarm and no warning while the bearing was healthy (the span the model was fitted on).
    healthy_end = iso(files[FILES // 2].timestamp)
    assert not [a for a in alerts if a["timestamp"] < healthy_end], timeline(alerts)


def test_sensor_dropout_at_the_end_is_a_sensor_fault_not_an_alarm(reference):
    last = reference["alerts"][-1]
    assert last["state"] == "sensor_fault"
    assert last["reason"] == "dropout:bearing3" and last["top_channel"] == "bearing3"
    assert reference["state"][-1]["state"] == "sensor_fault"
    assert reference["telemetry"][-1]["score"] is None  # a faulty snapshot is never scored


def test_every_payload_matches_its_schema(reference):
    for kind in ("telemetry", "state", "all_alerts"):
        for payload in reference[kind]:
            validate("alert" if kind == "all_alerts" else kind, payload)
    for status in reference["status"]:
        validate("status", status)


def test_the_live_agent_and_cm_train_evaluate_tell_the_same_story(reference, run_dir, bundle):
    """The batch evaluation a trainer reads and the stream the agent scores: same scores, same states."""
    from trainer.dataset import load_dataset
    from trainer.evaluate import run_detector

    trace = run_detector(load_dataset(run_dir), load_bundle(bundle))
    telemetry = reference["telemetry"]
    assert [t["state"] for t in telemetry] == [str(state) for state in trace.states]
    live = np.array([np.nan if t["score"] is None else t["score"] for t in telemetry])
    np.testing.assert_allclose(live, trace.scores, atol=1e-6)  # the payload rounds to 6 decimals


def test_broker_restart_mid_replay_delays_alerts_but_loses_none(reference, chain, broker, run_dir):
    with Subscriber(broker.port, f"{TOPIC}/#", persistent=True) as subscriber:
        chain.start_online(subscriber)
        replayer = threading.Thread(target=chain.replay, args=(run_dir,))
        replayer.start()
        # Take the broker away while the bearing is still healthy, so every alert is raised during the outage.
        assert subscriber.wait_for(lambda s: len(s.on(f"{TOPIC}/telemetry")) >= 20, 60), chain.agent_log()
        broker.stop()
        replayer.join(120)
        # The agent scores the last snapshots while the broker is still down: every alert waits in the outbox.
        assert eventually(lambda: stored_alerts(chain) >= len(reference["alerts"]), 60), chain.agent_log()
        assert subscriber.on(f"{TOPIC}/alert") == []
        broker.start()
        expected = len(reference["alerts"])
        assert subscriber.wait_for(lambda s: len(unique_alerts(s)) >= expected, 60), chain.agent_log()
    assert timeline(unique_alerts(subscriber)) == timeline(reference["alerts"])
    assert chain.stop_agent() == 0
    # Telemetry is QoS 0: what fell into the outage is gone, and the counters in the log say how much.
    received = len(subscriber.on(f"{TOPIC}/telemetry"))
    dropped = [int(n) for n in re.findall(r"telemetry_dropped=(\d+)", chain.agent_log())]
    # (a message handed to paho just before it noticed the outage is lost without being counted)
    assert received < FILES and 0 < max(dropped) <= FILES - received


def test_agent_killed_with_pending_alerts_publishes_them_after_restart(reference, chain, broker, run_dir):
    broker.stop()  # the alerts of the whole run pile up in the outbox
    chain.start_agent()
    assert chain.replay(run_dir).returncode == 0
    # Kill it only once every alert of the run is committed: the point is that committed alerts survive.
    assert eventually(lambda: stored_alerts(chain) >= len(reference["alerts"]), 60), chain.agent_log()
    chain.agent.send_signal(signal.SIGKILL)
    chain.agent.wait()
    broker.start()
    with Subscriber(broker.port, f"{TOPIC}/#") as subscriber:
        chain.start_agent()  # no more frames: only the outbox has something to say
        expected = len(reference["alerts"])
        assert subscriber.wait_for(lambda s: len(unique_alerts(s)) >= expected, 60), chain.agent_log()
        assert timeline(unique_alerts(subscriber)) == timeline(reference["alerts"])
    assert chain.stop_agent() == 0


def test_restarted_agent_resumes_its_state_without_a_false_all_clear(reference, chain, broker, run_dir, tmp_path):
    with Subscriber(broker.port, f"{TOPIC}/#") as subscriber:
        chain.start_online(subscriber)
        assert chain.replay(run_dir).returncode == 0
        assert subscriber.wait_for(lambda s: len(s.on(f"{TOPIC}/telemetry")) >= FILES, 60), chain.agent_log()
        assert chain.stop_agent() == 0
        before = len(subscriber.messages)
        # The sensor is still dead after the restart: the last snapshots again.
        tail = tmp_path / "tail"
        tail.mkdir()
        for ims in list_ims_files(run_dir)[-3:]:
            os.symlink(ims.path, tail / ims.path.name)
        chain.start_online(subscriber)
        assert chain.replay(tail).returncode == 0
        assert subscriber.wait_for(lambda s: len(s.on(f"{TOPIC}/telemetry")) >= FILES + 3, 60), chain.agent_log()
        assert subscriber.publish_acked(f"{TOPIC}/probe", b"")
        after = subscriber.messages[before:]
    assert [m for m in after if m.topic.endswith("/alert")] == []  # nothing new happened: nothing to announce
    states = [json.loads(m.payload) for m in after if m.topic.endswith("/state")]
    assert states and {s["state"] for s in states} == {"sensor_fault"}
    assert states[0]["since"] == reference["alerts"][-1]["timestamp"]
    assert "resuming in state sensor_fault (bearing alarm)" in chain.agent_log()
    assert chain.stop_agent() == 0


class Corrupting:
    """Writes through a pty, injecting line noise into the middle of one snapshot's burst."""

    def __init__(self, port: PtyPort, at_write: int) -> None:
        self.port, self.at_write, self.writes = port, at_write, 0

    def write(self, data: bytes) -> int:
        self.writes += 1
        if self.writes == self.at_write:
            middle = len(data) // 2
            noise = os.urandom(300) + b"\x00" + os.urandom(50)
            self.port.write(data[:middle] + noise + data[middle:])
            return len(data)
        return self.port.write(data)


def test_garbage_on_the_serial_line_is_counted_and_later_snapshots_are_scored(chain, run_dir, broker, tmp_path):
    healthy = tmp_path / "healthy"
    healthy.mkdir()
    for ims in list_ims_files(run_dir)[:12]:
        os.symlink(ims.path, healthy / ims.path.name)
    recordings = tmp_path / "recordings"
    with chain.config.open("a") as config:
        config.write(f'[recorder]\nenabled = true\ndirectory = "{recordings}"\ninterval_s = 0\n')
    with Subscriber(broker.port, f"{TOPIC}/#") as subscriber:
        port = PtyPort(chain.tty)
        try:
            chain.start_online(subscriber)
            assert port.wait_for_reader()
            replay(healthy, Corrupting(port, at_write=5), announce=None)
            port.drain()
        finally:
            port.close()
        assert subscriber.wait_for(lambda s: len(s.on(f"{TOPIC}/telemetry")) >= 11, 30), chain.agent_log()
        assert subscriber.publish_acked(f"{TOPIC}/probe", b"")
    telemetry = payloads(subscriber, "telemetry")
    counters = telemetry[-1]["counters"]
    assert counters["crc_errors"] + counters["malformed"] >= 1
    assert counters["snapshots_discarded"] == 1 and counters["snapshots"] == 11
    assert telemetry[-1]["timestamp"] == iso(list_ims_files(healthy)[-1].timestamp)  # scored after the noise
    assert all(t["state"] == "normal" for t in telemetry)  # one lost snapshot is not yet a sensor fault
    assert chain.agent.poll() is None
    assert chain.stop_agent() == 0
    # The recorder kept every scored snapshot as an IMS file equal to the one replayed (all but the lost one).
    recorded = {f.path.name: f.path for f in list_ims_files(recordings)}
    sources = {f.path.name: f.path for f in list_ims_files(healthy)}
    assert len(recorded) == 11 and set(recorded) <= set(sources)
    for name, path in recorded.items():
        np.testing.assert_array_equal(read_counts(path), read_counts(sources[name]))


def test_a_silent_sensor_becomes_a_sensor_fault_and_recovers(chain, broker, run_dir, tmp_path):
    healthy = tmp_path / "healthy"
    healthy.mkdir()
    later = tmp_path / "later"
    later.mkdir()
    for ims in list_ims_files(run_dir)[:4]:
        os.symlink(ims.path, healthy / ims.path.name)
    for ims in list_ims_files(run_dir)[4:8]:
        os.symlink(ims.path, later / ims.path.name)
    with chain.config.open("a") as config:
        config.write("[sensor]\nstale_after_s = 1\n")
    with Subscriber(broker.port, f"{TOPIC}/#") as subscriber:
        # The replay first: the agent's silence timer starts with the agent, and data must flow from then on,
        # however long cm-replay takes to start on a loaded machine.
        replay = chain.replay_waiting(healthy)
        chain.start_online(subscriber)
        assert replay.wait(120) == 0, replay.stderr.read() if replay.stderr else ""
        # Then nothing: after fault_after (2) silent periods the agent says the data is missing.
        assert subscriber.wait_for(lambda s: len(s.on(f"{TOPIC}/alert")) == 1, 30), chain.agent_log()
        (alert,) = payloads(subscriber, "alert")
        assert (alert["previous_state"], alert["state"], alert["reason"]) == ("normal", "sensor_fault", "missing_data")
        # The sensor comes back (new snapshots: a resend of the old ones would be dropped as duplicates).
        assert chain.replay(later).returncode == 0
        assert subscriber.wait_for(lambda s: len(s.on(f"{TOPIC}/alert")) == 2, 30), chain.agent_log()
        assert payloads(subscriber, "alert")[1]["state"] == "normal"
    assert chain.stop_agent() == 0


class Sender:
    """Writes frames into the pty as a (misbehaving) sensor would: sample index and sequence run on."""

    def __init__(self, port: PtyPort) -> None:
        self.port, self.sample, self.sequence = port, 0, 0

    def snapshot(self, counts: np.ndarray, capture_time_us: int, *, rate: int = 20_000, scale: float = 0.001,
                 advance: bool = True) -> None:
        wire = list(frames_for_file(counts, first_sample=self.sample, sequence=self.sequence,
                                    capture_time_us=capture_time_us, sample_rate_hz=rate, scale=scale,
                                    frame_samples=256))
        self.port.write(b"".join(wire))
        self.sequence += len(wire)
        self.sample += len(counts) if advance else 0

    def status(self, text: str) -> None:
        self.port.write(encode_status(text, sequence=self.sequence, capture_time_us=0))
        self.sequence += 1


def epoch_us(ims) -> int:
    return int(ims.timestamp.timestamp() * 1_000_000)


def test_hostile_frames_are_counted_and_discarded_and_never_stop_the_agent_or_raise_an_alarm(chain, broker, run_dir):
    files = list_ims_files(run_dir)[:16]
    counts = [read_counts(f.path) for f in files]
    with Subscriber(broker.port, f"{TOPIC}/#") as subscriber:
        port = PtyPort(chain.tty)
        try:
            chain.start_online(subscriber)
            assert port.wait_for_reader()
            sensor = Sender(port)
            for i in range(6):
                sensor.snapshot(counts[i], epoch_us(files[i]))
            after = epoch_us(files[5]) + 2_000_000
            sensor.snapshot(counts[6][:, :3], after)  # CRC-valid, another channel count
            sensor.snapshot(counts[6], after, rate=25_600)  # another sample rate
            sensor.snapshot(counts[6], after, scale=float("inf"))
            # A wall-clock time near 2^63 (int64 limit): dated by the agent's clock instead.
            sensor.snapshot(counts[6], 2**63 - 1 - 10**7)
            sensor.status("boot ok\nERROR cm-edge: alarm -> normal (forged)")
            for n in range(3000):
                sensor.status(f"chatty status {n}")
            for _ in range(3):  # the same snapshot sent three times
                sensor.snapshot(counts[6], epoch_us(files[6]), advance=False)
            sensor.sample += len(counts[6])
            for i in range(7, 11):  # a sensor configured for 1 g per count instead of 0.001
                sensor.snapshot(counts[i], epoch_us(files[i]), scale=1.0)
            for i in range(11, 16):
                sensor.snapshot(counts[i], epoch_us(files[i]))
            port.drain()
        finally:
            port.close()
        assert subscriber.wait_for(
            lambda s: any(json.loads(t)["timestamp"] == iso(files[15].timestamp) for t in s.on(f"{TOPIC}/telemetry")),
            60), chain.agent_log()
        assert subscriber.publish_acked(f"{TOPIC}/probe", b"")
    assert chain.agent.poll() is None, chain.agent_log()  # still running
    telemetry = payloads(subscriber, "telemetry")
    stamps = [t["timestamp"] for t in telemetry]
    for i in (*range(7), *range(11, 16)):  # every good snapshot scored, the resent one once
        assert stamps.count(iso(files[i].timestamp)) == 1, stamps
    glitch = [t for t in telemetry if t["timestamp"] > "2020"]
    assert len(glitch) == 1 and glitch[0]["time_source"] == "agent"
    counters = telemetry[-1]["counters"]
    frames = 20480 // 256
    assert counters["frames_rejected"] == 3 * frames + 4 * frames
    assert counters["frames_duplicate"] == 2 * frames
    assert counters["status_frames"] == 3001
    # The wrong scale persisted over two scoring intervals: a sensor fault, then back to normal. No alarm.
    alerts = [(a["previous_state"], a["state"], a["reason"]) for a in unique_alerts(subscriber)]
    assert alerts == [("normal", "sensor_fault", "scale_mismatch"), ("sensor_fault", "normal", None)]
    assert all(t["state"] in ("normal", "sensor_fault") for t in telemetry)
    log = chain.agent_log()
    assert "forged" in log and not re.search(r"^ERROR cm-edge: alarm", log, re.MULTILINE)
    assert "boot ok\\nERROR cm-edge" in log  # escaped, on the status line itself
    assert log.count("sensor status:") <= 5  # 3,001 status frames, a handful of lines
    assert chain.stop_agent() == 0


def check(chain: Chain, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([BIN / "cm-edge", "--config", chain.config, "--check", *extra], capture_output=True,
                          text=True, timeout=60)


def test_config_check_refuses_a_bundle_that_does_not_match_the_sensor(chain):
    text = chain.config.read_text() + '[sensor]\nchannels = ["x", "y", "z"]\n'
    chain.config.write_text(text)
    result = check(chain, "--offline")
    assert result.returncode == 2
    assert "sensor.channels is x, y, z but the bundle" in result.stdout
    chain.config.write_text(text.replace('[sensor]\nchannels = ["x", "y", "z"]\n', "[detector]\nk = 9\n"))
    result = check(chain, "--offline")
    n = load_bundle(shared_bundle()).card.detector.n  # the card's n, which the override must fit
    assert result.returncode == 2 and "[detector] with the bundle's settings: k and n: expected 1 <= k <= n, " \
                                      f"got k=9, n={n}" in result.stdout
    chain.config.write_text(text.replace('[sensor]\nchannels = ["x", "y", "z"]\n', ""))
    result = check(chain, "--offline")
    assert result.returncode == 0 and "OK" in result.stdout and "--offline" in result.stdout


def test_config_check_opens_the_port_logs_in_to_the_broker_and_checks_the_paths(chain, broker, tmp_path):
    # The pty does not exist yet: the port is named.
    result = check(chain)
    assert result.returncode == 2 and f"serial.port: cannot open {chain.tty}" in result.stdout
    port = PtyPort(chain.tty)
    try:
        result = check(chain)
        assert result.returncode == 0, result.stdout
        assert "scoring one snapshot per 600 s" in result.stdout  # the card's cadence
        # The broker goes away: found by --check, not at start.
        broker.stop()
        result = check(chain)
        assert result.returncode == 2 and f"mqtt.host: broker 127.0.0.1:{broker.port}: cannot connect" in result.stdout
        broker.start()
        # Paths the agent writes that it cannot write (a file where a directory must be: even root cannot).
        blocker = tmp_path / "blocker"
        blocker.write_text("")
        config = chain.config.read_text()
        chain.config.write_text(config.replace(f'path = "{tmp_path / "outbox.sqlite"}"',
                                               f'path = "{blocker / "sub" / "outbox.sqlite"}"')
                                + f'[recorder]\nenabled = true\ndirectory = "{blocker / "rec"}"\n')
        result = check(chain)
        assert result.returncode == 2
        assert f"outbox.path: {blocker / 'sub'}: {blocker} is not a directory" in result.stdout
        assert f"recorder.directory: {blocker / 'rec'}: {blocker} is not a directory" in result.stdout
        chain.config.write_text(config + "[sensor]\nsnapshot_interval_s = 1\n")
        result = check(chain)
        assert result.returncode == 0
        assert "sensor.snapshot_interval_s is 1 s but the model was trained on snapshots 600 s apart" in result.stdout
    finally:
        port.close()
