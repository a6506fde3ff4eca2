"""The time to roll a signed bundle out to 20 real agents, and the accounting of a HIL run: Mosquitto, `cm-fleet serve`
(its scheduler and ingest), `cm-fleet rollout create`, and 20 cm-edge processes, each reading its own pty that
cm-replay feeds as soon as its agent reports probation (tests/chain.py's chain, as in tests/test_fleet_rollout.py).

What each agent is fed raises alerts on both sides of the switch: healthy x2, bearing 3's sensor dropped out x3,
healthy x6 (the candidate's probation passes and it takes over), dropped out x3, healthy x3; one snapshot a file.

Waves: a 5% canary (one agent), then 2, 4, 8, 5. Printed: the whole rollout (create to every agent `active`),
each wave (its desired documents to its last `active`), median / min / max over --runs, and the bytes of the
bundle's archive. Timing is never asserted; the accounting is the HIL's verdict, printed per agent, and the
exit status is 1 when it fails for any agent: every alert the agent published (as a subscriber of its alert
topic saw them) is in the historian exactly once, its telemetry's snapshot indices there are contiguous across
the switch (no gap, no repeat, one per file fed), and it runs the new bundle.

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
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))  # the suite's Mosquitto, chain and cm-fleet service

from bench_agent import prepare  # noqa: E402
from broker import Mosquitto, Subscriber  # noqa: E402
from chain import BIN, Chain  # noqa: E402
from figures import figure, row  # noqa: E402
from fleet_helpers import FleetService  # noqa: E402
from waiting import eventually  # noqa: E402

from edge.model.store import pack  # noqa: E402
from firmware_bridge.ims import format_timestamp, list_ims_files  # noqa: E402
from fleet.config import HistorianConfig  # noqa: E402
from fleet.historian import Historian, open_historian  # noqa: E402
from fleet.signing import keygen, sign  # noqa: E402

# What each agent is fed: (healthy, dropped out) files in turn; the probation passes in the middle healthy stretch.
FEED = (("healthy", 2), ("dropout", 3), ("healthy", 6), ("dropout", 3), ("healthy", 3))
SETTLE_S = 60.0  # after the rollout, for the last telemetry and alerts to reach the historian


def write_feed(run_dir: Path, directory: Path) -> int:
    """FEED as links to the run's files, ten minutes apart: its first files are healthy, its last one has bearing 3's
    sensor dropped out (bench_agent.prepare makes it so). Returns the number of files."""
    files = list_ims_files(run_dir)
    directory.mkdir()
    moment, used = files[0].timestamp, Counter[str]()
    for kind, count in FEED:
        for _ in range(count):
            source = files[used[kind]] if kind == "healthy" else files[-1]
            used[kind] += 1
            (directory / format_timestamp(moment)).symlink_to(source.path)
            moment += timedelta(minutes=10)
    return sum(count for _, count in FEED)


@dataclass(frozen=True)
class Accounting:
    """One agent's HIL verdict."""

    device: str
    published: int  # alerts its alert topic carried (distinct ids)
    stored: int  # its alerts in the historian
    by_model: dict[str, int]  # stored alerts per model id: both sides of the switch
    telemetry: int
    shadowed: int  # telemetry records with the candidate's score (before the switch)
    problems: list[str]

    def line(self) -> str:
        models = ", ".join(f"{m} {n}" for m, n in sorted(self.by_model.items()))
        verdict = "ok" if not self.problems else "FAILED: " + "; ".join(self.problems)
        return (f"{self.device}: alerts published {self.published}, stored {self.stored} ({models}); telemetry "
                f"{self.telemetry} ({self.shadowed} in shadow); {verdict}")


def account(historian: Historian, subscriber: Subscriber, device: str, fed: int, new_id: str) -> Accounting:
    published = {json.loads(p)["id"] for p in subscriber.on(f"cm/{device}/alert")}
    stored = historian.read("SELECT id, model_id FROM alerts WHERE device_id = ?", (device,))
    ids = [i for i, _ in stored]
    snapshots = historian.read("SELECT snapshot, payload FROM telemetry WHERE device_id = ? ORDER BY time_us", (device,))
    indices = [int(n) for n, _ in snapshots]
    problems = []
    if not published:
        problems.append("no alert published: the feed's sensor dropouts raised none, nothing was accounted")
    if sorted(ids) != sorted(published) or len(ids) != len(set(ids)):
        problems.append(f"alerts published {sorted(published)} but stored {sorted(ids)}")
    if not indices or indices != list(range(indices[0], indices[0] + fed)):
        problems.append(f"telemetry snapshot indices {indices}, expected {fed} contiguous ones")
    report = json.loads(historian.read("SELECT model_json FROM machines WHERE device_id = ?", (device,))[0][0])
    if report["active"]["id"] != new_id:
        problems.append(f"active bundle {report['active']['id']}, expected {new_id}")
    return Accounting(device, len(published), len(ids), dict(Counter(str(m) for _, m in stored)), len(indices),
                      sum("candidate" in json.loads(p) for _, p in snapshots), problems)


