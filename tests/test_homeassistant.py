"""Home Assistant MQTT discovery through a real Mosquitto: retained configs, sent again on HA's birth."""
from __future__ import annotations

import json
from collections.abc import Iterator

import jinja2
import pytest
from broker import Mosquitto, Subscriber

from edge.config import MqttConfig
from edge.mqtt.homeassistant import Discovery, entities
from edge.mqtt.outbox import Outbox
from edge.mqtt.publisher import Publisher, topics

DEVICE = "pump-7"
CHANNELS = ("bearing1", "bearing 2")
COUNTERS = ("frames", "crc_errors", "alerts_pending")


@pytest.fixture
def broker(tmp_path) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path / "broker") as running:
        yield running


def configs(subscriber: Subscriber) -> dict[str, dict]:
    return {m.topic: json.loads(m.payload) for m in subscriber.messages if m.topic.endswith("/config")}


def test_discovery_configs_are_retained_complete_and_sent_again_when_home_assistant_comes_online(broker, tmp_path):
    publisher = Publisher(MqttConfig(host="127.0.0.1", port=broker.port, device_id=DEVICE),
                          Outbox(tmp_path / "outbox.sqlite"))
    found = entities(DEVICE, publisher.topics, CHANNELS, COUNTERS, "cm-abc-0")
    Discovery(publisher, "ha", DEVICE, found).start()
    publisher.start()
    try:
        with Subscriber(broker.port, "ha/#") as early:
            assert early.wait_for(lambda s: len(configs(s)) == len(found), 15)
        # A subscriber that comes later (Home Assistant after a restart) gets them from the broker: retained.
        with Subscriber(broker.port, "ha/#") as late:
            assert late.wait_for(lambda s: len(configs(s)) == len(found), 15)
            assert all(m.retain for m in late.messages)
            received = configs(late)
            late.publish_acked("ha/status", b"online")  # Home Assistant's birth message
            assert late.wait_for(lambda s: sum(not m.retain for m in s.messages if m.topic.endswith("/config"))
                                 == len(found), 15)
    finally:
        publisher.stop()
    ours = topics("cm", DEVICE)
    by_id = {c["unique_id"]: c for c in received.values()}
    assert len(by_id) == len(found)  # unique ids are unique
    for topic, config in received.items():
        assert topic.startswith("ha/") and topic.endswith("/config") and f"/{DEVICE}/" in topic
        assert config["availability_topic"] == ours.status
        assert config["device"]["identifiers"] == [f"cm-edge-{DEVICE}"]
    health = by_id[f"cm_{DEVICE}_health"]
    assert health["device_class"] == "enum" and health["state_topic"] == ours.state
    assert set(health["options"]) == {"normal", "warning", "alarm", "sensor_fault", "learning"}
    assert by_id[f"cm_{DEVICE}_problem"]["device_class"] == "problem"
    assert by_id[f"cm_{DEVICE}_score"]["state_topic"] == ours.state
    assert by_id[f"cm_{DEVICE}_feature_bearing_2"]["value_template"] == '{{ value_json.features["bearing 2"] }}'
    diagnostic = [c["unique_id"] for c in by_id.values() if c.get("entity_category") == "diagnostic"]
    assert sorted(diagnostic) == sorted([f"cm_{DEVICE}_agent_problem"] + [f"cm_{DEVICE}_counter_{n}" for n in COUNTERS])
    agent = by_id[f"cm_{DEVICE}_agent_problem"]
    assert agent["state_topic"] == agent["json_attributes_topic"] == ours.health and agent["device_class"] == "problem"


def test_templates_read_the_agents_payloads():
    """The value templates, rendered with Jinja as Home Assistant does, on real payload shapes."""
    found = {e.object_id: e.config for e in entities(DEVICE, topics("cm", DEVICE), CHANNELS, COUNTERS, "m")}
    render = lambda key, payload: jinja2.Template(found[key]["value_template"]).render(value_json=payload)  # noqa: E731
    state = {"state": "sensor_fault", "score": None}
    assert render("health", state) == "sensor_fault" and render("problem", state) == "ON"
    assert render("problem", {"state": "normal"}) == "OFF"
    # A baseline card (no model yet): learning is shown as the health, and is no problem; its faults are.
    assert render("health", {"state": "learning"}) == "learning" and render("problem", {"state": "learning"}) == "OFF"
    assert render("problem", {"state": "warning"}) == "ON"
    assert render("score", state) == "None"  # Home Assistant shows "None" as unknown
    from edge.mqtt.health import Health

    health = Health(DEVICE)
    assert render("agent_problem", health.payload()) == "OFF"
    health.fault("storage", "outbox.sqlite: cannot store (database or disk is full)")
    report = health.payload()
    assert render("agent_problem", report) == "ON"
    attributes = jinja2.Template(found["agent_problem"]["json_attributes_template"]).render(value_json=report)
    assert json.loads(attributes)["storage"]["message"] == "outbox.sqlite: cannot store (database or disk is full)"
    telemetry = {"features": {"bearing1": 0.07, "bearing 2": 0.08}, "counters": {"crc_errors": 3}}
    assert render("feature_bearing_2", telemetry) == "0.08" and render("counter_crc_errors", telemetry) == "3"


def test_update_sends_the_configs_again_retained_with_the_new_model_and_births_send_the_new_ones(broker, tmp_path):
    """What the agent does when a rollout switches bundles (or rolls back): Home Assistant's retained device names
    the model in charge, for a subscriber there now and one that comes later, and after Home Assistant's birth."""
    publisher = Publisher(MqttConfig(host="127.0.0.1", port=broker.port, device_id=DEVICE),
                          Outbox(tmp_path / "outbox.sqlite"))
    discovery = Discovery(publisher, "ha", DEVICE, entities(DEVICE, publisher.topics, CHANNELS, COUNTERS, "old-model"))
    discovery.start()
    publisher.start()

    def models(subscriber: Subscriber) -> set[str]:
        return {c["device"]["model"] for c in configs(subscriber).values()}  # the last config on each topic

    try:
        with Subscriber(broker.port, "ha/#") as watching:
            assert watching.wait_for(lambda s: models(s) == {"cm-edge (model old-model)"}, 15)
            discovery.update(entities(DEVICE, publisher.topics, CHANNELS, COUNTERS, "new-model"))
            assert watching.wait_for(lambda s: models(s) == {"cm-edge (model new-model)"}, 15)
        with Subscriber(broker.port, "ha/#") as late:
            assert late.wait_for(lambda s: len(configs(s)) == len(discovery.messages), 15)
            assert models(late) == {"cm-edge (model new-model)"} and all(m.retain for m in late.messages)
            late.publish_acked("ha/status", b"online")
            sent_again = lambda s: [m for m in s.messages if m.topic.endswith("/config") and not m.retain]  # noqa: E731
            assert late.wait_for(lambda s: len(sent_again(s)) == len(discovery.messages), 15)
            assert {json.loads(m.payload)["device"]["model"] for m in sent_again(late)} == {"cm-edge (model new-model)"}
    finally:
        publisher.stop()
