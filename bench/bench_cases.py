"""Detection across many cases: false alarms per healthy machine-day first, then lead time and the bearing named.

    .venv/bin/python bench/bench_cases.py --quick          # the issue-22 case and a handful more (~10 fits)
    .venv/bin/python bench/bench_cases.py                  # the sweep: seeds x failing bearing x training span
    .venv/bin/python bench/bench_cases.py --out FILE.json  # default bench/cases_results.json

Each case is a cm-synth run (10-minute cadence) trained with `cm-train fit`'s defaults on its first N files
(--train-until the N-th file's time) and scored with `cm-train evaluate`'s trace. Per case:
- false episodes: warning and alarm episodes that start on a snapshot after the training span that carries no
  defect signal (the generator's plan), and those same snapshots counted as healthy machine-days;
- lead: the last snapshot minus the first alarm (hours), and the bearing named at the first alarm.
The primary figure is false alarm episodes per healthy machine-day over all cases. Numbers are reported, never
asserted. Seeds come from SEEDS; HELD_OUT_SEEDS are kept for a leave-one-out check of any detector change and
are not run here.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
WORK = REPO / "bench" / "work" / "cases"

from edge.model.bundle import load_bundle  # noqa: E402
from edge.scoring.detector import State  # noqa: E402
from firmware_bridge.synth import generate, plan_run  # noqa: E402

INTERVAL_MIN = 10
ISSUE_CASE = (2207, 3, 40, 120)  # issue 22: 120 files, bearing 3 failing, a seed no test uses, trained on 40
SEEDS = tuple(range(3001, 3026))  # 25 seeds x 4 bearings x spans: over 100 runs
HELD_OUT_SEEDS = tuple(range(9001, 9021))  # for leave-one-out of a detector change: never looked at here
SPANS = (20, 40, 80, 200)  # training files
QUICK = [ISSUE_CASE, (3001, 1, 40, 120), (3002, 2, 40, 120), (3003, 4, 40, 120), (3004, 3, 20, 120),
         (3005, 1, 20, 120), (3006, 2, 80, 160), (3007, 4, 80, 160)]


@dataclass(frozen=True)
class Case:
    seed: int
    bearing: int
    train_files: int
    files: int
    false_warning_episodes: int
    false_alarm_episodes: int
    healthy_days: float  # healthy snapshots after the training span, in machine-days
    named_at_first_alarm: str | None
    failing: str
    lead_h: float | None
    first_false_alarm_h_after_training: float | None
    training_warnings: list[str]


def raised_episodes(states: list[State], rows: np.ndarray, raised_states: frozenset[State]) -> list[int]:
    """Rows where an episode of `raised_states` starts on one of `rows` (a boolean mask)."""
    starts, up_before = [], False
    for row, state in enumerate(states):
        up = state in raised_states
        if up and not up_before and rows[row]:
            starts.append(row)
        if state != State.SENSOR_FAULT:
            up_before = up
    return starts


def one_case(seed: int, bearing: int, train_files: int, files: int) -> Case:
    from trainer.dataset import load_dataset
    from trainer.evaluate import run_detector
    from trainer.train import FitOptions, fit

    run_dir = WORK / f"run-{seed}-b{bearing}-{files}"
    if not run_dir.exists():
        generate(run_dir, files=files, fail_bearing=bearing, seed=seed)
    dataset = load_dataset(run_dir)
    until = dataset.timestamps[train_files - 1]
    bundle_dir = WORK / f"bundle-{seed}-b{bearing}-{files}-{train_files}"
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        fit(run_dir, FitOptions(out=bundle_dir, train_until=until, verbose=0))
    bundle = load_bundle(bundle_dir)
    trace = run_detector(dataset, bundle)
    healthy = plan_run(files, bearing, seed).severity == 0
    after = healthy & (np.arange(files) >= train_files)
    warnings = raised_episodes(trace.states, after, frozenset({State.WARNING, State.ALARM}))
    alarms = raised_episodes(trace.states, after, frozenset({State.ALARM}))
    alarm_rows = [row for row, state in enumerate(trace.states) if state == State.ALARM]
    first = alarm_rows[0] if alarm_rows else None
    names = bundle.card.feature_spec.channels
    top = trace.top_channels[first] if first is not None else None
    hours = INTERVAL_MIN / 60
    return Case(
        seed=seed, bearing=bearing, train_files=train_files, files=files,
        false_warning_episodes=len(warnings), false_alarm_episodes=len(alarms),
        healthy_days=float(after.sum()) * INTERVAL_MIN / (24 * 60),
        named_at_first_alarm=names[top] if top is not None else None, failing=names[bearing - 1],
        lead_h=None if first is None else (files - 1 - first) * hours,
        first_false_alarm_h_after_training=(alarms[0] - train_files + 1) * hours if alarms else None,
        training_warnings=list(bundle.card.provenance.get("training_warnings", [])),
    )


def sweep() -> list[tuple[int, int, int, int]]:
    cases = []
    for index, seed in enumerate(SEEDS):
        bearing = index % 4 + 1
        for span in SPANS:
            cases.append((seed, bearing, span, max(120, span * 3)))
    return cases


def summary(cases: list[Case]) -> dict:
    def part(selected: list[Case]) -> dict:
        days = sum(c.healthy_days for c in selected)
        leads = [c.lead_h for c in selected if c.lead_h is not None]
        return {
            "cases": len(selected),
            "healthy_machine_days": round(days, 2),
            "false_alarm_episodes": sum(c.false_alarm_episodes for c in selected),
            "false_alarm_episodes_per_healthy_machine_day": round(sum(c.false_alarm_episodes for c in selected) / days, 3)
            if days else None,
            "false_warning_episodes": sum(c.false_warning_episodes for c in selected),
            "cases_with_a_false_alarm": sum(c.false_alarm_episodes > 0 for c in selected),
            "failing_bearing_named_at_first_alarm": sum(c.named_at_first_alarm == c.failing for c in selected),
            "lead_h": {"min": min(leads), "median": float(np.median(leads)), "max": max(leads)} if leads else None,
        }

    return {"all": part(cases)} | {f"trained_on_{span}": part([c for c in cases if c.train_files == span])
                                   for span in sorted({c.train_files for c in cases})}


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the issue-22 case and a handful more")
    parser.add_argument("--out", default=str(REPO / "bench" / "cases_results.json"))
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    cases = []
    for spec in QUICK if args.quick else sweep():
        started = time.perf_counter()
        case = one_case(*spec)
        cases.append(case)
        print(f"seed {case.seed} bearing {case.bearing} trained on {case.train_files}/{case.files}: false alarm "
              f"episodes {case.false_alarm_episodes} (warnings {case.false_warning_episodes}) over "
              f"{case.healthy_days:.2f} healthy days, named {case.named_at_first_alarm} (failing {case.failing}), "
              f"lead {case.lead_h} h ({timedelta(seconds=round(time.perf_counter() - started))})",
              file=sys.stderr, flush=True)
        result = {"mode": "quick" if args.quick else "sweep", "summary": summary(cases),
                  "cases": [asdict(c) for c in cases]}
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")  # after every case: a long sweep can stop
    print(json.dumps(summary(cases), indent=1))


if __name__ == "__main__":
    run()
