"""Detection quality on runs to failure: does the alarm come early, name the right bearing, and never cry wolf?

Synthetic: cm-synth runs (several seeds, every bearing failing at least once), each trained on its first
third with `cm-train fit`'s defaults and scored with `cm-train evaluate`'s trace (edge.scoring.stream). Per run:
- the bearing named when the debounced alarm is first raised (must be the failing one);
- false episodes: warning or alarm episodes that start on a healthy snapshot (cm-synth's plan says which
  snapshots carry no defect signal at all);
- the alarm's delay after the failing bearing's feature leaves its healthy range for good (the range of
  that feature over the run's healthy snapshots, which include the slow wander after the training span;
  "for good": the snapshot after the last one inside it). Negative: the alarm came before.
Real: the IMS healthy sample (trained on its first 10 snapshots, all 12 scored: false episodes, margin on
the unseen ones); the FEMTO runs are in bench/bench_real.py (trained on the first 30%).
Labelled: make_blobs tables of several sizes and random states, F1 etc. on the held-out test split.

Numbers are printed as distributions (median, min, max); nothing here is asserted.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "bench" / "work" / "detection"
sys.path.insert(0, str(REPO / "bench"))

from figures import figure  # noqa: E402

from edge.model.bundle import load_bundle  # noqa: E402
from edge.scoring.detector import State  # noqa: E402
from firmware_bridge.synth import generate, plan_run  # noqa: E402

FILES = 150  # 25 h at 10 min: a third (50 snapshots, 8 h) to train on
RUNS = [(seed, bearing) for seed, bearing in zip(range(101, 113), [1, 2, 3, 4] * 3)]
TRAIN_FRACTION = 1 / 3


@dataclass(frozen=True)
class Outcome:
    name: str
    failing: str
    named: str | None
    false_episodes: int
    alarm_delay_h: float | None  # first alarm minus the failing feature's permanent exit from its healthy range
    lead_h: float | None  # last snapshot minus the first alarm
    margin: float | None


def episodes(states: list[State], rows: np.ndarray) -> int:
    """Warning or alarm episodes that start on one of `rows` (a boolean mask)."""
    count, raised = 0, False
    for row, state in enumerate(states):
        up = state in (State.WARNING, State.ALARM)
        if up and not raised and rows[row]:
            count += 1
        if state != State.SENSOR_FAULT:
            raised = up
    return count


def synthetic_run(seed: int, bearing: int) -> Outcome:
    from trainer.dataset import load_dataset
    from trainer.evaluate import run_detector
    from trainer.train import FitOptions, fit

    run_dir = WORK / f"run-{seed}-b{bearing}"
    if not run_dir.exists():
        generate(run_dir, files=FILES, fail_bearing=bearing, seed=seed)
    bundle_dir = WORK / f"bundle-{seed}-b{bearing}"
    with contextlib.redirect_stderr(io.StringIO()):
        fit(run_dir, FitOptions(out=bundle_dir, train_fraction=TRAIN_FRACTION, verbose=0))
        dataset = load_dataset(run_dir)
    bundle = load_bundle(bundle_dir)
    trace = run_detector(dataset, bundle)
    plan = plan_run(FILES, bearing, seed)
    healthy = plan.severity == 0
    channel = bearing - 1
    feature = dataset.features[:, channel]
    low, high = feature[healthy].min(), feature[healthy].max()
    inside = np.flatnonzero((feature >= low) & (feature <= high))
    exit_row = int(inside[-1]) + 1 if inside.size else 0
    alarms = [row for row, state in enumerate(trace.states) if state == State.ALARM]
    first = alarms[0] if alarms else None
    names = bundle.card.feature_spec.channels
    named = names[trace.top_channels[first]] if first is not None and trace.top_channels[first] is not None else None
    hours = 10 / 60
    return Outcome(
        name=f"seed {seed}, bearing {bearing}",
        failing=names[channel],
        named=named,
        false_episodes=episodes(trace.states, healthy),
        alarm_delay_h=None if first is None else (first - exit_row) * hours,
        lead_h=None if first is None else (FILES - 1 - first) * hours,
        margin=bundle.card.provenance.get("threshold_basis", {}).get("margin"),
    )


def ims_healthy() -> dict | None:
    """The real IMS sample (12 healthy snapshots): trained on the first 10 (the calibration floor), all 12
    scored. Healthy throughout, so every warning or alarm episode is a false one."""
    from trainer.dataset import DatasetSpec, load_dataset
    from trainer.evaluate import build_report, run_detector
    from trainer.train import FitOptions, fit

    source = Path(os.environ.get("CM_IMS_DATA", REPO.parent / "shared" / "data" / "ims")) / "1st_test"
    if not source.is_dir():
        return None
    bundle_dir = WORK / "ims-bundle"
    with contextlib.redirect_stderr(io.StringIO()):
        fit(source, FitOptions(out=bundle_dir, channels=(1, 3, 5, 7), train_fraction=10 / 12, verbose=0))
        dataset = load_dataset(source, DatasetSpec(channels=(1, 3, 5, 7)))
    bundle = load_bundle(bundle_dir)
    trace = run_detector(dataset, bundle)
    report = build_report(dataset, bundle, trace, None, None)
    return {"snapshots": len(dataset), "false_episodes": episodes(trace.states, np.ones(len(dataset), dtype=bool)),
            "alarm_threshold": bundle.card.alarm_threshold,
            "highest_score": float(np.nanmax(trace.scores)),
            "highest_unseen_score": float(np.nanmax(trace.scores[10:])),
            "margin_on_unseen": bundle.card.alarm_threshold / float(np.nanmax(trace.scores[10:])),
            "training_warnings": report["training_warnings"]}


BLOBS = [(500, 42), (500, 0), (300, 3), (1000, 7), (800, 11)]  # (n_samples, random_state); 500/42 is the issue's


def labelled_blobs() -> list[dict]:
    """make_blobs(n_features=15, centers=2, center_box=(-4, 4), cluster_std=1.75), class 1 = anomaly, as a table
    with a time column; cm-train fit --label-column with the default rule; the report's test-split metrics."""
    import pandas as pd
    from sklearn.datasets import make_blobs  # the dev extra

    from trainer.cli import main as cm_train

    results = []
    for samples, state in BLOBS:
        folder = WORK / f"blobs-{samples}-{state}"
        folder.mkdir(parents=True, exist_ok=True)
        features, labels = make_blobs(n_samples=samples, n_features=15, centers=2, center_box=(-4, 4),
                                      cluster_std=1.75, random_state=state)
        frame = pd.DataFrame(features, columns=[f"x{i}" for i in range(15)])
        frame.insert(0, "time", np.arange(samples))
        frame["label"] = labels
        frame.to_csv(folder / "blobs.csv", index=False)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            cm_train(["fit", str(folder / "blobs.csv"), "--out", str(folder / "bundle"), "--label-column", "label", "--quiet"])
            cm_train(["evaluate", str(folder / "bundle"), str(folder / "blobs.csv"), "--out", str(folder / "report")])
        report = json.loads((folder / "report" / "report.json").read_text())
        results.append({"n_samples": samples, "random_state": state, "test_rows": report["labelled_snapshots"]}
                       | {key: round(report[key], 4) for key in ("precision", "recall", "f1", "roc_auc")})
        print(f"  blobs {samples}/{state}: {results[-1]}", file=sys.stderr, flush=True)
    return results


