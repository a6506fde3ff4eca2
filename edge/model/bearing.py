"""Bearing geometry and the defect frequencies it gives at a shaft speed (BPFO, BPFI, BSF, FTF).

`--bearing` takes a preset (values from the data sets' READMEs) or explicit geometry
`balls=N,ball_mm=X,pitch_mm=Y,contact_deg=Z`. BSF here is the ball (roller) spin frequency; a defect on a
rolling element strikes both races once per spin, so its envelope line is often at 2 x BSF too (the feature
and the diagnosis look at both).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

INCH_MM = 25.4
DEFECTS = ("bpfo", "bpfi", "bsf", "ftf")


@dataclass(frozen=True)
class BearingGeometry:
    balls: int
    ball_mm: float
    pitch_mm: float
    contact_deg: float = 0.0
    name: str = "custom"

    def __post_init__(self) -> None:
        if self.balls < 1 or not 0 < self.ball_mm < self.pitch_mm or not 0 <= self.contact_deg < 90:
            raise ValueError(f"bearing {self.name}: expected balls >= 1, 0 < ball_mm < pitch_mm and "
                             f"0 <= contact_deg < 90, got {self}")

    def orders(self) -> dict[str, float]:
        """Defect frequencies as multiples of the shaft speed (the outer race fixed, the inner turning)."""
        ratio = self.ball_mm / self.pitch_mm * math.cos(math.radians(self.contact_deg))
        return {
            "bpfo": self.balls / 2 * (1 - ratio),
            "bpfi": self.balls / 2 * (1 + ratio),
            "bsf": self.pitch_mm / (2 * self.ball_mm) * (1 - ratio**2),
            "ftf": (1 - ratio) / 2,
        }

    def frequencies(self, shaft_rpm: float) -> dict[str, float]:
        """Defect frequencies in Hz at `shaft_rpm`."""
        return {name: order * shaft_rpm / 60.0 for name, order in self.orders().items()}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BearingGeometry:
        return cls(balls=int(data["balls"]), ball_mm=float(data["ball_mm"]), pitch_mm=float(data["pitch_mm"]),
                   contact_deg=float(data.get("contact_deg", 0.0)), name=str(data.get("name", "custom")))


PRESETS = {
    # IMS: Rexnord ZA-2115 double row, 16 rollers per row, 0.331 in rollers, 2.815 in pitch, 15.17 degrees.
    "za-2115": BearingGeometry(16, 0.331 * INCH_MM, 2.815 * INCH_MM, 15.17, "za-2115"),
    # CWRU drive end: SKF 6205-2RS, 9 balls of 0.3126 in, pitch 1.537 in.
    "6205-2rs": BearingGeometry(9, 0.3126 * INCH_MM, 1.537 * INCH_MM, 0.0, "6205-2rs"),
    # CWRU fan end: SKF 6203-2RS, 8 balls of 0.2656 in, pitch 1.122 in.
    "6203-2rs": BearingGeometry(8, 0.2656 * INCH_MM, 1.122 * INCH_MM, 0.0, "6203-2rs"),
    # FEMTO/PRONOSTIA: 13 balls of 3.5 mm, pitch 25.6 mm, contact angle 0.
    "pronostia": BearingGeometry(13, 3.5, 25.6, 0.0, "pronostia"),
}


def parse_bearing(text: str) -> BearingGeometry:
    """A preset name or `balls=N,ball_mm=X,pitch_mm=Y,contact_deg=Z` (contact_deg optional, default 0)."""
    key = text.strip().lower()
    if key in PRESETS:
        return PRESETS[key]
    expected = (f"expected a preset ({', '.join(PRESETS)}) or balls=N,ball_mm=X,pitch_mm=Y,contact_deg=Z, "
                f"got {text!r}")
    fields: dict[str, str] = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        if not sep or name.strip() not in ("balls", "ball_mm", "pitch_mm", "contact_deg"):
            raise ValueError(expected)
        fields[name.strip()] = value.strip()
    if not {"balls", "ball_mm", "pitch_mm"} <= fields.keys():
        raise ValueError(expected)
    try:
        balls = int(fields["balls"])
        numbers = {k: float(fields[k]) for k in ("ball_mm", "pitch_mm")}
        contact = float(fields.get("contact_deg", "0"))
    except ValueError:
        raise ValueError(expected) from None
    return BearingGeometry(balls, numbers["ball_mm"], numbers["pitch_mm"], contact)
