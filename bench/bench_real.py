"""Detection and diagnosis on the real data in ../shared/data: `python bench/bench_real.py [cwru|femto|ims ...]`.

Numbers, not assertions (the tests check behaviour; this says how well it works):
- CWRU: train on normal_0_97 (DE and FE, vibration set, drive-end 6205-2RS at 1796 rpm); evaluate the seeded
  faults; the defect each alarm episode names and the envelope line against the README's frequency.
- FEMTO: train each run on its first 30% with each feature set, evaluate the whole run: false alarm
  episodes and how long before the end the debounced alarm comes, against the original articles' rule
  (1.1 x the healthy maximum of the per-channel mean absolute value, alarm on 3 of 5). Then leave-one-run-out:
  per feature set, the detector setting (bench/score_traces.py GRID: drift floor, debounce in seconds) that
  does best on three runs is reported on the fourth, replayed from the run's score trace.
- ball: CWRU's ball fault, why it stays `unknown`: every recording's per-snapshot diagnosis with the shipped
  features at snapshots of 0.34 to 2.5 s, and with the envelope band chosen per snapshot by spectral kurtosis.
- IMS: the healthy sample (12 snapshots) with the vibration set: trained on the first 10 (the calibration
  floor), nothing raised.
- indicators: how early the FEMTO data allows any alarm at all. For every vibration-set feature and every
  acceleration band (log energy, bands up to Nyquist) of each channel, the moment its 1-minute rolling
  median leaves the range it had over the first 30% for good (above its maximum or below its minimum, to the
  end of the run): the lead time of an ideal single-indicator alarm picked with hindsight, with no false
  episode. A bound for the detector's numbers, not a detector.
Writes bench/real_results.json and prints a table.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from score_traces import GRID, ScoreTrace, Setting, record, replay  # noqa: E402

from edge.model.bearing import DEFECTS, PRESETS  # noqa: E402
from edge.model.bundle import load_bundle  # noqa: E402
from edge.scoring.detector import State  # noqa: E402
from edge.scoring.diagnosis import diagnose  # noqa: E402

DATA = Path(os.environ.get("CM_SHARED_DATA", REPO.parent / "shared" / "data"))
CWRU_RPM = 1796.0
CWRU_README_HZ = {"IR007": ("inner_race", 162.1), "OR007": ("outer_race", 107.3), "B007": ("rolling_element", 141.1)}
# The four shared learning runs, with their operating condition's shaft speed (1: 1800, 2: 1650, 3: 1500 rpm).
FEMTO_RUNS = {"Bearing1_2": 1800.0, "Bearing2_1": 1650.0, "Bearing3_1": 1500.0, "Bearing3_2": 1500.0}
TRACES = REPO / "bench" / "work" / "femto"  # each run's score trace, for `loro` without retraining
ANCHOR_MIN = {"Bearing1_2": 7.0, "Bearing2_1": 4.7, "Bearing3_1": 3.3, "Bearing3_2": 32.5}  # the articles' rule


def _fit(source: Path, out: Path, **options: object) -> Path:
    from trainer.train import FitOptions, fit

    return fit(source, FitOptions(out=out, verbose=0, **options))  # type: ignore[arg-type]


def _evaluate(bundle_path: Path, source: Path) -> tuple[dict, list[State], object]:
    from firmware_bridge.recording import RecordingSpec
    from trainer.dataset import load_dataset
    from trainer.evaluate import build_report, dataset_spec, run_detector

    bundle = load_bundle(bundle_path)
    dataset = load_dataset(source, dataset_spec(bundle.card, source, RecordingSpec()))  # as cm-train evaluate reads it
    trace = run_detector(dataset, bundle)
    return build_report(dataset, bundle, trace, None, None), trace.states, dataset


def cwru(scratch: Path) -> dict:
    root = DATA / "cwru"
    options = dict(format="mat", sample_rate_hz=48_000, snapshot_samples=16_384, channels=("DE", "FE"),
                   feature_set="vibration", bearing=PRESETS["6205-2rs"], shaft_rpm=CWRU_RPM, train_fraction=1.0)
    started = time.perf_counter()
    bundle = _fit(root / "normal_0_97.mat", scratch / "cwru", **options)
    results: dict = {"train_seconds": round(time.perf_counter() - started, 1)}
    for name, path in [("normal", root / "normal_0_97.mat"), *[(key, next(root.glob(f"48k_Drive_End_{key}*.mat")))
                                                                   for key in CWRU_README_HZ]]:
        report, states, dataset = _evaluate(bundle, path)
        per_snapshot = [diagnose(lines, prominence, dataset.channels)
                        for lines, prominence in zip(dataset.line_hz, dataset.prominence)]
        kinds = {kind: sum(d.kind == kind for d in per_snapshot) for kind in {d.kind for d in per_snapshot}}
        episodes = report["alarm_episodes"]
        entry = {"snapshots": len(states), "alarm_snapshots": sum(s == State.ALARM for s in states),
                 "warning_snapshots": sum(s == State.WARNING for s in states),
                 "episodes": [e.get("defect") for e in episodes], "per_snapshot_kinds": kinds,
                 "median_prominence": _median_prominence(dataset)}
        if name in CWRU_README_HZ:
            kind, readme_hz = CWRU_README_HZ[name]
            found = [e["defect"]["frequency_hz"] for e in episodes if e.get("defect", {}).get("kind") == kind]
            entry["readme_hz"] = readme_hz
            entry["line_error_percent"] = [round(100 * (f - readme_hz) / readme_hz, 2) for f in found]
        results[name] = entry
    return results


def _median_prominence(dataset: object) -> dict:
    """Per channel and defect line, the median over the recording's snapshots of the line's prominence (what
    the diagnosis weighs against MIN_PROMINENCE): where a fault's evidence stands, named or not."""
    prominence = np.asarray(dataset.prominence)  # type: ignore[attr-defined]  # (snapshots, C, 4)
    return {channel: {line: round(float(np.median(prominence[:, c, k])), 2) for k, line in enumerate(DEFECTS)}
            for c, channel in enumerate(dataset.channels)}  # type: ignore[attr-defined]


