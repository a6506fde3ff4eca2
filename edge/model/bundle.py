"""The model bundle: a directory with the int8 model, its float32 twin and the model card that describes them.

The card is the contract between trainer and agent: which features in which order, how they are scaled,
which thresholds and debounce settings apply, and the sha256 of the model file, so the agent never scores
with a model the card does not describe. Loading errors name the file and key and what was expected.

A card of `kind` "baseline" (BaselineCard, in a Baseline directory) is the feature spec alone: a machine
that has no model yet runs it to check its sensor, compute its features and report `learning` while its
baseline is gathered (issue 20). A card without `kind` is a model card, as every card before baselines was.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from edge.model import validation as v
from edge.model.bearing import BearingGeometry
from edge.model.features import FEATURE_SETS, FeatureConfig
from edge.model.validation import Optional, required

# 2: the thresholds are stated once, in `detector`. 1 (still read): they were also at the top level, and had
# to agree with detector's.
SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)
# Upper bounds that no real sensor reaches: beyond them a card is corrupt, and believing it would make
# the agent allocate terabytes (snapshot_samples 1e13) rather than fail with a message.
MAX_SAMPLE_RATE_HZ = 10_000_000
MAX_SNAPSHOT_SAMPLES = 1 << 24
MAX_WINDOW = 4096
MAX_CHANNELS = 255  # the frame header's channel count is one byte
MAX_DEBOUNCE_S = 7 * 24 * 3600.0  # a week: a longer debounce is a typo, not a setting
MAX_DEBOUNCE_SNAPSHOTS = 100_000  # the detector keeps n hit vectors: bounded memory at any cadence
MODEL_KIND, BASELINE_KIND = "model", "baseline"  # card.json's `kind`; absent: a model card
TFLITE_IDENTIFIER = b"TFL3"  # a TFLite flatbuffer's file identifier, at bytes 4-8
CARD_FILE = "model_card.json"
INT8_MODEL_FILE = "model_int8.tflite"
FLOAT_MODEL_FILE = "model_float32.tflite"


class BundleError(ValueError):
    """A bundle that cannot be used; the message names the file and key and what was expected."""


DEFAULT_FEATURES = ("mean_abs",)  # a card without feature_spec.features predates feature sets


@dataclass(frozen=True)
class DetectorSettings:
    """Thresholds and debounce. k of n and clear_after count snapshots; persist_s and clear_after_s (None in
    cards written before them: counts only) state the same debounce in seconds, so that it spans the same time
    at a 10 s and a 10 min cadence. At a given cadence the detector applies the longer of the two
    (`at_cadence`): a state is never judged on fewer than k snapshots, however slow the cadence."""

    warning_threshold: float
    alarm_threshold: float
    k: int = 3
    n: int = 5
    clear_after: int = 6
    fault_after: int = 2
    persist_s: float | None = None  # k of n is a share (k/n) of the snapshots of at least this many seconds
    clear_after_s: float | None = None  # a raised state clears after this long below the warning threshold

    def __post_init__(self) -> None:
        if not 0 < self.warning_threshold <= self.alarm_threshold:
            raise ValueError(
                f"thresholds: expected 0 < warning_threshold <= alarm_threshold, "
                f"got {self.warning_threshold} and {self.alarm_threshold}"
            )
        if not 1 <= self.k <= self.n:
            raise ValueError(f"k and n: expected 1 <= k <= n, got k={self.k}, n={self.n}")
        for name in ("clear_after", "fault_after"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected a positive integer, got {getattr(self, name)}")
        for name in ("persist_s", "clear_after_s"):
            seconds = getattr(self, name)
            if seconds is not None and not 0 <= seconds <= MAX_DEBOUNCE_S:
                raise ValueError(f"{name}: expected a number of seconds in [0, {MAX_DEBOUNCE_S}] or null, got {seconds}")

    def at_cadence(self, interval_s: float | None) -> DetectorSettings:
        """The debounce in snapshots at one snapshot per `interval_s` (None or 0: unknown, the counts as given):
        n covers persist_s with k/n of it required, clear_after covers clear_after_s; never fewer than given."""
        if not interval_s or interval_s <= 0:
            return self
        n, k, clear_after = self.n, self.k, self.clear_after
        if self.persist_s is not None:
            n = max(n, min(MAX_DEBOUNCE_SNAPSHOTS, math.ceil(self.persist_s / interval_s - 1e-9)))
            k = max(k, math.ceil(self.k * n / self.n - 1e-9))
        if self.clear_after_s is not None:
            clear_after = max(clear_after, min(MAX_DEBOUNCE_SNAPSHOTS, math.ceil(self.clear_after_s / interval_s - 1e-9)))
        return replace(self, n=n, k=k, clear_after=clear_after)


@dataclass(frozen=True)
class FeatureSpec:
    feature_set: str
    channels: tuple[str, ...]
    sample_rate_hz: int
    snapshot_samples: int
    window: int
    snapshot_interval_s: float | None = None  # the training cadence (median spacing); None: not recorded
    features: tuple[str, ...] = DEFAULT_FEATURES  # the F names per channel; columns are channel-major (C x F)
    bearing: BearingGeometry | None = None  # vibration set: the geometry its envelope lines come from
    shaft_rpm: float | None = None  # vibration set: the shaft speed the lines are computed at
    scale: float | None = None  # g per count of the training recording (the scale rule); frames must carry it

    @property
    def columns(self) -> int:
        """Feature columns of the model input: channels x features per channel."""
        return len(self.channels) * len(self.features)

    def feature_config(self, shaft_rpm: float | None = None) -> FeatureConfig:
        """How the agent computes this bundle's features; `shaft_rpm` overrides the card's ([machine])."""
        return FeatureConfig(self.feature_set, self.sample_rate_hz, self.bearing,
                             shaft_rpm if shaft_rpm is not None else self.shaft_rpm)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "feature_set": self.feature_set,
            "channels": list(self.channels),
            "sample_rate_hz": self.sample_rate_hz,
            "snapshot_samples": self.snapshot_samples,
            "window": self.window,
            "snapshot_interval_s": self.snapshot_interval_s,
            "features": list(self.features),
        }
        if self.bearing is not None:
            data["bearing"] = self.bearing.to_dict()
        if self.shaft_rpm is not None:
            data["shaft_rpm"] = self.shaft_rpm
        if self.scale is not None:
            data["scale"] = self.scale
        return data


@dataclass(frozen=True)
class Scaler:
    minimum: tuple[float, ...]
    maximum: tuple[float, ...]
    _offset: np.ndarray = field(init=False, repr=False, compare=False)
    _factor: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        low = np.asarray(self.minimum, dtype=np.float64)
        span = np.asarray(self.maximum, dtype=np.float64) - low
        # A channel that never moved in training keeps unit span: scaling must not divide by zero.
        object.__setattr__(self, "_offset", low)
        object.__setattr__(self, "_factor", 1.0 / np.where(span > 0, span, 1.0))

    @classmethod
    def fit(cls, features: np.ndarray) -> Scaler:
        """Min-max over the rows given (the training span only)."""
        return cls(tuple(map(float, features.min(axis=0))), tuple(map(float, features.max(axis=0))))

    def transform(self, features: np.ndarray) -> np.ndarray:
        """Min-max scaling: the training span maps to [0, 1]; values outside it are kept, not clipped."""
        return (np.asarray(features, dtype=np.float64) - self._offset) * self._factor


@dataclass(frozen=True)
class ModelCard:
    id: str
    created: str
    feature_spec: FeatureSpec
    scaler: Scaler
    threshold_rule: str
    detector: DetectorSettings  # the warning and alarm thresholds with the debounce: the one place they are kept
    healthy_min: tuple[float, ...]
    quantization: dict
    provenance: dict
    model_file: str
    model_sha256: str
    # Per channel, the healthy reconstruction error the channel's score is measured against (edge.model.runtime).
    # None (a card written before per-channel scoring): the score is the mean error over all columns.
    channel_error_reference: tuple[float, ...] | None = None

    @property
    def warning_threshold(self) -> float:  # the detector's, for readers of the card (reports, benches)
        return self.detector.warning_threshold

    @property
    def alarm_threshold(self) -> float:
        return self.detector.alarm_threshold

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "id": self.id,
            "created": self.created,
            "feature_spec": self.feature_spec.to_dict(),
            "scaler": {"minimum": list(self.scaler.minimum), "maximum": list(self.scaler.maximum)},
            "threshold_rule": self.threshold_rule,
            "detector": asdict(self.detector),
            "healthy_min": list(self.healthy_min),
            "quantization": self.quantization,
            "provenance": self.provenance,
            "model_file": self.model_file,
            "model_sha256": self.model_sha256,
        } | ({} if self.channel_error_reference is None
             else {"channel_error_reference": list(self.channel_error_reference)})

    @classmethod
    def from_dict(cls, data: Any, source: str = CARD_FILE) -> ModelCard:
        """Validate and build a card; a BundleError names `source` and the key that is wrong."""
        head = v.check(_HEAD, data, source, BundleError)
        spec = _feature_spec(head["feature_spec"], source)
        card = v.check(_card_schema(head["schema_version"], spec), data, source, BundleError)
        scaler = Scaler(card["scaler"]["minimum"], card["scaler"]["maximum"])
        for column, (low, high) in enumerate(zip(scaler.minimum, scaler.maximum)):
            if high < low:  # an inverted span flips every score: anomalies would look healthier than health
                raise BundleError(f"{source}: scaler.maximum[{column}]: expected a value >= scaler.minimum[{column}] "
                                  f"({low}), got {high!r}")
        return cls(feature_spec=spec, scaler=scaler, detector=_detector(card, source),
                   **{key: card[key] for key in _PLAIN if key in card})


@dataclass(frozen=True)
class Bundle:
    path: Path
    card: ModelCard
    model_path: Path

    @property
    def float_model_path(self) -> Path:
        return self.path / FLOAT_MODEL_FILE

    @property
    def model_sha256(self) -> str:
        """What telemetry, alerts and rollout reports name the running model by (Baseline has its own)."""
        return self.card.model_sha256


@dataclass(frozen=True)
class BaselineCard:
    """The feature spec alone (card kind "baseline"): no model, no scaler, no thresholds. `min_level_g` is the
    least mean |acceleration| (g) a running machine gives on every channel: a channel below the sensor checks'
    dropout share of it has dropped out (None: no dropout check, only flatline and clipping, since without a
    model card there is no healthy minimum to compare with)."""

    id: str
    created: str
    feature_spec: FeatureSpec
    provenance: dict
    min_level_g: float | None = None
    kind: ClassVar[str] = BASELINE_KIND

    @property
    def healthy_min(self) -> tuple[float, ...]:
        """The sensor checks' floor per column: min_level_g on each channel's first feature (mean_abs in every
        set, the only column the dropout check reads), 0 elsewhere (never checked)."""
        floor = self.min_level_g or 0.0
        per_channel = len(self.feature_spec.features)
        return tuple(floor if column % per_channel == 0 else 0.0 for column in range(self.feature_spec.columns))

    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": SCHEMA_VERSION, "kind": self.kind, "id": self.id, "created": self.created,
                "feature_spec": self.feature_spec.to_dict(), "provenance": self.provenance} | (
            {} if self.min_level_g is None else {"min_level_g": self.min_level_g})

    @classmethod
    def from_dict(cls, data: Any, source: str = CARD_FILE) -> BaselineCard:
        """Validate and build a baseline card; a BundleError names `source` and the key that is wrong."""
        head = v.check(_HEAD, data, source, BundleError)
        if head.get("kind") != BASELINE_KIND:
            raise BundleError(f"{source}: kind: expected {BASELINE_KIND!r}, got {head.get('kind')!r}")
        spec = _feature_spec(head["feature_spec"], source)
        for key in ("sample_rate_hz", "snapshot_samples"):  # it reads raw frames: a features table's 0 cannot
            if not getattr(spec, key):
                raise BundleError(f"{source}: feature_spec.{key}: expected a positive integer (a baseline card reads "
                                  f"the sensor's frames), got 0")
        card = v.check(_BASELINE, data, source, BundleError)
        return cls(id=card["id"], created=card["created"], feature_spec=spec, provenance=card.get("provenance", {}),
                   min_level_g=card.get("min_level_g"))


@dataclass(frozen=True)
class Baseline:
    """A bundle directory holding a baseline card only: what a machine runs before it has a model."""

    path: Path
    card: BaselineCard
    card_sha256: str  # the card file's: it names the baseline where a model is named by its model file's sha256

    @property
    def model_sha256(self) -> str:
        return self.card_sha256


Deployable = Bundle | Baseline  # what the agent can run: a model bundle, or a baseline card before there is one


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_card(card: ModelCard, directory: Path) -> Path:
    path = Path(directory) / CARD_FILE
    path.write_text(json.dumps(card.to_dict(), indent=2) + "\n", encoding="utf-8")
    return path


def write_baseline(card: BaselineCard, directory: Path) -> Path:
    """A baseline bundle directory: the card alone."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    path = Path(directory) / CARD_FILE
    path.write_text(json.dumps(card.to_dict(), indent=2) + "\n", encoding="utf-8")
    return path


