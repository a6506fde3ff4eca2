"""A real sensor in the field, in the loop: an MCU-like continuous stream with boot-relative time, at real-time
pace, through a pty into cm-edge and a real Mosquitto, with Home Assistant discovery.

The recording is short-snapshot synthetic data (2,048 samples = 0.1 s at 20 kHz, files 2 s apart) and the
bundle is trained on it, so its card's cadence is 2 s: about 30 s of stream are 15 scored snapshots.
"""
from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from broker import Mosquitto, Subscriber
from chain import BIN, DEVICE, TOPIC, Chain
from trained import first_files, make_bundle, shared_run
from waiting import eventually

from edge.model.bundle import load_bundle
from edge.mqtt.schemas import validate
from firmware_bridge.ims import list_ims_files, read_counts, write_ims_file

ROWS = 2048  # samples per snapshot: 0.1 s at 20 kHz
INTERVAL_S = 2.0  # spacing of the recorded files, hence the card's cadence
STREAM_S = 30.0
SNAPSHOT_S = ROWS / 20_000
FRAMES_PER_SNAPSHOT = ROWS // 256  # cm-replay's frames of 256 samples

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def short_run(tmp_path_factory) -> Path:
    """A synthetic run cut to short snapshots taken every 2 s."""
    full = shared_run()
    run = tmp_path_factory.mktemp("short") / "run"
    run.mkdir()
    files = list_ims_files(full)
    start = files[0].timestamp
    for i, ims in enumerate(files):
        write_ims_file(run, start + timedelta(seconds=i * INTERVAL_S), read_counts(ims.path)[:ROWS])
    return run


@pytest.fixture(scope="module")
def short_bundle(short_run, tmp_path_factory) -> Path:
    return make_bundle(short_run, tmp_path_factory.mktemp("bundle") / "bundle")


@pytest.fixture
def broker(tmp_path) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path / "broker") as running:
        yield running


def assembled_s(log: str) -> float:
    """Seconds of stream the agent has assembled into snapshots, by its latest counters line."""
    return max((int(n) for n in re.findall(r" snapshots=(\d+)", log)), default=0) * SNAPSHOT_S


def read_to_the_end(log: str) -> bool:
    """The agent has assembled every snapshot the sensor sent: its link reported the sensor gone (so no frame
    comes any more), and a counters line logged since counts as many snapshots as the decoded frames hold."""
    lost = log.rfind("unavailable (")
    if lost < max(log.rfind(" back after "), log.rfind(" open\n")):
        return False  # the sensor is still there (or has not yet been seen going)
    counted = [dict(re.findall(r"(\w+)=(\d+)", line)) for line in log[lost:].splitlines() if "counters:" in line]
    return any(int(c["snapshots"]) == int(c["frames"]) // FRAMES_PER_SNAPSHOT for c in counted)


def epoch_s(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


def test_the_trainer_records_the_cadence_it_was_trained_on(short_bundle):
    spec = load_bundle(short_bundle).card.feature_spec
    assert spec.snapshot_interval_s == INTERVAL_S and spec.snapshot_samples == ROWS


def test_a_continuous_boot_time_stream_is_dated_by_the_agent_scored_at_the_cards_cadence_and_announced_to_ha(
        short_run, short_bundle, broker, tmp_path):
    healthy = first_files(short_run, 60, tmp_path / "healthy")  # the healthy part the bundle was fitted on
    chain = Chain(tmp_path, broker, short_bundle)
    wall_minus_monotonic = time.time() - time.monotonic()
    with Subscriber(broker.port, [f"{TOPIC}/#"]) as subscriber:
        chain.start_online(subscriber)
        try:
            started = time.monotonic()
            replayer = subprocess.Popen(
                [BIN / "cm-replay", healthy, "--port", f"pty:{chain.tty}", "--continuous", "--boot-time", "--loop",
                 "--speed", "realtime", "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            # STREAM_S of real-time stream, as the agent counts the samples it assembled (its counters line).
            assert eventually(lambda: assembled_s(chain.agent_log()) >= STREAM_S, 3 * STREAM_S), chain.agent_log()
            streamed_s = time.monotonic() - started
            replayer.send_signal(signal.SIGTERM)  # a real sensor is unplugged; cm-replay stops at once
            _, err = replayer.communicate(timeout=30)
            assert replayer.returncode == 0 and "cm-replay: stopped" in err, err
            assert eventually(lambda: read_to_the_end(chain.agent_log()), 30), chain.agent_log()
            assert subscriber.publish_acked(f"{TOPIC}/probe", b"")
            # Home Assistant, starting later, finds the discovery configs retained on the broker.
            with Subscriber(broker.port, "homeassistant/#") as home_assistant:
                counters = json.loads(subscriber.on(f"{TOPIC}/telemetry")[-1])["counters"]
                entities = 4 + 4 + len(counters)  # health, problem, agent_problem, score; 4 channels; the counters
                assert home_assistant.wait_for(lambda s: len(s.messages) >= entities, 15)
                discovery = list(home_assistant.messages)
            assert chain.agent.poll() is None
        finally:
            assert chain.stop_agent() == 0, chain.agent_log()
    log = chain.agent_log()

    # Every payload's timestamp is the agent's clock for the moment the snapshot began: within 1 s of its arrival.
    dated = [(m, subscriber.arrivals[i]) for i, m in enumerate(subscriber.messages)
             if m.topic.split("/")[-1] in ("telemetry", "state", "alert")]
    assert dated
    for message, arrival in dated:
        payload = json.loads(message.payload)
        validate(message.topic.split("/")[-1], payload)
        assert abs(epoch_s(payload["timestamp"]) - (arrival + wall_minus_monotonic)) < 1.0, payload["timestamp"]

    # One score per 2 s of stream time (the card's cadence), measured by the samples the agent assembled.
    telemetry = [json.loads(p) for p in subscriber.on(f"{TOPIC}/telemetry")]
    stream_s = assembled_s(log)
    assert streamed_s - 5 < stream_s < streamed_s + 1  # real-time pace: the stream lasted as long as the test waited
    assert abs(len(telemetry) - stream_s / INTERVAL_S) <= 1, (len(telemetry), stream_s)
    assert {t["time_source"] for t in telemetry} == {"agent"}
    assert all(t["state"] == "normal" for t in telemetry) and not subscriber.on(f"{TOPIC}/alert")
    assert telemetry[-1]["counters"]["snapshots_skipped"] > 10 * len(telemetry)
    # The retained state follows the scores, not only the transitions.
    states = [json.loads(p) for p in subscriber.on(f"{TOPIC}/state")]
    assert len(states) >= len(telemetry) and states[-1]["score"] == telemetry[-1]["score"] is not None

    # Discovery: retained, each config with unique_id, device and our status topic as availability.
    configs = {m.topic: json.loads(m.payload) for m in discovery}
    assert all(m.retain for m in discovery) and len(configs) == entities
    kinds = {config["unique_id"].removeprefix(f"cm_{DEVICE}_") for config in configs.values()}
    assert {"health", "problem", "agent_problem", "score", "feature_bearing1", "feature_bearing4",
            "counter_crc_errors"} <= kinds
    for topic, config in configs.items():
        assert topic.startswith("homeassistant/") and topic.endswith("/config")
        assert config["unique_id"] and config["device"]["identifiers"] == [f"cm-edge-{DEVICE}"]
        assert config["availability_topic"] == f"{TOPIC}/status"
