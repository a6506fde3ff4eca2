"""The vibration feature set: textbook values on known signals, blind to a DC offset, envelope lines at the
bearing's defect frequencies; the bearing presets give the READMEs' defect frequencies."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from signals import defect_signal, to_counts

from edge.model.bearing import PRESETS, BearingGeometry, parse_bearing
from edge.model.bundle import BundleError, DetectorSettings, FeatureSpec, ModelCard, Scaler
from edge.model.features import VIBRATION_FEATURES, FeatureConfig, FeatureExtractor, mean_abs

RATE = 20_000
N = 20_480
SHAFT_RPM = 1800.0
BEARING = PRESETS["6205-2rs"]


def vibration(rate: int = RATE, shaft_rpm: float = SHAFT_RPM, bearing: BearingGeometry = BEARING) -> FeatureExtractor:
    return FeatureExtractor(FeatureConfig("vibration", rate, bearing, shaft_rpm))


def by_name(row: np.ndarray, channel: int = 0) -> dict[str, float]:
    f = len(VIBRATION_FEATURES)
    return dict(zip(VIBRATION_FEATURES, row[channel * f:(channel + 1) * f].tolist()))


def test_sine_gives_textbook_statistics_and_iso_velocity() -> None:
    t = np.arange(N) / RATE
    amplitude_g, hz = 2.0, 125.0  # whole periods: 125 Hz in 1.024 s is exactly 128
    counts = to_counts(amplitude_g * np.sin(2 * np.pi * hz * t))
    got = by_name(vibration()(counts, 0.001))
    assert got["rms"] == pytest.approx(amplitude_g / math.sqrt(2), rel=1e-3)
    assert got["mean_abs"] == pytest.approx(2 * amplitude_g / math.pi, rel=1e-3)
    assert got["peak"] == pytest.approx(amplitude_g, rel=1e-3)
    assert got["crest_factor"] == pytest.approx(math.sqrt(2), rel=1e-3)
    assert got["kurtosis"] == pytest.approx(1.5, rel=1e-3)
    # Velocity amplitude = a / (2 pi f): 2 g at 125 Hz is 25.0 mm/s peak, 17.7 mm/s RMS.
    expected = amplitude_g * 9.80665 / (2 * math.pi * hz) * 1000 / math.sqrt(2)
    assert got["velocity_rms"] == pytest.approx(expected, rel=0.02)


def test_velocity_counts_only_10_to_1000_hz() -> None:
    t = np.arange(N) / RATE
    # Frequencies on exact bins (0.9765625 Hz apart): 125 Hz inside the band, 3.9 Hz and 3000 Hz outside.
    inside = to_counts(np.sin(2 * np.pi * 125 * t))
    outside = to_counts(np.sin(2 * np.pi * 125 * t) + np.sin(2 * np.pi * 3.90625 * t) + np.sin(2 * np.pi * 3000 * t))
    a, b = by_name(vibration()(inside, 0.001)), by_name(vibration()(outside, 0.001))
    assert b["velocity_rms"] == pytest.approx(a["velocity_rms"], rel=0.02)
    assert b["rms"] > 1.5 * a["rms"]


def test_a_dc_offset_changes_no_vibration_feature() -> None:
    """A DC-coupled MEMS sensor sees 1 g of gravity: none of the features may move."""
    lines = BEARING.frequencies(SHAFT_RPM)
    signal = defect_signal(RATE, N, lines["bpfo"], shaft_hz=SHAFT_RPM / 60)
    extractor = vibration()
    plain = extractor(to_counts(signal, signal), 0.001)
    for offset in (1.0, -1.0, 9.5):
        shifted = extractor(to_counts(signal, signal, offset_g=offset), 0.001)
        np.testing.assert_allclose(shifted, plain, rtol=1e-9, atol=1e-12)
    # ... whereas the original mean_abs set reads mostly gravity:
    assert mean_abs(to_counts(signal, offset_g=1.0), 0.001)[0] > 3 * mean_abs(to_counts(signal), 0.001)[0]


@pytest.mark.parametrize("defect,modulate", [("bpfo", False), ("bpfi", True), ("ftf", False)])
def test_envelope_line_stands_out_at_the_defect_frequency(defect: str, modulate: bool) -> None:
    lines = BEARING.frequencies(SHAFT_RPM)
    extractor = vibration()
    signal = defect_signal(RATE, N, lines[defect], shaft_hz=SHAFT_RPM / 60, modulate=modulate, seed=3)
    analysis = extractor.analyse(to_counts(signal), 0.001)
    column = ("bpfo", "bpfi", "bsf", "ftf").index(defect)
    assert analysis.prominence is not None and analysis.line_hz is not None
    assert analysis.prominence[0, column] > 5
    assert analysis.prominence[0, column] == analysis.prominence[0].max()
    assert analysis.line_hz[0, column] == pytest.approx(lines[defect], abs=max(0.01 * lines[defect], RATE / N))
    healthy = extractor.analyse(to_counts(defect_signal(RATE, N, None, seed=3)), 0.001)
    assert healthy.prominence is not None and healthy.prominence.max() < 4


def test_features_are_channel_major_and_a_dead_channel_gives_zeros_not_nan() -> None:
    signal = defect_signal(RATE, 4096, None)
    counts = to_counts(signal, np.zeros_like(signal), 2 * signal)
    row = vibration()(counts, 0.001)
    assert row.shape == (3 * len(VIBRATION_FEATURES),) and np.isfinite(row).all()
    assert by_name(row, 1)["rms"] == 0 and by_name(row, 1)["kurtosis"] == 0
    assert by_name(row, 2)["rms"] == pytest.approx(2 * by_name(row, 0)["rms"], rel=1e-3)
    assert by_name(row, 2)["kurtosis"] == pytest.approx(by_name(row, 0)["kurtosis"], rel=1e-2)


def test_presets_give_the_readmes_defect_frequencies() -> None:
    cwru = PRESETS["6205-2rs"].orders()  # CWRU README table (drive end), BSF there is 2 x ball spin
    assert cwru["bpfi"] == pytest.approx(5.4152, abs=2e-4) and cwru["bpfo"] == pytest.approx(3.5848, abs=2e-4)
    assert cwru["ftf"] == pytest.approx(0.39828, abs=2e-4) and 2 * cwru["bsf"] == pytest.approx(4.7135, abs=2e-4)
    fan = PRESETS["6203-2rs"].orders()
    assert fan["bpfi"] == pytest.approx(4.9469, abs=2e-4) and fan["bpfo"] == pytest.approx(3.0530, abs=2e-4)
    ims = PRESETS["za-2115"].frequencies(2000)  # IMS README at 2000 rpm
    assert [round(ims[k], 1) for k in ("bpfo", "bpfi", "bsf", "ftf")] == [236.4, 296.9, 139.9, 14.8]
    assert parse_bearing("Pronostia") == PRESETS["pronostia"]


def test_explicit_geometry_and_bad_bearings() -> None:
    custom = parse_bearing("balls=9,ball_mm=7.94,pitch_mm=39.04,contact_deg=0")
    assert custom.balls == 9 and custom.orders()["bpfo"] == pytest.approx(3.5848, abs=1e-3)
    for bad in ("6206", "balls=9,ball_mm=7.9", "balls=x,ball_mm=7.9,pitch_mm=39", "balls=9,ball_mm=50,pitch_mm=39"):
        with pytest.raises(ValueError, match="expected"):
            parse_bearing(bad)
    with pytest.raises(ValueError, match="needs --bearing"):
        FeatureConfig("vibration", RATE, None, 1800)
    with pytest.raises(ValueError, match="beyond the envelope spectrum"):
        vibration(rate=1000)(np.zeros((1000, 1), dtype=np.int16), 0.001)


def card_dict() -> dict:
    """A mean_abs card as the trainer writes it (2 channels)."""
    spec = FeatureSpec("mean_abs", ("DE", "FE"), 48_000, 16_384, 2)
    card = ModelCard(id="cm-test", created="2026-01-01T00:00:00+00:00", feature_spec=spec,
                     scaler=Scaler((0.0, 0.0), (1.0, 1.0)),
                     threshold_rule="calibration", detector=DetectorSettings(0.1, 0.2), healthy_min=(0.01, 0.01),
                     quantization={}, provenance={}, model_file="model_int8.tflite", model_sha256="0" * 64)
    return json.loads(json.dumps(card.to_dict()))


def test_card_records_the_feature_set_and_an_older_card_still_loads() -> None:
    data = card_dict()
    assert data["feature_spec"]["features"] == ["mean_abs"] and "bearing" not in data["feature_spec"]
    data["feature_spec"].pop("features", None)
    old = ModelCard.from_dict(json.loads(json.dumps(data)))
    assert old.feature_spec.features == ("mean_abs",) and old.feature_spec.bearing is None
    spec = FeatureSpec("vibration", ("DE", "FE"), 48_000, 16_384, 2, features=VIBRATION_FEATURES, bearing=BEARING,
                       shaft_rpm=1796.0)
    data["feature_spec"] = spec.to_dict()
    columns = 2 * len(VIBRATION_FEATURES)
    data["scaler"] = {"minimum": [0.0] * columns, "maximum": [1.0] * columns}
    data["healthy_min"] = [0.0] * columns
    card = ModelCard.from_dict(json.loads(json.dumps(data)))
    assert card.feature_spec == spec and card.feature_spec.feature_config(1500.0).shaft_rpm == 1500.0
    data["healthy_min"] = [0.0] * 2
    with pytest.raises(BundleError, match="healthy_min: expected a list of 20 finite numbers \\(one per column: "
                                          "2 channels x 10 features\\)"):
        ModelCard.from_dict(data)
    data["healthy_min"] = [0.0] * columns
    del data["feature_spec"]["bearing"]
    with pytest.raises(BundleError, match="feature_spec: feature set vibration: needs --bearing"):
        ModelCard.from_dict(data)


def test_a_line_the_snapshot_cannot_resolve_is_not_measured() -> None:
    """FEMTO: 2,560 samples at 25.6 kHz are 10 Hz bins; its 13 Hz cage line would be read off DC and 1x shaft."""
    extractor = vibration(rate=25_600, shaft_rpm=1800.0, bearing=PRESETS["pronostia"])
    shaft = np.sin(2 * np.pi * 30 * np.arange(2560) / 25_600)
    analysis = extractor.analyse(to_counts(defect_signal(25_600, 2560, None) + shaft), 0.001)
    assert analysis.prominence is not None and analysis.line_hz is not None
    assert analysis.prominence[0, 3] == 0.0 and analysis.line_hz[0, 3] == pytest.approx(0.4316 * 30, rel=1e-3)
    assert (analysis.prominence[0, :3] > 0).all()
