"""Commissioning with real parts, the chain as in the field: cm-replay -> pty -> cm-edge on a signed baseline card
-> Mosquitto -> `cm-fleet serve` with [commissioning], the real trainer in its own processes.

The agent on the card (`cm-train baseline` from the synthetic run's header) publishes `learning` telemetry for the
run's healthy first files; cm-fleet stores it. `cm-fleet commission DEVICE` checks the baseline and asks for
training; the worker in cm-fleet serve exports the baseline, trains and evaluates it with `cm-train`, signs it and
creates a one-device rollout, whose archive and desired document the scheduler publishes, retained. The bundle
carries the card's feature spec and a signature the fleet's public key verifies; the agent takes it over the air,
scores it in shadow on the next files and reports it active, which moves the machine from `probation` to
`monitoring`. The run goes on to bearing 3's failure: the fleet-trained model alarms on bearing3, and on nothing
before the defect appears. Closing the alarm with a repair starts a new baseline; the repaired machine (another
run's healthy start) is learnt while the old model stays in charge, and the new model takes over only after its
probation, with no snapshot left unscored. `learn-again` then starts a new baseline after the newest snapshot.
(The automatic trigger, the refusals and the held attempts are tests/test_commissioning.py's.)
"""
from __future__ import annotations

import io
import json
import subprocess
import tarfile
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from broker import Mosquitto, Subscriber
from chain import Chain
from fleet_helpers import BIN, start_fleet
from trained import FAIL_BEARING, RUN_FILES, first_files, shared_run
from waiting import eventually

from edge.compatibility import check_same_stream
from edge.model.bundle import Baseline, load_bundle, load_deployable
from edge.model.signature import load_public_key, verify
from edge.model.store import archive_sha256
from firmware_bridge.ims import list_ims_files
from firmware_bridge.synth import generate, plan_run
from fleet.config import HistorianConfig
from fleet.historian import commissioning as book
from fleet.historian import open_historian
from fleet.historian.alert_book import alert_rows, close
from fleet.historian.store import parse_time
from fleet.signing import keygen, sign
from trainer.baseline import BaselineOptions, write

pytestmark = pytest.mark.slow
DEVICE = "pump-7"
BASELINE_FILES = 60  # inside the shared run's healthy half
PROBATION_FILES = 8  # the next ones: the candidate's window fills, then 3 snapshots in shadow
REPAIRED_FILES = 120  # the repaired machine's run: its defect starts after 60% of it, beyond what is replayed


def files(run: Path, start: int, stop: int, directory: Path) -> Path:
    """A folder of links to the run's files [start, stop): a span of it replayed."""
    directory.mkdir(parents=True, exist_ok=True)
    for file in list_ims_files(run)[start:stop]:
        (directory / file.path.name).symlink_to(file.path)
    return directory


def cm_fleet(directory: Path, command: list[str]) -> subprocess.CompletedProcess:
    """The docs' command line, run where the service's fleet.toml is."""
    return subprocess.run([BIN / command[0], *command[1:]], cwd=directory, capture_output=True, text=True, timeout=60)


def phase(historian) -> str | None:
    found = book.record(historian, DEVICE)
    return None if found is None else found.phase


