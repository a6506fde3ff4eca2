"""Under deploy/mosquitto's ACL, the rollout's topics are the fleet's to write: each device reads only its own
desired document (and the signed bundles), writes only its own report; a device cannot forge a desired
document or a bundle for another. Real Mosquitto with the deployed config, password file and ACL."""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from broker import Mosquitto, Subscriber, free_port, make_test_ca, write_password_file
from test_security import deploy_config

from edge.config import ConfigError, load_config

pytestmark = pytest.mark.waits
USERS = {"pi-1": "pi-1 secret", "pi-2": "pi-2 secret", "cm-fleet": "fleet secret"}


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    directory = tmp_path_factory.mktemp("acl")
    config = deploy_config(write_password_file(directory / "cm.passwd", USERS), make_test_ca(directory / "ca"))
    with Mosquitto(directory / "broker", tls_port=free_port(), config=config) as running:
        yield running


def client(broker: Mosquitto, user: str, topics: list[str]) -> Subscriber:
    return Subscriber(broker.port, topics, username=user, password=USERS[user])


def retain(subscriber: Subscriber, topic: str, payload: bytes) -> None:
    info = subscriber.client.publish(topic, payload, qos=1, retain=True)
    assert subscriber.wait_for(lambda s: info.mid in s._acked, 10)


def test_devices_read_only_their_own_desired_document_and_cannot_forge_the_fleets(broker: Mosquitto) -> None:
    desired = {device: json.dumps({"bundle": "a" * 64, "rollout": f"r-{device}"}).encode() for device in ("pi-1", "pi-2")}
    with client(broker, "cm-fleet", ["cm/#"]) as fleet:
        for device, payload in desired.items():
            retain(fleet, f"cm/_fleet/desired/{device}", payload)
        retain(fleet, f"cm/_fleet/bundles/{'a' * 64}", b"archive")
        assert fleet.wait_for(lambda s: len([m for m in s.messages if m.topic.startswith("cm/_fleet/")]) == 3)
        with client(broker, "pi-2", []) as intruder:
            retain(intruder, "cm/_fleet/desired/pi-1", json.dumps({"bundle": "b" * 64, "rollout": "forged"}).encode())
            retain(intruder, f"cm/_fleet/bundles/{'b' * 64}", b"forged archive")
            retain(intruder, "cm/pi-1/model", b"{}")
            retain(intruder, "cm/pi-2/model", b'{"sentinel": true}')  # its own report: allowed, and sent last
        assert fleet.wait_for(lambda s: s.on("cm/pi-2/model") == [b'{"sentinel": true}'])
        assert fleet.on("cm/_fleet/desired/pi-1") == [desired["pi-1"]] and fleet.on("cm/pi-1/model") == []
        assert fleet.on(f"cm/_fleet/bundles/{'b' * 64}") == []
    topics = ["cm/_fleet/desired/pi-1", "cm/_fleet/desired/pi-2", "cm/_fleet/bundles/#"]
    with client(broker, "pi-1", topics) as device:
        assert device.wait_for(lambda s: len(s.messages) == 2)  # the retained ones it may read
        assert device.publish_acked("cm/pi-1/status", b"online")  # anything more would have arrived by now
        assert sorted(m.topic for m in device.messages) == ["cm/_fleet/bundles/" + "a" * 64, "cm/_fleet/desired/pi-1"]
        assert device.on("cm/_fleet/desired/pi-1") == [desired["pi-1"]]


def test_no_device_may_be_called_like_the_fleets_topics(tmp_path: Path) -> None:
    """A device named _fleet would write cm/_fleet/# through the device pattern: its config is refused."""
    config = tmp_path / "edge.toml"
    config.write_text('device_id = "_fleet"\n[serial]\nport = "/dev/null"\n[model]\nbundle = "b"\n[mqtt]\nhost = "h"\n')
    with pytest.raises(ConfigError, match=f"{config}: device_id: '_fleet' is reserved"):
        load_config(config)
