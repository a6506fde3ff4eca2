"""Labelled tables with default flags: `cm-train fit --label-column label` then `cm-train evaluate` on
make_blobs-like tables (15 features, two blobs, class 1 = anomaly) of 500 to 5,000 rows over random states.

    .venv/bin/python bench/bench_labelled.py [--out bench/labelled_results.json] [--sizes 500,5000] [--states 0-9]

Writes one row per table: whether fit succeeded (and why not), F1, precision, recall, ROC AUC on the test split,
the int8/float decision agreement and the quantization check's counts. Numbers are reported, not asserted.
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

from trainer.cli import main  # noqa: E402


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
               "f1_below_0.9": [(r["rows"], r["random_state"], r["f1"]) for r in fitted if r["f1"] < 0.9]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"summary": summary, "rows": rows}, indent=1) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    run()
