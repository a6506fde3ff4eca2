"""Synthetic run-to-failure data in the IMS format (4 bearings, 20,480 samples at 20 kHz per snapshot).

The physics is the textbook picture of a rolling-element bearing test rig like the IMS one:
- every channel: broadband structural noise shaped by a few resonances, shaft harmonics at 2000 RPM,
  and a slow mean-reverting wander of a few % in level (load and temperature drift, no exact period);
- the failing bearing: impacts at the outer-race defect frequency (ZA-2115 at 2000 RPM: 236.4 Hz, with
  1-2 % slip) each ringing a structural resonance of a few kHz; the impact amplitude grows from below
  the noise to severe over the last 30-40 % of the run in a few abrupt steps (defect growth events),
  broadband noise rises near the end, and 10-12 % of it leaks to the neighbouring bearings;
- optionally the failing bearing's sensor drops out for the last three files, as real runs end.

A run is planned once from the seed (the slow per-file quantities) and each file draws its samples
from its own seeded generator, so any snapshot can be produced on its own, in any order.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

from firmware_bridge.ims import (
    IMS_SAMPLE_RATE,
    IMS_SCALE,
    IMS_SNAPSHOT_SAMPLES,
    parse_timestamp,
    write_ims_file,
)

BEARINGS = 4
SHAFT_HZ = 2000 / 60
BPFO_HZ = 236.4  # ZA-2115 outer-race defect frequency at 2000 RPM
DEFAULT_START = "2004.02.12.10.32.39"  # the start of IMS set 2, an outer-race failure
DROPOUT_FILES = 3

_FREQS = np.fft.rfftfreq(IMS_SNAPSHOT_SAMPLES, 1 / IMS_SAMPLE_RATE)
_TIME = np.arange(IMS_SNAPSHOT_SAMPLES) / IMS_SAMPLE_RATE
_RING_SAMPLES = 256  # ~13 ms: the resonance has decayed by a factor of > 1e5 by then
_COUNT_LIMIT = np.iinfo(np.int16).max


@dataclass(frozen=True)
class RunPlan:
    """The slow, per-file quantities of one run; samples are drawn per file from `seed` and the index."""

    seed: int
    files: int
    fail_bearing: int  # 1-based
    dropout_at_end: bool
    noise_level: np.ndarray  # (files, BEARINGS) broadband RMS in g, with the slow wander
    noise_shape: np.ndarray  # (BEARINGS, len(_FREQS)) amplitude spectrum giving unit variance
    harmonics: np.ndarray  # (BEARINGS, 3) amplitudes in g of 1x, 2x, 3x shaft speed
    offset: np.ndarray  # (BEARINGS,) sensor DC offset in g
    severity: np.ndarray  # (files,) impact peak amplitude in g on the failing bearing
    noise_growth: np.ndarray  # (files,) broadband multiplier on the failing bearing
    crosstalk: np.ndarray  # (BEARINGS,) share of the failing bearing's defect signal each channel sees
    ring: np.ndarray  # (len(_FREQS),) spectrum of one unit impact ringing the structure
    speed: np.ndarray  # (files,) shaft speed relative to nominal

    def failing_channel(self) -> int:
        return self.fail_bearing - 1


def _mean_reverting(rng: np.random.Generator, shape: tuple[int, ...], std: float, keep: float) -> np.ndarray:
    """AR(1) paths along axis 0 with stationary standard deviation `std`: drift that never runs away."""
    steps = rng.standard_normal(shape) * std * np.sqrt(1 - keep**2)
    path = np.empty(shape)
    path[0] = rng.standard_normal(shape[1:]) * std
    for k in range(1, shape[0]):  # one step per file, not per sample
        path[k] = keep * path[k - 1] + steps[k]
    return path


def _noise_shape(rng: np.random.Generator) -> np.ndarray:
    """Per-channel structural spectrum: a low floor plus resonance bumps near 1, 3.5 and 4.5 kHz (as in IMS)."""
    centres = np.array([1000.0, 3500.0, 4400.0]) * rng.uniform(0.93, 1.07, (BEARINGS, 3))
    widths = np.array([180.0, 500.0, 400.0]) * rng.uniform(0.8, 1.2, (BEARINGS, 3))
    heights = np.array([1.0, 0.8, 0.9]) * rng.uniform(0.7, 1.3, (BEARINGS, 3))
    bumps = heights[..., None] * np.exp(-0.5 * ((_FREQS - centres[..., None]) / widths[..., None]) ** 2)
    shape = 0.12 + bumps.sum(axis=1)
    shape[:, 0] = 0.0
    shape[:, -1] = 0.0
    # irfft of unit complex noise times S has variance 2 * sum(S^2) / n^2: normalise to 1.
    return shape * (IMS_SNAPSHOT_SAMPLES / np.sqrt(2 * (shape**2).sum(axis=1, keepdims=True)))


def _ring_spectrum(rng: np.random.Generator) -> np.ndarray:
    """Spectrum of a unit-peak impact exciting a damped structural resonance of a few kHz."""
    frequency = rng.uniform(2800.0, 4200.0)
    decay = 1 / (2 * np.pi * frequency * rng.uniform(0.04, 0.07))
    t = np.arange(_RING_SAMPLES) / IMS_SAMPLE_RATE
    kernel = np.exp(-t / decay) * np.sin(2 * np.pi * frequency * t)
    return np.fft.rfft(kernel / np.abs(kernel).max(), IMS_SNAPSHOT_SAMPLES)


def _severity(rng: np.random.Generator, files: int) -> tuple[np.ndarray, np.ndarray]:
    """Impact amplitude (g) and broadband growth per file: invisible, then exponential growth with steps."""
    progress = np.linspace(0.0, 1.0, files)
    onset = rng.uniform(0.60, 0.70)
    stage = np.clip((progress - onset) / (1 - onset), 0.0, 1.0)
    growth = np.expm1(4.0 * stage) / np.expm1(4.0)
    step_at = np.sort(rng.uniform(onset + 0.05, 0.97, rng.integers(2, 5)))
    step_size = rng.uniform(1.3, 1.9, step_at.size)
    steps = np.prod(np.where(progress[:, None] >= step_at, step_size, 1.0), axis=1) / step_size.prod()
    final_peak = rng.uniform(3.0, 4.5)  # g: a spalled outer race on a 6000 lb rig
    severity = final_peak * growth * steps
    noise_growth = 1.0 + 1.2 * growth**1.5
    return severity, noise_growth


def plan_run(files: int, fail_bearing: int, seed: int, dropout_at_end: bool = False, drift: float = 1.0) -> RunPlan:
    """Draw the slow quantities of a run: the same seed always gives the same run. `drift` scales the load and
    temperature wander (1: a few %, as the tests use; the detection benchmark sweeps it)."""
    if not 0 <= drift <= 10:
        raise ValueError(f"drift: expected a factor in [0, 10], got {drift}")
    if files < 2:
        raise ValueError(f"files: expected at least 2, got {files}")
    if not 1 <= fail_bearing <= BEARINGS:
        raise ValueError(f"fail_bearing: expected 1..{BEARINGS}, got {fail_bearing}")
    if dropout_at_end and files <= DROPOUT_FILES:
        raise ValueError(f"files: --dropout-at-end needs more than {DROPOUT_FILES} files, got {files}")
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    mean_abs = rng.uniform(0.065, 0.085, BEARINGS)  # healthy level like the real IMS files
    # Load and temperature move all channels together; each sensor mount adds its own smaller drift.
    common = _mean_reverting(rng, (files, 1), std=0.02 * drift, keep=0.95)
    own = _mean_reverting(rng, (files, BEARINGS), std=0.012 * drift, keep=0.9)
    severity, noise_growth = _severity(rng, files)
    neighbour = rng.uniform(0.10, 0.12)
    failing = fail_bearing - 1
    crosstalk = np.where(np.abs(np.arange(BEARINGS) - failing) == 1, neighbour, 0.0)
    crosstalk[failing] = 1.0
    return RunPlan(
        seed=seed,
        files=files,
        fail_bearing=fail_bearing,
        dropout_at_end=dropout_at_end,
        noise_level=mean_abs * np.sqrt(np.pi / 2) * 0.95 * np.exp(common + own),
        noise_shape=_noise_shape(rng),
        harmonics=rng.uniform(0.004, 0.012, (BEARINGS, 3)) * np.array([1.0, 0.6, 0.3]),
        offset=rng.uniform(-0.006, 0.006, BEARINGS),
        severity=severity,
        noise_growth=noise_growth,
        crosstalk=crosstalk,
        ring=_ring_spectrum(rng),
        speed=1 + _mean_reverting(rng, (files, 1), std=0.002, keep=0.9)[:, 0],
    )


def _impact_train(rng: np.random.Generator, plan: RunPlan, index: int) -> np.ndarray:
    """Spectrum of the defect's impacts in one snapshot: slipping impact times, varying strengths."""
    period = IMS_SAMPLE_RATE / (BPFO_HZ * plan.speed[index])  # samples
    count = int(IMS_SNAPSHOT_SAMPLES / period) + 2
    slip = rng.uniform(0.01, 0.02)
    spacing = period * (1 + slip * rng.standard_normal(count))
    times = rng.uniform(0, period) + np.concatenate(([0.0], np.cumsum(spacing[:-1])))
    times = np.rint(times).astype(np.intp)  # bincount takes the platform's index type: int32 on 32-bit Pi OS
    times = times[times < IMS_SNAPSHOT_SAMPLES]
    strength = plan.severity[index] * rng.lognormal(0.0, 0.25, times.size)
    train = np.bincount(times, weights=strength, minlength=IMS_SNAPSHOT_SAMPLES)
    return np.fft.rfft(train) * plan.ring


