"""`cm-train`: fit a bundle from a recording (IMS, FEMTO, MATLAB, CSV snapshots) or a features table,
evaluate a bundle on a run, write a baseline card for a machine that has no model yet."""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from edge.model.bundle import BundleError
from edge.scoring.diagnosis import ISO_GROUPS
from firmware_bridge.recording import FORMATS, RecordingSpec
from trainer.calibrate import RULES
from trainer.options import DEFAULT_WINDOW, DatasetSpec, EvaluateOptions, FitOptions

if TYPE_CHECKING:
    from trainer.baseline import BaselineOptions
    from trainer.spec_card import SpecCard


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cm-train", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    fit = commands.add_parser("fit", help="train an int8 TFLite bundle")
    fit.add_argument("input", type=Path, help="recording (IMS/FEMTO folder, .mat file, CSV/TSV/NPY folder) or features table CSV")
    fit.add_argument("--out", type=Path, required=True, help="bundle directory to write")
    add_recording_arguments(fit)
    # default None, resolved in fit_options: a --feature-set beside --feature-spec must be told from the default
    fit.add_argument("--feature-set", choices=("mean_abs", "vibration"), default=None,
                     help=f"features per channel (default {DatasetSpec.feature_set}; vibration needs --bearing and --shaft-rpm)")
    fit.add_argument("--feature-spec", type=Path, metavar="CARD",
                     help="a features table's spec: the model or baseline card (bundle directory or model_card.json) "
                          "of the machine that will run the bundle; its columns are named <channel> (mean_abs) or "
                          "<channel>.<feature>, and the bundle takes the card's feature spec")
    fit.add_argument("--bearing", type=_bearing, metavar="PRESET|GEOMETRY",
                     help="za-2115, 6205-2rs, 6203-2rs, pronostia or balls=N,ball_mm=X,pitch_mm=Y,contact_deg=Z")
    fit.add_argument("--shaft-rpm", type=float, metavar="RPM", help="shaft speed for the bearing's defect lines")
    fit.add_argument("--label-column", help="table column marking anomalies (1 = anomaly); only normal rows are fitted")
    span = fit.add_mutually_exclusive_group()
    span.add_argument("--train-until", help="last timestamp of the healthy training span (inclusive)")
    span.add_argument("--train-fraction", type=float, default=FitOptions.train_fraction,
                      help=f"leading share of snapshots to train on (default {FitOptions.train_fraction})")
    fit.add_argument("--window", type=int, default=None, help="feature vectors per model input (default: see trainer/README.md)")
    fit.add_argument("--epochs", type=int, default=FitOptions.epochs,
                     help=f"maximum epochs; early stopping ends sooner (default {FitOptions.epochs})")
    fit.add_argument("--seed", type=int, default=FitOptions.seed)
    fit.add_argument("--threshold-rule", choices=RULES, default=FitOptions.threshold_rule,
                     help="calibration (default; with --label-column: the F1-best threshold on a validation split) or seed")
    fit.add_argument("--target-precision", type=float, metavar="P",
                     help="with --label-column: the lowest threshold reaching precision P on the validation split")
    fit.add_argument("--quiet", action="store_true", help="no per-epoch progress")
    fit.add_argument("--verbose", action="store_true", help="show TensorFlow's own log lines (silent by default)")

    evaluate = commands.add_parser("evaluate", help="score a run with a bundle: report.json and score.png")
    evaluate.add_argument("bundle", type=Path)
    evaluate.add_argument("input", type=Path, help="recording or features table CSV, as for fit")
    evaluate.add_argument("--out", type=Path, required=True, help="report directory")
    evaluate.add_argument("--failure-at", help="time of failure for the lead time (default: the last snapshot)")
    evaluate.add_argument("--train-until", help="end of the training span (default: the card's)")
    add_recording_arguments(evaluate, defaults="the card's")
    evaluate.add_argument("--iso-group", default=EvaluateOptions.iso_group, choices=ISO_GROUPS,
                          help="ISO 20816 machine group for the velocity zones of the vibration set: "
                               f"{', '.join(ISO_GROUPS)} (default: {EvaluateOptions.iso_group})")
    evaluate.add_argument("--label-column", help="features table column marking anomalies (1 = anomaly), e.g. cm-fleet's "
                          "labels.csv `label`: precision, recall and F1 against it (default: the card's, if it was fitted with one)")
    evaluate.add_argument("--verbose", action="store_true", help="show TensorFlow's own log lines (silent by default)")
    add_baseline_parser(commands)
    return parser


