"""What arrives on the fleet's topics, checked: the topic's shape, the size, the JSON, the agent's own JSON
Schema (edge/mqtt/schemas) and that the payload's device is the topic's device.

A payload that fails any check becomes a `Rejected` with a short reason, never an exception: one hostile
or broken sender must not stop or delay the others. That includes what the schemas allow but a database cannot
store (a lone surrogate or NUL in a string, an integer beyond 64 bits, 1e400 read as infinity, a date-time with
month 13): accepted, it would fail its batch's transaction again and again and so hold back every agent's alerts.

The schemas are compiled to Python code by fastjsonschema, which decides: jsonschema interprets them (its $ref
lookups cost ~1.3 ms a payload, about 800 payloads/s, the ingest's old limit). jsonschema, with the same
date-time check, still words the detail of a rejection (its best_match names the deepest cause), so only the
rare rejected payload pays for it. They differ in one reading: fastjsonschema takes a pattern's `$` as the end
of the text, jsonschema (re.search) also before a trailing newline; the stricter reading is kept
(tests/test_fleet_payloads.py shows both agree everywhere else).
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import fastjsonschema
import jsonschema

from edge.mqtt.schemas import load_schema

KINDS = ("alert", "state", "status", "health", "telemetry", "model")
DEVICE_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # the schemas' device_id


@dataclass(frozen=True)
class Accepted:
    kind: str  # one of KINDS
    device_id: str
    payload: Any  # the decoded JSON (a dict), or the status word


@dataclass(frozen=True)
class Rejected:
    reason: str  # a short, fixed category (counted and logged per category): see Validator.check
    detail: str  # what exactly, for the log line (bounded length)


INT64 = range(-(2**63), 2**63)  # what a BIGINT column (and SQLite's INTEGER) holds


def is_date_time(instance: object) -> bool:
    """`format: date-time` as the historian reads it (month 13 or second 60 would fail there): really parsed."""
    if not isinstance(instance, str):
        return True  # the format applies to strings only; `type` judges the rest
    try:
        datetime.fromisoformat(instance).timestamp()
    except (ValueError, OverflowError):
        return False
    return True


def _format_checker() -> jsonschema.FormatChecker:
    """jsonschema's checkers, with `date-time` really parsed: without the optional rfc3339-validator jsonschema
    lets any string through."""
    checker = jsonschema.FormatChecker()
    checker.checks("date-time")(is_date_time)
    return checker


def reference_validator(kind: str) -> jsonschema.protocols.Validator:
    """jsonschema's validator of the kind's schema: words a rejection's detail; the reference in the tests."""
    return jsonschema.Draft202012Validator(load_schema(kind), format_checker=_format_checker())


def _unstorable(decoded: Any) -> str | None:
    """Why a value of the decoded JSON cannot be stored as it is, or None. Iterative: json.loads already bounds
    the depth, but a recursive walk would use up the stack that the service's threads share."""
    pending = [decoded]
    while pending:
        value = pending.pop()
        if isinstance(value, str):
            if "\x00" in value:
                return "a string holds NUL (PostgreSQL's text cannot)"
            if not value.isascii():
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError:
                    return "a string holds a lone surrogate (not UTF-8)"
        elif isinstance(value, bool) or value is None:
            continue
        elif isinstance(value, int):
            if value not in INT64:
                return "an integer beyond 64 bits"
        elif isinstance(value, float):
            if not math.isfinite(value):
                return "a number beyond a double's range"
        elif isinstance(value, dict):
            pending.extend(value.keys())
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)
    return None


def _compiled(kind: str) -> Callable[[Any], Any]:
    """The schema as a Python function that raises JsonSchemaValueException on the first violation."""
    return fastjsonschema.compile(load_schema(kind), formats={"date-time": is_date_time})


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else f"{text[:limit]}..."


class Validator:
    """Checks `(topic, payload)` pairs under `prefix`; the schemas are compiled once."""

    def __init__(self, prefix: str, max_payload_bytes: int) -> None:
        self.prefix = prefix
        self.max_payload_bytes = max_payload_bytes
        self._levels = prefix.count("/") + 1
        self._schemas = {kind: reference_validator(kind) for kind in KINDS}  # words the detail of a rejection
        self._compiled = {kind: _compiled(kind) for kind in KINDS}  # decides

    def topic(self, topic: str) -> tuple[str, str] | Rejected:
        """(device_id, kind) of `{prefix}/{device_id}/{kind}`."""
        levels = topic.split("/")
        if len(levels) != self._levels + 2 or "/".join(levels[:self._levels]) != self.prefix:
            return Rejected("topic", f"not {self.prefix}/<device>/<kind>")
        device_id, kind = levels[-2], levels[-1]
        if kind not in KINDS:
            return Rejected("topic", f"unknown kind {_short(kind, 40)!r}")
        if not DEVICE_PATTERN.match(device_id):
            return Rejected("topic", "the device id in the topic is not 1-64 of A-Z a-z 0-9 _ -")
        return device_id, kind

    def check(self, topic: str, payload: bytes) -> Accepted | Rejected:
        where = self.topic(topic)
        if isinstance(where, Rejected):
            return where
        device_id, kind = where
        if len(payload) > self.max_payload_bytes:
            return Rejected("too_large", f"{len(payload)} bytes > {self.max_payload_bytes}")
        decoded = self._decode(kind, payload)
        if isinstance(decoded, Rejected):
            return decoded
        problem = _unstorable(decoded)
        if problem is not None:
            return Rejected("bad_value", problem)
        try:
            self._compiled[kind](decoded)
        except fastjsonschema.JsonSchemaValueException as violation:
            return Rejected("schema", self._explain(kind, decoded, violation))
        if kind != "status" and decoded["device_id"] != device_id:
            return Rejected("device_mismatch", f"payload device_id {decoded['device_id']!r}")
        return Accepted(kind, device_id, decoded)

    def _explain(self, kind: str, decoded: Any, violation: fastjsonschema.JsonSchemaValueException) -> str:
        error = jsonschema.exceptions.best_match(self._schemas[kind].iter_errors(decoded))
        if error is None:  # where fastjsonschema is the stricter (module docstring)
            return _short(f"{(violation.name or 'data').removeprefix('data').lstrip('.') or '(root)'}: {violation.message}")
        return _short(f"{'/'.join(map(str, error.absolute_path)) or '(root)'}: {error.message}")

    @staticmethod
    def _decode(kind: str, payload: bytes) -> Any:
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError as error:
            return Rejected("not_utf8", str(error))
        if kind == "status":
            return text  # the bare word, not JSON (status.schema.json)
        try:
            # allow NaN nowhere: the agent never sends it (allow_nan=False) and the database would choke on it
            return json.loads(text, parse_constant=_no_constant)
        except (ValueError, RecursionError) as error:  # JSONDecodeError is a ValueError; deep nesting recurses
            return Rejected("bad_json", _short(str(error) or type(error).__name__))


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
