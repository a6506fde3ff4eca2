"""Two `cm-fleet serve` instances share the load through the MQTT 5 shared subscription ($share/cm-fleet/...) and
store into one PostgreSQL: each alert is stored once, and one of them SIGKILLed mid-run (and started again, as
systemd's Restart= does) loses nothing: what it had received but not acknowledged is in its session.
"""
from __future__ import annotations

import re
import time

import pytest
from broker import Mosquitto
from fleet_helpers import FleetService, postgres_cluster  # noqa: F401  (the module's PostgreSQL cluster)
from simulation import Simulation, audit, stored_alerts
from waiting import eventually

pytestmark = pytest.mark.waits


def _instance(request, directory, port: int, url: str, name: str) -> FleetService:
    directory.mkdir()
    service = FleetService(directory, port, url, mqtt='group = "cm-fleet-test-group"\n')  # one group: the load is split
    service.config.write_text(service.config.read_text().replace('client_id = "cm-fleet-test"', f'client_id = "{name}"'))
    request.addfinalizer(lambda: service.kill() if service.running() else None)
    return service.start()


def _stored_by(service: FleetService) -> int:
    """The alerts an instance stored, from its last words ("stopped: stored {...}") on SIGTERM."""
    found = re.findall(r"stopped: stored \{[^}]*'alert': (\d+)", service.read_log())
    return int(found[-1]) if found else 0


def test_two_instances_share_the_load_and_one_killed_loses_nothing(tmp_path, request, postgres_cluster):  # noqa: F811
    url = postgres_cluster.create_database()
    with Mosquitto(tmp_path / "broker") as broker:
        first = _instance(request, tmp_path / "a", broker.port, url, "cm-fleet-a")
        second = _instance(request, tmp_path / "b", broker.port, url, "cm-fleet-b")
        simulation = Simulation(tmp_path, broker.port, 60, "--duration", "10", "--alert-interval", "2").start()
        request.addfinalizer(simulation.kill)
        assert eventually(lambda: len(stored_alerts(url)) >= 40, 30), simulation.read_log()
        first.kill()  # SIGKILL mid-run: whatever it held unacknowledged stays in its session with the broker
        time.sleep(2)  # the other instance carries on alone meanwhile
        first.start()
        summary = simulation.wait(60)
        assert summary["alerts_pending"] == 0
        ledger = simulation.ledger()
        assert eventually(lambda: audit(ledger, stored_alerts(url)).clean(), 30), audit(ledger, stored_alerts(url))
        assert first.stop() == 0 and second.stop() == 0
    # The second instance, never killed, stored only a share: the first took the rest, before and after its kill.
    assert 0 < _stored_by(second) < len(ledger)
    assert _stored_by(first) > 0
