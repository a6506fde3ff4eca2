"""A bundle over the air, with real parts: Mosquitto, cm-edge reading a pty that cm-replay feeds, signed bundles
published retained as the fleet publishes them, and the agent's retained report read back.

- a good bundle: verified, scored in shadow (telemetry carries its score), switched to without a restart,
  every snapshot scored once (snapshot indices contiguous), no alert; kept after a restart of the agent;
- a foreign key, a tampered model file, an incompatible card: each rejected with the reason, nothing changed;
- a candidate whose thresholds are far too low alarms in shadow on healthy data: rolled back by itself, and
  the alarm never reaches the alert topic.
Every payload is validated against its JSON Schema.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from broker import Mosquitto, Subscriber
from chain import TOPIC, Chain
from rollout_fleet import flip_a_bit, signed_variant, three_channels
from trained import first_files, shared_bundle, shared_run
from waiting import eventually

from edge.checkpoint import checkpoint_path, load_checkpoint
from edge.config import load_config
from edge.model.store import CURRENT_FILE, archive_sha256, pack
from edge.mqtt.schemas import validate
from edge.rollout import store_path
from fleet.signing import KeyPair, keygen

pytestmark = pytest.mark.slow
HEALTHY = 24  # files from the start of the shared run: well inside the healthy half the bundle was fitted on
REPORT = f"{TOPIC}/model"
DESIRED = "cm/_fleet/desired/pump-7"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[KeyPair, KeyPair]:
    return keygen(tmp_path_factory.mktemp("fleet")), keygen(tmp_path_factory.mktemp("other"))


@pytest.fixture(scope="module")
def healthy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return first_files(shared_run(), HEALTHY, tmp_path_factory.mktemp("healthy"))


def variant(root: Path, name: str, signer: KeyPair, card: Callable[[dict], None] = lambda card: None,
            after: Callable[[Path], None] = lambda bundle: None) -> tuple[Path, bytes]:
    """rollout_fleet's signed variant of the shared bundle, and its archive as the fleet publishes it."""
    bundle = signed_variant(root, name, signer, card, after)
    return bundle, pack(bundle)


@pytest.fixture
def setup(tmp_path: Path, keys: tuple[KeyPair, KeyPair]) -> Iterator[tuple[Chain, Subscriber, Mosquitto]]:
    fleet, _ = keys
    active, _ = variant(tmp_path, "active-model", fleet)
    with Mosquitto(tmp_path / "broker") as broker, Subscriber(broker.port, ["cm/#", "homeassistant/#"]) as subscriber:
        chain = Chain(tmp_path / "agent", broker, active)
        chain.config.write_text(chain.config.read_text().replace(
            "[model]\n", f'[model]\ntrusted_keys = ["{fleet.public}"]\n'))
        yield chain, subscriber, broker
        chain.kill_agent()


def retain(subscriber: Subscriber, topic: str, payload: bytes) -> None:
    info = subscriber.client.publish(topic, payload, qos=1, retain=True)
    assert subscriber.wait_for(lambda s: info.mid in s._acked, 10)


def deliver(subscriber: Subscriber, archive: bytes, rollout: str, snapshots: int = 5) -> str:
    """What the fleet does: the archive, retained and content-addressed, then the device's desired document."""
    sha = archive_sha256(archive)
    retain(subscriber, f"cm/_fleet/bundles/{sha}", archive)
    desired = {"bundle": sha, "rollout": rollout, "probation": {"snapshots": snapshots}}
    validate("desired", desired)
    retain(subscriber, DESIRED, json.dumps(desired).encode())
    return sha


def reports(subscriber: Subscriber) -> list[dict]:
    found = [json.loads(p) for p in subscriber.on(REPORT) if p]
    for report in found:
        validate("model", report)
    return found


def last_status(subscriber: Subscriber, rollout: str) -> Callable[[Subscriber], bool]:
    def done(s: Subscriber) -> bool:
        found = [r for r in reports(s) if r["rollout"] and r["rollout"]["rollout"] == rollout]
        return bool(found) and found[-1]["rollout"]["status"] in ("active", "rejected", "rolled_back", "probation")
    return done


def status_of(subscriber: Subscriber, rollout: str) -> dict:
    return [r for r in reports(subscriber) if r["rollout"] and r["rollout"]["rollout"] == rollout][-1]