def snapshot_values(plan: RunPlan, index: int) -> np.ndarray:
    """(20480, 4) float64 acceleration in g of snapshot `index` of the run."""
    if not 0 <= index < plan.files:
        raise IndexError(f"snapshot index {index} outside the run's {plan.files} files")
    rng = np.random.default_rng(np.random.SeedSequence(plan.seed, spawn_key=(1, index)))
    failing = plan.failing_channel()
    level = plan.noise_level[index].copy()
    level[failing] *= plan.noise_growth[index]
    # Extra broadband noise of the damaged bearing also travels to the neighbours.
    extra = plan.noise_level[index, failing] * (plan.noise_growth[index] - 1) * plan.crosstalk
    level = np.sqrt(level**2 + np.where(np.arange(BEARINGS) == failing, 0.0, extra) ** 2)
    white = rng.standard_normal((2, BEARINGS, _FREQS.size))
    # Real and imaginary parts of N(0, 1/2) give unit power per bin, the normalisation _noise_shape assumes.
    spectrum = (white[0] + 1j * white[1]) * (plan.noise_shape * level[:, None] * np.sqrt(0.5))
    if plan.severity[index] > 0:
        spectrum += plan.crosstalk[:, None] * _impact_train(rng, plan, index)
    signal = np.fft.irfft(spectrum, IMS_SNAPSHOT_SAMPLES, axis=1).T
    phases = rng.uniform(0, 2 * np.pi, (BEARINGS, 3))
    orders = np.arange(1, 4)
    shaft = 2 * np.pi * SHAFT_HZ * plan.speed[index] * orders[:, None] * _TIME  # (3, samples)
    signal += np.einsum("ch,chs->sc", plan.harmonics, np.sin(shaft[None] + phases[..., None]))
    signal += plan.offset
    if plan.dropout_at_end and index >= plan.files - DROPOUT_FILES:
        # A broken cable: only a few thousandths of a g of electrical noise remain.
        signal[:, failing] = rng.normal(0.0, 0.003, IMS_SNAPSHOT_SAMPLES)
    return signal


