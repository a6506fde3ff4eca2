"""The model bundle: a directory with the int8 model, its float32 twin and the model card that describes them.

The card is the contract between trainer and agent: which features in which order, how they are scaled,
which thresholds and debounce settings apply, and the sha256 of the model file, so the agent never scores
with a model the card does not describe. Loading errors name the file and key and what was expected.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge.model.bearing import BearingGeometry
from edge.model.features import FEATURE_SETS, FeatureConfig

SCHEMA_VERSION = 1
# Upper bounds that no real sensor reaches: beyond them a card is corrupt, and believing it would make
# the agent allocate terabytes (snapshot_samples 1e13) rather than fail with a message.
MAX_SAMPLE_RATE_HZ = 10_000_000
MAX_SNAPSHOT_SAMPLES = 1 << 24
MAX_WINDOW = 4096
MAX_CHANNELS = 255  # the frame header's channel count is one byte
TFLITE_IDENTIFIER = b"TFL3"  # a TFLite flatbuffer's file identifier, at bytes 4-8
CARD_FILE = "model_card.json"
INT8_MODEL_FILE = "model_int8.tflite"
FLOAT_MODEL_FILE = "model_float32.tflite"


class BundleError(ValueError):
    """A bundle that cannot be used; the message names the file and key and what was expected."""


DEFAULT_FEATURES = ("mean_abs",)  # a card without feature_spec.features predates feature sets


@dataclass(frozen=True)
class DetectorSettings:
    warning_threshold: float
    alarm_threshold: float
    k: int = 3
    n: int = 5
    clear_after: int = 6
    fault_after: int = 2

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
    warning_threshold: float
    alarm_threshold: float
    threshold_rule: str
    detector: DetectorSettings
    healthy_min: tuple[float, ...]
    quantization: dict
    provenance: dict
    model_file: str
    model_sha256: str
    schema_version: int = SCHEMA_VERSION
    # Per channel, the healthy reconstruction error the channel's score is measured against (edge.model.runtime).
    # None (a card written before per-channel scoring): the score is the mean error over all columns.
    channel_error_reference: tuple[float, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "id": self.id,
            "created": self.created,
            "feature_spec": self.feature_spec.to_dict(),
            "scaler": {"minimum": list(self.scaler.minimum), "maximum": list(self.scaler.maximum)},
            "warning_threshold": self.warning_threshold,
            "alarm_threshold": self.alarm_threshold,
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
        card = _Reader(source)
        root = card.mapping(data, "")
        version = card.integer(root, "schema_version", minimum=1)
        if version != SCHEMA_VERSION:
            raise BundleError(f"{source}: schema_version: expected {SCHEMA_VERSION}, got {version}")
        spec_data = card.mapping(card.get(root, "feature_spec"), "feature_spec")
        channels = card.strings(spec_data, "feature_spec.channels")
        spec = card.feature_spec(spec_data, channels)
        columns = card.columns(spec)
        scaler_data = card.mapping(card.get(root, "scaler"), "scaler")
        scaler = Scaler(
            minimum=card.numbers(scaler_data, "scaler.minimum", columns),
            maximum=card.numbers(scaler_data, "scaler.maximum", columns),
        )
        for column, (low, high) in enumerate(zip(scaler.minimum, scaler.maximum)):
            if high < low:  # an inverted span flips every score: anomalies would look healthier than health
                raise card.fail(f"scaler.maximum[{column}]", f"a value >= scaler.minimum[{column}] ({low})", high)
        warning = card.number(root, "warning_threshold")
        alarm = card.number(root, "alarm_threshold")
        detector_data = card.mapping(card.get(root, "detector"), "detector")
        detector = card.detector(detector_data, warning, alarm)
        return cls(
            id=card.string(root, "id"),
            created=card.string(root, "created"),
            feature_spec=spec,
            scaler=scaler,
            warning_threshold=warning,
            alarm_threshold=alarm,
            threshold_rule=card.string(root, "threshold_rule"),
            detector=detector,
            healthy_min=card.numbers(root, "healthy_min", columns),
            quantization=card.mapping(card.get(root, "quantization"), "quantization"),
            provenance=card.mapping(card.get(root, "provenance"), "provenance"),
            model_file=card.string(root, "model_file"),
            model_sha256=card.string(root, "model_sha256"),
            schema_version=version,
            channel_error_reference=(card.positives(root, "channel_error_reference", len(channels))
                                     if "channel_error_reference" in root else None),
        )


@dataclass(frozen=True)
class Bundle:
    path: Path
    card: ModelCard
    model_path: Path

    @property
    def float_model_path(self) -> Path:
        return self.path / FLOAT_MODEL_FILE


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_card(card: ModelCard, directory: Path) -> Path:
    path = Path(directory) / CARD_FILE
    path.write_text(json.dumps(card.to_dict(), indent=2) + "\n", encoding="utf-8")
    return path


def read_card_json(card_path: Path) -> Any:
    """The card's JSON; every way a file can fail to be one becomes a BundleError naming it."""
    try:
        text = card_path.read_bytes().decode("utf-8")
        return json.loads(text)
    except FileNotFoundError:
        raise BundleError(f"{card_path}: missing: a bundle needs a model card") from None
    except OSError as error:  # a directory, no permission, an I/O error
        raise BundleError(f"{card_path}: cannot read the model card: {error.strerror}") from None
    except UnicodeDecodeError as error:
        raise BundleError(f"{card_path}: not UTF-8 text (byte {error.object[error.start]:#04x} at offset "
                          f"{error.start})") from None
    except json.JSONDecodeError as error:
        raise BundleError(f"{card_path}:{error.lineno}: not valid JSON: {error.msg}") from None
    except RecursionError:
        raise BundleError(f"{card_path}: not a model card: JSON nested too deeply") from None


