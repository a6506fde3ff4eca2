"""make demo, the first thing a newcomer runs, as README.md writes it: the whole chain end to end, here with the
embedded broker (the path a machine without Mosquitto takes; the HIL tests cover Mosquitto) and its output in
the test's directory (CM_DEMO_OUT)."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def test_demo_runs_end_to_end_with_the_embedded_broker(tmp_path: Path) -> None:
    env = {**os.environ, "CM_DEMO_OUT": str(tmp_path / "demo"), "CM_DEMO_BROKER": "embedded"}
    result = subprocess.run(["make", "demo"], cwd=REPO, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "demo" / "report" / "report.json").read_text())
    assert report["top_channel_at_first_alarm"] == "bearing3" and report["lead_time_hours"] > 0
    assert (tmp_path / "demo" / "report" / "score.png").stat().st_size > 10_000
    summary = result.stdout[result.stdout.index("== summary"):]
    assert "180 snapshots scored" in summary and "-> alarm ->" in summary
    assert "ALERT" in result.stdout and "top bearing3" in result.stdout