def test_a_learning_machine_is_trained_by_the_fleet_alarms_on_its_failure_and_learns_again_after_repair(
        request, tmp_path):
    run = shared_run()
    keys = keygen(tmp_path / "keys")
    cards = tmp_path / "cards"
    write(BaselineOptions(out=cards / "pump", feature_set="mean_abs", recording=first_files(run, 4, tmp_path / "head")))
    sign(cards / "pump", keys.private)  # the agent trusts only the fleet's key: its card is signed too
    card = load_deployable(cards / "pump")
    assert isinstance(card, Baseline)
    url = f"sqlite://{tmp_path / 'historian.sqlite'}"
    with Mosquitto(tmp_path / "broker") as broker, Subscriber(broker.port, "cm/#") as subscriber:
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
        chain = Chain(tmp_path / "agent", broker, cards / "pump")
        chain.config.write_text(chain.config.read_text().replace("[model]\n", f'[model]\ntrusted_keys = ["{keys.public}"]\n'))
        request.addfinalizer(chain.kill_agent)
        chain.start_online(subscriber)
        historian = open_historian(HistorianConfig(url=url))
        request.addfinalizer(historian.close)
        assert chain.replay(files(run, 0, BASELINE_FILES, tmp_path / "baseline")).returncode == 0
        assert eventually(lambda: (found := book.record(historian, DEVICE)) is not None and found.progress is not None
                          and found.progress["snapshots"] == BASELINE_FILES, 60), (service.read_log(), chain.agent_log())
        assert phase(historian) == "learning"  # auto = false: nothing trains until asked

        asked = cm_fleet(service.directory, ["cm-fleet", "commission", "pump-7", "--config", "fleet.toml"])
        assert asked.returncode == 0, asked.stderr
        assert asked.stdout.startswith(f"{DEVICE}: learning since ")
        assert f"baseline good: {BASELINE_FILES} snapshots over 0.41 days: cm-fleet serve trains it" in asked.stdout

        assert eventually(lambda: phase(historian) == "probation", 240), (book.record(historian, DEVICE), service.read_log())
        record = book.record(historian, DEVICE)
        assert record is not None and record.rollout_id is not None and record.bundle_sha256 is not None
        desired = f"cm/_fleet/desired/{DEVICE}"
        assert subscriber.wait_for(lambda s: bool(s.on(desired)), 30), service.read_log()
        document = json.loads(subscriber.on(desired)[-1])
        assert document == {"bundle": record.bundle_sha256, "rollout": record.rollout_id, "probation": {"snapshots": 3}}
        archive = subscriber.on(f"cm/_fleet/bundles/{record.bundle_sha256}")[-1]
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

        assert subscriber.wait_for(lambda s: b"probation" in b"".join(s.on(f"cm/{DEVICE}/model")), 60), chain.agent_log()
        after = files(run, BASELINE_FILES, BASELINE_FILES + PROBATION_FILES, tmp_path / "after")
        assert chain.replay(after).returncode == 0
        assert eventually(lambda: phase(historian) == "monitoring", 60), (book.record(historian, DEVICE), chain.agent_log())
        report = json.loads(subscriber.on(f"cm/{DEVICE}/model")[-1])
        assert report["active"]["bundle"] == record.bundle_sha256 and report["rollout"]["status"] == "active"
        assert subscriber.wait_for(lambda s: json.loads(s.on(f"cm/{DEVICE}/state")[-1])["state"] == "normal", 30)
        assert subscriber.on(f"cm/{DEVICE}/alert") == []  # from learning to its own model: nothing to announce

        first_bundle = record.bundle_sha256

        # The run goes on to bearing 3's failure: the fleet-trained model, in charge, alarms on the failing bearing,
        # and on nothing before the defect appears (cm-synth's plan: no defect signal while severity is 0).
        to_failure = files(run, BASELINE_FILES + PROBATION_FILES, RUN_FILES, tmp_path / "to-failure")
        assert chain.replay(to_failure).returncode == 0
        assert eventually(lambda: historian.read("SELECT COUNT(*) FROM telemetry")[0][0] == RUN_FILES, 60), chain.agent_log()
        alerts = [json.loads(a) for a in subscriber.on(f"cm/{DEVICE}/alert")]
        times = [ims.timestamp for ims in list_ims_files(run)]
        healthy_until = times[int(np.argmax(plan_run(RUN_FILES, FAIL_BEARING, 0).severity > 0))]
        raised = [a for a in alerts if a["state"] in ("warning", "alarm")]
        assert raised and all(parse_time(a["timestamp"]) >= healthy_until.timestamp() * 1e6 for a in raised), alerts
        alarm = next(a for a in alerts if a["state"] == "alarm")
        assert alarm["top_channel"] == "bearing3", alarm
        lead_h = (times[-1].timestamp() * 1e6 - parse_time(alarm["timestamp"])) / 3.6e9
        print(f"fleet-trained model in the chain: first alarm {alarm['timestamp']}, {lead_h:.2f} h before the run's end, "
              f"score {alarm['score']:.3f} (alarm threshold {alarm['alarm_threshold']:.3f})")
        assert lead_h > 1  # days before failure at the field's cadence; here hours of the 10-minute synthetic run

        # The bearing is replaced: closing the alarm with the repair starts a new baseline after the newest snapshot.
        (stored_alarm,) = [a for a in alert_rows(historian, "active", DEVICE) if a.state == "alarm"]
        close(historian, stored_alarm.id, "ada", "outer_race", "bearing 3 replaced", repair="bearing_replaced")
        relearning = book.record(historian, DEVICE)
        assert relearning is not None and relearning.phase == "learning"
        assert relearning.baseline_start_us == int(times[-1].timestamp() * 1e6) + 1
        assert relearning.started_by == f"bearing replaced (alert {stored_alarm.id} closed by ada)"

        # The repaired machine (a new bearing: another run's healthy start, ten minutes after the last file) learns
        # its new baseline while the old model keeps watching it; the new model is trained, signed and shadowed,
        # and the old one stays in charge until the new one passes probation.
        repaired = tmp_path / "repaired"
        generate(repaired, files=REPAIRED_FILES, fail_bearing=FAIL_BEARING, seed=1, start=times[-1] + timedelta(minutes=10))
        assert not plan_run(REPAIRED_FILES, FAIL_BEARING, 1).severity[:BASELINE_FILES + PROBATION_FILES].any()
        assert chain.replay(files(repaired, 0, BASELINE_FILES, tmp_path / "new-baseline")).returncode == 0
        assert eventually(lambda: (found := book.record(historian, DEVICE)) is not None and found.progress is not None
                          and found.progress["snapshots"] == BASELINE_FILES, 60), (service.read_log(), chain.agent_log())
        asked = cm_fleet(service.directory, ["cm-fleet", "commission", "pump-7", "--config", "fleet.toml"])
        assert asked.returncode == 0, asked.stderr
        assert eventually(lambda: phase(historian) == "probation", 240), (book.record(historian, DEVICE), service.read_log())
        second = book.record(historian, DEVICE)
        assert second is not None and second.bundle_sha256 not in (None, first_bundle)
        assert subscriber.wait_for(lambda s: json.loads(s.on(f"cm/{DEVICE}/model")[-1])["rollout"]["status"] == "probation"
                                   and json.loads(s.on(f"cm/{DEVICE}/model")[-1])["rollout"]["rollout"] == second.rollout_id,
                                   60), chain.agent_log()
        in_probation = json.loads(subscriber.on(f"cm/{DEVICE}/model")[-1])
        assert in_probation["active"]["bundle"] == first_bundle  # the old model is in charge during probation
        assert chain.replay(files(repaired, BASELINE_FILES, BASELINE_FILES + PROBATION_FILES,
                                  tmp_path / "new-probation")).returncode == 0
        assert eventually(lambda: phase(historian) == "monitoring", 60), (book.record(historian, DEVICE), chain.agent_log())
        report = json.loads(subscriber.on(f"cm/{DEVICE}/model")[-1])
        assert report["active"]["bundle"] == second.bundle_sha256 and report["previous"] == first_bundle
        since_repair = [json.loads(t) for t in subscriber.on(f"cm/{DEVICE}/telemetry")][-(BASELINE_FILES + PROBATION_FILES):]
        shadowed = [t for t in since_repair if "candidate" in t]
        new_model = {"id": shadowed[0]["candidate"]["model"]["id"], "sha256": shadowed[0]["candidate"]["model"]["sha256"]}
        assert new_model["id"] != trained.card.id and all(t["candidate"]["model"] == new_model for t in shadowed)
        taken_over = since_repair[since_repair.index(shadowed[-1]) + 1:]
        assert taken_over and all("candidate" not in t and t["score"] is not None for t in taken_over)
        assert json.loads(subscriber.on(f"cm/{DEVICE}/state")[-1])["model"] == new_model  # the new one is in charge
        snapshots = [t["snapshot"] for t in since_repair[-PROBATION_FILES:]]  # one replay: one count of frames
        assert snapshots == list(range(snapshots[0], snapshots[0] + PROBATION_FILES))  # across the switch, none unscored

        stored = RUN_FILES + BASELINE_FILES + PROBATION_FILES
        assert eventually(lambda: historian.read("SELECT COUNT(*) FROM telemetry")[0][0] == stored, 30)
        again = cm_fleet(service.directory, ["cm-fleet", "commission", "learn-again", "pump-7", "--config", "fleet.toml"])
        assert again.returncode == 0, again.stderr
        relearning = book.record(historian, DEVICE)
        newest = max(parse_time(json.loads(t)["timestamp"]) for t in subscriber.on(f"cm/{DEVICE}/telemetry"))
        assert relearning is not None and relearning.phase == "learning" and relearning.baseline_start_us == newest + 1
        assert relearning.started_by.startswith("learn again by ")
        chain.stop_agent()
        assert service.stop() == 0