def snapshot(plan: RunPlan, index: int) -> np.ndarray:
    """(20480, 4) int16 counts of 0.001 g of snapshot `index`, as an IMS file would hold them."""
    counts = np.rint(snapshot_values(plan, index) / IMS_SCALE)
    return np.clip(counts, -_COUNT_LIMIT - 1, _COUNT_LIMIT).astype(np.int16)


def generate(
    out_dir: str | Path,
    *,
    files: int,
    fail_bearing: int,
    seed: int,
    interval_minutes: float = 10,
    dropout_at_end: bool = False,
    start: str | datetime = DEFAULT_START,
    drift: float = 1.0,
) -> list[Path]:
    """Write a run of `files` IMS files into `out_dir` (created if missing); returns their paths in time order."""
    first = parse_timestamp(start) if isinstance(start, str) else start
    if interval_minutes * 60 < 1:
        raise ValueError(f"interval_minutes: expected at least 1 s between files, got {interval_minutes} min")
    plan = plan_run(files, fail_bearing, seed, dropout_at_end, drift)
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    step = timedelta(minutes=interval_minutes)
    return [write_ims_file(root, first + i * step, snapshot(plan, i)) for i in range(files)]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cm-synth", description="Write a synthetic bearing run to failure as IMS-format files."
    )
    parser.add_argument("out_dir", type=Path, help="directory to write the files into (created if missing)")
    parser.add_argument("--files", type=int, required=True, help="number of snapshots (files) in the run")
    parser.add_argument("--fail-bearing", type=int, required=True, choices=range(1, BEARINGS + 1),
                        metavar="B", help="the bearing (1-4) that fails")
    parser.add_argument("--seed", type=int, required=True, help="random seed: same seed, same bytes")
    parser.add_argument("--interval-minutes", type=float, default=10, help="minutes between snapshots (10)")
    parser.add_argument("--dropout-at-end", action="store_true",
                        help="the failing bearing's sensor drops out for the last 3 files")
    parser.add_argument("--start", default=DEFAULT_START, help=f"first file's time (UTC), default {DEFAULT_START}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        paths = generate(
            args.out_dir,
            files=args.files,
            fail_bearing=args.fail_bearing,
            seed=args.seed,
            interval_minutes=args.interval_minutes,
            dropout_at_end=args.dropout_at_end,
            start=args.start,
        )
    except (ValueError, OSError) as error:  # ImsFormatError is a ValueError: a bad --start
        print(f"cm-synth: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {len(paths)} files to {args.out_dir} ({paths[0].name} .. {paths[-1].name})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