def add_baseline_parser(commands: argparse._SubParsersAction) -> None:
    baseline = commands.add_parser("baseline", help="write a baseline card (the feature spec alone, no model): the agent "
                                                    "runs it in state learning until a model replaces it")
    baseline.add_argument("input", type=Path, nargs="?",
                          help="a recording to read the spec from, as for fit (default: the flags say it all)")
    baseline.add_argument("--out", type=Path, required=True, help="bundle directory to write (its card only)")
    add_recording_arguments(baseline)
    baseline.add_argument("--feature-set", choices=("mean_abs", "vibration"), default=DatasetSpec.feature_set,
                          help=f"features per channel (default {DatasetSpec.feature_set}; vibration needs --bearing and "
                               "--shaft-rpm)")
    baseline.add_argument("--bearing", type=_bearing, metavar="PRESET|GEOMETRY", help="as for fit")
    baseline.add_argument("--shaft-rpm", type=float, metavar="RPM", help="shaft speed for the bearing's defect lines")
    baseline.add_argument("--scale", type=float, metavar="G", help="g per count of the sensor's frames (default: the "
                          "recording's; without one, the agent takes its first stream's)")
    baseline.add_argument("--interval-s", type=float, metavar="S", help="seconds between the snapshots the agent "
                          "computes (default: the recording's median spacing; without one, every snapshot)")
    baseline.add_argument("--min-level-g", type=float, metavar="G", help="the least mean |acceleration| every channel "
                          "gives while the machine runs: below the dropout share of it, a channel has dropped out "
                          "(default: no dropout check, flatline and clipping only)")
    baseline.set_defaults(verbose=True)  # no TensorFlow to silence