BALL_SNAPSHOTS = (16_384, 32_768, 65_536, 120_000)  # 0.34 to 2.5 s at 48 kHz
KURTOGRAM_LEVELS = range(1, 6)  # 2^L bands and 3 x 2^L bands (the fast kurtogram's 1/3 levels) per level
KURTOGRAM_TOP = 0.4  # share of the sample rate: above it the anti-aliasing filter's spikes rule the kurtosis
KURTOGRAM_MIN_HZ = 1000.0  # narrower bands cannot carry 3 x BPFI of envelope spectrum


def ball(scratch: Path) -> dict:
    """CWRU's ball fault (B007), why it stays unknown: each recording's per-snapshot diagnosis (edge's rule) with
    the shipped features at longer snapshots, and with the envelope band chosen per snapshot by spectral
    kurtosis (the issue's idea: a fast kurtogram's bands, numpy). Counts of the kinds named and the lines."""
    from scipy import io as scipy_io

    from edge.model.features import FeatureConfig, FeatureExtractor

    root, channels = DATA / "cwru", ("DE", "FE")
    config = FeatureConfig("vibration", 48_000, PRESETS["6205-2rs"], CWRU_RPM)
    results: dict = {}
    for name, path in [("normal", root / "normal_0_97.mat"), *[(key, next(root.glob(f"48k_Drive_End_{key}*.mat")))
                                                               for key in CWRU_README_HZ]]:
        data = scipy_io.loadmat(str(path))
        samples = np.column_stack([next(v for k, v in data.items() if k.endswith(f"{c}_time")).ravel() for c in channels])
        counts = np.round(samples / 0.001).astype(np.int16)  # 1 mg per count, as the importer's scale rule gives
        entry = {}
        for length in BALL_SNAPSHOTS:
            extractor = FeatureExtractor(config)
            entry[f"shipped_{length}"] = _named([extractor.analyse(counts[i:i + length], 0.001)
                                                 for i in range(0, len(counts) - length + 1, length)], channels)
        entry["kurtogram_16384"] = _named([_kurtogram_analysis(counts[i:i + 16_384], config)
                                           for i in range(0, len(counts) - 16_383, 16_384)], channels)
        results[name] = entry
    return results


