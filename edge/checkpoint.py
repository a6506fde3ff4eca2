"""The agent's memory across restarts: the detector's state, saved at every transition.

A restart (power cut, update, crash) must neither announce a false all-clear nor raise the same alarm
twice. The state is a small JSON file beside the outbox, replaced atomically; a checkpoint written for
another model is ignored, because its thresholds meant something else.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from edge.detector import State

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Checkpoint:
    model_id: str
    state: State
    health: State
    reason: str | None
    since_us: int


def checkpoint_path(outbox_path: Path) -> Path:
    return outbox_path.with_name(outbox_path.stem + ".detector.json")


def load_checkpoint(path: Path, model_id: str) -> Checkpoint | None:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        checkpoint = Checkpoint(raw["model_id"], State(raw["state"]), State(raw["health"]), raw["reason"],
                                int(raw["since_us"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as error:
        log.warning("%s: unreadable detector checkpoint (%s): starting from normal", path, error)
        return None
    if checkpoint.model_id != model_id:
        log.info("%s: checkpoint of model %s ignored: this bundle is %s", path, checkpoint.model_id, model_id)
        return None
    return checkpoint


def save_checkpoint(path: Path, checkpoint: Checkpoint) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    with temporary.open("w", encoding="utf-8") as file:
        json.dump(asdict(checkpoint), file)
        file.flush()
        os.fsync(file.fileno())  # a power cut leaves the old checkpoint or the new one, never half of one
    os.replace(temporary, path)