def signed_copy(source: Path, target: Path, model_id: str, key: Path) -> Path:
    shutil.copytree(source, target)
    card = json.loads((target / "model_card.json").read_text())
    card["id"] = model_id
    (target / "model_card.json").write_text(json.dumps(card, indent=2))
    sign(target, key)
    return target


@dataclass(frozen=True)
class Run:
    total_s: float
    waves_s: list[float]
    archive_bytes: int
    accounting: list[Accounting]


def one_run(tmp: Path, run_dir: Path, bundle_dir: Path, agents: int, probation: int) -> Run:
    keys = keygen(tmp / "keys")
    old = signed_copy(bundle_dir, tmp / "old", "bench-old", keys.private)
    new = signed_copy(bundle_dir, tmp / "new", "bench-new", keys.private)
    feed = tmp / "feed"
    fed = write_feed(run_dir, feed)
    url = f"sqlite://{tmp / 'historian.sqlite'}"
    chains: dict[str, Chain] = {}
    replays: dict[str, subprocess.Popen] = {}
    with Mosquitto(tmp / "broker") as broker, Subscriber(broker.port, ["cm/+/alert"]) as subscriber:
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
                        replays[device] = subprocess.Popen(chains[device].replay_command(feed),
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
            assert all(replay.wait(120) == 0 for replay in replays.values()), "a cm-replay failed"
            eventually(lambda: all(len(historian.read("SELECT 1 FROM telemetry WHERE device_id = ?", (d,))) >= fed
                                   and len(historian.read("SELECT 1 FROM alerts WHERE device_id = ?", (d,)))
                                   >= len({json.loads(p)["id"] for p in subscriber.on(f"cm/{d}/alert")})
                                   for d in chains), SETTLE_S)
            accounting = [account(historian, subscriber, device, fed, "bench-new") for device in chains]
            return Run(total, [(int(last) - int(start)) / 1e6 for _, start, last in waves], len(pack(new)), accounting)
        finally:
            for chain in chains.values():
                chain.kill_agent()
            for replay in replays.values():
                replay.kill()
            historian.close()
            service.stop()


def main() -> tuple[dict, int]:
    """The figures, and the number of agents whose accounting failed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=20)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--probation-snapshots", type=int, default=3)
    args = parser.parse_args()
    run_dir, bundle_dir = prepare()
    totals: list[float] = []
    per_wave: dict[int, list[float]] = {}
    archives: list[float] = []
    failed = 0
    for number in range(1, args.runs + 1):
        with tempfile.TemporaryDirectory() as folder:
            run = one_run(Path(folder), run_dir, bundle_dir, args.agents, args.probation_snapshots)
        totals.append(run.total_s)
        archives.append(run.archive_bytes)
        for wave, seconds in enumerate(run.waves_s, start=1):
            per_wave.setdefault(wave, []).append(seconds)
        print(f"run {number}: accounting per agent", file=sys.stderr)
        for accounting in run.accounting:
            print(f"  {accounting.line()}", file=sys.stderr)
        failed += sum(bool(a.problems) for a in run.accounting)
    results = {f"rollout_{args.agents}_agents_s": figure(totals, "s (create to every agent active)")}
    results |= {f"wave_{n}_s": figure(s, "s (its desired documents to its last active)") for n, s in per_wave.items()}
    results["bundle_archive_bytes"] = figure(archives, "bytes (the retained archive, published once)")
    for name, value in results.items():
        print(row(name, value))
    verdict = "ok" if not failed else f"FAILED for {failed} agent(s) over {args.runs} run(s)"
    print(f"accounting (every alert once, telemetry contiguous, new bundle active): {verdict}")
    return results, failed


if __name__ == "__main__":
    sys.exit(1 if main()[1] else 0)
