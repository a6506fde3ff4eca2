"""The time to roll a signed bundle out to 20 real agents: Mosquitto, `cm-fleet serve` (its scheduler and ingest),
`cm-fleet rollout create`, and 20 cm-edge processes, each reading its own pty that cm-replay feeds healthy data
into as soon as its agent reports probation (tests/chain.py's chain, as in tests/test_fleet_rollout.py).

Waves: a 5% canary (one agent), then 2, 4, 8, 5. Printed: the whole rollout (create to every agent `active`)
and each wave (its desired documents to its last `active`), median / min / max over --runs; nothing asserted.

    .venv/bin/python bench/bench_fleet_rollout.py [--agents 20] [--runs 1] [--probation-snapshots 3]
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))  # the suite's Mosquitto, chain and cm-fleet service

from bench_agent import prepare  # noqa: E402
from broker import Mosquitto  # noqa: E402
from chain import BIN, Chain  # noqa: E402
from figures import figure, row  # noqa: E402
from fleet_helpers import FleetService  # noqa: E402
from waiting import eventually  # noqa: E402

from firmware_bridge.ims import list_ims_files  # noqa: E402
from fleet.config import HistorianConfig  # noqa: E402
from fleet.historian import open_historian  # noqa: E402
from fleet.signing import keygen, sign  # noqa: E402

HEALTHY = 12  # files from the start of the run: the candidate's window fills, then its probation


def signed_copy(source: Path, target: Path, model_id: str, key: Path) -> Path:
    shutil.copytree(source, target)
    card = json.loads((target / "model_card.json").read_text())
    card["id"] = model_id
    (target / "model_card.json").write_text(json.dumps(card, indent=2))
    sign(target, key)
    return target


def one_run(tmp: Path, run_dir: Path, bundle_dir: Path, agents: int, probation: int) -> tuple[float, list[float]]:
    keys = keygen(tmp / "keys")
    old = signed_copy(bundle_dir, tmp / "old", "bench-old", keys.private)
    new = signed_copy(bundle_dir, tmp / "new", "bench-new", keys.private)
    healthy = tmp / "healthy"
    healthy.mkdir()
    for file in list_ims_files(run_dir)[:HEALTHY]:
        (healthy / file.path.name).symlink_to(file.path)
    url = f"sqlite://{tmp / 'historian.sqlite'}"
    chains: dict[str, Chain] = {}
    replays: dict[str, subprocess.Popen] = {}
    with Mosquitto(tmp / "broker") as broker:
        (tmp / "fleet").mkdir()
        service = FleetService(tmp / "fleet", broker.port, url).start()
        historian = open_historian(HistorianConfig(url=url))
        try:
            for i in range(agents):
                chain = Chain(tmp / f"agent-{i:02d}", broker, old, device=f"pump-{i:02d}")
                chain.config.write_text(chain.config.read_text().replace(
                    "[model]\n", f'[model]\ntrusted_keys = ["{keys.public}"]\n'))
                chain.start_agent()
                chains[f"pump-{i:02d}"] = chain
            assert eventually(lambda: len(historian.read("SELECT 1 FROM machines WHERE model_json IS NOT NULL")) == agents,
                              180), "not every agent reported"
            started = time.monotonic()
            created = subprocess.run([BIN / "cm-fleet", "rollout", "create", new, "--devices", "all", "--canary", "5%",
                                      "--probation-snapshots", str(probation), "--config", service.config],
                                     capture_output=True, text=True, timeout=60, check=True)
            rollout_id = created.stdout.split(":")[0].removeprefix("rollout ")

            def progress() -> bool:
                for device, status in historian.read("SELECT device_id, status FROM rollout_devices WHERE rollout_id = ?",
                                                     (rollout_id,)):
                    if status == "probation" and device not in replays:
                        replays[device] = subprocess.Popen(chains[device].replay_command(healthy),
                                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                return historian.read("SELECT state FROM rollouts WHERE id = ?", (rollout_id,))[0][0] != "running"

            assert eventually(progress, 900), "the rollout did not finish"
            total = time.monotonic() - started
            state = historian.read("SELECT state, reason FROM rollouts WHERE id = ?", (rollout_id,))[0]
            print(f"rollout {rollout_id}: {state[0]} ({state[1]})", file=sys.stderr)
            waves = historian.read(
                "SELECT w.number, w.started_us, MAX(d.report_us) FROM rollout_waves w JOIN rollout_devices d "
                "ON d.rollout_id = w.rollout_id AND d.wave = w.number WHERE w.rollout_id = ? GROUP BY w.number, w.started_us "
                "ORDER BY w.number", (rollout_id,))
            return total, [(int(last) - int(start)) / 1e6 for _, start, last in waves]
        finally:
            for chain in chains.values():
                chain.kill_agent()
            for replay in replays.values():
                replay.kill()
            historian.close()
            service.stop()


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=20)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--probation-snapshots", type=int, default=3)
    args = parser.parse_args()
    run_dir, bundle_dir = prepare()
    totals: list[float] = []
    per_wave: dict[int, list[float]] = {}
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory() as folder:
            total, waves = one_run(Path(folder), run_dir, bundle_dir, args.agents, args.probation_snapshots)
        totals.append(total)
        for number, seconds in enumerate(waves, start=1):
            per_wave.setdefault(number, []).append(seconds)
    results = {f"rollout_{args.agents}_agents_s": figure(totals, "s (create to every agent active)")}
    results |= {f"wave_{n}_s": figure(s, "s (its desired documents to its last active)") for n, s in per_wave.items()}
    for name, value in results.items():
        print(row(name, value))
    return results


if __name__ == "__main__":
    main()
