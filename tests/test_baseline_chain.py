"""A machine without a model, with real parts: cm-replay -> pty -> cm-edge on a baseline card -> Mosquitto.

- a vibration-set baseline card written by `cm-train baseline` from the run's own header, [machine] zone_alarm
  on: every snapshot's telemetry says `learning` with its features and ISO zones and no score; a sensor dropout
  raises `sensor_fault` and its end returns to `learning` (two alerts), and no learned warning or alarm is ever
  announced;
- the same agent on a signed baseline card takes a signed model bundle over the air: the candidate is scored
  in shadow, passes probation on its own (there is no model to compare with) and takes over without a
  restart and without an alert, after which the agent says `normal` with a score.
Every payload is validated against its JSON Schema.
"""
from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from broker import Mosquitto, Subscriber
from chain import BIN, TOPIC, Chain
from trained import dropout_cycles, first_files, shared_bundle, shared_run

from edge.model.bundle import file_sha256
from edge.model.store import archive_sha256, pack
from edge.mqtt.schemas import validate
from fleet.signing import KeyPair, keygen, sign

pytestmark = pytest.mark.slow
HEALTHY = 24  # files from the start of the shared run: inside the healthy half the shared bundle was fitted on
DESIRED = "cm/_fleet/desired/pump-7"


@pytest.fixture(scope="module")
def dropout_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Healthy x3, bearing 3's sensor dropped out x3, healthy x3, ten minutes apart (as in test_faults)."""
    return dropout_cycles(tmp_path_factory.mktemp("dropout") / "run")


def cm_train_baseline(out: Path, run: Path, *flags: str) -> Path:
    result = subprocess.run([BIN / "cm-train", "baseline", run, "--out", out, *flags], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return out


def payloads(subscriber: Subscriber, kind: str) -> list[dict]:
    found = [json.loads(p) for p in subscriber.on(f"{TOPIC}/{kind}") if p]
    for payload in found:
        validate(kind, payload)
    return found


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path / "broker") as running:
        yield running


def test_a_baseline_agent_learns_raises_sensor_faults_and_never_a_learned_alarm(dropout_run, broker, tmp_path) -> None:
    baseline = cm_train_baseline(tmp_path / "baseline", dropout_run, "--feature-set", "vibration", "--bearing", "za-2115",
                                 "--shaft-rpm", "2000", "--min-level-g", "0.05")
    with Subscriber(broker.port, f"{TOPIC}/#") as subscriber:
        chain = Chain(tmp_path / "agent", broker, baseline)
        chain.config.write_text(chain.config.read_text() + '[machine]\nzone_alarm = true\niso_group = "2-rigid"\n')
        try:
            chain.start_online(subscriber)
            assert chain.replay(dropout_run).returncode == 0
            assert subscriber.wait_for(lambda s: len(s.on(f"{TOPIC}/telemetry")) >= 9, 60), chain.agent_log()
            assert subscriber.publish_acked(f"{TOPIC}/probe", b"")  # every earlier message has been delivered
        finally:
            chain.kill_agent()
    telemetry, states, alerts = (payloads(subscriber, kind) for kind in ("telemetry", "state", "alert"))
    assert [r["state"] for r in telemetry] == ["learning"] * 4 + ["sensor_fault"] * 2 + ["learning"] * 3, chain.agent_log()
    for record in telemetry:
        assert record["score"] is None and record["channel_errors"] == {}  # no model: nothing is scored
        assert set(record["iso_zones"]) == {"bearing1", "bearing2", "bearing3", "bearing4"}
        assert set(record["channel_features"]["bearing1"]) >= {"mean_abs", "velocity_rms", "kurtosis"}
    assert [(a["previous_state"], a["state"], a["reason"]) for a in alerts] == [
        ("learning", "sensor_fault", "dropout:bearing3"), ("sensor_fault", "learning", None)]
    card = json.loads((baseline / "model_card.json").read_text())
    model = {"id": card["id"], "sha256": file_sha256(baseline / "model_card.json")}
    assert states and all(s["model"] == model for s in states + alerts) and states[-1]["state"] == "learning"
    assert "baseline card: no model, learning" in chain.agent_log()


def test_a_baseline_agent_takes_a_signed_model_over_the_air(broker, tmp_path) -> None:
    fleet: KeyPair = keygen(tmp_path / "fleet")
    healthy = first_files(shared_run(), HEALTHY, tmp_path / "healthy")
    baseline = cm_train_baseline(tmp_path / "baseline", healthy)
    sign(baseline, fleet.private)  # cm-fleet sign signs a baseline card as it does a bundle
    candidate = tmp_path / "candidate"
    shutil.copytree(shared_bundle(), candidate)
    sign(candidate, fleet.private)
    archive = pack(candidate)
    sha = archive_sha256(archive)
    with Subscriber(broker.port, ["cm/#"]) as subscriber:
        chain = Chain(tmp_path / "agent", broker, baseline)
        chain.config.write_text(chain.config.read_text().replace("[model]\n", f'[model]\ntrusted_keys = ["{fleet.public}"]\n'))
        try:
            for topic, payload in ((f"cm/_fleet/bundles/{sha}", archive), (DESIRED, json.dumps(
                    {"bundle": sha, "rollout": "first-model", "probation": {"snapshots": 5}}).encode())):
                info = subscriber.client.publish(topic, payload, qos=1, retain=True)
                assert subscriber.wait_for(lambda s: info.mid in s._acked, 10)
            chain.start_online(subscriber)
            assert subscriber.wait_for(lambda s: b"probation" in b"".join(s.on(f"{TOPIC}/model")), 30), chain.agent_log()
            assert chain.replay(healthy).returncode == 0
            assert subscriber.wait_for(lambda s: len(s.on(f"{TOPIC}/telemetry")) >= HEALTHY, 60), chain.agent_log()
            assert subscriber.publish_acked(f"{TOPIC}/probe", b"")
        finally:
            chain.kill_agent()
    reports = payloads(subscriber, "model")
    assert reports[-1]["rollout"]["status"] == "active", chain.agent_log()
    assert reports[-1]["active"]["bundle"] == sha and reports[-1]["previous"] is not None
    records = payloads(subscriber, "telemetry")
    assert [r["snapshot"] for r in records] == list(range(records[0]["snapshot"], records[0]["snapshot"] + HEALTHY))
    shadowed = [r for r in records if "candidate" in r]
    window = json.loads((candidate / "model_card.json").read_text())["feature_spec"]["window"]
    # The candidate's window fills, then 5 snapshots compared with nothing but its own calm, then it took over.
    assert [r["candidate"]["compared"] for r in shadowed] == [0] * (window - 1) + [1, 2, 3, 4, 5]
    assert all(r["state"] == "learning" and r["score"] is None for r in shadowed)
    after = records[len(shadowed):]
    assert after and all(r["state"] == "normal" and r["score"] is not None for r in after)
    states = payloads(subscriber, "state")
    assert states[0]["state"] == "learning" and states[-1]["state"] == "normal"
    assert states[-1]["model"]["id"] == json.loads((candidate / "model_card.json").read_text())["id"]
    assert subscriber.on(f"{TOPIC}/alert") == []  # the switch from learning to a model announces nothing
