"""Diagnosis: which part of the bearing a warning points to, and the ISO 20816 zone of the vibration velocity.

Defect rule (one home, used by the agent's alerts and telemetry and by `cm-train evaluate`'s report): the
vibration feature set measures, per channel, the envelope spectrum's strongest line near BPFO, BPFI, BSF
(or 2 x BSF) and FTF and its prominence (line amplitude over the envelope spectrum's median background).
The defect is the line with the highest prominence over all channels when
- its prominence is at least MIN_PROMINENCE (a line that does not stand clear of the noise is no evidence), and
- it is at least MIN_MARGIN times the next defect line's prominence on the same channel (shaft sidebands of
  an inner-race defect land near other lines; without a clear winner we do not pick one);
otherwise the kind is `unknown`, reported with the strongest line found so a person can look.

ISO 20816 zones (A newly commissioned, B unrestricted operation, C restricted, D damage may occur) from the
velocity RMS 10-1000 Hz in mm/s; the boundaries depend on the machine group and foundation.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge.model.bearing import DEFECTS
from edge.model.features import Analysis

KINDS = {"bpfo": "outer_race", "bpfi": "inner_race", "bsf": "rolling_element", "ftf": "cage"}
UNKNOWN = "unknown"
MIN_PROMINENCE = 6.0
MIN_MARGIN = 1.5

# Zone boundaries A/B, B/C, C/D of velocity RMS (mm/s). ISO 20816-3 groups 1 (300 kW - 50 MW) and 2
# (15 - 300 kW) on rigid or flexible foundations; "small" is ISO 10816-1 class I (below 15 kW).
ISO_GROUPS: dict[str, tuple[float, float, float]] = {
    "1-rigid": (2.3, 4.5, 7.1),
    "1-flexible": (3.5, 7.1, 11.0),
    "2-rigid": (1.4, 2.8, 4.5),
    "2-flexible": (2.3, 4.5, 7.1),
    "small": (0.71, 1.8, 4.5),
}
DEFAULT_ISO_GROUP = "2-rigid"  # medium machines (15 - 300 kW) on rigid foundations: most pumps and fans
ZONES = ("A", "B", "C", "D")
VELOCITY_FEATURE = "velocity_rms"


@dataclass(frozen=True)
class Defect:
    kind: str  # outer_race, inner_race, rolling_element, cage or unknown
    frequency_hz: float  # the envelope line found
    channel: str
    prominence: float  # the line's amplitude over the envelope background

    def payload(self) -> dict[str, Any]:
        return {"kind": self.kind, "frequency_hz": round(self.frequency_hz, 2), "channel": self.channel,
                "prominence": round(self.prominence, 2)}


def diagnose(line_hz: np.ndarray, prominence: np.ndarray, channels: Sequence[str]) -> Defect:
    """The defect the envelope lines of one snapshot point to; (C, 4) arrays in the order of DEFECTS."""
    channel, column = (int(i) for i in np.unravel_index(int(np.argmax(prominence)), prominence.shape))
    best = float(prominence[channel, column])
    others = np.delete(prominence[channel], column)
    runner_up = float(others.max()) if others.size else 0.0
    clear = best >= MIN_PROMINENCE and best >= MIN_MARGIN * runner_up
    kind = KINDS[DEFECTS[column]] if clear else UNKNOWN
    return Defect(kind, float(line_hz[channel, column]), channels[int(channel)], best)


def assess(analysis: Analysis, names: Sequence[str], channels: Sequence[str],
           group: str = DEFAULT_ISO_GROUP) -> tuple[dict[str, str] | None, Defect | None]:
    """One snapshot's diagnosis: each channel's zone and the defect its envelope lines point to (the vibration
    set; None for a set without velocity or envelope lines). The caller keeps the defect for warnings and alarms."""
    iso = zones(analysis.features, names, channels, group)
    if analysis.line_hz is None or analysis.prominence is None:
        return iso, None
    return iso, diagnose(analysis.line_hz, analysis.prominence, channels)


def zone(velocity_mm_s: float, group: str = DEFAULT_ISO_GROUP) -> str:
    """ISO 20816 zone A-D of a velocity RMS (mm/s) for a machine group of ISO_GROUPS."""
    boundaries = ISO_GROUPS[group]
    return ZONES[int(np.searchsorted(boundaries, velocity_mm_s, side="left"))]  # a boundary value is the lower zone


def zones(features: np.ndarray, names: Sequence[str], channels: Sequence[str], group: str = DEFAULT_ISO_GROUP) -> dict[str, str] | None:
    """Each channel's zone from a channel-major features row; None when the feature set has no velocity."""
    if VELOCITY_FEATURE not in names:
        return None
    per_channel = len(names)
    at = list(names).index(VELOCITY_FEATURE)
    return {name: zone(float(features[c * per_channel + at]), group) for c, name in enumerate(channels)}
