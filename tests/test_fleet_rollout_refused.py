"""Bad bundles stop at the canary wave, with real parts (tests/rollout_fleet.py: Mosquitto, `cm-fleet serve`,
`cm-fleet rollout ...`, four real agents): a bundle whose model file was changed after it was signed, and one
whose card fits another channel count. The canary wave holds two devices (50% of four): each canary refuses the
bundle and says why (its retained report on cm/<device>/model, and `cm-fleet rollout status --json`), the rollout
halts after the canary wave, and the two others never receive a desired document and still run their old model.

One fleet for the module: the cases run in turn over the same agents (the canaries, pump-0 and pump-1, refuse
each bundle and keep their old one, so nothing needs resetting but aborting the halted rollout).
(The untrusted key's case is tests/test_fleet_rollout.py's, with a canary of one.)
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from rollout_fleet import Fleet, created_id, flip_a_bit, running_fleet, signed_variant, three_channels
from waiting import eventually

from edge.model.store import archive_sha256, pack
from fleet.signing import KeyPair, keygen

pytestmark = pytest.mark.slow
AGENTS = 4
CANARIES = ["pump-0", "pump-1"]  # --canary 50% of the four, in the order of their ids
OTHERS = ["pump-2", "pump-3"]


@pytest.fixture(scope="module")
def trusted(tmp_path_factory: pytest.TempPathFactory) -> KeyPair:
    return keygen(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def fleet(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, trusted: KeyPair) -> Iterator[Fleet]:
    with running_fleet(request, tmp_path_factory.mktemp("fleet"), trusted, AGENTS) as running:
        yield running


def tamper(bundle: Path) -> None:
    """The model file changed after the signature, and the card's model_sha256 made to match it (as someone who
    knows the card would): the bundle loads, only the signed manifest tells."""
    flip_a_bit(bundle)
    card = json.loads((bundle / "model_card.json").read_text())
    card["model_sha256"] = hashlib.sha256((bundle / "model_int8.tflite").read_bytes()).hexdigest()
    (bundle / "model_card.json").write_text(json.dumps(card, indent=2))


def unchanged(card: dict) -> None:
    pass


def untouched(bundle: Path) -> None:
    pass


CASES: dict[str, tuple[Callable[[dict], None], Callable[[Path], None], str]] = {
    "tampered": (unchanged, tamper, "the file was changed after signing"),
    "incompatible": (three_channels, untouched, "feature_spec.channels is"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_bundle_is_refused_by_every_canary_and_halts_the_rollout(fleet, trusted, tmp_path, case):
    card, after, reason = CASES[case]
    bundle = signed_variant(tmp_path, f"{case}-model", trusted, card=card, after=after)
    sha = archive_sha256(pack(bundle))
    # No --trusted-key: the fleet would refuse the tampered bundle itself; here the agents are the last line.
    rollout_id = created_id(fleet.cli("create", bundle, "--devices", "all", "--canary", "50%", "--wave-wait", "1s",
                                      "--max-failed", "10%", "--probation-snapshots", "3"))
    assert eventually(lambda: fleet.state(rollout_id) == "halted", 60), (fleet.devices(rollout_id), fleet.service.read_log())
    # The rollout halts at the first refusal; the other canary's refusal still arrives and is recorded.
    assert eventually(lambda: all(fleet.devices(rollout_id)[d] == "rejected" for d in CANARIES), 30), \
        (fleet.devices(rollout_id), [fleet.agents[d].agent_log() for d in CANARIES])

    for device in CANARIES:  # said on the device's own retained report ...
        report = fleet.reports(device)[-1]
        assert report["rollout"]["rollout"] == rollout_id and report["rollout"]["status"] == "rejected", report
        assert report["rollout"]["bundle"] == sha and reason in report["rollout"]["reason"], report
        assert report["active"]["id"] == "old-model" and report["candidate"] is None, report
    status = fleet.cli("status", rollout_id, "--json")  # ... and by the fleet, with the reason
    assert status.returncode == 0, status.stderr
    detail = json.loads(status.stdout)
    assert detail["rollout"]["state"] == "halted" and "devices reached failed" in detail["rollout"]["reason"]
    by_device = {d["device_id"]: d for d in detail["devices"]}
    for device in CANARIES:
        assert by_device[device]["wave"] == 1 and by_device[device]["status"] == "rejected"
        assert reason in by_device[device]["reason"], by_device[device]
    assert [w["started_us"] is not None for w in detail["waves"]] == [True, False]

    # The others: never sent anything, still on their old model, no rollout in their reports.
    assert eventually(lambda: fleet.service.read_log().count(f"rollout {rollout_id} halted") == 1, 10)
    for device in OTHERS:
        assert by_device[device]["status"] == "queued" and by_device[device]["sent_us"] is None
        assert fleet.subscriber.on(f"cm/_fleet/desired/{device}") == []
        report = fleet.reports(device)[-1]
        assert report["active"]["id"] == "old-model" and report["rollout"] is None, report
    assert fleet.cli("abort", rollout_id).returncode == 0  # the next case starts from no open rollout
    for chain in fleet.agents.values():
        assert chain.agent is not None and chain.agent.poll() is None, chain.agent_log()


def test_the_fleet_refuses_a_tampered_bundle_itself_when_it_can_tell(fleet, trusted, tmp_path):
    """A model file that no longer matches its card, or (given --trusted-key) its signed manifest: never sent."""
    naive = signed_variant(tmp_path, "naive", trusted, after=flip_a_bit)
    result = fleet.cli("create", naive, "--devices", "all")
    assert result.returncode == 2 and "model_int8.tflite: sha256 mismatch" in result.stderr, result.stderr
    careful = signed_variant(tmp_path, "careful", trusted, after=tamper)
    result = fleet.cli("create", careful, "--devices", "all", "--trusted-key", trusted.public)
    assert result.returncode == 2 and "sha256" in result.stderr, result.stderr
    assert fleet.historian.read("SELECT id FROM rollouts WHERE bundle_id IN ('naive', 'careful')") == []
