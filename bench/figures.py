"""How every benchmark reports a measurement: the median of repeated runs, with min and max."""
from __future__ import annotations

import statistics


def figure(samples: list[float], unit: str) -> dict:
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples), "unit": unit,
            "runs": len(samples)}


def row(name: str, value: dict) -> str:
    return f"{name:<48} {value['median']:>12.4g} {value['min']:>12.4g} {value['max']:>12.4g}  {value['unit']}"