def _bearing(text: str) -> object:
    from edge.model.bearing import parse_bearing

    try:
        return parse_bearing(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_recording_arguments(parser: argparse.ArgumentParser, defaults: str | None = None) -> None:
    """--format, --sample-rate, --snapshot-samples, --channels: how a recording is read (firmware_bridge.recording)."""
    default = f" (default: {defaults})" if defaults else ""
    parser.add_argument("--format", choices=FORMATS,
                        help=f"recording format{default or ' (default: detected from the names)'}")
    parser.add_argument("--sample-rate", type=int, metavar="HZ",
                        help=f"sample rate; required for mat and csv{default}")
    parser.add_argument("--snapshot-samples", type=int, metavar="N",
                        help=f"cut long records into snapshots of N samples{default or ' (default: one file, one snapshot)'}")
    parser.add_argument("--channels", metavar="1,3,5,7|DE,FE",
                        help=f"channels by 1-based number or name{default or ' (default: all)'}")


# TensorFlow's and LiteRT's own lines: glog/absl (I0000 00:00:..., W..., E..., F...), absl's start-up notice,
# the MLIR converter's notes and the interpreter's delegate notice.
TF_LOG_LINE = re.compile(rb"^([IWEF]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ \S+:\d+\]|WARNING: All log messages before absl|"
                         rb"INFO: Created TensorFlow Lite|fully_quantize: |Estimated count of arithmetic ops)")


@contextlib.contextmanager
def tensorflow_silenced() -> Iterator[None]:
    """TensorFlow's C++ side writes straight to file descriptor 2, whatever TF_CPP_MIN_LOG_LEVEL says (the
    oneDNN notice at import, converter notes): those lines are dropped, everything else passes through."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # read once, when TensorFlow loads
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    sys.stderr.flush()
    saved = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def relay() -> None:
        with os.fdopen(read_end, "rb") as lines:
            for line in lines:
                if not TF_LOG_LINE.match(line):
                    os.write(saved, line)

    thread = threading.Thread(target=relay, name="stderr-filter", daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # closes the pipe's last write end: the relay reads to the end and stops
        thread.join(5)
        os.close(saved)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with contextlib.nullcontext() if args.verbose else tensorflow_silenced():
        return run(args)


def run(args: argparse.Namespace) -> int:
    # Imported late: `cm-train --help` should not wait for TensorFlow.
    from trainer.dataset import DatasetError

    try:
        if args.command == "baseline":
            from trainer.baseline import write

            print(write(baseline_options(args)))
        elif args.command == "fit":
            from trainer.export import ExportError
            from trainer.train import fit

            try:
                print(fit(args.input, fit_options(args)))
            except ExportError as error:
                print(f"cm-train fit: export failed: {error}", file=sys.stderr)
                return 1
        else:
            from trainer.evaluate import evaluate

            print(json.dumps(evaluate(args.bundle, args.input, args.out, evaluate_options(args)), indent=2))
    except (DatasetError, BundleError, ValueError) as error:
        print(f"cm-train {args.command}: error: {error}", file=sys.stderr)
        return 1
    return 0


def recording_spec(args: argparse.Namespace) -> RecordingSpec:
    """The flags of add_recording_arguments."""
    from trainer.dataset import parse_channels

    return RecordingSpec(format=args.format, channels=parse_channels(args.channels), sample_rate_hz=args.sample_rate,
                         snapshot_samples=args.snapshot_samples)


def fit_options(args: argparse.Namespace) -> FitOptions:
    from trainer.dataset import parse_time

    reading = recording_spec(args)
    card = spec_card(args, reading)
    return FitOptions(
        **vars(reading),
        out=args.out,
        feature_set=card.spec.feature_set if card else args.feature_set or DatasetSpec.feature_set,
        bearing=card.spec.bearing if card else args.bearing,
        shaft_rpm=card.spec.shaft_rpm if card else args.shaft_rpm,
        feature_spec=card,
        label_column=args.label_column,
        train_until=parse_time(args.train_until) if args.train_until else None,
        train_fraction=args.train_fraction,
        window=args.window if args.window is not None else (1 if args.label_column else DEFAULT_WINDOW),
        epochs=args.epochs,
        seed=args.seed,
        threshold_rule=args.threshold_rule,
        target_precision=args.target_precision,
        verbose=0 if args.quiet else 2,
    )


def spec_card(args: argparse.Namespace, reading: RecordingSpec) -> SpecCard | None:
    """--feature-spec's card; flags that say what it says too must agree with it (the table is read by the card)."""
    if args.feature_spec is None:
        return None
    from trainer.spec_card import read_spec_card, refuse_contradictions

    card = read_spec_card(args.feature_spec)
    refuse_contradictions(card, {"--feature-set": args.feature_set, "--channels": reading.channels,
                                 "--sample-rate": reading.sample_rate_hz, "--snapshot-samples": reading.snapshot_samples,
                                 "--bearing": args.bearing, "--shaft-rpm": args.shaft_rpm, "--format": reading.format})
    return card


def baseline_options(args: argparse.Namespace) -> BaselineOptions:
    from trainer.baseline import BaselineOptions
    from trainer.dataset import parse_channels

    spec = {"out": args.out, "feature_set": args.feature_set, "scale": args.scale, "interval_s": args.interval_s,
            "bearing": args.bearing, "shaft_rpm": args.shaft_rpm, "min_level_g": args.min_level_g}
    if args.input is not None:
        return BaselineOptions(recording=args.input, reading=recording_spec(args), **spec)
    return BaselineOptions(channels=parse_channels(args.channels), sample_rate_hz=args.sample_rate,
                           snapshot_samples=args.snapshot_samples, **spec)


def evaluate_options(args: argparse.Namespace) -> EvaluateOptions:
    from trainer.dataset import parse_time

    return EvaluateOptions(
        **vars(recording_spec(args)),
        failure_at=parse_time(args.failure_at) if args.failure_at else None,
        train_until=parse_time(args.train_until) if args.train_until else None,
        iso_group=args.iso_group,
        label_column=args.label_column,
    )


if __name__ == "__main__":
    sys.exit(main())
