"""Closed alerts become labels that `cm-train evaluate --label-column label` scores a model against: a machine's
telemetry and alerts in the historian, the alerts closed through the API of the dashboard on a real port, its
labels.csv downloaded and evaluated by the real `cm-train` with a bundle fitted on a features table."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fleet_helpers import MODEL, T0_US
from trained import table_bundle
from web_helpers import Browser

from edge.mqtt.payloads import alert, telemetry
from edge.scoring.detector import State, Transition
from edge.scoring.reading import Reading
from fleet.config import HistorianConfig, WebConfig
from fleet.historian import open_historian
from fleet.historian.accounts import Accounts
from fleet.payloads import Accepted
from fleet.web.credentials import new_token, token_hash
from fleet.web.server import WebServer

BIN = Path(sys.executable).parent
CHANNELS = ("ch1", "ch2")  # the table bundle's columns
HEALTHY, FAILING, AFTER = 40, 20, 10  # records: healthy, a bearing failing (closed as outer_race), healthy again
FALSE_ALARM = (10, 15)  # a warning closed as false_alarm: not a failure, labelled 0


def reading(i: int, level: float, state: State = State.NORMAL) -> Reading:
    rng = np.random.default_rng(i)
    features = level * (1 + rng.normal(0, 0.02, 2))
    return Reading(capture_time_us=T0_US + i * 600_000_000, snapshot=i, features=features, score=None,
                   channel_errors=None, state=state, reason=None)


def history() -> tuple[list[Accepted], dict[str, str]]:
    """Telemetry of one machine, its alerts, and which alert is which."""
    levels = [0.05] * HEALTHY + [0.5] * FAILING + [0.05] * AFTER
    messages = [Accepted("telemetry", "pump-9", telemetry("pump-9", reading(i, level), CHANNELS, {})) for i, level in enumerate(levels)]
    transitions = {"false_alarm": (FALSE_ALARM[0], State.WARNING, State.NORMAL), "false_end": (FALSE_ALARM[1], State.NORMAL, State.WARNING),
                   "failure": (HEALTHY, State.ALARM, State.NORMAL), "failure_end": (HEALTHY + FAILING, State.NORMAL, State.ALARM)}
    ids = {}
    for name, (i, state, previous) in transitions.items():
        payload = alert("pump-9", Transition(state, previous, None), reading(i, levels[i], state), CHANNELS, (0.2, 0.4), MODEL)
        ids[name] = payload["id"]
        messages.append(Accepted("alert", "pump-9", payload))
    return messages, ids


@pytest.mark.slow
def test_closed_alerts_export_as_labels_cm_train_evaluate_scores(request, tmp_path):
    bundle = table_bundle(2, 2)  # one of trained.TABLE_SHAPES: made once per test run, shared
    historian = open_historian(HistorianConfig(url=f"sqlite://{tmp_path / 'h.sqlite'}"))
    request.addfinalizer(historian.close)
    messages, ids = history()
    historian.store(messages, [], T0_US)
    token = new_token()
    Accounts(historian).add("otto", "operator", "scrypt$1$1$1$AA==$AA==")  # logs in by token only
    Accounts(historian).add_token("otto", token_hash(token))
    server = WebServer(WebConfig(port=0), historian)
    server.start()
    request.addfinalizer(server.stop)
    api = Browser(server.url)
    bearer = {"Authorization": f"Bearer {token}"}
    for name, mode in (("false_alarm", "false_alarm"), ("failure", "outer_race")):
        assert api.post(f"/alerts/{ids[name]}/close", json={"failure_mode": mode}, headers=bearer).status_code == 200

    labels = api.get("/machines/pump-9/labels.csv", headers=bearer)
    assert labels.status_code == 200
    table = tmp_path / "labels.csv"
    table.write_bytes(labels.content)
    command = ["cm-train", "evaluate", str(bundle), str(table), "--out", str(tmp_path / "report"), "--label-column", "label"]
    result = subprocess.run([BIN / command[0], *command[1:]], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["anomalies"] == FAILING and report["labelled_snapshots"] > HEALTHY
    assert report["recall"] == 1.0 and report["precision"] >= 0.9  # ten times the healthy level: every one alarms

    # Without the flag the label column would be a channel: evaluate refuses the table rather than score it so.
    unlabelled = subprocess.run([BIN / command[0], *command[1:-2]], capture_output=True, text=True, timeout=300)
    assert unlabelled.returncode == 1 and "channels ['ch1', 'ch2', 'label'] do not match" in unlabelled.stderr
