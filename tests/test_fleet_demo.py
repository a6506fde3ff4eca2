"""make fleet-demo as README.md writes it: Debian's Mosquitto, a real `cm-fleet serve` and three real agents
(cm-replay --loop -> pty -> cm-edge) on this machine, for a bounded time (CM_FLEET_DEMO_SECONDS) instead of until
Ctrl-C, with the suite's trained run and bundle (CM_FLEET_DEMO_RUN, CM_FLEET_DEMO_BUNDLE) instead of training
its own; its output in the test's directory (CM_FLEET_DEMO_OUT). Every machine reaches the historian with alerts,
and every process the demo started is stopped cleanly."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from trained import shared_bundle, shared_dropout_run

from fleet.config import HistorianConfig
from fleet.historian import open_historian

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def test_fleet_demo_runs_a_broker_the_fleet_service_and_three_agents(tmp_path: Path) -> None:
    out = tmp_path / "fleet-demo"
    env = {**os.environ, "CM_FLEET_DEMO_OUT": str(out), "CM_FLEET_DEMO_SECONDS": "20", "CM_FLEET_DEMO_SPEED": "max",
           "CM_FLEET_DEMO_RUN": str(shared_dropout_run()), "CM_FLEET_DEMO_BUNDLE": str(shared_bundle())}
    result = subprocess.run(["make", "fleet-demo"], cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    running = result.stdout[result.stdout.index("== running"):]
    assert "dashboard:" in running and f"historian:  {out / 'historian.sqlite'}" in running
    historian = open_historian(HistorianConfig(url=f"sqlite://{out / 'historian.sqlite'}"))
    try:
        machines = historian.machines()
        assert [m.device_id for m in machines] == ["pump-1", "pump-2", "pump-3"], running
        for machine in machines:
            assert historian.alert_ids(machine.device_id), f"{machine.device_id}: no alert in 20 s\n{running}"
            assert machine.status == "offline"  # each agent was stopped (SIGTERM) and said so
        assert historian.rejections() == {}
    finally:
        historian.close()
    assert "stopped: stored" in (out / "fleet.log").read_text()  # cm-fleet stopped on SIGTERM, not killed
