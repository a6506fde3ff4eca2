"""Commissioning with real parts, the chain as in the field: cm-replay -> pty -> cm-edge on a signed baseline card
-> Mosquitto -> `cm-fleet serve` with [commissioning], the real trainer in its own processes.

The agent on the card (`cm-train baseline` from the synthetic run's header) publishes `learning` telemetry for the
run's healthy first files; cm-fleet stores it. `cm-fleet commission DEVICE` checks the baseline and asks for
training; the worker in cm-fleet serve exports the baseline, trains and evaluates it with `cm-train`, signs it and
creates a one-device rollout, whose archive and desired document the scheduler publishes, retained. The bundle
carries the card's feature spec and a signature the fleet's public key verifies; the agent takes it over the air,
scores it in shadow on the next files and reports it active, which moves the machine from `probation` to
`monitoring`; `learn-again` then starts a new baseline after the newest snapshot. (The automatic trigger, the
refusals and the held attempts are tests/test_commissioning.py's.)
"""
from __future__ import annotations

import io
import json
import subprocess
import tarfile
from dataclasses import replace
from pathlib import Path

import pytest
from broker import Mosquitto, Subscriber
from chain import Chain
from fleet_helpers import BIN, start_fleet
from trained import first_files, shared_run
from waiting import eventually

from edge.compatibility import check_same_stream
from edge.model.bundle import Baseline, load_bundle, load_deployable
from edge.model.signature import load_public_key, verify
from edge.model.store import archive_sha256
from firmware_bridge.ims import list_ims_files
from fleet.config import HistorianConfig
from fleet.historian import commissioning as book
from fleet.historian import open_historian
from fleet.historian.store import parse_time
from fleet.signing import keygen, sign
from trainer.baseline import BaselineOptions, write

pytestmark = pytest.mark.slow
DEVICE = "pump-7"
BASELINE_FILES = 60  # inside the shared run's healthy half
PROBATION_FILES = 8  # the next ones: the candidate's window fills, then 3 snapshots in shadow


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


def test_a_learning_machine_is_trained_signed_rolled_out_and_taken_by_its_agent(request, tmp_path):
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

        stored = BASELINE_FILES + PROBATION_FILES
        assert eventually(lambda: historian.read("SELECT COUNT(*) FROM telemetry")[0][0] == stored, 30)
        again = cm_fleet(service.directory, ["cm-fleet", "commission", "learn-again", "pump-7", "--config", "fleet.toml"])
        assert again.returncode == 0, again.stderr
        relearning = book.record(historian, DEVICE)
        newest = max(parse_time(json.loads(t)["timestamp"]) for t in subscriber.on(f"cm/{DEVICE}/telemetry"))
        assert relearning is not None and relearning.phase == "learning" and relearning.baseline_start_us == newest + 1
        assert relearning.started_by.startswith("learn again by ")
        chain.stop_agent()
        assert service.stop() == 0