def _named(analyses: list, channels: tuple[str, ...]) -> dict:
    defects = [diagnose(a.line_hz, a.prominence, channels) for a in analyses]
    return {"kinds": {kind: sum(d.kind == kind for d in defects) for kind in sorted({d.kind for d in defects})},
            "lines": [f"{d.kind}@{d.frequency_hz:.1f}Hz:{d.prominence:.1f}" for d in defects]}


def _kurtogram_analysis(counts: np.ndarray, config: object) -> object:
    """The vibration set's envelope lines of one snapshot, demodulated in the band of highest spectral kurtosis
    (per channel) instead of the shipped ENVELOPE_BAND: edge.model.features' own plan, with its band replaced."""
    from dataclasses import replace

    from edge.model import features as f

    rate, n = config.sample_rate_hz, counts.shape[0]  # type: ignore[attr-defined]
    plan = f._make_plan(n, rate, config.defect_hz())  # type: ignore[attr-defined]
    spectrum = np.fft.rfft(counts.T.astype(np.float64) - counts.mean(axis=0)[:, None], axis=1)
    bands = [(i * n // parts // 2, (i + 1) * n // parts // 2) for level in KURTOGRAM_LEVELS for parts in (2**level, 3 * 2**level)
             for i in range(parts)]
    bands = [(max(lo, 1), hi) for lo, hi in bands if hi <= KURTOGRAM_TOP * n and (hi - lo) * rate / n >= KURTOGRAM_MIN_HZ]
    lines, prominence = [], []
    for row in spectrum:
        def kurtosis(band: tuple[int, int], row: np.ndarray = row) -> float:
            power = np.abs(np.fft.ifft(row[band[0]:band[1]])) ** 2
            return float((power**2).mean() / power.mean() ** 2 - 2)
        lo, hi = max(bands, key=kurtosis)
        banded = replace(plan, band=slice(lo, hi), envelope_length=f._fast_length(hi - lo))
        p, where = f._lines(f._envelope_spectrum(row[None, :], banded), banded)
        prominence.append(p[0])
        lines.append(where[0])
    return f.Analysis(np.empty(0), np.array(lines), np.array(prominence))


def _debounced_alarm(over: np.ndarray, k: int = 3, n: int = 5) -> int | None:
    """First row where k of the last n rows are over (the articles' debounce)."""
    for row in range(len(over)):
        if over[max(0, row - n + 1):row + 1].sum() >= k:
            return row
    return None


def _trace(bundle_path: Path, dataset: object) -> ScoreTrace:
    """The bundle's raw score trace, with the training span split as fit() split it (first 30%, defaults)."""
    from trainer.train import FitOptions, healthy_rows, split_holdout, training_mask

    options = FitOptions(out=Path("unused"), train_fraction=0.3)
    rows = healthy_rows(dataset, training_mask(dataset, None, options.train_fraction))  # type: ignore[arg-type]
    fit_rows, held_out = split_holdout(rows, options.window, options.holdout_fraction, "femto")
    return record(load_bundle(bundle_path), dataset, fit_rows, held_out, int(rows.size))


def _femto_outcome(trace: ScoreTrace, stamps: np.ndarray, setting: Setting) -> dict:
    from trainer.evaluate import Episodes

    states, _ = replay(trace, setting)
    episodes = Episodes.of(states)
    before_end = lambda row: round(float((stamps[-1] - stamps[row]) / np.timedelta64(1, "s")) / 60, 1)  # noqa: E731
    return {"false_alarm_episodes": len(episodes.alarms) - (1 if episodes.persistent else 0),
            "alarm_episodes": len(episodes.alarms),
            "minutes_before_end": before_end(episodes.persistent[0]) if episodes.persistent else None,
            "first_alarm_minutes_before_end": before_end(episodes.first_alarm) if episodes.alarms else None}


def leave_one_run_out(traces: dict) -> dict:
    """Per feature set and held-out run: the GRID setting chosen on the other runs (fewest false alarm episodes,
    then the longest median lead), and what it gives on the held-out run; beside it the shipped defaults."""
    results: dict = {}
    for feature_set in ("mean_abs", "vibration"):
        runs = [run for run, kind in traces if kind == feature_set]
        outcomes = {run: [_femto_outcome(*traces[(run, feature_set)], setting) for setting in GRID] for run in runs}
        for held_out in runs:
            others = [run for run in runs if run != held_out]

            def rank(index: int, others: list[str] = others) -> tuple:
                picked = [outcomes[run][index] for run in others]
                leads = [p["minutes_before_end"] or 0.0 for p in picked]
                return (sum(p["false_alarm_episodes"] for p in picked), -float(np.median(leads)))

            chosen = min(range(len(GRID)), key=rank)
            results.setdefault(held_out, {})[feature_set] = {
                "chosen_on": others, "setting": asdict(GRID[chosen]), "held_out": outcomes[held_out][chosen],
                "defaults": _femto_outcome(*traces[(held_out, feature_set)], Setting()),
                # before issue 22's changes: no drift floor, debounce in snapshots only
                "counts_only_no_floor": _femto_outcome(*traces[(held_out, feature_set)], Setting(0.0, None, None)),
                "articles_minutes_before_end": ANCHOR_MIN[held_out]}
    return results


def loro(scratch: Path) -> dict:
    """Leave-one-run-out again from the traces the last `femto` run kept (no training): after a GRID change."""
    return {"leave_one_run_out": leave_one_run_out({
        (run, kind): (ScoreTrace.load(TRACES / f"trace-{run}-{kind}.npz"), np.load(TRACES / f"stamps-{run}-{kind}.npy"))
        for run in FEMTO_RUNS for kind in ("mean_abs", "vibration")})}


def femto(scratch: Path) -> dict:
    results: dict = {}
    traces: dict = {}
    TRACES.mkdir(parents=True, exist_ok=True)
    for run, rpm in FEMTO_RUNS.items():
        source = DATA / "femto" / run
        entry: dict = {}
        for feature_set in ("mean_abs", "vibration"):
            extra = {"bearing": PRESETS["pronostia"], "shaft_rpm": rpm} if feature_set == "vibration" else {}
            started = time.perf_counter()
            bundle = _fit(source, scratch / f"{run}-{feature_set}", feature_set=feature_set, train_fraction=0.3,
                          **extra)
            report, states, dataset = _evaluate(bundle, source)
            traces[(run, feature_set)] = _trace(bundle, dataset), dataset.timestamps
            traces[(run, feature_set)][0].save(TRACES / f"trace-{run}-{feature_set}.npz")
            np.save(TRACES / f"stamps-{run}-{feature_set}.npy", dataset.timestamps)
            stamps = dataset.timestamps
            end = stamps[-1]
            first = report["first_alarm"]
            lead = None
            if report["persistent_alarm_start"] is not None:
                start = np.datetime64(report["persistent_alarm_start"].rstrip("Z"))  # ISO 8601 UTC
                lead = float((end - start) / np.timedelta64(1, "s")) / 60
            entry[feature_set] = {
                "false_alarm_episodes": report["false_alarm_episodes"], "first_alarm": first,
                "persistent_alarm_start": report["persistent_alarm_start"],
                "minutes_before_end": None if lead is None else round(lead, 1),
                "defect_at_last_episode": (report["alarm_episodes"][-1].get("defect") if report["alarm_episodes"] else None),
                "seconds": round(time.perf_counter() - started, 1)}
            if feature_set == "mean_abs":
                # The articles' rule on the same features: 1.1 x healthy max of any channel, 3 of 5.
                healthy = dataset.features[: int(round(0.3 * len(dataset)))].max(axis=0)
                row = _debounced_alarm((dataset.features > 1.1 * healthy).any(axis=1))
                entry["anchor_rule"] = {
                    "alarm": None if row is None else str(stamps[row]),
                    "minutes_before_end": None if row is None else round(float((end - stamps[row]) / np.timedelta64(1, "s")) / 60, 1),
                    "articles_minutes_before_end": ANCHOR_MIN[run]}
        results[run] = entry
    results["leave_one_run_out"] = leave_one_run_out(traces)
    return results


def ims(scratch: Path) -> dict:
    source = DATA / "ims" / "1st_test"
    bundle = _fit(source, scratch / "ims", channels=(1, 3, 5, 7), feature_set="vibration",
                  bearing=PRESETS["za-2115"], shaft_rpm=2000.0, train_fraction=10 / 12)  # the calibration floor: 10
    report, states, _ = _evaluate(bundle, source)
    return {"snapshots": len(states), "warning_or_alarm_snapshots": sum(s in (State.WARNING, State.ALARM) for s in states),
            "first_alarm": report["first_alarm"], "first_pointwise_alarm": report["first_pointwise_alarm"],
            "iso_zones_worst": report.get("iso_zones", {}).get("worst")}


BANDS_HZ = (0, 100, 200, 400, 800, 1200, 1600, 2000, 2500, 3000, 4000, 5000, 6000, 8000, 10000, 12800)
ROLLING = 6  # snapshots: one minute at FEMTO's 10 s


def _departure(values: np.ndarray, training: int) -> tuple[int | None, str]:
    """First row from which the rolling median stays beyond the training span's range to the end, and which side."""
    rolled = np.array([np.median(values[max(0, i - ROLLING + 1):i + 1]) for i in range(len(values))])
    healthy = rolled[ROLLING:training]  # the first minute is not a full median yet
    best: tuple[int | None, str] = (None, "")
    for side, beyond in (("above", rolled > healthy.max()), ("below", rolled < healthy.min())):
        inside = np.flatnonzero(~beyond[training:])
        start = training + (int(inside[-1]) + 1 if inside.size else 0)
        if start < len(values) and (best[0] is None or start < best[0]):
            best = (start, side)
    return best


def indicators(scratch: Path) -> dict:
    from firmware_bridge.recording import open_recording
    from trainer.dataset import DatasetSpec, load_dataset

    results: dict = {}
    for run, rpm in FEMTO_RUNS.items():
        source = DATA / "femto" / run
        dataset = load_dataset(source, DatasetSpec(feature_set="vibration", bearing=PRESETS["pronostia"], shaft_rpm=rpm))
        recording = open_recording(source)
        training = int(round(0.3 * len(dataset)))
        frequencies = np.fft.rfftfreq(recording.snapshot_samples, 1 / recording.sample_rate_hz)
        bands = []
        for snapshot in recording.snapshots():
            x = snapshot.counts.astype(np.float64) * snapshot.scale
            power = np.abs(np.fft.rfft(x - x.mean(axis=0), axis=0)) ** 2
            bands.append([np.log10(power[(frequencies >= low) & (frequencies < high)].sum(axis=0) + 1e-12)
                          for low, high in zip(BANDS_HZ[:-1], BANDS_HZ[1:])])
        band_energy = np.array(bands)  # (snapshots, bands, channels)
        names = dataset.feature_config.names
        candidates = {}
        for c, channel in enumerate(dataset.channels):
            for f, name in enumerate(names):
                candidates[f"{channel} {name}"] = dataset.features[:, c * len(names) + f]
            for b, (low, high) in enumerate(zip(BANDS_HZ[:-1], BANDS_HZ[1:])):
                candidates[f"{channel} band {low}-{high} Hz"] = band_energy[:, b, c]
        end = dataset.timestamps[-1]
        found = []
        for label, values in candidates.items():
            start, side = _departure(values, training)
            if start is not None:
                minutes = float((end - dataset.timestamps[start]) / np.timedelta64(1, "s")) / 60
                found.append({"indicator": label, "side": side, "minutes_before_end": round(minutes, 1),
                              "vibration_feature": " band " not in label})
        found.sort(key=lambda entry: -entry["minutes_before_end"])
        features_only = [entry for entry in found if entry["vibration_feature"]]
        results[run] = {"best": found[:6], "best_vibration_feature": features_only[0] if features_only else None}
    return results


def main(argv: list[str]) -> int:
    wanted = argv or ["cwru", "femto", "ims", "indicators"]
    suites = {"cwru": cwru, "femto": femto, "ims": ims, "indicators": indicators, "loro": loro, "ball": ball}
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench-real-") as scratch:
        for name in wanted:
            if not (DATA / {"indicators": "femto", "loro": "femto", "ball": "cwru"}.get(name, name)).is_dir():
                print(f"{name}: {DATA / name} not found, skipped", file=sys.stderr)
                continue
            print(f"running {name} ...", file=sys.stderr, flush=True)
            results[name] = suites[name](Path(scratch))
    out = REPO / "bench" / "real_results.json"
    kept = json.loads(out.read_text()) if out.is_file() else {}  # suites not run this time keep their numbers
    out.write_text(json.dumps(kept | results, indent=2, default=str) + "\n")
    print_table(results)
    return 0


def print_table(results: dict) -> None:
    if "cwru" in results:
        print("CWRU (trained on normal_0_97, DE+FE, vibration set, 16,384-sample snapshots)")
        for name, entry in results["cwru"].items():
            if isinstance(entry, dict):
                print(f"  {name:<7} alarm snapshots {entry['alarm_snapshots']}/{entry['snapshots']}  "
                      f"episodes {entry['episodes']}  per-snapshot {entry['per_snapshot_kinds']}"
                      + (f"  line error vs README {entry['line_error_percent']} %" if "readme_hz" in entry else "")
                      + f"  median prominence {entry['median_prominence']}")
    if "ball" in results:
        print("CWRU per-snapshot diagnosis: shipped features at longer snapshots, and the band of highest spectral "
              "kurtosis per snapshot (16,384 samples)")
        for name, entry in results["ball"].items():
            print(f"  {name}: " + "; ".join(f"{way} {e['kinds']}" for way, e in entry.items()))
    if "femto" in results:
        print("FEMTO (trained on the first 30%, whole run evaluated; minutes before the end of the debounced alarm)")
        for run, entry in results["femto"].items():
            if run == "leave_one_run_out":
                continue
            anchor = entry["anchor_rule"]
            print(f"  {run}: articles' rule {anchor['articles_minutes_before_end']} min "
                  f"(recomputed here: {anchor['minutes_before_end']} min)")
            for feature_set in ("mean_abs", "vibration"):
                e = entry[feature_set]
                print(f"    {feature_set:<10} false alarm episodes {e['false_alarm_episodes']}, alarm "
                      f"{e['minutes_before_end']} min before the end, defect {e['defect_at_last_episode']}")
    for suite in ("femto", "loro"):
        if suite not in results:
            continue
        print("FEMTO leave-one-run-out (setting chosen on the other three runs; beside it the shipped defaults)")
        for run, entry in results[suite]["leave_one_run_out"].items():
            for feature_set, e in entry.items():
                print(f"  {run} {feature_set:<10} chosen {e['setting']}: {e['held_out']}; defaults {e['defaults']}; "
                      f"articles' rule {e['articles_minutes_before_end']} min")
    if "ims" in results:
        print(f"IMS healthy sample, vibration set: {results['ims']}")
    if "indicators" in results:
        print("FEMTO indicators: minutes before the end from which a 1-minute rolling median stays beyond its range "
              "over the first 30% (hindsight, no false episode)")
        for run, entry in results["indicators"].items():
            best = ", ".join(f"{e['indicator']} {e['side']} {e['minutes_before_end']}" for e in entry["best"])
            feature = entry["best_vibration_feature"]
            print(f"  {run}: {best}")
            if feature:
                print(f"    best vibration-set feature: {feature['indicator']} {feature['side']} "
                      f"{feature['minutes_before_end']} min")


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
