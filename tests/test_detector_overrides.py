"""The agent's [detector] overrides in seconds (persist_s, clear_after_s) on a real bundle's card, and what
`cm-edge --check` says of the debounce when the scoring cadence differs from the training one: in time."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from trained import shared_bundle

from edge.agent import detector_settings
from edge.config import ConfigError, load_config
from edge.model.bundle import Bundle, load_bundle
from edge.preflight import notes

BASE = 'device_id = "p"\n[serial]\nport = "/dev/x"\n[model]\nbundle = "{bundle}"\n[mqtt]\nhost = "h"\n'


def config_with(tmp_path: Path, bundle: Path, extra: str = "") -> Path:
    path = tmp_path / "edge.toml"
    path.write_text(BASE.format(bundle=bundle) + extra)
    return path


def trained_at(bundle: Bundle, interval_s: float, **detector: object) -> Bundle:
    """The bundle with its card saying it was trained at `interval_s` and with these detector settings."""
    card = bundle.card
    spec = replace(card.feature_spec, snapshot_interval_s=interval_s)
    return replace(bundle, card=replace(card, feature_spec=spec, detector=replace(card.detector, **detector)))


def cadence_note(config_path: Path, bundle: Bundle, interval_s: float) -> str:
    found = [n for n in notes(load_config(config_path), bundle, interval_s) if n.startswith("sensor.snapshot_interval_s")]
    assert len(found) == 1, found
    return found[0]


def test_seconds_overrides_replace_the_cards_and_rule_the_debounce_at_the_cadence(tmp_path):
    bundle = load_bundle(shared_bundle())
    path = config_with(tmp_path, bundle.path, "[detector]\npersist_s = 120\nclear_after_s = 3600\n")
    settings = detector_settings(load_config(path), bundle)
    assert (settings.persist_s, settings.clear_after_s) == (120.0, 3600.0)
    assert (settings.k, settings.n, settings.clear_after) == (bundle.card.detector.k, bundle.card.detector.n,
                                                              bundle.card.detector.clear_after)  # the counts stay
    at_10_s = settings.at_cadence(10.0)
    assert at_10_s.n == 12 and at_10_s.clear_after == 360  # 120 s and an hour of 10 s snapshots
    # 0 leaves the counts alone at any cadence: what a card without the seconds does.
    plain = detector_settings(load_config(config_with(tmp_path, bundle.path, "[detector]\npersist_s = 0\n")), bundle)
    assert plain.persist_s == 0.0 and plain.at_cadence(10.0).n == plain.n


@pytest.mark.parametrize("line, message", [
    ("persist_s = -1", "detector.persist_s: expected a number of seconds from 0 to 604800 (a week), got -1"),
    ("clear_after_s = 700000", "detector.clear_after_s: expected a number of seconds from 0 to 604800 (a week), got 700000"),
    ('clear_after_s = "1h"', "detector.clear_after_s: expected a finite number, got '1h'"),
    ("clear_after_s = inf", "detector.clear_after_s: expected a finite number, got inf"),
    ("persist = 60", "detector.persist: unknown key (did you mean detector.persist_s?)"),
])
def test_bad_seconds_name_the_file_key_and_value(tmp_path, line, message):
    path = config_with(tmp_path, Path("b"), f"[detector]\n{line}\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert f"{path}: {message}" in str(error.value)


def test_check_states_the_debounce_in_time_at_both_cadences(tmp_path):
    bundle = trained_at(load_bundle(shared_bundle()), 600.0, k=3, n=5, clear_after=6, persist_s=None, clear_after_s=None)
    path = config_with(tmp_path, bundle.path)
    note = cadence_note(path, bundle, 1.0)
    assert note.startswith("sensor.snapshot_interval_s is 1 s but the model was trained on snapshots 600 s apart: ")
    assert ("the detector raises a state on 3 of 5 snapshots over 5 s and clears it after 6 s below the warning "
            "threshold (3 of 5 snapshots over 50.0 min and 60.0 min at the training cadence)") in note
    assert "[detector] persist_s and clear_after_s would state them in seconds" in note
    assert note.endswith("remove the key to use the card's cadence")


def test_check_with_the_debounce_in_seconds_shows_the_same_time_at_both_cadences(tmp_path):
    bundle = trained_at(load_bundle(shared_bundle()), 10.0, k=3, n=5, clear_after=6, persist_s=None, clear_after_s=3600.0)
    path = config_with(tmp_path, bundle.path, "[detector]\npersist_s = 300\n")  # the config's, over the card's
    note = cadence_note(path, bundle, 60.0)
    assert "raises a state on 3 of 5 snapshots over 5.0 min and clears it after 60.0 min below" in note
    assert "(18 of 30 snapshots over 5.0 min and 60.0 min at the training cadence)" in note
    assert "would state them in seconds" not in note


def test_check_when_every_snapshot_is_scored_says_so_in_counts(tmp_path):
    bundle = trained_at(load_bundle(shared_bundle()), 600.0, k=3, n=5, clear_after=6, persist_s=None, clear_after_s=None)
    note = cadence_note(config_with(tmp_path, bundle.path), bundle, 0.0)
    assert "raises a state on 3 of 5 snapshots and clears it after 6 below the warning threshold, however little" in note
    assert "(3 of 5 snapshots over 50.0 min and 60.0 min at the training cadence)" in note
