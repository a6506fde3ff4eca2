"""Commissioning with real parts: Mosquitto, `cm-fleet serve` with [commissioning], the real trainer in its own
processes and the agent's payloads published over MQTT.

A machine on a baseline card (`cm-train baseline` from the synthetic run's header) publishes `learning`
telemetry with the features of the run's healthy first files, as the agent computes them; cm-fleet stores it,
`cm-fleet commission DEVICE` checks the baseline and asks for training; the worker in cm-fleet serve exports the
baseline, trains and evaluates it with `cm-train`, signs it and creates a one-device rollout, whose archive and
desired document the scheduler publishes, retained. The bundle carries the card's feature spec and a signature
the fleet's public key verifies; the phase is `probation` until the agent reports the bundle active, then
`monitoring`.
"""
from __future__ import annotations

import io
import json
import subprocess
import tarfile
from dataclasses import replace

import pytest
from broker import Mosquitto, Subscriber
from commissioning_helpers import STEP_US, model_message
from fleet_helpers import BIN, T0_US, start_fleet
from trained import first_files, run_features, shared_run
from waiting import eventually

from edge.compatibility import check_same_stream
from edge.model.bundle import Baseline, load_bundle, load_deployable
from edge.model.signature import load_public_key, verify
from edge.model.store import archive_sha256
from edge.mqtt.payloads import ModelRef, state, telemetry
from edge.scoring.detector import State
from edge.scoring.reading import Reading
from fleet.config import HistorianConfig
from fleet.historian import commissioning as book
from fleet.historian import open_historian
from fleet.signing import keygen
from trainer.baseline import BaselineOptions, write

pytestmark = pytest.mark.slow
DEVICE = "pump-7"
BASELINE_FILES = 60  # inside the shared run's healthy half
COUNTERS = {"frames": 0, "crc_errors": 0, "malformed": 0, "resyncs": 0, "sequence_gaps": 0, "bytes_dropped": 0,
            "snapshots": 0, "snapshots_discarded": 0, "alerts_pending": 0, "telemetry_dropped": 0}


def publish_learning(port: int, card: Baseline, features) -> None:
    """What the agent on the card publishes: its retained state, then a telemetry record per snapshot."""
    spec = card.card.feature_spec
    readings = [Reading(capture_time_us=T0_US + i * STEP_US, snapshot=i, features=row, score=None, channel_errors=None,
                        state=State.LEARNING, reason=None) for i, row in enumerate(features)]
    with Subscriber(port, "cm/_none") as agent:
        ref = ModelRef(card.card.id, card.model_sha256)
        assert agent.publish_acked(f"cm/{DEVICE}/state", json.dumps(state(DEVICE, readings[-1], T0_US, spec.channels, ref)).encode())
        for reading in readings:
            assert agent.publish_acked(f"cm/{DEVICE}/telemetry",
                                       json.dumps(telemetry(DEVICE, reading, spec.channels, COUNTERS)).encode())


