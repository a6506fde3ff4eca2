"""`cm-train fit TABLE --feature-spec CARD`: the feature spec of a machine's card, for a features table.

A features table holds features only; the card a machine runs (a model card, or a baseline card from
`cm-train baseline`) says how they were computed: feature set, channels, sample rate, scale, snapshot length,
cadence, bearing and speed. The bundle trained from the table takes that spec as it is (its own window aside),
so the agent that runs CARD accepts it (edge.compatibility) and computes the very features it was trained on.
The table's columns are named by edge.model.features.feature_columns.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edge.model import validation as v
from edge.model.bundle import BASELINE_KIND, CARD_FILE, BaselineCard, BundleError, FeatureSpec, ModelCard


@dataclass(frozen=True)
class SpecCard:
    """A feature spec and the card it was read from (the new card's provenance names it)."""

    spec: FeatureSpec
    source: str  # the card file
    card_id: str
    card_kind: str  # "model" or "baseline"


def read_spec_card(path: str | Path) -> SpecCard:
    """The feature spec of CARD: a bundle directory or its model_card.json, a model or a baseline card.

    A card trained on a features table without a spec (sample rate 0) is refused: it reads no sensor frames,
    so no agent runs it, and its spec cannot make a bundle one can."""
    path = Path(path)
    card_path = path / CARD_FILE if path.is_dir() else path
    if not card_path.is_file():
        raise BundleError(f"--feature-spec {path}: expected a bundle directory holding {CARD_FILE}, or a {CARD_FILE}")
    data = v.read_json(card_path, "the model card", BundleError)
    card: ModelCard | BaselineCard
    if isinstance(data, dict) and data.get("kind") == BASELINE_KIND:
        card = BaselineCard.from_dict(data, source=str(card_path))
    else:
        card = ModelCard.from_dict(data, source=str(card_path))
    spec = card.feature_spec
    for key in ("sample_rate_hz", "snapshot_samples"):
        if not getattr(spec, key):
            raise BundleError(f"{card_path}: feature_spec.{key} is 0: this card was trained on a features table "
                              "without a feature spec and reads no sensor frames; give the card of a bundle the "
                              "machine runs, or a baseline card (cm-train baseline)")
    return SpecCard(spec=spec, source=str(card_path), card_id=card.id,
                    card_kind=BASELINE_KIND if isinstance(card, BaselineCard) else "model")


def refuse_contradictions(card: SpecCard, given: dict[str, object]) -> None:
    """Flags given beside --feature-spec (flag -> value, None: not given) must say what the card says."""
    spec = card.spec
    says: dict[str, object] = {
        "--feature-set": spec.feature_set,
        "--channels": spec.channels,
        "--sample-rate": spec.sample_rate_hz,
        "--snapshot-samples": spec.snapshot_samples,
        "--bearing": spec.bearing,
        "--shaft-rpm": spec.shaft_rpm,
    }
    for flag, value in given.items():
        if value is None:
            continue
        if flag not in says:
            raise BundleError(f"{flag}: not with --feature-spec: a features table read by {card.source}'s spec "
                              "is no recording")
        if flag == "--channels" and isinstance(value, tuple):
            value = _channel_names(value, spec.channels)
        if value != says[flag]:
            raise BundleError(f"{flag} {_show(value)} contradicts --feature-spec {card.source}: its feature_spec says "
                              f"{_show(says[flag])}; leave the flag out (the card's spec is the bundle's)")


def _channel_names(tokens: tuple[str, ...], names: tuple[str, ...]) -> tuple[str, ...]:
    """--channels 1,3 (1-based numbers) or names, as the card's channel names where numbers fit."""
    if all(token.isdigit() and 1 <= int(token) <= len(names) for token in tokens):
        return tuple(names[int(token) - 1] for token in tokens)
    return tokens


def _show(value: object) -> str:
    return ",".join(value) if isinstance(value, tuple) and all(isinstance(x, str) for x in value) else str(value)