def discovered_models(subscriber: Subscriber) -> list[str]:
    """The model Home Assistant's device names, in each round of discovery configs the agent sent (one per topic)."""
    health = [json.loads(p) for p in subscriber.on("homeassistant/sensor/pump-7/health/config")]
    return [config["device"]["model"].removeprefix("cm-edge (model ").removesuffix(")") for config in health]


def telemetry(subscriber: Subscriber) -> list[dict]:
    found = [json.loads(p) for p in subscriber.on(f"{TOPIC}/telemetry")]
    for record in found:
        validate("telemetry", record)
    return found


def test_a_good_bundle_is_scored_in_shadow_then_takes_over_without_a_restart(setup, keys, healthy, tmp_path) -> None:
    chain, subscriber, _ = setup
    fleet, _ = keys
    _, archive = variant(tmp_path, "candidate-model", fleet)
    # Published before the agent starts: an agent that was offline catches up from the retained messages.
    sha = deliver(subscriber, archive, "r1", snapshots=5)
    chain.start_online(subscriber)
    assert subscriber.wait_for(last_status(subscriber, "r1"), 30), chain.agent_log()
    assert status_of(subscriber, "r1")["rollout"]["status"] == "probation", chain.agent_log()
    assert status_of(subscriber, "r1")["candidate"]["id"] == "candidate-model"
    assert chain.replay(healthy).returncode == 0
    assert subscriber.wait_for(lambda s: len(s.on(f"{TOPIC}/telemetry")) >= HEALTHY, 60), chain.agent_log()
    assert subscriber.wait_for(lambda s: status_of(s, "r1")["rollout"]["status"] == "active", 10), chain.agent_log()

    report = status_of(subscriber, "r1")
    assert report["active"] == {"id": "candidate-model", "bundle": sha, "model_sha256": report["active"]["model_sha256"]}
    assert report["previous"] is not None and report["candidate"] is None
    records = telemetry(subscriber)
    assert [r["snapshot"] for r in records] == list(range(records[0]["snapshot"], records[0]["snapshot"] + HEALTHY))
    shadowed = [r for r in records if "candidate" in r]
    # The candidate's window fills first (no score yet: nothing compared), then 5 snapshots, then it took over.
    window = json.loads((shared_bundle() / "model_card.json").read_text())["feature_spec"]["window"]
    assert [r["candidate"]["compared"] for r in shadowed] == [0] * (window - 1) + [1, 2, 3, 4, 5]
    assert all(r["candidate"]["model"]["id"] == "candidate-model" and r["state"] == r["candidate"]["state"] == "normal"
               for r in shadowed)
    # The same model file: once its window is full, the candidate's shadow scores are the active model's.
    assert all(abs(r["score"] - r["candidate"]["score"]) < 1e-6 for r in shadowed[window - 1:])
    states = [json.loads(p) for p in subscriber.on(f"{TOPIC}/state")]
    assert states[0]["model"]["id"] == "active-model" and states[-1]["model"]["id"] == "candidate-model"
    assert subscriber.on(f"{TOPIC}/alert") == []  # healthy data: no alert, and the switch announced none
    assert chain.agent is not None and chain.agent.poll() is None  # the same process throughout
    # Home Assistant's device is told of the switch: its discovery configs sent again, retained, with the new id.
    assert subscriber.wait_for(lambda s: discovered_models(s)[-1:] == ["candidate-model"], 10), discovered_models(subscriber)
    assert discovered_models(subscriber)[0] == "active-model"
    with Subscriber(subscriber.port, ["homeassistant/#"]) as late:  # Home Assistant (re)started: the retained ones
        assert late.wait_for(lambda s: bool(discovered_models(s)), 10)
        assert discovered_models(late) == ["candidate-model"]

    current = json.loads((store_path_of(chain) / CURRENT_FILE).read_text())
    assert current == {"active": sha, "previous": report["previous"]}
    # The state announced so far is kept under the new model's id: a restart resumes it (edge.checkpoint).
    saved = load_checkpoint(checkpoint_path(load_config(chain.config).outbox_path), "candidate-model")
    assert saved is not None and saved.state == "normal"
    assert chain.stop_agent() == 0
    chain.start_online(subscriber)  # after a restart the store's bundle runs, and the rollout is not redone
    assert eventually(lambda: "candidate-model" in chain.agent_log().split("agent pump-7 started")[-1], 30), chain.agent_log()
    assert subscriber.wait_for(lambda s: reports(s)[-1]["active"]["id"] == "candidate-model"
                               and reports(s)[-1]["rollout"]["status"] == "active", 15)

    # Rollback: the fleet wants the previous bundle again; it is in the store, so nothing is downloaded.
    previous = report["previous"]
    retain(subscriber, DESIRED, json.dumps({"bundle": previous, "rollout": "r2", "probation": {"snapshots": 3}}).encode())
    assert subscriber.wait_for(lambda s: last_status(s, "r2")(s) and status_of(s, "r2")["rollout"]["status"] == "probation",
                               30), chain.agent_log()
    assert chain.replay(healthy).returncode == 0
    assert subscriber.wait_for(lambda s: status_of(s, "r2")["rollout"]["status"] == "active", 60), chain.agent_log()
    assert status_of(subscriber, "r2")["active"]["id"] == "active-model"
    assert status_of(subscriber, "r2")["active"]["bundle"] == previous and status_of(subscriber, "r2")["previous"] == sha
    assert subscriber.wait_for(lambda s: discovered_models(s)[-1:] == ["active-model"], 10), discovered_models(subscriber)


