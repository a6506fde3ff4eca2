"""Bundle loading and the edge runtime: the real LiteRT interpreter, no TensorFlow."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from trained import as_version_1, shared_bundle, shared_run

from edge.model.bundle import CARD_FILE, BundleError, ModelCard, load_bundle
from edge.model.runtime import Model, load_interpreter
from edge.scoring.stream import Stream, score_stream
from trainer.dataset import load_dataset

pytestmark = pytest.mark.slow


@pytest.fixture()
def bundle_copy(tmp_path: Path) -> Path:
    return Path(shutil.copytree(shared_bundle(), tmp_path / "bundle"))


def edit_card(bundle: Path, change) -> None:
    path = bundle / CARD_FILE
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_card_round_trips_through_json() -> None:
    card = load_bundle(shared_bundle()).card
    again = ModelCard.from_dict(json.loads(json.dumps(card.to_dict())))
    assert again == card
    assert card.to_dict()["schema_version"] == 2
    assert "warning_threshold" not in card.to_dict() and card.warning_threshold == card.detector.warning_threshold


def test_a_version_1_card_with_the_thresholds_twice_still_loads() -> None:
    card = load_bundle(shared_bundle()).card
    old = card.to_dict()
    as_version_1(old)
    assert ModelCard.from_dict(json.loads(json.dumps(old))) == card
    for key in ("warning_threshold", "alarm_threshold"):  # the very first cards: detector without the thresholds
        del old["detector"][key]
    assert ModelCard.from_dict(old) == card
    old["detector"]["alarm_threshold"] = card.alarm_threshold * 2  # two copies that disagree: which one is meant?
    with pytest.raises(BundleError, match="detector.alarm_threshold: expected the same value as alarm_threshold"):
        ModelCard.from_dict(old)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["feature_spec"].__setitem__("window", 0), "model_card.json: feature_spec.window: expected a positive integer, got 0"),
        (lambda d: d["scaler"].pop("minimum"), "model_card.json: scaler.minimum: missing"),
        (lambda d: d["scaler"].__setitem__("maximum", [1.0]), "model_card.json: scaler.maximum: expected a list of 4 finite numbers (one per channel), got [1.0]"),
        (lambda d: (as_version_1(d), d.__setitem__("alarm_threshold", "high")), "model_card.json: alarm_threshold: expected a finite number, got 'high'"),
        (lambda d: d["detector"].__setitem__("alarm_threshold", "high"), "model_card.json: detector.alarm_threshold: expected a finite number, got 'high'"),
        (lambda d: d.__setitem__("alarm_threshold", 2.0), "model_card.json: alarm_threshold: not part of a schema_version 2 card: the thresholds are detector.warning_threshold and detector.alarm_threshold"),
        (lambda d: d.__setitem__("schema_version", 99), "model_card.json: schema_version: expected 1 or 2, got 99"),
        (lambda d: d["detector"].update(k=9, n=5), "model_card.json: detector: k and n: expected 1 <= k <= n, got k=9, n=5"),
        (lambda d: d.__setitem__("channel_error_reference", [0.1, 0.1, 0.0, 0.1]), "model_card.json: channel_error_reference: expected a list of 4 positive numbers (one per channel), got [0.1, 0.1, 0.0, 0.1]"),
    ],
)
def test_bad_card_names_file_and_key(bundle_copy: Path, change, message: str) -> None:
    edit_card(bundle_copy, change)
    with pytest.raises(BundleError) as error:
        load_bundle(bundle_copy)
    assert str(error.value) == f"{bundle_copy}/{message}"


def test_sha256_mismatch_names_both_values(bundle_copy: Path) -> None:
    model = bundle_copy / "model_int8.tflite"
    expected = json.loads((bundle_copy / CARD_FILE).read_text())["model_sha256"]
    model.write_bytes(model.read_bytes() + b"\0")
    with pytest.raises(BundleError) as error:
        load_bundle(bundle_copy)
    message = str(error.value)
    assert message.startswith(f"{model}: sha256 mismatch")
    assert expected in message
    import hashlib

    assert hashlib.sha256(model.read_bytes()).hexdigest() in message


def test_missing_card_and_bad_json(tmp_path: Path, bundle_copy: Path) -> None:
    with pytest.raises(BundleError, match="model_card.json: missing"):
        load_bundle(tmp_path)
    (bundle_copy / CARD_FILE).write_text("{\n  'id': 1\n}")
    with pytest.raises(BundleError, match=r"model_card.json:2: not valid JSON"):
        load_bundle(bundle_copy)


def _scores(bundle, model_path=None, rows=70):
    core = Stream(bundle, model=Model(bundle, model_path=model_path))
    steps = score_stream(core, load_dataset(shared_run()).features[:rows])
    return [step.score for step in steps if step.score is not None]


def test_int8_model_is_quantized_and_float_twin_agrees() -> None:
    bundle = load_bundle(shared_bundle())
    interpreter = load_interpreter(bundle.model_path)
    assert interpreter.get_input_details()[0]["dtype"] == np.int8
    assert interpreter.get_output_details()[0]["dtype"] == np.int8
    int8 = np.array([s.score for s in _scores(bundle)])
    floats = np.array([s.score for s in _scores(bundle, bundle.float_model_path)])
    assert np.corrcoef(int8, floats)[0, 1] > 0.95
    assert np.all(int8 < bundle.card.alarm_threshold) and np.all(floats < bundle.card.alarm_threshold)


def test_each_channel_is_scored_against_its_own_healthy_error() -> None:
    bundle = load_bundle(shared_bundle())
    reference = np.array(bundle.card.channel_error_reference)
    assert reference.shape == (4,) and np.all(reference > 0)
    for score in _scores(bundle):
        assert score.per_channel
        np.testing.assert_allclose(score.channel_errors, score.raw_errors / reference)
        assert score.score == score.channel_errors.max()
    scorer = Model(bundle)
    with pytest.raises(ValueError, match="expected features of shape"):
        scorer.score(np.zeros((scorer.window + 1, 4)))


def test_a_card_without_references_keeps_the_mean_score(tmp_path: Path) -> None:
    old = tmp_path / "old"
    shutil.copytree(shared_bundle(), old)
    card = json.loads((old / CARD_FILE).read_text())
    del card["channel_error_reference"]
    (old / CARD_FILE).write_text(json.dumps(card))
    bundle = load_bundle(old)
    assert bundle.card.channel_error_reference is None
    for score in _scores(bundle, rows=10):
        assert not score.per_channel and score.score == pytest.approx(score.raw_errors.mean())


def test_edge_scores_without_tensorflow() -> None:
    code = (
        "import sys, numpy as np\n"
        "from edge.model.bundle import load_bundle\nfrom edge.model.runtime import Model\n"
        f"b = load_bundle({str(shared_bundle())!r})\ns = Model(b)\n"
        "print(s.score(np.tile(b.card.scaler.maximum, (s.window, 1))).score)\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'pandas', 'matplotlib')]\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert float(result.stdout.strip().splitlines()[-1]) >= 0
