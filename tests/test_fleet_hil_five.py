"""Five real agents, a real broker and a real `cm-fleet serve`: cm-replay -> pty -> cm-edge (x5) -> Mosquitto ->
cm-fleet serve -> historian, with the service stopped (SIGTERM) for 30 s mid-run and killed (SIGKILL) later on,
and its dashboard in a real headless browser.

Each agent replays the synthetic run to failure in a loop (normal -> warning -> alarm -> sensor fault -> normal,
again and again), so alerts keep coming while the service is up, while it is stopped and after it was killed. A
witness subscribed to the broker throughout sees every alert and state the agents publish; at the end the
historian holds each agent's alerts exactly once and each machine's state equals its agent's retained `state`,
and the fleet page a viewer sees in the browser shows each machine in its agent's retained state.

Timeline (each phase ends on a condition, except the stop, which lasts the 30 s it must):
    live: every machine has an alert stored -> SIGTERM -> 30 s down (the agents keep alerting) -> start ->
    more alerts stored -> SIGKILL -> more alerts published while it is dead -> start -> replays end -> agents stop
"""
from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest
from broker import Mosquitto, Subscriber
from browser import browser, page, screenshot  # noqa: F401  (fixtures)
from chain import Chain
from fleet_helpers import start_fleet
from trained import shared_bundle, shared_dropout_run
from waiting import eventually
from web_helpers import dashboard_url, shown_states, sign_in

from fleet.config import HistorianConfig
from fleet.historian import Historian, open_historian
from fleet.historian.accounts import Accounts
from fleet.web.credentials import hash_password

pytestmark = pytest.mark.slow
DEVICES = tuple(f"pump-{n}" for n in range(1, 6))
STOPPED_S = 30.0  # the outage: the service is down this long while the agents keep alerting
# A pass of the 140-file run takes about 14 s at this factor (10 snapshots/s per agent): several alerts per
# pass, and five agents plus their replays stay within two cores.
REPLAY_SPEED = "6000"
# Like deploy/mosquitto/cm.conf: the fleet's persistent session queues every QoS 1 message (alerts and the
# per-snapshot retained states) while the service is down; Mosquitto's default of 1,000 would drop the rest.
VIEWER = ("vera", "viewer-pass-1")
BROKER_CONFIG = "listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 100000\nmax_queued_bytes 0\n"


@pytest.fixture
def broker(tmp_path) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path / "broker", config=BROKER_CONFIG) as running:
        yield running


def published_alerts(witness: Subscriber) -> dict[str, dict[str, dict]]:
    """Every alert the witness saw, by device and id."""
    return {device: {json.loads(p)["id"]: json.loads(p) for p in witness.on(f"cm/{device}/alert")}
            for device in DEVICES}


def alert_count(witness: Subscriber) -> int:
    return sum(len(witness.on(f"cm/{device}/alert")) for device in DEVICES)


def more_alerts_published(witness: Subscriber, count: int) -> Callable[[], bool]:
    before = alert_count(witness)
    return lambda: alert_count(witness) >= before + count


def more_alerts_stored(reader: Historian, count: int) -> Callable[[], bool]:
    before = len(reader.alert_ids())
    return lambda: len(reader.alert_ids()) >= before + count


def retained_states(witness: Subscriber) -> dict[str, str]:
    return {device: json.loads(witness.on(f"cm/{device}/state")[-1])["state"] for device in DEVICES}


def fleet_page(browser_page, fleet) -> dict[str, str]:
    browser_page.goto(f"{dashboard_url(fleet.read_log())}/fleet")
    return shown_states(browser_page)


