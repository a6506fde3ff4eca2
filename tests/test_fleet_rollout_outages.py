"""A staged rollout through outages, with real parts (tests/rollout_fleet.py: Mosquitto with persistence as
deploy/mosquitto/cm.conf has it, `cm-fleet serve`, `cm-fleet rollout ...`, four real agents fed by cm-replay):

- an agent that is off while its wave goes out gets its retained desired document and archive when it
  returns, passes probation, reports the bundle active, and the rollout completes;
- the broker restarted (same port, same persistence file) while the canary wave is in probation: the
  rollout completes;
- the broker restarted without its persistence file (every retained message lost) while an agent is off: the
  scheduler publishes the unfinished rollout's archive and desired documents again when it reconnects, so
  the agent still gets them when it returns, and the rollout completes.

One fleet for the module: each test rolls a bundle of its own out over the same agents (new ids, new sha256),
and checks against what the agents ran when it started. What the fleet knows is read from the historian: the
test's own subscriber does not resubscribe after a broker restart.
"""
from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from rollout_fleet import Fleet, created_id, healthy_later, replay_when_in_probation, running_fleet, signed_variant
from waiting import eventually

from edge.model.store import archive_sha256, pack
from fleet.signing import KeyPair, keygen

pytestmark = pytest.mark.slow
AGENTS = 4
HEALTHY = 12  # replayed files: the candidate's window fills, then its probation's snapshots
PROBATION = 3
CANARIES = ["pump-0", "pump-1"]  # --canary 50% of the four, in the order of their ids
AWAY = "pump-3"  # in the second wave


@pytest.fixture(scope="module")
def trusted(tmp_path_factory: pytest.TempPathFactory) -> KeyPair:
    return keygen(tmp_path_factory.mktemp("keys"))


@pytest.fixture
def healthy(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """Healthy data of the test's own days: each test feeds the same agents again."""
    return healthy_later(tmp_path / "healthy", HEALTHY, days=1 + TESTS.index(request.node.originalname))


@pytest.fixture(scope="module")
def fleet(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, trusted: KeyPair) -> Iterator[Fleet]:
    with running_fleet(request, tmp_path_factory.mktemp("fleet"), trusted, AGENTS, persistence=True) as running:
        yield running


def create(fleet: Fleet, bundle: Path, canary: str = "50%") -> str:
    return created_id(fleet.cli("create", bundle, "--devices", "all", "--canary", canary, "--wave-wait", "1h",
                                "--max-failed", "10%", "--device-timeout", "10m", "--probation-snapshots", PROBATION))


def finish(fleet: Fleet, rollout_id: str, healthy: Path, replays: dict[str, subprocess.Popen], timeout: float = 180) -> None:
    """Feed every device that reaches probation until the rollout is over; every agent then runs the bundle."""
    assert eventually(lambda: (replay_when_in_probation(fleet, rollout_id, healthy, replays, []),
                               fleet.state(rollout_id))[1] != "running", timeout), \
        (fleet.devices(rollout_id), fleet.service.read_log()[-3000:])
    assert all(r.wait(60) == 0 for r in replays.values())
    assert fleet.state(rollout_id) == "completed", (fleet.devices(rollout_id), fleet.service.read_log()[-3000:])
    assert fleet.devices(rollout_id) == dict.fromkeys(fleet.agents, "active")


def all_on(fleet: Fleet, bundle: Path, rollout_id: str) -> None:
    sha = archive_sha256(pack(bundle))
    for device in fleet.agents:
        assert eventually(lambda d=device: fleet.stored_report(d)["active"]["bundle"] == sha, 15), fleet.stored_report(device)
        report = fleet.stored_report(device)
        assert report["active"]["id"] == bundle.name and report["rollout"]["rollout"] == rollout_id, report
        assert report["rollout"]["status"] == "active", report


def test_an_agent_away_during_its_wave_catches_up_when_it_returns(fleet, trusted, healthy, tmp_path):
    new = signed_variant(tmp_path, "away-model", trusted)
    away = fleet.agents[AWAY]
    assert away.stop_agent() == 0
    before = fleet.stored_report(AWAY)["active"]
    rollout_id = create(fleet, new)
    replays: dict[str, subprocess.Popen] = {}
    # The others go active; the wave waits for the one that is away (sent, no word from it).
    others = [d for d in fleet.agents if d != AWAY]
    assert eventually(lambda: (replay_when_in_probation(fleet, rollout_id, healthy, replays, []),
                               [fleet.devices(rollout_id)[d] for d in others])[1] == ["active"] * 3, 180), \
        (fleet.devices(rollout_id), fleet.service.read_log()[-3000:])
    assert fleet.devices(rollout_id)[AWAY] == "sent" and fleet.state(rollout_id) == "running"
    assert fleet.stored_report(AWAY)["active"] == before

    away.start_agent()  # back: the retained desired document and archive are waiting for it
    finish(fleet, rollout_id, healthy, replays)
    all_on(fleet, new, rollout_id)
    assert "verified" in away.agent_log().split("agent pump-3 started")[-1], away.agent_log()


def test_a_broker_restart_while_the_canaries_are_in_probation(fleet, trusted, healthy, tmp_path):
    new = signed_variant(tmp_path, "restart-model", trusted)
    rollout_id = create(fleet, new)
    assert eventually(lambda: all(fleet.devices(rollout_id)[d] == "probation" for d in CANARIES), 60), \
        (fleet.devices(rollout_id), fleet.service.read_log()[-3000:])
    connects = fleet.service.read_log().count("connected to ")
    fleet.broker.stop()  # SIGTERM: Mosquitto writes its persistence file, as on a reboot
    fleet.broker.start()
    assert eventually(lambda: fleet.service.read_log().count("connected to ") > connects, 30), fleet.service.read_log()
    assert "(session resumed)" in fleet.service.read_log().split("connected to ")[-1]
    finish(fleet, rollout_id, healthy, {})
    all_on(fleet, new, rollout_id)
    # A broker that kept its state kept the retained messages too: the archive went out once.
    assert f"rollout {rollout_id}: bundle and" not in fleet.service.read_log()


def test_a_broker_that_lost_its_retained_messages_gets_them_again(fleet, trusted, healthy, tmp_path):
    new = signed_variant(tmp_path, "lost-model", trusted)
    away = fleet.agents[AWAY]
    assert away.stop_agent() == 0
    rollout_id = create(fleet, new, canary="100%")  # one wave: AWAY's desired document goes out at once
    others = [d for d in fleet.agents if d != AWAY]
    assert eventually(lambda: all(fleet.devices(rollout_id)[d] == "probation" for d in others), 60), \
        (fleet.devices(rollout_id), fleet.service.read_log()[-3000:])
    connects = fleet.service.read_log().count("connected to ")
    fleet.broker.stop()
    persisted = fleet.broker.directory / "mosquitto.db"
    assert persisted.exists()
    persisted.unlink()  # a broker with nothing retained: a new machine, or a lost disk
    fleet.broker.start()
    assert eventually(lambda: fleet.service.read_log().count("connected to ") > connects, 30), fleet.service.read_log()
    assert eventually(lambda: f"rollout {rollout_id}: bundle and 4 desired documents published again"
                      in fleet.service.read_log(), 30), fleet.service.read_log()[-3000:]
    assert "(session new)" in fleet.service.read_log().split("connected to ")[-1]
    away.start_agent()
    finish(fleet, rollout_id, healthy, {})
    all_on(fleet, new, rollout_id)


TESTS = [name for name in globals() if name.startswith("test_")]
