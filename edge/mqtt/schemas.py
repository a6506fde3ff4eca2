"""The JSON Schemas of the MQTT payloads (edge/mqtt/schemas/*.schema.json), for tests and consumers.

jsonschema is a development dependency, not installed on a Pi, so it is imported only by `validate`.
"""
from __future__ import annotations

import json
from importlib import resources
from typing import Any

NAMES = ("alert", "state", "telemetry", "status", "health", "model", "desired")


def load_schema(name: str) -> dict[str, Any]:
    if name not in NAMES:
        raise ValueError(f"unknown payload schema {name!r}; known: {', '.join(NAMES)}")
    text = resources.files("edge.mqtt").joinpath("schemas", f"{name}.schema.json").read_text(encoding="utf-8")
    return json.loads(text)


def validate(name: str, payload: Any) -> None:
    """Raise jsonschema.ValidationError when `payload` (decoded JSON, or the status string) breaks the schema."""
    import jsonschema  # development dependency: see the module docstring

    schema = load_schema(name)
    jsonschema.validate(payload, schema, cls=jsonschema.Draft202012Validator,
                        format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
