"""How a recording is read (the options cm-replay, cm-train fit and cm-train evaluate share) and which of its
channels are selected."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Self

from firmware_bridge import ims

# One error for a file that cannot be read, whatever its format: an IMS file's is a recording's error.
# The message starts with "<path>[:<line>]: ".
RecordingError = ims.ImsFormatError


@dataclass(frozen=True, kw_only=True)
class RecordingSpec:
    """--format, --channels, --sample-rate and --snapshot-samples; the defaults are stated here only.

    None leaves it to the recording: the format detected from the names, every channel, the format's own sample
    rate (ims 20000, femto 25600; mat and csv do not record one), one snapshot per file or record. Options objects
    that also say how to read a recording (the trainer's, the replay's) extend this one.
    """

    format: str | None = None  # one of firmware_bridge.recording.FORMATS
    channels: Sequence[str | int] | None = None  # names or 1-based numbers, in the order wanted
    sample_rate_hz: int | None = None
    snapshot_samples: int | None = None  # cut long records into snapshots of this many samples

    def names_samples(self) -> bool:
        """Whether --format, --sample-rate or --snapshot-samples is given: the input is raw samples, not a table."""
        return self.format is not None or self.sample_rate_hz is not None or self.snapshot_samples is not None

    def overridden_by(self, given: RecordingSpec) -> Self:
        """This spec with every option `given` sets (not None) taken from `given`."""
        return replace(self, **{f.name: getattr(given, f.name) for f in fields(RecordingSpec)
                                if getattr(given, f.name) is not None})

    def check(self, path: Path, formats: Sequence[str]) -> None:
        """The options a reader cannot check itself; errors name the recording and the flag."""
        if self.format is not None and self.format not in formats:
            raise RecordingError(path, f"--format: expected one of {', '.join(formats)}, got {self.format!r}")
        for name, value in (("--sample-rate", self.sample_rate_hz), ("--snapshot-samples", self.snapshot_samples)):
            if value is not None and value < 1:
                raise RecordingError(path, f"{name}: expected a positive integer, got {value}")


def parse_channel_list(text: str) -> tuple[str, ...]:
    """`--channels 1,3` or `--channels DE,FE`: the tokens, checked only for emptiness and repeats."""
    tokens = tuple(part.strip() for part in text.split(","))
    if not text.strip() or any(not t for t in tokens) or len(set(tokens)) != len(tokens):
        raise ValueError(f"expected distinct channel names or 1-based numbers like 1,3 or DE,FE, got {text!r}")
    return tokens


@dataclass(frozen=True)
class Selection:
    """The selected channels: their names and their 1-based positions among the source's channels."""

    names: tuple[str, ...]
    columns: tuple[int, ...]

    def offset(self, first: int) -> list[int]:
        """0-based table columns of the selection when the channels start at table column `first`."""
        return [first + c - 1 for c in self.columns]


def select_channels(names: Sequence[str], wanted: Sequence[str | int] | None, source: str | Path) -> Selection:
    """The channels `wanted` (names or 1-based numbers) among `names`; None selects all."""
    if not wanted:
        return Selection(tuple(names), tuple(range(1, len(names) + 1)))
    positions = tuple(_position(names, str(token), source) for token in wanted)
    if len(set(positions)) != len(positions):
        raise RecordingError(source, f"--channels: {list(wanted)} selects a channel twice")
    return Selection(tuple(names[c - 1] for c in positions), positions)


def _position(names: Sequence[str], text: str, source: str | Path) -> int:
    if text in names:
        return names.index(text) + 1
    matches = [i + 1 for i, name in enumerate(names) if name.lower() == text.lower()]
    if matches:
        return matches[0]
    if text.isdigit() and 1 <= int(text) <= len(names):
        return int(text)
    if text.isdigit():
        raise RecordingError(source, f"--channels: column {text} does not exist: expected 1-based numbers "
                                     f"1..{len(names)} or names ({', '.join(names)})")
    raise RecordingError(source, f"--channels: no channel named {text!r}; channels are {', '.join(names)} "
                                 f"(or their 1-based numbers)")
