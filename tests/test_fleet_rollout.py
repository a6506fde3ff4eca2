"""The fleet's side of a staged rollout, with real parts: Mosquitto, `cm-fleet serve` (its scheduler publishing,
its ingest storing the agents' reports), `cm-fleet rollout ...` on the command line, and four real agents, each
cm-edge reading its own pty that cm-replay feeds.

- a good signed bundle goes out canary first, then in doubling waves; cm-fleet is killed (SIGKILL) while the
  canary is in probation and restarted: it resumes the rollout from the historian, and every agent reports the
  bundle active; `rollback` then points each one back to its previous bundle;
- a bundle signed by a key the agents do not trust: rejected by the canary, the rollout halted after the canary
  wave, the other devices never sent a desired document and still on their old model.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from chain import BIN
from rollout_fleet import Fleet, created_id, replay_when_in_probation, running_fleet, signed_variant
from trained import first_files, shared_bundle, shared_run
from waiting import eventually

from edge.model.store import archive_sha256, pack
from edge.mqtt.schemas import validate
from fleet.signing import KeyPair, keygen

pytestmark = pytest.mark.slow
AGENTS = 4  # canary 25%: one, then a wave of two (twice the canary), then the last one (what is left)
HEALTHY = 12  # replayed files: the candidate's window fills, then its probation's snapshots
PROBATION = 3
# README.md's command lines, run in the directory of the service's fleet.toml (the bundle copied to bundles/pump7).
CREATE = ["cm-fleet", "rollout", "create", "bundles/pump7", "--devices", "all", "--canary", "5%", "--wave-wait", "1h", "--max-failed", "10%", "--config", "fleet.toml"]
LIST = ["cm-fleet", "rollout", "status", "--config", "fleet.toml"]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[KeyPair, KeyPair]:
    return keygen(tmp_path_factory.mktemp("fleet")), keygen(tmp_path_factory.mktemp("other"))


@pytest.fixture(scope="module")
def healthy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return first_files(shared_run(), HEALTHY, tmp_path_factory.mktemp("healthy"))


@pytest.fixture
def fleet(request: pytest.FixtureRequest, tmp_path: Path, keys: tuple[KeyPair, KeyPair]) -> Iterator[Fleet]:
    trusted, _ = keys
    with running_fleet(request, tmp_path, trusted, AGENTS) as running:
        yield running


def test_a_good_bundle_goes_out_canary_first_survives_a_fleet_restart_and_rolls_back(fleet, keys, healthy, tmp_path):
    trusted, _ = keys
    new = signed_variant(tmp_path, "new-model", trusted)
    started = time.monotonic()
    rollout_id = created_id(fleet.cli("create", new, "--devices", "pump-*", "--canary", "25%", "--wave-wait", "1h",
                                      "--max-failed", "10%", "--probation-snapshots", PROBATION,
                                      "--trusted-key", trusted.public))
    waves = dict(fleet.historian.read("SELECT device_id, wave FROM rollout_devices WHERE rollout_id = ?", (rollout_id,)))
    canary = [d for d, w in waves.items() if w == 1]
    assert len(canary) == 1 and sorted(w for w in waves.values()) == [1, 2, 2, 3]

    # The canary alone hears of it, and goes into probation.
    assert eventually(lambda: fleet.devices(rollout_id)[canary[0]] == "probation", 60), fleet.service.read_log()
    others = [d for d in fleet.agents if d not in canary]
    assert all(fleet.devices(rollout_id)[d] == "queued" for d in others)
    assert fleet.subscriber.on(f"cm/_fleet/desired/{others[0]}") == []

    # cm-fleet dies; meanwhile the canary passes probation. Restarted, it resumes from the historian.
    fleet.service.kill()
    assert fleet.agents[canary[0]].replay(healthy).returncode == 0
    assert eventually(lambda: fleet.reports(canary[0])[-1]["rollout"]["status"] == "active", 60), \
        fleet.agents[canary[0]].agent_log()
    fleet.service.start()

    replays: dict[str, subprocess.Popen] = {}
    assert eventually(lambda: (replay_when_in_probation(fleet, rollout_id, healthy, replays, canary),
                               fleet.state(rollout_id))[1] == "completed", 240), (fleet.devices(rollout_id),
                                                                                   fleet.service.read_log())
    elapsed = time.monotonic() - started
    assert sorted(replays) == sorted(others) and all(r.wait(60) == 0 for r in replays.values())
    sha = archive_sha256(pack(new))
    for device in fleet.agents:
        report = fleet.reports(device)[-1]
        assert report["active"]["id"] == "new-model" and report["active"]["bundle"] == sha, report
        assert report["rollout"] == {**report["rollout"], "rollout": rollout_id, "status": "active"}
    assert fleet.devices(rollout_id) == dict.fromkeys(fleet.agents, "active")
    # The archive was published once, retained, content-addressed.
    assert len(fleet.subscriber.on(f"cm/_fleet/bundles/{sha}")) == 1
    status = fleet.cli("status", rollout_id)
    assert status.returncode == 0 and "completed" in status.stdout and "wave 2 (2 devices): settled" in status.stdout
    print(f"rolled {AGENTS} agents in {elapsed:.1f} s (probation {PROBATION} snapshots, with a fleet restart)")

    # Rollback: every device's desired document names the bundle it ran before; the agents have it in their store.
    old_sha = archive_sha256(pack(fleet.old))
    assert fleet.cli("rollback", rollout_id).returncode == 0
    assert eventually(lambda: fleet.state(rollout_id) == "rolled_back", 30), fleet.service.read_log()
    for device in fleet.agents:  # published before the state changed; on its way to this subscriber still
        topic = f"cm/_fleet/desired/{device}"
        assert fleet.subscriber.wait_for(lambda s, t=topic: json.loads(s.on(t)[-1])["bundle"] == old_sha, 10), device
        desired = json.loads(fleet.subscriber.on(topic)[-1])
        validate("desired", desired)
        assert desired["rollout"] == f"{rollout_id}-rollback"
    assert eventually(lambda: {s for (s,) in fleet.historian.read(
        "SELECT rollback_status FROM rollout_devices WHERE rollout_id = ?", (rollout_id,))} == {"probation"}, 60)


def test_an_untrusted_bundle_halts_the_rollout_at_the_canary(fleet, keys, tmp_path):
    _, other = keys
    foreign = signed_variant(tmp_path, "foreign-model", other)
    shutil.copytree(foreign, fleet.service.directory / "bundles" / "pump7")
    # The fleet does not check the key here (no --trusted-key): the canary's agent does, and refuses it.
    rollout_id = created_id(fleet.run(CREATE))
    assert eventually(lambda: fleet.state(rollout_id) == "halted", 60), (fleet.devices(rollout_id), fleet.service.read_log())
    statuses = fleet.devices(rollout_id)
    (canary,) = [d for d, s in statuses.items() if s != "queued"]
    assert statuses[canary] == "rejected"
    reason = fleet.historian.read("SELECT reason FROM rollout_devices WHERE device_id = ?", (canary,))[0][0]
    assert f"signed by key {other.key_id}, which is not trusted" in reason
    assert "1 of 1 devices reached failed" in fleet.historian.read("SELECT reason FROM rollouts")[0][0]
    time.sleep(2)  # a few of the scheduler's ticks: nothing more goes out
    for device in fleet.agents:
        if device != canary:
            assert fleet.devices(rollout_id)[device] == "queued"
            assert fleet.subscriber.on(f"cm/_fleet/desired/{device}") == []
            assert fleet.reports(device)[-1]["active"]["id"] == "old-model"
            assert fleet.reports(device)[-1]["rollout"] is None
    assert fleet.cli("resume", rollout_id).returncode == 2  # only a paused rollout resumes
    assert fleet.cli("abort", rollout_id).stdout.strip() == f"rollout {rollout_id}: aborted"
    listed = fleet.run(LIST)
    assert listed.returncode == 0 and listed.stdout.startswith(f"{rollout_id}\taborted\tforeign-model\tall"), listed


def test_an_unsigned_bundle_is_refused_with_the_reason(tmp_path):
    unsigned = tmp_path / "unsigned"
    shutil.copytree(shared_bundle(), unsigned)
    for name in ("MANIFEST.json", "MANIFEST.sig"):
        (unsigned / name).unlink(missing_ok=True)
    config = tmp_path / "fleet.toml"
    config.write_text(f'[historian]\nurl = "sqlite://{tmp_path / "h.sqlite"}"\n')
    result = subprocess.run([BIN / "cm-fleet", "rollout", "create", unsigned, "--devices", "all", "--config", config],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "unsigned bundle (MANIFEST.json and MANIFEST.sig missing)" in result.stderr, result.stderr