def store_path_of(chain: Chain) -> Path:
    return store_path(load_config(chain.config))


def test_foreign_tampered_and_incompatible_bundles_are_rejected_with_the_reason(setup, keys, tmp_path) -> None:
    chain, subscriber, _ = setup
    fleet, other = keys
    chain.start_online(subscriber)
    assert subscriber.wait_for(lambda s: bool(reports(s)), 15), chain.agent_log()
    before = reports(subscriber)[-1]["active"]
    cases = [
        ("foreign", variant(tmp_path, "foreign", other)[1], f"signed by key {other.key_id}, which is not trusted"),
        ("tampered", variant(tmp_path, "tampered", fleet, after=flip_a_bit)[1], "model_int8.tflite: sha256"),
        ("three-channels", variant(tmp_path, "three", fleet, card=three_channels)[1], "feature_spec.channels is"),
    ]
    for rollout, archive, reason in cases:
        sha = deliver(subscriber, archive, rollout)
        assert subscriber.wait_for(last_status(subscriber, rollout), 30), chain.agent_log()
        report = status_of(subscriber, rollout)
        assert report["rollout"]["status"] == "rejected" and report["rollout"]["bundle"] == sha
        assert reason in report["rollout"]["reason"], report
        assert report["active"] == before and report["candidate"] is None
        assert not (store_path_of(chain) / sha).exists()
    assert chain.agent is not None and chain.agent.poll() is None


def test_a_candidate_that_alarms_in_shadow_on_healthy_data_is_rolled_back(setup, keys, healthy, tmp_path) -> None:
    chain, subscriber, _ = setup
    fleet, _ = keys

    def far_too_low(card: dict) -> None:
        card["detector"].update(warning_threshold=1e-6, alarm_threshold=2e-6)

    _, archive = variant(tmp_path, "too-sensitive", fleet, card=far_too_low)
    deliver(subscriber, archive, "r-low", snapshots=HEALTHY * 2)
    chain.start_online(subscriber)
    assert subscriber.wait_for(lambda s: status_of(s, "r-low")["rollout"]["status"] == "probation"
                               if last_status(s, "r-low")(s) else False, 30), chain.agent_log()
    assert chain.replay(healthy).returncode == 0
    assert subscriber.wait_for(lambda s: len(s.on(f"{TOPIC}/telemetry")) >= HEALTHY, 60), chain.agent_log()
    report = status_of(subscriber, "r-low")
    assert report["rollout"]["status"] == "rolled_back", report
    assert "where the active model said normal" in report["rollout"]["reason"]
    assert report["active"]["id"] == "active-model" and report["candidate"] is None
    records = telemetry(subscriber)
    assert all(r["state"] == "normal" for r in records)
    assert any(r.get("candidate", {}).get("state") in ("warning", "alarm") for r in records)
    assert subscriber.on(f"{TOPIC}/alert") == []  # the candidate's alarm alerted nobody
    assert [r["snapshot"] for r in records] == list(range(records[0]["snapshot"], records[0]["snapshot"] + HEALTHY))
