"""Whether a bundle fits this agent: its config, and the frames the running bundle already accepts.

At start a bundle is held against the config (cm-edge refuses to start otherwise); a bundle that arrives
over the air (edge.rollout) must in addition read the same stream as the running one: same channels in
the same order, sample rate, snapshot length and scale, because the frames, their guard and the snapshot
assembler do not change while the agent runs. The feature set may change: features are the bundle's own.
"""
from __future__ import annotations

from edge.config import AgentConfig
from edge.model.bundle import Deployable


class MismatchError(ValueError):
    """The bundle does not fit the config or the sensor's frames."""


def check_bundle_against_config(config: AgentConfig, bundle: Deployable) -> None:
    spec = bundle.card.feature_spec
    if not spec.sample_rate_hz or not spec.snapshot_samples:
        raise MismatchError(f"the bundle {bundle.path} was trained on a features table: it has no sample rate or "
                            f"snapshot length, so it cannot score raw frames; train it on IMS-format files "
                            f"(an IMS directory or the recorder's output)")
    expected = config.sensor
    pairs = [("channels", expected.channels, spec.channels),
             ("sample_rate_hz", expected.sample_rate_hz, spec.sample_rate_hz),
             ("snapshot_samples", expected.snapshot_samples, spec.snapshot_samples)]
    for key, configured, carded in pairs:
        if configured is not None and configured != carded:
            raise MismatchError(f"{config.path}: sensor.{key} is {_show(configured)} but the bundle "
                                f"{bundle.path} was trained for {_show(carded)}")


def check_same_stream(running: Deployable, candidate: Deployable) -> None:
    """The candidate reads the frames the running bundle reads; else MismatchError naming the card key."""
    now, new = running.card.feature_spec, candidate.card.feature_spec
    for key in ("channels", "sample_rate_hz", "snapshot_samples", "scale"):
        if getattr(now, key) != getattr(new, key) and not (key == "scale" and new.scale is None):
            raise MismatchError(f"{candidate.path}: feature_spec.{key} is {_show(getattr(new, key))} but the frames "
                                f"this agent reads (bundle {running.card.id}) have {_show(getattr(now, key))}")


def _show(value: object) -> str:
    return ", ".join(value) if isinstance(value, tuple) else str(value)
