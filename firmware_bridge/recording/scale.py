"""The scale rule: which g per count a recording's int16 snapshots are held at (one home; PROTOCOL.md §3).

A recording is held at 0.001 g per count when all its values fit in int16 (|value| <= 32.767 g), else at the
smallest power-of-two multiple 0.001 g x 2**k that holds its largest magnitude (the selected channels of every
snapshot, found by a first pass over the files). One scale per recording, as a real sensor has one: the trainer
records it in the model card (feature_spec.scale) and the replay harness sends it in every frame, so the agent
accepts the stream and a replayed snapshot's features equal the trainer's bit for bit. Three-decimal data (IMS,
FEMTO) is lossless at k = 0; other data is rounded to the nearest count.
"""
from __future__ import annotations

import numpy as np

BASE_SCALE = 0.001  # g per count: three-decimal data is exact at this scale
_INT16_MAX = 32767


def scale_exponent(peak_g: float) -> int:
    """The k of the scale rule: the smallest k >= 0 with round(peak / (0.001 * 2**k)) <= 32767."""
    counts = abs(peak_g) / BASE_SCALE
    k = 0
    while round(counts / 2**k) > _INT16_MAX:
        k += 1
    return k


def scale_for(k: int) -> float:
    """0.001 g x 2**k as the float32 the frames carry (so the trainer and the agent use the same number)."""
    return float(np.float32(BASE_SCALE * 2**k))


def peak(values: np.ndarray) -> float:
    return float(np.max(np.abs(values))) if values.size else 0.0


def quantize(values: np.ndarray, k: int | None = None) -> tuple[np.ndarray, float]:
    """(samples, channels) g values -> int16 counts at 0.001 g x 2**k (k: by the scale rule for these values).

    Counts are round(value * 1000 / 2**k): for three-decimal values at k = 0 exactly the written digits.
    """
    values = np.asarray(values, dtype=np.float64)
    if k is None:
        k = scale_exponent(peak(values))
    elif round(peak(values) * 1000.0 / 2**k) > _INT16_MAX:
        raise ValueError(f"values up to {peak(values):g} g do not fit int16 at {scale_for(k):g} g per count")
    counts = np.rint(values * (1000.0 / 2**k))
    return counts.astype(np.int16), scale_for(k)
