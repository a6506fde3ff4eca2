"""The seeds' deployment path on the same snapshots as bench_runtime: full TensorFlow, a Keras model of the
same topology (Conv1D 16-4-4-16, input (1, 4)), `model.predict` one snapshot at a time.
`python bench/bench_seed.py [repeats]` prints a table; numbers are never asserted.

Each repeat is a fresh process, so import time and resident memory are those of a deployment that starts.
"""
from __future__ import annotations

import json
import subprocess
import sys

from bench_runtime import print_table
from figures import figure

SNAPSHOTS = 40  # per process: model.predict is slow enough that a few dozen give a stable median

CHILD = r"""
import json, resource, sys, time
started = time.perf_counter()
import numpy as np
import tensorflow as tf
import keras
from keras import layers
imported = time.perf_counter() - started
model = keras.Sequential([keras.Input(shape=(1, 4)),
    layers.Conv1D(16, 4, padding="same", activation="relu"), layers.Conv1D(4, 4, padding="same", activation="relu"),
    layers.Conv1D(4, 4, padding="same", activation="relu"), layers.Conv1D(16, 4, padding="same", activation="relu"),
    layers.TimeDistributed(layers.Dense(4))])
model.compile(optimizer="adam", loss="mae")
rng = np.random.default_rng(1)
data = rng.normal(0, 80, (8, 20480, 4)).astype(np.int16)
low, high = np.full(4, 0.05), np.full(4, 0.1)
def score(counts):
    # The seeds: mean absolute g per bearing, min-max scaled, predict, mean absolute error.
    features = np.mean(np.abs(counts * 0.001), axis=0)
    x = ((features - low) / (high - low)).reshape(1, 1, 4)
    return float(np.mean(np.abs(model.predict(x, verbose=0) - x)))
score(data[0])
ready = time.perf_counter() - started
timings = []
for i in range(int(sys.argv[1])):
    t = time.perf_counter()
    score(data[i % 8])
    timings.append((time.perf_counter() - t) * 1000)
status = {line.split(":")[0]: int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("Vm")}
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from a parent that may hold TensorFlow.
print(json.dumps({"import_s": imported, "ready_s": ready, "per_snapshot_ms": sorted(timings)[len(timings) // 2],
                  "vmrss_mb": status["VmRSS"] / 1024, "vmhwm_mb": status["VmHWM"] / 1024, "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run(repeats: int = 3) -> dict:
    children = []
    for _ in range(repeats):
        result = subprocess.run([sys.executable, "-c", CHILD, str(SNAPSHOTS)], capture_output=True, text=True, check=True)
        children.append(json.loads(result.stdout.strip().splitlines()[-1]))
    return {
        "per_snapshot_features_predict": figure([c["per_snapshot_ms"] for c in children], "ms"),
        "import_tensorflow_keras": figure([c["import_s"] for c in children], "s"),
        "import_build_first_score": figure([c["ready_s"] for c in children], "s"),
        "resident_memory_vmrss": figure([c["vmrss_mb"] for c in children], "MB"),
        "peak_resident_memory_vmhwm": figure([c["vmhwm_mb"] for c in children], "MB"),
    }


if __name__ == "__main__":
    print_table(run(int(sys.argv[1]) if len(sys.argv) > 1 else 3), "seeds' path (Keras model.predict, full TensorFlow)")