def load_bundle(path: str | Path) -> Bundle:
    """Read and validate a bundle directory; the model file must match the card's sha256."""
    directory = Path(path)
    card_path = directory / CARD_FILE
    if not directory.is_dir():
        raise BundleError(f"{directory}: expected a bundle directory holding {CARD_FILE}")
    data = read_card_json(card_path)
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


class _Reader:
    """Typed access to the card's JSON with errors that name the key."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.per_column = "one per channel"

    def columns(self, spec: FeatureSpec) -> int:
        if len(spec.features) > 1:
            self.per_column = f"one per column: {len(spec.channels)} channels x {len(spec.features)} features"
        return spec.columns

    def fail(self, key: str, expected: str, value: Any) -> BundleError:
        return BundleError(f"{self.source}: {key}: expected {expected}, got {value!r}")

    def mapping(self, value: Any, key: str) -> dict:
        if not isinstance(value, Mapping):
            raise self.fail(key or "(top level)", "a JSON object", value)
        return dict(value)

    def get(self, data: Mapping, key: str) -> Any:
        leaf = key.rsplit(".", 1)[-1]
        if leaf not in data:
            raise BundleError(f"{self.source}: {key}: missing")
        return data[leaf]

    def string(self, data: Mapping, key: str) -> str:
        value = self.get(data, key)
        if not isinstance(value, str) or not value:
            raise self.fail(key, "a non-empty string", value)
        return value

    def strings(self, data: Mapping, key: str) -> tuple[str, ...]:
        value = self.get(data, key)
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
            raise self.fail(key, "a non-empty list of names", value)
        return tuple(value)

    def integer(self, data: Mapping, key: str, minimum: int, maximum: int | None = None) -> int:
        value = self.get(data, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum or (
                maximum is not None and value > maximum):
            expected = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
            if maximum is not None and isinstance(value, (int, float)) and value > maximum:
                expected = f"an integer from {minimum} to {maximum}"
            raise self.fail(key, expected, value)
        return value

    def number(self, data: Mapping, key: str) -> float:
        value = self.get(data, key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self.fail(key, "a finite number", value)
        return float(value)

    def optional_interval(self, data: Mapping, key: str) -> float | None:
        """Seconds >= 0, or None when the key is absent or null (cards written before it existed)."""
        if data.get(key.rsplit(".", 1)[-1]) is None:
            return None
        value = self.number(data, key)
        if value < 0:
            raise self.fail(key, "a number of seconds >= 0", value)
        return value

    def numbers(self, data: Mapping, key: str, count: int) -> tuple[float, ...]:
        value = self.get(data, key)
        ok = isinstance(value, list) and len(value) == count
        if ok and all(not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v) for v in value):
            return tuple(float(v) for v in value)
        raise self.fail(key, f"a list of {count} finite numbers ({self.per_column})", value)

    def feature_spec(self, data: Mapping, channels: tuple[str, ...]) -> FeatureSpec:
        if len(channels) > MAX_CHANNELS:
            raise self.fail("feature_spec.channels", f"at most {MAX_CHANNELS} channels", f"{len(channels)} names")
        feature_set = self.string(data, "feature_spec.feature_set")
        if feature_set not in FEATURE_SETS:
            raise self.fail("feature_spec.feature_set", f"one of {', '.join(FEATURE_SETS)}", feature_set)
        # Optional keys (added with feature sets): an older card has mean_abs and no machine data.
        features = self.strings(data, "feature_spec.features") if "features" in data else DEFAULT_FEATURES
        if features != FEATURE_SETS[feature_set]:
            raise self.fail("feature_spec.features", f"the {feature_set} set's {list(FEATURE_SETS[feature_set])}",
                            list(features))
        bearing = None
        if data.get("bearing") is not None:
            bearing_data = self.mapping(data["bearing"], "feature_spec.bearing")
            try:
                bearing = BearingGeometry.from_dict(bearing_data)
            except (KeyError, TypeError, ValueError) as error:
                raise self.fail("feature_spec.bearing", "balls, ball_mm, pitch_mm and contact_deg", bearing_data) from error
        shaft_rpm = self.number(data, "feature_spec.shaft_rpm") if data.get("shaft_rpm") is not None else None
        scale = self.number(data, "feature_spec.scale") if data.get("scale") is not None else None
        if scale is not None and not scale > 0:
            raise self.fail("feature_spec.scale", "a positive number of g per count", scale)
        spec = FeatureSpec(
            feature_set=feature_set,
            channels=channels,
            # 0: trained from a features table, which records no raw sampling.
            sample_rate_hz=self.integer(data, "feature_spec.sample_rate_hz", minimum=0, maximum=MAX_SAMPLE_RATE_HZ),
            snapshot_samples=self.integer(data, "feature_spec.snapshot_samples", minimum=0,
                                          maximum=MAX_SNAPSHOT_SAMPLES),
            window=self.integer(data, "feature_spec.window", minimum=1, maximum=MAX_WINDOW),
            snapshot_interval_s=self.optional_interval(data, "feature_spec.snapshot_interval_s"),
            features=features,
            bearing=bearing,
            shaft_rpm=shaft_rpm,
            scale=scale,
        )
        if feature_set != DEFAULT_FEATURES[0]:
            try:
                spec.feature_config()
            except ValueError as error:
                raise BundleError(f"{self.source}: feature_spec: {error}") from None
        return spec

    def positives(self, data: Mapping, key: str, count: int) -> tuple[float, ...]:
        values = self.numbers(data, key, count)
        if not all(v > 0 for v in values):
            raise self.fail(key, f"a list of {count} positive numbers (one per channel)", data[key])
        return values

    def detector(self, data: Mapping, warning: float, alarm: float) -> DetectorSettings:
        for key, top in (("warning_threshold", warning), ("alarm_threshold", alarm)):
            if key in data and self.number(data, f"detector.{key}") != top:
                raise self.fail(f"detector.{key}", f"the same value as {key} ({top})", data[key])
        counts = {name: self.integer(data, f"detector.{name}", minimum=1) for name in ("k", "n", "clear_after", "fault_after")}
        try:
            return DetectorSettings(warning_threshold=warning, alarm_threshold=alarm, **counts)
        except ValueError as error:
            raise BundleError(f"{self.source}: detector: {error}") from None


def check_channels(card: ModelCard, names: Sequence[str], source: str) -> None:
    """The incoming channels must be the card's, in the card's order."""
    if tuple(names) != card.feature_spec.channels:
        raise BundleError(
            f"{source}: channels {list(names)} do not match the model card's feature_spec.channels "
            f"{list(card.feature_spec.channels)}"
        )
