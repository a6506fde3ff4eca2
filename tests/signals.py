"""Synthetic bearing vibration with a known defect: decaying resonance bursts repeated at a defect frequency."""
from __future__ import annotations

import numpy as np


def defect_signal(rate: int, samples: int, defect_hz: float | None, *, shaft_hz: float = 30.0,
                  modulate: bool = False, resonance_hz: float = 3000.0, impact_g: float = 2.0,
                  noise_g: float = 0.05, seed: int = 0) -> np.ndarray:
    """(samples,) acceleration in g: shaft 1x, broadband noise and, when `defect_hz` is given, an impact at
    every defect period exciting a structural resonance (amplitude-modulated at the shaft rate when the
    defect turns with the shaft, as an inner-race defect does through the load zone)."""
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / rate
    signal = 0.1 * np.sin(2 * np.pi * shaft_hz * t) + rng.normal(0, noise_g, samples)
    if defect_hz is None:
        return signal
    ring = np.exp(-t[: rate // 200] * 1500.0) * np.sin(2 * np.pi * resonance_hz * t[: rate // 200])
    impacts = np.zeros(samples)
    times = np.arange(0, samples / rate, 1 / defect_hz)
    jitter = rng.normal(0, 0.002 / defect_hz, times.size)  # slip: impacts are not exactly periodic
    index = np.clip(np.rint((times + jitter) * rate).astype(int), 0, samples - 1)
    strength = impact_g * (1 + 0.8 * np.cos(2 * np.pi * shaft_hz * times)) / 1.8 if modulate else impact_g
    np.add.at(impacts, index, strength)
    return signal + np.convolve(impacts, ring)[:samples]


def to_counts(*channels: np.ndarray, offset_g: float = 0.0) -> np.ndarray:
    """(samples, channels) int16 counts of 0.001 g, with a DC offset (gravity on a DC-coupled sensor)."""
    return np.rint((np.column_stack(channels) + offset_g) * 1000).astype(np.int16)
