"""The feature contract: what one snapshot of raw samples becomes before the model sees it.

The trainer and the agent both compute features here, so features computed from files and features computed
from a replayed serial stream are equal bit for bit (no train/serve skew). Columns are channel-major: a
snapshot of C channels gives C x F values, column c*F + f is feature f of channel c.

Feature sets:
- `mean_abs` (F=1, the default and the original contract): mean absolute value per channel in g, exact.
- `vibration` (F=10): per channel, after removing the snapshot's mean (gravity, sensor offset):
  mean absolute value, RMS, peak (g); crest factor and kurtosis (ratios); velocity RMS from 10 to 1000 Hz
  in mm/s (ISO 20816; integrated in the frequency domain); and the envelope spectrum's amplitude at the
  bearing's BPFO, BPFI, BSF (or 2 x BSF, the larger) and FTF lines divided by the envelope spectrum's
  background (its median), so 1 means "no line" whatever the vibration level; 0 when the snapshot is too
  short to resolve the line (nearer to zero than MIN_LINE_BINS frequency bins).

Envelope: the band ENVELOPE_BAND (a share of the sample rate, above the shaft harmonics) is cut from the
snapshot's spectrum and shifted to zero frequency; the magnitude of its inverse FFT is the envelope of the
band-passed signal (the Hilbert envelope, computed at a lower rate); the spectrum of that envelope, at the
snapshot's own resolution, shows the impact rates of a bearing defect. numpy only: the Pi has no scipy.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edge.model.bearing import DEFECTS, BearingGeometry

FEATURE_SET = "mean_abs"
VIBRATION = "vibration"
VIBRATION_FEATURES = ("mean_abs", "rms", "peak", "crest_factor", "kurtosis", "velocity_rms",
                      "envelope_bpfo", "envelope_bpfi", "envelope_bsf", "envelope_ftf")
FEATURE_SETS = {FEATURE_SET: ("mean_abs",), VIBRATION: VIBRATION_FEATURES}
STANDARD_GRAVITY = 9.80665  # m/s^2 per g
VELOCITY_BAND_HZ = (10.0, 1000.0)  # ISO 20816
ENVELOPE_BAND = (0.04, 0.24)  # share of the sample rate demodulated for the envelope
LINE_TOLERANCE = 0.03  # a defect line is searched within +-3% (slip, speed error) and one bin either side
MIN_LINE_BINS = 3  # a line nearer to zero than this many bins cannot be told from DC and the shaft: not measured


def feature_columns(feature_set: str, channels: Sequence[str]) -> tuple[str, ...]:
    """The column names of a features table (after its timestamp) for this feature set and these channels, in
    the channel-major order of the model input: the channel's own name for a set with one feature per channel
    (mean_abs, as the telemetry's `features` names it), `<channel>.<feature>` for a set with several
    (`bearing1.velocity_rms`, the telemetry's `channel_features`). The trainer reads tables by these names
    and cm-fleet writes them from the historian: one rule for both."""
    if feature_set not in FEATURE_SETS:
        raise ValueError(f"unknown feature set {feature_set!r}: expected one of {', '.join(FEATURE_SETS)}")
    names = FEATURE_SETS[feature_set]
    if len(names) == 1:
        return tuple(channels)
    return tuple(f"{channel}.{name}" for channel in channels for name in names)


def mean_abs(counts: np.ndarray, scale: float) -> np.ndarray:
    """Mean absolute value per channel, in physical units (g), of an (n_samples, n_channels) int16 array.

    The sum of absolute counts is an exact integer; one float multiplication turns it into g, so the
    result depends only on the counts and the scale, never on how the samples were chunked.
    """
    if counts.ndim != 2 or counts.shape[0] == 0:
        raise ValueError(f"expected a non-empty (samples, channels) array, got shape {counts.shape}")
    # abs(-32768) wraps to -32768 in int16, whose uint16 view is 32768: the magnitudes are exact.
    magnitudes = np.abs(counts).view(np.uint16)
    # A float64 matrix-vector product sums integers below 2**53 exactly, whatever the order, and BLAS does
    # it several times faster than numpy's column-wise integer reduction of a (n, 4) array.
    total = np.ones(counts.shape[0]) @ magnitudes
    return total * (float(np.float32(scale)) / counts.shape[0])


def snapshot_features(counts: np.ndarray, scale: float, feature_set: str = FEATURE_SET) -> np.ndarray:
    """Features of one snapshot for a feature set that needs no machine data (mean_abs)."""
    if feature_set != FEATURE_SET:
        known = ", ".join(FEATURE_SETS)
        raise ValueError(f"unknown feature set {feature_set!r}: expected one of {known} "
                         f"({VIBRATION} needs a FeatureConfig with bearing and shaft speed: use FeatureExtractor)")
    return mean_abs(counts, scale)


@dataclass(frozen=True)
class FeatureConfig:
    """What the features of a bundle depend on besides the samples (the model card records it)."""

    feature_set: str = FEATURE_SET
    sample_rate_hz: int = 0
    bearing: BearingGeometry | None = None
    shaft_rpm: float | None = None

    def __post_init__(self) -> None:
        if self.feature_set not in FEATURE_SETS:
            raise ValueError(f"unknown feature set {self.feature_set!r}: expected one of {', '.join(FEATURE_SETS)}")
        if self.feature_set == VIBRATION:
            if self.sample_rate_hz <= 0:
                raise ValueError("feature set vibration: needs the sample rate (--sample-rate)")
            if self.bearing is None or self.shaft_rpm is None or not self.shaft_rpm > 0:
                raise ValueError("feature set vibration: needs --bearing (preset or geometry) and --shaft-rpm > 0")

    @property
    def names(self) -> tuple[str, ...]:
        return FEATURE_SETS[self.feature_set]

    def defect_hz(self) -> dict[str, float]:
        assert self.bearing is not None and self.shaft_rpm is not None
        return self.bearing.frequencies(self.shaft_rpm)


@dataclass(frozen=True)
class Analysis:
    """One snapshot's features and, for the vibration set, where each defect line was found."""

    features: np.ndarray  # (C*F,) channel-major
    line_hz: np.ndarray | None = None  # (C, 4) frequency of the strongest envelope line near BPFO, BPFI, BSF, FTF
    prominence: np.ndarray | None = None  # (C, 4) that line's amplitude over the envelope background


@dataclass(frozen=True)
class _Plan:
    """Everything about a snapshot length that does not depend on the samples, computed once."""

    velocity_weights: np.ndarray  # per rfft bin: |X|^2 x weight summed = velocity mean square (mm/s)^2
    band: slice  # rfft bins demodulated for the envelope
    envelope_length: int  # inverse FFT length (a fast size >= the band's bins)
    windows: tuple[tuple[int, int], ...]  # envelope-spectrum bins searched for BPFO, BPFI, BSF, 2xBSF, FTF
    unresolved: tuple[bool, ...]  # per window: too near zero for this snapshot's resolution (prominence 0)
    nominal_hz: tuple[float, ...]  # per window: the defect frequency itself
    background: slice  # envelope-spectrum bins whose median is the background
    bin_hz: float


class FeatureExtractor:
    """Features of snapshots for one FeatureConfig; the per-length plan is computed on first use."""

    def __init__(self, config: FeatureConfig = FeatureConfig()) -> None:
        self.config = config
        self.names = config.names
        self._plans: dict[int, _Plan] = {}
        self._lines = config.defect_hz() if config.feature_set == VIBRATION else {}

    def __call__(self, counts: np.ndarray, scale: float) -> np.ndarray:
        return self.analyse(counts, scale).features

    def analyse(self, counts: np.ndarray, scale: float) -> Analysis:
        if self.config.feature_set == FEATURE_SET:
            return Analysis(mean_abs(counts, scale))
        return self._vibration(counts, scale)

    def _plan(self, samples: int) -> _Plan:
        plan = self._plans.get(samples)
        if plan is None:
            plan = self._plans[samples] = _make_plan(samples, self.config.sample_rate_hz, self._lines)
        return plan

    def _vibration(self, counts: np.ndarray, scale: float) -> Analysis:
        if counts.ndim != 2 or counts.shape[0] < 16:
            raise ValueError(f"expected a (samples, channels) array of at least 16 samples, got shape {counts.shape}")
        n = counts.shape[0]
        plan = self._plan(n)
        # One contiguous float64 row per channel: the same layout whatever the counts' origin (file or
        # frames), so every reduction and FFT runs the same operations in the same order.
        x = np.ascontiguousarray(counts.T, dtype=np.float64)
        x *= float(np.float32(scale))
        x -= (x.sum(axis=1) / n)[:, None]
        squares = x * x
        magnitude = np.abs(x)
        mean_abs_g = magnitude.sum(axis=1) / n
        power = squares.sum(axis=1) / n
        rms = np.sqrt(power)
        peak = magnitude.max(axis=1)
        safe = np.where(power > 0, power, 1.0)
        crest = np.where(power > 0, peak / np.sqrt(safe), 0.0)
        kurtosis = np.where(power > 0, (squares * squares).sum(axis=1) / n / (safe * safe), 0.0)
        spectrum = np.fft.rfft(x, axis=1)
        spectral_power = spectrum.real**2 + spectrum.imag**2
        velocity = np.sqrt(spectral_power @ plan.velocity_weights)
        envelope_spectrum = _envelope_spectrum(spectrum, plan)
        prominence, line_hz = _lines(envelope_spectrum, plan)
        features = np.column_stack([mean_abs_g, rms, peak, crest, kurtosis, velocity, prominence])
        return Analysis(features.ravel(), line_hz, prominence)


def _fast_length(n: int) -> int:
    """The smallest 2^a 3^b 5^c >= n: pocketfft is fastest on such lengths."""
    best = 1 << max(0, (n - 1).bit_length())
    for threes in (1, 3, 9, 27, 81):
        for fives in (1, 5, 25, 125):
            base = threes * fives
            if base >= best:
                continue
            size = base << max(0, math.ceil(math.log2(n / base)))
            best = min(best, size) if size >= n else best
    return best


def _make_plan(samples: int, rate: int, lines: dict[str, float]) -> _Plan:
    bin_hz = rate / samples
    frequencies = np.arange(samples // 2 + 1) * bin_hz
    in_band = (frequencies >= VELOCITY_BAND_HZ[0]) & (frequencies <= VELOCITY_BAND_HZ[1])
    # Parseval on a one-sided spectrum: mean square = 2 |X_k|^2 / N^2 per bin; velocity = acceleration / (2 pi f).
    to_mm_s = STANDARD_GRAVITY * 1000.0 / (2 * np.pi * np.where(in_band, frequencies, 1.0))
    weights = np.where(in_band, 2.0 * to_mm_s**2 / samples**2, 0.0)
    low = max(1, int(round(ENVELOPE_BAND[0] * samples)))
    high = min(samples // 2, int(round(ENVELOPE_BAND[1] * samples)))
    length = _fast_length(high - low)
    top = length // 2  # envelope-spectrum bins available
    windows = []
    nominal = []
    for name in ("bpfo", "bpfi", "bsf", "bsf2", "ftf"):
        f0 = 2 * lines["bsf"] if name == "bsf2" else lines[name]
        nominal.append(f0)
        first = max(1, int(math.floor(f0 * (1 - LINE_TOLERANCE) / bin_hz)) - 1)
        last = min(top - 2, int(math.ceil(f0 * (1 + LINE_TOLERANCE) / bin_hz)) + 1)
        if last < first:
            raise ValueError(f"envelope line {name} at {f0:.1f} Hz is beyond the envelope spectrum "
                             f"({top * bin_hz:.0f} Hz at {rate} Hz): a higher sample rate is needed")
        windows.append((first, last + 1))
    background_top = min(top, int(math.ceil(3 * max(lines.values()) / bin_hz)) + 1)
    # FEMTO's 0.1 s snapshots have 10 Hz bins: its 13 Hz FTF would be read off the DC and 1x shaft region.
    unresolved = tuple(f0 * (1 - LINE_TOLERANCE) < MIN_LINE_BINS * bin_hz for f0 in nominal)
    return _Plan(weights, slice(low, high), length, tuple(windows), unresolved, tuple(nominal),
                 slice(1, max(background_top, 4)), bin_hz)


def _envelope_spectrum(spectrum: np.ndarray, plan: _Plan) -> np.ndarray:
    """Amplitude spectrum of the envelope of the band-passed signal, one row per channel."""
    shifted = np.zeros((spectrum.shape[0], plan.envelope_length), dtype=np.complex128)
    band = spectrum[:, plan.band]
    shifted[:, : band.shape[1]] = band
    envelope = np.abs(np.fft.ifft(shifted, axis=1))
    envelope -= (envelope.sum(axis=1) / plan.envelope_length)[:, None]
    return np.abs(np.fft.rfft(envelope, axis=1))


def _lines(envelope_spectrum: np.ndarray, plan: _Plan) -> tuple[np.ndarray, np.ndarray]:
    """(C, 4) prominence and frequency of the strongest line in each defect's window (BSF: BSF or 2 x BSF)."""
    background = np.median(envelope_spectrum[:, plan.background], axis=1)
    background = np.where(background > 0, background, 1.0)
    channels = envelope_spectrum.shape[0]
    heights = np.empty((channels, len(plan.windows)))
    where = np.empty((channels, len(plan.windows)))
    for column, (first, last) in enumerate(plan.windows):
        segment = envelope_spectrum[:, first:last]
        best = segment.argmax(axis=1)
        rows = np.arange(channels)
        heights[:, column] = segment[rows, best]
        where[:, column] = _interpolated(envelope_spectrum, first + best) * plan.bin_hz
    prominence = heights / background[:, None]
    for column, unresolved in enumerate(plan.unresolved):
        if unresolved:
            prominence[:, column] = 0.0
            where[:, column] = plan.nominal_hz[column]
    # BSF column: whichever of BSF and 2 x BSF stands out more (a ball strikes both races once per spin).
    use_double = prominence[:, 3] > prominence[:, 2]
    prominence[:, 2] = np.where(use_double, prominence[:, 3], prominence[:, 2])
    where[:, 2] = np.where(use_double, where[:, 3], where[:, 2])
    keep = [0, 1, 2, 4]  # bpfo, bpfi, bsf, ftf: the order of DEFECTS
    assert tuple(("bpfo", "bpfi", "bsf", "bsf2", "ftf")[k] for k in keep) == DEFECTS
    return prominence[:, keep], where[:, keep]


def _interpolated(spectrum: np.ndarray, peak: np.ndarray) -> np.ndarray:
    """Sub-bin peak position by a parabola through the peak bin and its neighbours."""
    rows = np.arange(spectrum.shape[0])
    left, centre, right = spectrum[rows, peak - 1], spectrum[rows, peak], spectrum[rows, peak + 1]
    curvature = left - 2 * centre + right
    offset = np.where(curvature < 0, 0.5 * (left - right) / np.where(curvature < 0, curvature, -1.0), 0.0)
    return peak + np.clip(offset, -0.5, 0.5)

