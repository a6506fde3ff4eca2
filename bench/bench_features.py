"""Feature sets and recording importers: `python bench/bench_features.py [repeats]`.

- per-snapshot time of the vibration set on 20,480 x 4 (IMS-like, 20 kHz) and 2,560 x 2 (FEMTO, 25.6 kHz);
  goal <= 2 ms for 20,480 x 4 on the team's 2-core machines;
- the mean_abs set on the same snapshots (the original contract: it must not get slower);
- importers' throughput (snapshots/s): FEMTO CSV, MATLAB (CWRU), generic CSV and NPY folders, IMS for
  reference; on the real data in ../shared/data where present, synthetic files otherwise.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from figures import figure

from edge.model.bearing import PRESETS
from edge.model.features import FeatureConfig, FeatureExtractor, mean_abs
from firmware_bridge.recording import RecordingSpec, open_recording

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("CM_SHARED_DATA", REPO.parent / "shared" / "data"))
CASES = {  # name: (samples, channels, sample rate, bearing, shaft rpm)
    "20480x4": (20_480, 4, 20_000, "za-2115", 2000.0),
    "2560x2": (2_560, 2, 25_600, "pronostia", 1800.0),
}


def _per_call_ms(action: Callable[[], object], calls: int, repeats: int) -> list[float]:
    """Median-friendly samples: each repeat times `calls` calls and reports ms per call."""
    action()  # warm-up: plans, FFT twiddles, caches
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(calls):
            action()
        samples.append((time.perf_counter() - started) / calls * 1000)
    return samples


def _snapshots_per_s(open_it: Callable[[], object], repeats: int) -> list[float]:
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        recording = open_it()
        count = sum(1 for _ in recording.snapshots())  # type: ignore[attr-defined]
        rates.append(count / (time.perf_counter() - started))
    return rates


def features(repeats: int) -> dict:
    results = {}
    for name, (samples, channels, rate, bearing, rpm) in CASES.items():
        counts = np.random.default_rng(0).normal(0, 300, (samples, channels)).round().astype(np.int16)
        vibration = FeatureExtractor(FeatureConfig("vibration", rate, PRESETS[bearing], rpm))
        calls = 50 if samples > 10_000 else 200
        default = FeatureExtractor()  # the agent's path for a mean_abs card
        timed = {"vibration": (vibration, calls), "mean_abs": (mean_abs, calls * 4), "mean_abs_extractor": (default, calls * 4)}
        for label, (compute, count) in timed.items():
            results[f"{label}_{name}"] = figure(
                _per_call_ms(lambda compute=compute, counts=counts: compute(counts, 0.001), count, repeats), "ms")
    return results


def importers(repeats: int) -> dict:
    results: dict = {"sources": {}}
    with tempfile.TemporaryDirectory(prefix="bench-import-") as scratch:
        folder = Path(scratch)
        rng = np.random.default_rng(1)
        csv_dir, npy_dir = folder / "csv", folder / "npy"
        csv_dir.mkdir()
        npy_dir.mkdir()
        for i in range(20):
            values = np.round(rng.normal(0, 0.5, (20_480, 4)), 3)
            np.savetxt(csv_dir / f"{i:03d}.csv", values, fmt="%.3f", delimiter=",")
            np.save(npy_dir / f"{i:03d}.npy", values)
        sources: dict[str, Callable[[], object]] = {
            "csv_20480x4": lambda: open_recording(csv_dir, RecordingSpec(format="csv", sample_rate_hz=20_000)),
            "npy_20480x4": lambda: open_recording(npy_dir, RecordingSpec(format="csv", sample_rate_hz=20_000)),
        }
        femto = DATA / "femto" / "Bearing3_1"
        if femto.is_dir():
            subset = folder / "femto"
            subset.mkdir()
            for path in sorted(femto.glob("acc_*.csv"))[:100]:
                (subset / path.name).symlink_to(path)
            sources["femto_2560x2"] = lambda: open_recording(subset)
        cwru = DATA / "cwru" / "normal_0_97.mat"
        if cwru.is_file():
            sources["mat_16384x2"] = lambda: open_recording(cwru, RecordingSpec(sample_rate_hz=48_000, snapshot_samples=16_384))
        ims = DATA / "ims" / "1st_test"
        if ims.is_dir():
            sources["ims_20480x8"] = lambda: open_recording(ims)
        for name, open_it in sources.items():
            results[f"import_{name}"] = figure(_snapshots_per_s(open_it, repeats), "snapshots/s")
            results["sources"][name] = "real" if name.split("_")[0] in ("femto", "mat", "ims") else "synthetic"
    return results


def run(repeats: int = 5) -> dict:
    return {**features(repeats), **importers(max(2, repeats // 2))}


def main() -> None:
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    results = run(repeats)
    print(f"{'figure':<32}{'median':>10}{'min':>10}{'max':>10}  unit")
    for name, value in results.items():
        if isinstance(value, dict) and "median" in value:
            print(f"{name:<32}{value['median']:>10.3f}{value['min']:>10.3f}{value['max']:>10.3f}  {value['unit']}")


if __name__ == "__main__":
    main()