def test_a_learning_machine_is_trained_signed_and_rolled_out_by_the_fleet(request, tmp_path):
    run = shared_run()
    cards = tmp_path / "cards"
    write(BaselineOptions(out=cards / "pump", feature_set="mean_abs", recording=first_files(run, 4, tmp_path / "head")))
    card = load_deployable(cards / "pump")
    assert isinstance(card, Baseline)
    keys = keygen(tmp_path / "keys")
    url = f"sqlite://{tmp_path / 'historian.sqlite'}"
    with Mosquitto(tmp_path / "broker") as broker, Subscriber(broker.port, "cm/_fleet/#") as fleet_topics:
        service = start_fleet(request, tmp_path, broker.port, url, extra=f"""[commissioning]
baseline_cards = "{cards}"
signing_key = "{keys.private}"
auto = false
min_days = 0.3
min_snapshots = 50
check_interval_s = 1
work_dir = "{tmp_path / 'work'}"
fit_epochs = 5
probation_snapshots = 3
""")
        publish_learning(broker.port, card, run_features(run)[:BASELINE_FILES])
        historian = open_historian(HistorianConfig(url=url))
        request.addfinalizer(historian.close)
        assert eventually(lambda: (found := book.record(historian, DEVICE)) is not None and found.progress is not None
                          and found.progress["snapshots"] == BASELINE_FILES, 30), service.read_log()

        asked = cm_fleet(service.directory, ["cm-fleet", "commission", "pump-7", "--config", "fleet.toml"])
        assert asked.returncode == 0, asked.stderr
        assert asked.stdout.startswith(f"{DEVICE}: learning since ")
        assert f"baseline good: {BASELINE_FILES} snapshots over 0.41 days: cm-fleet serve trains it" in asked.stdout

        assert eventually(lambda: book.record(historian, DEVICE).phase == "probation", 240), (  # type: ignore[union-attr]
            book.record(historian, DEVICE), service.read_log())
        record = book.record(historian, DEVICE)
        assert record is not None and record.rollout_id is not None and record.bundle_sha256 is not None
        desired = f"cm/_fleet/desired/{DEVICE}"
        assert fleet_topics.wait_for(lambda s: bool(s.on(desired)), 30), service.read_log()
        document = json.loads(fleet_topics.on(desired)[-1])
        assert document == {"bundle": record.bundle_sha256, "rollout": record.rollout_id, "probation": {"snapshots": 3}}
        archive = fleet_topics.on(f"cm/_fleet/bundles/{record.bundle_sha256}")[-1]
        assert archive_sha256(archive) == record.bundle_sha256

        unpacked = tmp_path / "arrived"
        unpacked.mkdir()
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(unpacked)
        verify(unpacked, [load_public_key(keys.public)])  # signed with [commissioning] signing_key
        trained = load_bundle(unpacked)
        # The card's spec (what the agent computes), but for the window of feature vectors the trainer chose.
        assert replace(trained.card.feature_spec, window=card.card.feature_spec.window) == card.card.feature_spec
        check_same_stream(card, trained)  # the agent's own check of a bundle arriving over the air

        status = cm_fleet(service.directory, ["cm-fleet", "commission", "status", DEVICE, "--json", "--config", "fleet.toml"])
        assert json.loads(status.stdout)[0]["phase"] == "probation"
        listed = cm_fleet(service.directory, ["cm-fleet", "commission", "status", "--config", "fleet.toml"])
        assert listed.stdout.startswith(f"{DEVICE}: probation since ") and f"rollout {record.rollout_id}" in listed.stdout

        outcome = {"rollout": record.rollout_id, "bundle": record.bundle_sha256, "status": "active", "reason": None,
                   "started": "2023-11-15T00:00:00Z", "updated": "2023-11-16T00:00:00Z"}
        report = model_message(DEVICE, {"id": trained.card.id, "bundle": record.bundle_sha256,
                                        "model_sha256": trained.card.model_sha256}, outcome, "2023-11-16T00:00:00Z")
        with Subscriber(broker.port, "cm/_none") as agent:
            assert agent.publish_acked(f"cm/{DEVICE}/model", json.dumps(report.payload).encode())
        assert eventually(lambda: book.record(historian, DEVICE).phase == "monitoring", 30), service.read_log()  # type: ignore[union-attr]

        again = cm_fleet(service.directory, ["cm-fleet", "commission", "learn-again", "pump-7", "--config", "fleet.toml"])
        assert again.returncode == 0, again.stderr
        relearning = book.record(historian, DEVICE)
        assert relearning is not None and relearning.phase == "learning"
        assert relearning.baseline_start_us == T0_US + (BASELINE_FILES - 1) * STEP_US + 1  # after the newest snapshot
        assert relearning.started_by.startswith("learn again by ")
        assert service.stop() == 0


def cm_fleet(directory, command: list[str]) -> subprocess.CompletedProcess:
    """The docs' command line, run where the service's fleet.toml is."""
    return subprocess.run([BIN / command[0], *command[1:]], cwd=directory, capture_output=True, text=True, timeout=60)
