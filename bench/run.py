"""make bench: every benchmark of the project in one run, written to bench/results.json and printed.

Each figure is the median of repeated runs with min and max. Speed and memory are measured here, never
asserted in tests. The seeds' deployment path (Keras model.predict on full TensorFlow) is measured on the
same snapshots, side by side, with the ratios against ours.
"""
from __future__ import annotations

import json
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_agent  # noqa: E402
import bench_bridge  # noqa: E402
import bench_detection  # noqa: E402
import bench_features  # noqa: E402
import bench_ims  # noqa: E402
import bench_outbox  # noqa: E402
import bench_runtime  # noqa: E402
import bench_seed  # noqa: E402
from figures import row  # noqa: E402


def figures(tree: dict, prefix: str = "") -> dict[str, dict]:
    """Every {median, min, max} figure in a nested result, by dotted name."""
    found = {}
    for key, value in tree.items():
        if isinstance(value, dict) and "median" in value:
            found[prefix + key] = value
        elif isinstance(value, dict):
            found |= figures(value, f"{prefix}{key}.")
    return found


def ratios(flat: dict[str, dict]) -> dict[str, float]:
    """The seeds' path against ours, where both measured the same thing (seed / ours: >1 means we are better)."""
    pairs = {
        "time per snapshot": ("seed.per_snapshot_features_predict", "agent.pipeline_ms_per_snapshot"),
        "import time": ("seed.import_tensorflow_keras", "runtime.import_edge_runtime"),
        "resident memory": ("seed.resident_memory_vmrss", "runtime.resident_memory_vmrss"),
    }
    return {name: flat[theirs]["median"] / flat[ours]["median"]
            for name, (theirs, ours) in pairs.items() if theirs in flat and ours in flat and flat[ours]["median"]}


def main() -> int:
    results = {"when": datetime.now(UTC).isoformat(timespec="seconds"), "machine": platform.platform(),
               "python": platform.python_version()}
    _, bundle = bench_agent.prepare()  # one synthetic run and bundle serve every suite that scores
    suites = {"bridge": bench_bridge.run, "ims": bench_ims.run, "features": bench_features.run, "runtime": lambda: bench_runtime.run(bundle=bundle),
              "agent": bench_agent.run, "outbox": bench_outbox.run, "seed": bench_seed.run,
              "detection": bench_detection.run}
    for name, suite in suites.items():
        print(f"running {name} ...", file=sys.stderr, flush=True)
        results[name] = suite()
    flat = figures(results)
    results["seed_over_ours"] = ratios(flat)
    (HERE / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"{'figure':<48} {'median':>12} {'min':>12} {'max':>12}  unit")
    for name, value in flat.items():
        print(row(name, value))
    for name, ratio in results["seed_over_ours"].items():
        print(f"seeds' path / ours, {name}: {ratio:.1f}x")
    agreement = results["runtime"]["numpy_int8_outputs_equal_litert"]
    print(f"numpy interpreter: int8 outputs equal LiteRT's on {agreement['equal']} of {agreement['inputs']} inputs")
    print(f"written to {HERE / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
