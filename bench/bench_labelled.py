"""Labelled tables with default flags: `cm-train fit --label-column label` then `cm-train evaluate` on
make_blobs-like tables (15 features, two blobs, class 1 = anomaly) of 500 to 5,000 rows over random states.

    .venv/bin/python bench/bench_labelled.py [--out bench/labelled_results.json] [--sizes 500,5000] [--states 0-9]

Writes one row per table: whether fit succeeded (and why not), F1, precision, recall, ROC AUC on the test split,
the int8/float decision agreement and the quantization check's counts. Numbers are reported, not asserted.
Beside them, `per_channel_max`: F1 and ROC AUC on the same test split of the score labelled tables had before
(the largest channel's error over its healthy reference, threshold again the F1-best on the validation split),
from the same trained model, so the two scores are compared on one training.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the suite's table writers: the bench measures the tables the tests use

from tables import write_blobs_table  # noqa: E402

from edge.model.bundle import load_bundle  # noqa: E402
from edge.model.runtime import Model  # noqa: E402
from trainer import calibrate, train  # noqa: E402
from trainer.cli import main  # noqa: E402
from trainer.dataset import load_dataset  # noqa: E402
from trainer.evaluate import classification_metrics  # noqa: E402
from trainer.options import FitOptions  # noqa: E402


def per_channel_max(table: Path, bundle_path: Path) -> dict:
    """F1 and ROC AUC on the test split of the per-channel score (the largest channel's error over its
    reference), its threshold the F1-best on the validation split, from the bundle's own int8 model."""
    bundle = load_bundle(bundle_path)
    options = FitOptions(out=bundle_path, label_column="label", window=1)  # as cm-train fit gives tables
    dataset = load_dataset(table, options)
    in_training = train.training_mask(dataset, None, options.train_fraction)
    rows = train.healthy_rows(dataset, in_training)
    span = train.Span(in_training, rows, *train.split_holdout(rows, 1, options.holdout_fraction, str(table)))
    referenced = train._with_references(bundle, dataset, span, None)
    validation, test = train.labelled_splits(dataset, in_training)  # type: ignore[misc]
    model = Model(referenced)
    scores = {name: train.streamed_scores(referenced, model, dataset, r) for name, r in (("v", validation), ("t", test))}
    assert dataset.labels is not None
    chosen = calibrate.best_f1(scores["v"], dataset.labels[validation], None, {"calibration_max": 1.0})
    metrics = classification_metrics(dataset.labels[test], scores["t"], chosen.alarm)
    return {"f1": round(metrics["f1"], 4), "roc_auc": round(metrics["roc_auc"], 4)}


def one(samples: int, state: int, work: Path) -> dict:
    table = write_blobs_table(work / f"blobs_{samples}_{state}.csv", samples, state)
    bundle, report = work / f"bundle_{samples}_{state}", work / f"report_{samples}_{state}"
    started = time.perf_counter()
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        fitted = main(["fit", str(table), "--out", str(bundle), "--label-column", "label", "--quiet"]) == 0
    row: dict = {"rows": samples, "random_state": state, "fit": fitted, "fit_seconds": round(time.perf_counter() - started, 1)}
    if not fitted:
        row["error"] = next((line for line in err.getvalue().splitlines() if "failed" in line or "error" in line), "")
        return row
    card = json.loads((bundle / "model_card.json").read_text())
    row["quantization"] = {k: v for k, v in card["quantization"].items() if isinstance(v, (int, float))}
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        main(["evaluate", str(bundle), str(table), "--out", str(report)])
    result = json.loads((report / "report.json").read_text())
    row |= {key: result.get(key) for key in ("f1", "precision", "recall", "roc_auc")}
    row["per_channel_max"] = per_channel_max(table, bundle)
    return row


def states(text: str) -> list[int]:
    if "-" in text:
        low, high = text.split("-")
        return list(range(int(low), int(high) + 1))
    return [int(v) for v in text.split(",")]


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "bench" / "labelled_results.json"))
    parser.add_argument("--sizes", default="500,1500,5000")
    parser.add_argument("--states", default="0-9")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for state in states(args.states):
            for samples in (int(v) for v in args.sizes.split(",")):
                row = one(samples, state, Path(scratch))
                rows.append(row)
                print(json.dumps(row), flush=True)
    fitted = [r for r in rows if r["fit"]]
    summary = {"tables": len(rows), "fitted": len(fitted),
               "f1_min": min((r["f1"] for r in fitted), default=None),
               "f1_below_0.9": [(r["rows"], r["random_state"], r["f1"]) for r in fitted if r["f1"] < 0.9],
               "per_channel_max_f1_min": min((r["per_channel_max"]["f1"] for r in fitted), default=None),
               "per_channel_max_f1_below_0.9": [(r["rows"], r["random_state"], r["per_channel_max"]["f1"])
                                                for r in fitted if r["per_channel_max"]["f1"] < 0.9]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"summary": summary, "rows": rows}, indent=1) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    run()