def load_deployable(path: str | Path) -> Deployable:
    """What the agent runs: a model bundle, or a baseline card (kind "baseline") when the machine has no model."""
    card_path, data = _read_card(path)
    if isinstance(data, dict) and data.get("kind") == BASELINE_KIND:
        card = BaselineCard.from_dict(data, source=str(card_path))
        return Baseline(path=Path(path), card=card, card_sha256=file_sha256(card_path))
    return load_bundle(path)


def _read_card(path: str | Path) -> tuple[Path, Any]:
    directory = Path(path)
    card_path = directory / CARD_FILE
    if not directory.is_dir():
        raise BundleError(f"{directory}: expected a bundle directory holding {CARD_FILE}")
    return card_path, v.read_json(card_path, "the model card", BundleError)


def load_bundle(path: str | Path) -> Bundle:
    """Read and validate a bundle directory; the model file must match the card's sha256."""
    directory = Path(path)
    card_path, data = _read_card(directory)
    if isinstance(data, dict) and data.get("kind") == BASELINE_KIND:
        raise BundleError(f"{card_path}: kind: a baseline card has no model to score with; expected a model bundle "
                          f"(kind {MODEL_KIND!r} or no kind)")
    card = ModelCard.from_dict(data, source=str(card_path))
    model_path = directory / card.model_file
    if Path(card.model_file).name != card.model_file:
        raise BundleError(f"{card_path}: model_file: expected a file name inside the bundle, got {card.model_file!r}")
    if not model_path.is_file():
        raise BundleError(f"{card_path}: model_file: {model_path} does not exist")
    try:
        actual = file_sha256(model_path)
    except OSError as error:
        raise BundleError(f"{card_path}: model_file: cannot read {model_path}: {error.strerror}") from None
    if actual != card.model_sha256:
        raise BundleError(
            f"{model_path}: sha256 mismatch: {CARD_FILE} model_sha256 is {card.model_sha256}, "
            f"the file's is {actual}"
        )
    with model_path.open("rb") as model:
        identifier = model.read(8)[4:]
    if identifier != TFLITE_IDENTIFIER:
        raise BundleError(f"{card_path}: model_file: expected a TFLite model (file identifier "
                          f"{TFLITE_IDENTIFIER.decode()}), {model_path.name} has {identifier!r}")
    return Bundle(path=directory, card=card, model_path=model_path)


