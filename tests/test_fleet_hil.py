"""End to end with real parts: cm-replay -> pty -> cm-edge -> Mosquitto -> cm-fleet serve -> historian.

The fleet service is killed (SIGKILL) before the run is replayed and comes back after it: every alert the
agent published meanwhile is in the historian exactly once, and the machine's state there is the agent's
retained state.
"""
from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from broker import Mosquitto, Subscriber
from chain import Chain
from fleet_helpers import start_fleet
from trained import shared_bundle, shared_dropout_run
from waiting import eventually

from fleet.config import HistorianConfig
from fleet.historian import open_historian

pytestmark = pytest.mark.slow
DEVICE = "pump-7"
TOPIC = f"cm/{DEVICE}"


@pytest.fixture
def broker(tmp_path) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path / "broker") as running:
        yield running


def test_every_alert_of_a_real_agent_published_while_the_service_was_killed_is_stored_once(request, tmp_path, broker):
    run_dir, bundle = shared_dropout_run(), shared_bundle()
    url = f"sqlite://{tmp_path / 'historian.sqlite'}"
    fleet = start_fleet(request, tmp_path, broker.port, url)
    agent = Chain(tmp_path / DEVICE, broker, bundle, DEVICE)
    try:
        with Subscriber(broker.port, f"{TOPIC}/#") as witness:
            agent.start_agent()
            assert witness.wait_for(lambda s: s.on(f"{TOPIC}/status")[-1:] == [b"online"], 30), agent.agent_log()
            fleet.kill()
            result = agent.replay(run_dir)
            assert result.returncode == 0, result.stderr
            assert witness.wait_for(lambda s: s.on(f"{TOPIC}/state") and json.loads(s.on(f"{TOPIC}/state")[-1])[
                "state"] == "sensor_fault", 60), agent.agent_log()  # the run ends in a sensor dropout
            fleet.start()
            assert agent.stop_agent() == 0, agent.agent_log()
            assert witness.wait_for(lambda s: b"offline" in s.on(f"{TOPIC}/status"), 10)
            published = {json.loads(p)["id"]: json.loads(p) for p in witness.on(f"{TOPIC}/alert")}
            retained_state = json.loads(witness.on(f"{TOPIC}/state")[-1])
        reader = open_historian(HistorianConfig(url=url))
        assert eventually(lambda: len(reader.alert_ids()) >= len(published)
                          and reader.machines()[0].status == "offline", 30), fleet.read_log()
        assert any(a["state"] == "alarm" for a in published.values())
        stored = reader.alert_ids(DEVICE)
        assert len(stored) == len(set(stored)) == len(published) and set(stored) == set(published)
        assert {a["id"]: a for a in reader.alerts(DEVICE)} == published
        (machine,) = reader.machines()
        assert machine.state_json == retained_state and machine.state == "sensor_fault"
        assert reader.rejections() == {}
        assert fleet.stop() == 0
        reader.close()
    finally:
        agent.kill_agent()
