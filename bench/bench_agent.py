"""Benchmarks of the agent: the per-snapshot pipeline in process, and cm-edge as a user runs it (start-up
time to the first scored snapshot, resident memory, end-to-end latency from the last frame of a snapshot to
its telemetry and alerts at an MQTT subscriber through a real Mosquitto).

Both hops run without Nagle's algorithm, as deployed: the agent sets TCP_NODELAY on its connection and the
broker runs with `set_tcp_nodelay true` (deploy/mosquitto/cm.conf). A snapshot is two small publishes back
to back (state, then telemetry; an alert before them at a transition), and with Nagle on either hop the
second waits for the first's TCP acknowledgement (telemetry, 2 x 140 snapshots on a busy 2-core machine:
10.0 ms median with Nagle on both hops, 10.6 with TCP_NODELAY on the agent only, 13.6 on the broker only,
3.4 with neither; minimum 2.1-2.3 ms in every case).
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the test suite's Mosquitto launcher and subscriber

from broker import HOST, Mosquitto, Subscriber  # noqa: E402
from figures import figure, row  # noqa: E402

from edge.ingest.snapshot import Snapshot  # noqa: E402
from edge.model.bundle import load_bundle  # noqa: E402
from edge.scoring.pipeline import Pipeline  # noqa: E402
from firmware_bridge.ims import IMS_SAMPLE_RATE, IMS_SCALE, list_ims_files, read_counts  # noqa: E402
from firmware_bridge.replay import PtyPort, frames_for_file  # noqa: E402
from firmware_bridge.synth import generate  # noqa: E402

WORK = REPO / "bench" / "work"
BROKER = f"listener {{port}} {HOST}\nallow_anonymous true\nset_tcp_nodelay true\n"  # as deploy/mosquitto/cm.conf
FILES = 140
BIN = Path(sys.executable).parent


def prepare() -> tuple[Path, Path]:
    """A synthetic run to failure and a bundle fitted on its healthy half (kept between bench runs)."""
    run_dir, bundle = WORK / "run", WORK / "bundle"
    if not run_dir.exists():
        generate(run_dir, files=FILES, fail_bearing=3, seed=11, dropout_at_end=True)
    if not (bundle / "model_card.json").exists():
        subprocess.run([BIN / "cm-train", "fit", run_dir, "--out", bundle, "--train-fraction", "0.5", "--seed", "0"],
                       check=True, stdout=subprocess.DEVNULL)
    return run_dir, bundle


def pipeline_time(run_dir: Path, bundle_dir: Path, repeats: int) -> dict:
    bundle = load_bundle(bundle_dir)
    counts = [read_counts(f.path) for f in list_ims_files(run_dir)]
    per_snapshot: list[float] = []
    for _ in range(repeats):
        pipeline = Pipeline(bundle, bundle.card.detector)
        for index, snapshot_counts in enumerate(counts):
            snapshot = Snapshot(index, index * len(snapshot_counts), index * 600_000_000, IMS_SAMPLE_RATE,
                                IMS_SCALE, snapshot_counts)
            started = time.perf_counter_ns()
            pipeline.process(snapshot)
            per_snapshot.append((time.perf_counter_ns() - started) / 1e6)
    return {"pipeline_ms_per_snapshot": figure(per_snapshot, "ms (20,480 x 4 samples: checks, features, model, detector)")}


def _config(tmp: Path, broker: Mosquitto, bundle: Path, tty: Path) -> Path:
    path = tmp / "edge.toml"
    path.write_text(f'device_id = "bench"\n[serial]\nport = "{tty}"\n[model]\nbundle = "{bundle}"\n'
                    f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\n[outbox]\npath = "{tmp / "outbox.sqlite"}"\n')
    return path


def _rss_mb(pid: int) -> tuple[float, float]:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def live_agent(run_dir: Path, bundle: Path) -> dict:
    """One agent run: snapshots written one at a time, each waited for at the subscriber."""
    files = list_ims_files(run_dir)
    window = load_bundle(bundle).card.feature_spec.window
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(scratch)
        with Mosquitto(tmp / "broker", config=BROKER) as broker, Subscriber(broker.port, "cm/bench/#") as subscriber:
            tty = tmp / "tty"
            port = PtyPort(tty)
            started = time.monotonic()
            agent = subprocess.Popen([BIN / "cm-edge", "--config", _config(tmp, broker, bundle, tty)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                assert port.wait_for_reader()
                # Telemetry is QoS 0 and not kept while offline: the sensor starts once the agent is online.
                assert subscriber.wait_for(lambda s: s.on("cm/bench/status")[-1:] == [b"online"], 30)
                sent_at: dict[int, float] = {}
                sample = sequence = 0
                for index, ims in enumerate(files):
                    counts = read_counts(ims.path)
                    wire = list(frames_for_file(counts, first_sample=sample, sequence=sequence,
                                                capture_time_us=int(ims.timestamp.timestamp() * 1e6),
                                                sample_rate_hz=IMS_SAMPLE_RATE, scale=IMS_SCALE, frame_samples=256))
                    port.write(b"".join(wire))
                    sent_at[index] = time.monotonic()
                    sample, sequence = sample + len(counts), sequence + len(wire)
                    expected = index + 1
                    assert subscriber.wait_for(lambda s: len(s.on("cm/bench/telemetry")) >= expected, 30)
                    if index == window - 1:
                        startup = time.monotonic() - started
                rss, peak = _rss_mb(agent.pid)
            finally:
                agent.send_signal(signal.SIGTERM)
                agent.wait(20)
                port.close()
        telemetry = [(m, json.loads(m.payload)) for m in subscriber.messages if m.topic.endswith("/telemetry")]
    arrival = {m.payload: t for m, t in zip(subscriber.messages, subscriber.arrivals)}
    by_time = {json.loads(m.payload)["timestamp"]: i for i, (m, _) in enumerate(telemetry)}
    latencies = [(arrival[m.payload] - sent_at[i]) * 1000 for i, (m, _) in enumerate(telemetry)]
    alert_latencies = [(arrival[m.payload] - sent_at[by_time[json.loads(m.payload)["timestamp"]]]) * 1000
                       for m in subscriber.messages if m.topic.endswith("/alert")]
    return {"startup_s": startup, "rss_mb": rss, "peak_rss_mb": peak, "telemetry_ms": latencies,
            "alert_ms": alert_latencies}


def run(repeats: int = 3) -> dict:
    run_dir, bundle = prepare()
    results = pipeline_time(run_dir, bundle, repeats)
    runs = [live_agent(run_dir, bundle) for _ in range(repeats)]
    results |= {
        "agent_startup_s": figure([r["startup_s"] for r in runs], "s from process start to the first scored snapshot"),
        "agent_rss_mb": figure([r["rss_mb"] for r in runs], "MB resident after the run"),
        "agent_peak_rss_mb": figure([r["peak_rss_mb"] for r in runs], "MB peak resident"),
        "telemetry_latency_ms": figure([x for r in runs for x in r["telemetry_ms"]],
                                       "ms last frame written -> telemetry at the subscriber"),
        "alert_latency_ms": figure([x for r in runs for x in r["alert_ms"]],
                                   "ms last frame written -> alert at the subscriber"),
    }
    return results


def main() -> None:
    for name, value in run().items():
        print(row(name, value))


if __name__ == "__main__":
    main()
