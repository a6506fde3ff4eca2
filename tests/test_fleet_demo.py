"""make fleet-demo as README.md writes it: Debian's Mosquitto, a real `cm-fleet serve` and three real agents
(cm-replay --loop -> pty -> cm-edge) on this machine, for a bounded time (CM_FLEET_DEMO_SECONDS) instead of until
Ctrl-C, with the suite's trained run and bundle (CM_FLEET_DEMO_RUN, CM_FLEET_DEMO_BUNDLE) instead of training
its own; its output in the test's directory (CM_FLEET_DEMO_OUT). Every machine reaches the historian with alerts,
every process the demo started is stopped cleanly, and the dashboard it prints answers at its URL
while the demo runs, to an anonymous visitor with the way to the login page."""
from __future__ import annotations

import os
import re
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from trained import shared_bundle, shared_dropout_run

from fleet.config import HistorianConfig
from fleet.historian import open_historian

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def status_of(url: str) -> int:
    """The HTTP status of an anonymous GET (redirects not followed: a login redirect is an answer too)."""
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: object, **kwargs: object) -> None:
            return None

    try:
        with urllib.request.build_opener(NoRedirect).open(url, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_fleet_demo_runs_a_broker_the_fleet_service_and_three_agents(tmp_path: Path) -> None:
    out = tmp_path / "fleet-demo"
    env = {**os.environ, "CM_FLEET_DEMO_OUT": str(out), "CM_FLEET_DEMO_SECONDS": "20", "CM_FLEET_DEMO_SPEED": "max",
           "CM_FLEET_DEMO_RUN": str(shared_dropout_run()), "CM_FLEET_DEMO_BUNDLE": str(shared_bundle())}
    demo = subprocess.Popen(["make", "fleet-demo"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)
    try:
        assert demo.stdout is not None
        lines = []
        for line in demo.stdout:  # up to the URL line, while the demo runs
            lines.append(line)
            if line.startswith("dashboard:"):
                break
        url = re.search(r"http://\S+", lines[-1]) if lines else None
        assert url, lines
        assert status_of(url.group(0)) in (302, 303, 401), lines  # the login page or a refusal, never the fleet
        output = "".join(lines) + demo.stdout.read()
        assert demo.wait(300) == 0, output[-3000:]
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    running = output[output.index("== running"):]
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
