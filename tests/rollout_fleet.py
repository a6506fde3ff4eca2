"""A fleet for the rollout tests, with real parts: Mosquitto, `cm-fleet serve` (its scheduler publishing, its
ingest storing the agents' reports), `cm-fleet rollout ...` on the command line, and real agents, each cm-edge
reading its own pty that cm-replay feeds. Used by tests/test_fleet_rollout*.py; its signed variants of the shared bundle by tests/test_rollout.py too.

    from rollout_fleet import Fleet, created_id, running_fleet, signed_variant
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from broker import Mosquitto, Subscriber
from chain import BIN, Chain
from fleet_helpers import FleetService, start_fleet
from trained import shared_bundle, shared_run
from waiting import eventually

from edge.mqtt.schemas import validate
from firmware_bridge.ims import format_timestamp, list_ims_files
from fleet.config import HistorianConfig
from fleet.historian import Historian, open_historian
from fleet.signing import KeyPair, sign


def healthy_later(directory: Path, count: int, days: int) -> Path:
    """Links to the shared run's first `count` files, named `days` later: healthy data an agent that was fed the
    originals still scores (a replay of times it has passed would only be counted as old, never scored)."""
    directory.mkdir(parents=True, exist_ok=True)
    for file in list_ims_files(shared_run())[:count]:
        (directory / format_timestamp(file.timestamp + timedelta(days=days))).symlink_to(file.path)
    return directory


def signed_variant(root: Path, name: str, signer: KeyPair, card: Callable[[dict], None] = lambda card: None,
                   after: Callable[[Path], None] = lambda bundle: None) -> Path:
    """A copy of the shared bundle with its own id (and `card`'s changes), signed by `signer`, then `after`
    (tampering after the signature)."""
    bundle = root / name
    shutil.copytree(shared_bundle(), bundle)
    document = json.loads((bundle / "model_card.json").read_text())
    document["id"] = name
    card(document)
    (bundle / "model_card.json").write_text(json.dumps(document, indent=2))
    sign(bundle, signer.private)
    after(bundle)
    return bundle


def flip_a_bit(bundle: Path) -> None:
    """One bit of the model file flipped after the signature."""
    model = bundle / "model_int8.tflite"
    data = model.read_bytes()
    model.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))


def three_channels(card: dict) -> None:
    """Another channel count: the card stays valid (its lists shortened to match), but the frames have four."""
    spec = card["feature_spec"]
    columns = 3 * len(spec.get("features", ["mean_abs"]))
    spec["channels"] = spec["channels"][:3]
    for key in ("minimum", "maximum"):
        card["scaler"][key] = card["scaler"][key][:columns]
    card["healthy_min"] = card["healthy_min"][:columns]
    if "channel_error_reference" in card:
        card["channel_error_reference"] = card["channel_error_reference"][:3]


@dataclass
class Fleet:
    broker: Mosquitto
    service: FleetService
    historian: Historian
    agents: dict[str, Chain]
    subscriber: Subscriber
    old: Path  # the bundle every agent starts with

    def cli(self, *args: str | Path) -> subprocess.CompletedProcess:
        return self.run(["cm-fleet", "rollout", *map(str, args), "--config", "fleet.toml"])

    def run(self, command: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run([BIN / command[0], *command[1:]], cwd=self.service.directory, capture_output=True,
                              text=True, timeout=60)

    def devices(self, rollout_id: str) -> dict[str, str]:
        return dict(self.historian.read("SELECT device_id, status FROM rollout_devices WHERE rollout_id = ?", (rollout_id,)))

    def state(self, rollout_id: str) -> str:
        return str(self.historian.read("SELECT state FROM rollouts WHERE id = ?", (rollout_id,))[0][0])

    def reports(self, device: str) -> list[dict]:
        """The device's model reports this test's subscriber received (it does not resubscribe after a broker restart)."""
        found = [json.loads(p) for p in self.subscriber.on(f"cm/{device}/model") if p]
        for report in found:
            validate("model", report)
        return found

    def stored_report(self, device: str) -> dict:
        """The device's last model report as the historian keeps it (what the fleet knows, whatever the broker did)."""
        return json.loads(self.historian.read("SELECT model_json FROM machines WHERE device_id = ?", (device,))[0][0])


def trust(chain: Chain, key: KeyPair) -> None:
    chain.config.write_text(chain.config.read_text().replace("[model]\n", f'[model]\ntrusted_keys = ["{key.public}"]\n'))


@contextmanager
def running_fleet(request: pytest.FixtureRequest, root: Path, trusted: KeyPair, agents: int,
                  persistence: bool = False) -> Iterator[Fleet]:
    """A broker, cm-fleet serve and `agents` agents (pump-0, pump-1, ...) on one signed bundle, every agent's first
    model report in the historian. `persistence`: the broker keeps retained messages and sessions across a restart."""
    old = signed_variant(root, "old-model", trusted)
    url = f"sqlite://{root / 'historian.sqlite'}"
    with Mosquitto(root / "broker", persistence=persistence) as broker, Subscriber(broker.port, ["cm/#"]) as subscriber:
        (root / "fleet").mkdir()
        # Started before the agents: their first retained reports reach its subscription.
        service = start_fleet(request, root / "fleet", broker.port, url)
        historian = open_historian(HistorianConfig(url=url))
        chains = {}
        for i in range(agents):
            device = f"pump-{i}"
            chain = Chain(root / device, broker, old, device=device)
            trust(chain, trusted)
            chain.start_agent()
            chains[device] = chain
        try:
            assert eventually(lambda: len(historian.read("SELECT device_id FROM machines WHERE model_json IS NOT NULL"))
                              == agents, 60), [c.agent_log() for c in chains.values()]
            yield Fleet(broker, service, historian, chains, subscriber, old)
        finally:
            for chain in chains.values():
                chain.kill_agent()
            historian.close()


def created_id(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stderr
    found = re.match(r"rollout (r-[0-9a-f]+): running", result.stdout)
    assert found is not None, result.stdout
    return found.group(1)


def replay_when_in_probation(fleet: Fleet, rollout_id: str, healthy: Path, replays: dict[str, subprocess.Popen],
                             done: list[str]) -> None:
    """Each device that reached probation gets healthy data once, side by side: its candidate scores it in shadow."""
    for device, status in fleet.devices(rollout_id).items():
        if status == "probation" and device not in replays and device not in done:
            replays[device] = subprocess.Popen(fleet.agents[device].replay_command(healthy), stdout=subprocess.DEVNULL,
                                               stderr=subprocess.DEVNULL)