THRESHOLDS = ("warning_threshold", "alarm_threshold")
_PLAIN = ("id", "created", "threshold_rule", "healthy_min", "quantization", "provenance", "model_file", "model_sha256",
          "channel_error_reference")
_OBJECT = "a JSON object"


def _version(value: Any) -> int:
    if isinstance(value, bool) or value not in READABLE_VERSIONS:
        raise v.expected(" or ".join(map(str, READABLE_VERSIONS)), value)
    return int(value)


def _bearing(data: Any) -> BearingGeometry:
    return BearingGeometry.from_dict(data)


# Read first: the feature spec says how long the card's per-column lists are. Keys added after the first
# cards are optional, null or absent in an older card (mean_abs, no machine data).
_HEAD = v.table({
    required("schema_version"): _version,
    Optional("kind"): v.one_of((MODEL_KIND, BASELINE_KIND)),
    required("feature_spec"): v.table({
        required("feature_set"): v.one_of(FEATURE_SETS),
        required("channels"): v.names(most=MAX_CHANNELS),
        # 0: trained from a features table, which records no raw sampling.
        required("sample_rate_hz"): v.integer(0, MAX_SAMPLE_RATE_HZ),
        required("snapshot_samples"): v.integer(0, MAX_SNAPSHOT_SAMPLES),
        required("window"): v.integer(1, MAX_WINDOW),
        Optional("snapshot_interval_s"): v.nullable(v.number(0, what="a number of seconds >= 0")),
        Optional("features"): v.names(),
        Optional("bearing"): v.nullable(v.converted(_bearing, "balls, ball_mm, pitch_mm and contact_deg")),
        Optional("shaft_rpm"): v.nullable(v.number()),
        Optional("scale"): v.nullable(v.number(positive=True, what="a positive number of g per count")),
    }, name="feature_spec", kind=_OBJECT, extra=True),
}, kind=_OBJECT, extra=True)