def test_five_real_agents_lose_no_alert_and_store_none_twice_across_a_30_s_stop_and_a_sigkill(request, tmp_path,
                                                                                              broker, page):  # noqa: F811
    run_dir, bundle = shared_dropout_run(), shared_bundle()
    url = f"sqlite://{tmp_path / 'historian.sqlite'}"
    reader = open_historian(HistorianConfig(url=url))
    Accounts(reader).add(VIEWER[0], "viewer", hash_password(VIEWER[1]))
    fleet = start_fleet(request, tmp_path, broker.port, url, extra="[web]\nport = 0\n")
    agents = [Chain(tmp_path / device, broker, bundle, device) for device in DEVICES]
    replays: list[subprocess.Popen] = []
    topics = [f"cm/+/{kind}" for kind in ("alert", "state", "status")]
    try:
        with Subscriber(broker.port, topics) as witness:
            for agent in agents:
                agent.start_agent()
            for agent, device in zip(agents, DEVICES, strict=True):
                assert witness.wait_for(lambda s, d=device: s.on(f"cm/{d}/status")[-1:] == [b"online"], 60), \
                    agent.agent_log()
            replays = [subprocess.Popen(agent.replay_command(run_dir, "--loop", "--speed", REPLAY_SPEED),
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for agent in agents]

            # Live: every machine's first alerts reach the historian while the service runs.
            assert eventually(lambda: {a["device_id"] for a in reader.alerts()} == set(DEVICES), 90), fleet.read_log()

            assert fleet.stop() == 0, fleet.read_log()
            stopped_at, during_stop = time.monotonic(), more_alerts_published(witness, len(DEVICES))
            time.sleep(STOPPED_S)  # the outage itself: its length is what the test is about, not a wait for a state
            assert during_stop(), "no alerts were published while cm-fleet was stopped"
            down_ids = set(reader.alert_ids())
            fleet.start()
            assert time.monotonic() - stopped_at >= STOPPED_S

            assert eventually(more_alerts_stored(reader, len(DEVICES)), 60), fleet.read_log()
            fleet.kill()  # SIGKILL, with the agents publishing: whatever was not committed was not acknowledged
            assert eventually(more_alerts_published(witness, len(DEVICES)), 60)
            fleet.start()

            for replay in replays:
                replay.terminate()
                replay.wait(30)
            # The agents are still online: the viewer's fleet page shows each in its last retained state.
            sign_in(page, dashboard_url(fleet.read_log()), *VIEWER)
            assert eventually(lambda: fleet_page(page, fleet) == retained_states(witness), 60), \
                (fleet_page(page, fleet), retained_states(witness))
            screenshot(page, "fleet-five-agents")
            for agent in agents:
                assert agent.stop_agent() == 0, agent.agent_log()
            for device in DEVICES:
                assert witness.wait_for(lambda s, d=device: s.on(f"cm/{d}/status")[-1:] == [b"offline"], 30)
            published = published_alerts(witness)
            retained = {device: json.loads(witness.on(f"cm/{device}/state")[-1]) for device in DEVICES}

        total = sum(len(alerts) for alerts in published.values())
        assert eventually(lambda: len(reader.alert_ids()) >= total
                          and all(m.status == "offline" for m in reader.machines()), 60), fleet.read_log()
        assert len(down_ids) < total  # some alerts were stored only after the outage
        for device in DEVICES:
            stored = reader.alert_ids(device)
            assert len(stored) == len(set(stored)) == len(published[device]), device
            assert {a["id"]: a for a in reader.alerts(device)} == published[device], device
            assert {a["state"] for a in published[device].values()} >= {"warning", "alarm", "sensor_fault"}, device
        machines = {m.device_id: m for m in reader.machines()}
        assert set(machines) == set(DEVICES)
        for device in DEVICES:
            assert machines[device].state_json == retained[device], device
            assert machines[device].state == retained[device]["state"]
        assert reader.rejections() == {}
        assert fleet.read_log().count("session resumed") == 2  # after the stop and after the kill
        assert fleet.stop() == 0
    finally:
        for replay in replays:
            if replay.poll() is None:
                replay.kill()
                replay.wait()
        for agent in agents:
            agent.kill_agent()
        reader.close()
