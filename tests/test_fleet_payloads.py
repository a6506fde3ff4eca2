"""fleet.payloads: what the agent sends passes; anything else becomes a rejection with a reason, never an exception."""
from __future__ import annotations

import json

import pytest
from fleet_helpers import contract_alert, contract_state, contract_telemetry

from edge.mqtt.publisher import encode
from fleet.payloads import Accepted, Rejected, Validator

VALIDATOR = Validator("cm", max_payload_bytes=4096)
HEALTH = {"device_id": "pump-1", "timestamp": "2023-11-14T22:13:20.000Z", "problem": False, "faults": {}}


@pytest.mark.parametrize(("kind", "payload"), [
    ("alert", contract_alert("pump-1", 4)), ("state", contract_state("pump-1", 2)),
    ("telemetry", contract_telemetry("pump-1", 7)), ("health", HEALTH)])
def test_the_agents_payloads_are_accepted(kind, payload):
    assert VALIDATOR.check(f"cm/pump-1/{kind}", encode(payload)) == Accepted(kind, "pump-1", payload)


def test_status_is_the_bare_word():
    assert VALIDATOR.check("cm/pump-1/status", b"online") == Accepted("status", "pump-1", "online")
    assert VALIDATOR.check("cm/pump-1/status", b"maybe").reason == "schema"


def test_a_deeper_prefix():
    validator = Validator("site/a/cm", 4096)
    assert isinstance(validator.check("site/a/cm/pump-1/status", b"online"), Accepted)
    assert validator.check("site/b/cm/pump-1/status", b"online").reason == "topic"


ALERT = contract_alert("pump-1", 1)


@pytest.mark.parametrize(("topic", "payload", "reason"), [
    ("cm/pump-1/alert", b"{not json", "bad_json"),
    ("cm/pump-1/alert", b"\xff\xfe", "not_utf8"),
    ("cm/pump-1/alert", b"[" * 100_000 + b"]" * 100_000, "too_large"),
    ("cm/pump-1/alert", b"[" * 2000 + b"]" * 2000, "bad_json"),  # nesting beyond the parser's recursion: in limits
    ("cm/pump-1/alert", json.dumps({**ALERT, "score": float("nan")}).encode(), "bad_json"),
    ("cm/pump-1/alert", encode({**ALERT, "state": "on fire"}), "schema"),
    ("cm/pump-1/alert", encode({k: v for k, v in ALERT.items() if k != "id"}), "schema"),
    ("cm/pump-1/alert", encode({**ALERT, "extra": 1}), "schema"),
    ("cm/pump-1/alert", b"42", "schema"),
    ("cm/pump-2/alert", encode(ALERT), "device_mismatch"),
    ("cm/pump-1/alert/x", encode(ALERT), "topic"),
    ("cm/pump 1/alert", encode(ALERT), "topic"),
    ("cm/pump-1/model", encode(ALERT), "topic"),
    ("other/pump-1/alert", encode(ALERT), "topic"),
])
def test_anything_else_is_rejected_with_its_reason(topic, payload, reason):
    outcome = VALIDATOR.check(topic, payload)
    assert isinstance(outcome, Rejected) and outcome.reason == reason, outcome
    assert len(outcome.detail) < 300