# A model card's keys, each refused in a baseline card by name: a half-converted card is a mistake to report.
_MODEL_ONLY = ("scaler", "threshold_rule", "detector", "healthy_min", "quantization", "model_file", "model_sha256",
               "channel_error_reference", *THRESHOLDS)
_BASELINE = v.table({
    required("schema_version"): object,  # (checked first, with the feature spec and kind)
    required("kind"): object,
    required("feature_spec"): object,
    required("id"): v.text(),
    required("created"): v.text(),
    Optional("provenance"): v.table({}, kind=_OBJECT, extra=True),
    Optional("min_level_g"): v.nullable(v.number(positive=True, what="a positive number of g")),
    **{Optional(key): v.refused("not part of a baseline card: it has no model, scaler or thresholds (kind baseline)")
       for key in _MODEL_ONLY},
}, kind=_OBJECT, extra=True)


def _card_schema(version: int, spec: FeatureSpec) -> v.Validator:
    """The rest of the card, its lists as long as `spec` says."""
    per_column = "one per channel" if len(spec.features) == 1 else \
        f"one per column: {len(spec.channels)} channels x {len(spec.features)} features"
    columns = v.numbers(spec.columns, f"a list of {spec.columns} finite numbers ({per_column})")
    channels = len(spec.channels)
    top: dict[Any, v.Validator]
    thresholds: dict[Any, v.Validator]
    if version == 1:  # the thresholds at the top level; detector's copy optional (and checked to agree)
        top = {required(key): v.number() for key in THRESHOLDS}
        thresholds = {Optional(key): v.number() for key in THRESHOLDS}
    else:
        moved = v.refused("not part of a schema_version 2 card: the thresholds are detector.warning_threshold and "
                          "detector.alarm_threshold")
        top = {Optional(key): moved for key in THRESHOLDS}
        thresholds = {required(key): v.number() for key in THRESHOLDS}
    return v.table({
        required("schema_version"): object,  # (checked first, with the feature spec)
        required("feature_spec"): object,
        required("id"): v.text(),
        required("created"): v.text(),
        required("scaler"): v.table({required("minimum"): columns, required("maximum"): columns}, name="scaler",
                                    kind=_OBJECT, extra=True),
        **top,
        required("threshold_rule"): v.text(),
        required("detector"): v.table({**thresholds,
                                       **{required(key): v.integer(1) for key in ("k", "n", "clear_after", "fault_after")},
                                       **{Optional(key): v.nullable(v.number(0, what="a number of seconds >= 0"))
                                          for key in ("persist_s", "clear_after_s")}},
                                      name="detector", kind=_OBJECT, extra=True),
        required("healthy_min"): columns,
        required("quantization"): v.table({}, kind=_OBJECT, extra=True),  # free-form
        required("provenance"): v.table({}, kind=_OBJECT, extra=True),
        required("model_file"): v.text(),
        required("model_sha256"): v.text(),
        Optional("channel_error_reference"): v.numbers(channels, f"a list of {channels} positive numbers (one per channel)",
                                                       positive=True),
    }, kind=_OBJECT, extra=True)