def run() -> dict:
    WORK.mkdir(parents=True, exist_ok=True)
    outcomes = []
    for seed, bearing in RUNS:
        started = time.perf_counter()
        outcome = synthetic_run(seed, bearing)
        outcomes.append(outcome)
        print(f"  {outcome.name}: named {outcome.named} (failing {outcome.failing}), false episodes "
              f"{outcome.false_episodes}, alarm {outcome.alarm_delay_h} h after the exit, lead {outcome.lead_h} h, "
              f"margin {outcome.margin} ({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
    delays = [o.alarm_delay_h for o in outcomes if o.alarm_delay_h is not None]
    leads = [o.lead_h for o in outcomes if o.lead_h is not None]
    return {
        "synthetic": {
            "runs": len(outcomes),
            "named_the_failing_bearing": sum(o.named == o.failing for o in outcomes),
            "runs_with_an_alarm": sum(o.alarm_delay_h is not None for o in outcomes),
            "false_episodes_on_healthy_snapshots": sum(o.false_episodes for o in outcomes),
            "alarm_after_feature_exit": figure(delays, "h (<= 1 required)") if delays else None,
            "lead_time": figure(leads, "h to the last snapshot") if leads else None,
            "per_run": [o.__dict__ for o in outcomes],
        },
        "ims_healthy": ims_healthy(),
        "labelled_blobs": labelled_blobs(),
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2, default=str))
