"""Per-snapshot cost of the edge path (features + int8 model + detector through edge.model.runtime), and the import
time and resident memory of a process that only scores: `python bench/bench_runtime.py [repeats] [BUNDLE]`.
The same per-snapshot figures with the pure-numpy interpreter (what 32-bit Pi OS runs), and how many of its
int8 outputs equal LiteRT's on the same inputs.

Numbers are printed, never asserted. Without a BUNDLE a small one is trained first (synthetic run, few epochs).
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from figures import figure

SNAPSHOTS = 200  # scored per repeat
DISTINCT = 8  # distinct snapshots, cycled: the agent scores a snapshot it has just assembled, still in cache
CHANNELS = 4
SAMPLES = 20_480

# The child process: import the edge runtime, load a bundle, score; report its own cost.
CHILD = r"""
import json, resource, sys, time
started = time.perf_counter()
import numpy as np
from edge.model.bundle import load_bundle
from edge.scoring.detector import Detector
from edge.model.features import snapshot_features
from edge.model.runtime import Model
imported = time.perf_counter() - started
bundle = load_bundle(sys.argv[1])
scorer = Model(bundle)
detector = Detector(bundle.card.detector)
counts = np.random.default_rng(0).normal(0, 80, (20480, len(bundle.card.feature_spec.channels))).astype(np.int16)
history = np.tile(snapshot_features(counts, 0.001), (scorer.window, 1))
detector.update(scorer.score(history).score)
ready = time.perf_counter() - started
status = {line.split(":")[0]: int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("Vm")}
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from a parent that may hold TensorFlow.
print(json.dumps({"import_s": imported, "ready_s": ready, "vmrss_mb": status["VmRSS"] / 1024, "vmhwm_mb": status["VmHWM"] / 1024, "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "modules_tensorflow": any(m.startswith("tensorflow") for m in sys.modules)}))
"""



def small_bundle(directory: Path) -> Path:
    """A bundle trained on a short synthetic run: the model's size and speed do not depend on the data."""
    from firmware_bridge.synth import generate
    from trainer.train import FitOptions, fit

    generate(directory / "run", files=60, fail_bearing=3, seed=0)
    return fit(directory / "run", FitOptions(out=directory / "bundle", epochs=5, train_fraction=0.5, verbose=0))


def snapshots(count: int) -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.normal(0, 80, (count, SAMPLES, CHANNELS)).astype(np.int16)


@contextlib.contextmanager
def interpreter(kind: str | None):
    """Scorers made inside use this interpreter (edge.model.runtime's CM_INTERPRETER); None: the default order."""
    from edge.model.runtime import INTERPRETER_ENV

    before = os.environ.pop(INTERPRETER_ENV, None)
    if kind:
        os.environ[INTERPRETER_ENV] = kind
    try:
        yield
    finally:
        os.environ.pop(INTERPRETER_ENV, None)
        if before is not None:
            os.environ[INTERPRETER_ENV] = before


def numpy_equals_litert(bundle_path: Path, count: int = 2000) -> dict:
    """Raw int8 outputs of the numpy interpreter against LiteRT's on the same random and saturating inputs."""
    from edge.model.bundle import load_bundle
    from edge.model.runtime import load_interpreter

    model = load_bundle(bundle_path).model_path
    interpreters = [load_interpreter(model, kind=kind) for kind in ("ai_edge_litert", "numpy")]
    (detail,) = interpreters[0].get_input_details()
    output = interpreters[0].get_output_details()[0]["index"]
    rng = np.random.default_rng(2)
    equal = 0
    for i in range(count):
        value = rng.integers(-128, 128, detail["shape"], dtype=np.int8) if i % 4 else np.full(detail["shape"], 127 if i % 8 else -128, np.int8)
        outputs = []
        for each in interpreters:
            each.set_tensor(detail["index"], value)
            each.invoke()
            outputs.append(each.get_tensor(output))
        equal += bool(np.array_equal(*outputs))
    return {"inputs": count, "equal": equal}


def per_snapshot_ms(bundle_path: Path, repeats: int) -> list[float]:
    from edge.model.bundle import load_bundle
    from edge.model.features import snapshot_features
    from edge.model.runtime import Model
    from edge.scoring.detector import Detector

    bundle = load_bundle(bundle_path)
    scorer = Model(bundle)
    detector = Detector(bundle.card.detector)
    data = snapshots(DISTINCT)
    history = np.zeros((scorer.window, CHANNELS))
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        for i in range(SNAPSHOTS):
            counts = data[i % DISTINCT]
            history[:-1] = history[1:]
            history[-1] = snapshot_features(counts, 0.001)
            detector.update(scorer.score(history).score)
        timings.append((time.perf_counter() - started) / SNAPSHOTS * 1000)
    return timings


def model_only_ms(bundle_path: Path, repeats: int) -> list[float]:
    from edge.model.bundle import load_bundle
    from edge.model.runtime import Model

    bundle = load_bundle(bundle_path)
    scorer = Model(bundle)
    history = np.tile(np.array(bundle.card.scaler.maximum), (scorer.window, 1))
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(SNAPSHOTS):
            scorer.score(history)
        timings.append((time.perf_counter() - started) / SNAPSHOTS * 1000)
    return timings


def child_costs(bundle_path: Path, repeats: int) -> list[dict]:
    return [
        json.loads(subprocess.run([sys.executable, "-c", CHILD, str(bundle_path)], capture_output=True, text=True,
                                  check=True).stdout.strip().splitlines()[-1])
        for _ in range(repeats)
    ]


def run(repeats: int = 5, bundle: Path | None = None) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-runtime-") as scratch:
        path = Path(bundle) if bundle else small_bundle(Path(scratch))
        children = child_costs(path, max(1, min(repeats, 5)))
        with interpreter("numpy"):
            numpy_figures = {
                "per_snapshot_features_model_detector_numpy": figure(per_snapshot_ms(path, repeats), "ms"),
                "per_snapshot_model_only_numpy": figure(model_only_ms(path, repeats), "ms"),
            }
        with interpreter(None):
            litert_figures = {
                "per_snapshot_features_model_detector": figure(per_snapshot_ms(path, repeats), "ms"),
                "per_snapshot_model_only": figure(model_only_ms(path, repeats), "ms"),
            }
        return {
            **litert_figures,
            **numpy_figures,
            "numpy_int8_outputs_equal_litert": numpy_equals_litert(path),
            "import_edge_runtime": figure([c["import_s"] for c in children], "s"),
            "import_load_first_score": figure([c["ready_s"] for c in children], "s"),
            "resident_memory_vmrss": figure([c["vmrss_mb"] for c in children], "MB"),
            "peak_resident_memory_vmhwm": figure([c["vmhwm_mb"] for c in children], "MB"),
            "model_int8_bytes": (path / "model_int8.tflite").stat().st_size,
            "tensorflow_imported": any(c["modules_tensorflow"] for c in children),
        }


def print_table(results: dict, title: str) -> None:
    print(f"{title}\n{'measure':42s} {'median':>10s} {'min':>10s} {'max':>10s}  unit")
    for name, value in results.items():
        if isinstance(value, dict) and "median" in value:
            print(f"{name:42s} {value['median']:10.4f} {value['min']:10.4f} {value['max']:10.4f}  {value['unit']}")
        else:
            print(f"{name:42s} {value!s:>10s}")


if __name__ == "__main__":
    print_table(run(int(sys.argv[1]) if len(sys.argv) > 1 else 5, Path(sys.argv[2]) if len(sys.argv) > 2 else None),
                "edge runtime (LiteRT, int8)")