def _feature_spec(data: dict[str, Any], source: str) -> FeatureSpec:
    feature_set = data["feature_set"]
    spec = FeatureSpec(**{key: value for key, value in _known(FeatureSpec, data).items() if value is not None})
    if spec.features != FEATURE_SETS[feature_set]:
        raise BundleError(f"{source}: feature_spec.features: expected the {feature_set} set's "
                          f"{list(FEATURE_SETS[feature_set])}, got {list(spec.features)!r}")
    if feature_set != DEFAULT_FEATURES[0]:
        try:
            spec.feature_config()
        except ValueError as error:
            raise BundleError(f"{source}: feature_spec: {error}") from None
    return spec


def _detector(card: dict[str, Any], source: str) -> DetectorSettings:
    settings = _known(DetectorSettings, card["detector"])
    for key in THRESHOLDS:
        if key in card and settings.setdefault(key, card[key]) != card[key]:  # a version 1 card's two copies
            raise BundleError(f"{source}: detector.{key}: expected the same value as {key} ({card[key]}), "
                              f"got {settings[key]!r}")
    try:
        return DetectorSettings(**settings)
    except ValueError as error:
        raise BundleError(f"{source}: detector: {error}") from None


def _known(kind: type, data: dict[str, Any]) -> dict[str, Any]:
    """The keys of `data` that are fields of the dataclass `kind` (a newer writer's extra keys are left out)."""
    return {item.name: data[item.name] for item in fields(kind) if item.name in data}


def check_channels(card: ModelCard, names: Sequence[str], source: str) -> None:
    """The incoming channels must be the card's, in the card's order."""
    if tuple(names) != card.feature_spec.channels:
        raise BundleError(
            f"{source}: channels {list(names)} do not match the model card's feature_spec.channels "
            f"{list(card.feature_spec.channels)}"
        )
