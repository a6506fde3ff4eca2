"""fleet.payloads: what the agent sends passes; anything else becomes a rejection with a reason, never an exception."""
from __future__ import annotations

import json

import pytest
from fleet_helpers import contract_alert, contract_state, contract_telemetry

from edge.mqtt.publisher import encode
from fleet.payloads import Accepted, Rejected, Validator, reference_validator

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
    ("cm/pump-1/firmware", encode(ALERT), "topic"),
    ("cm/pump-1/model", encode(ALERT), "schema"),  # a kind the fleet ingests (the agent's model report), another body
    ("other/pump-1/alert", encode(ALERT), "topic"),
])
def test_anything_else_is_rejected_with_its_reason(topic, payload, reason):
    outcome = VALIDATOR.check(topic, payload)
    assert isinstance(outcome, Rejected) and outcome.reason == reason, outcome
    assert len(outcome.detail) < 300


def _text(document: dict) -> bytes:
    """JSON as a hostile sender writes it: json.dumps keeps lone surrogates as \\ud800 escapes, as the wire may."""
    return json.dumps(document).encode()


@pytest.mark.parametrize(("payload", "reason"), [
    # What the schema lets through but the historian cannot store: accepted, each would fail its batch's
    # transaction on every retry and so stop the ingest of every agent.
    (_text({**ALERT, "reason": "\ud800"}), "bad_value"),            # a lone surrogate: not UTF-8 for the database
    (_text({**ALERT, "top_channel": "bearing1\u0000"}), "bad_value"),  # NUL: PostgreSQL's text refuses it
    (_text({**ALERT, "score": 10**400}), "bad_value"),              # beyond a BIGINT and a double
    (_text(ALERT).replace(b'"score": 0.01', b'"score": 1e400'), "bad_value"),  # read as infinity
    (_text({**ALERT, "timestamp": "2023-13-45T99:99:99Z"}), "schema"),  # matches the pattern, is no date
    (_text({**ALERT, "timestamp": "2023-02-30T00:00:00Z"}), "schema"),
    (_text({**ALERT, "timestamp": "2016-12-31T23:59:60Z"}), "schema"),  # a leap second: Python's datetime has none
])
def test_what_the_historian_cannot_store_is_rejected_before_it(payload, reason):
    outcome = VALIDATOR.check("cm/pump-1/alert", payload)
    assert isinstance(outcome, Rejected) and outcome.reason == reason, outcome


def test_the_extremes_a_database_can_store_are_accepted():
    for document in ({**ALERT, "score": 1e308}, {**ALERT, "reason": "Lager \u00fcberhitzt \u2013 \U0001f525"},
                     {**ALERT, "timestamp": "9999-12-31T23:59:59.999999Z"}):
        assert isinstance(VALIDATOR.check("cm/pump-1/alert", _text(document)), Accepted), document


# fastjsonschema decides, jsonschema (the reference implementation, with the same date-time check) words the
# detail: both must give the same verdict on good and bad payloads alike.
def _variants(kind: str, good: dict) -> list[object]:
    """The agent's payload, and many ways to break it: each key missing, each key of a wrong type or value."""
    wrong = [None, True, -1, 1.5, "", "x" * 70, "2023-11-14T22:13:20Z", "2023-02-30T00:00:00Z", [], {}, {"a": 1}, {"bearing1": -1.0}]
    variants: list[object] = [good, {**good, "extra": 1}, [good], "text", 0]
    for key in good:
        variants.append({k: v for k, v in good.items() if k != key})
        variants.extend({**good, key: value} for value in wrong)
        if isinstance(good[key], dict):
            variants.extend({**good, key: {**good[key], inner: value}} for inner in list(good[key]) + ["new"]
                            for value in wrong[:6])
    return variants


REFERENCE = {kind: reference_validator(kind) for kind in ("alert", "state", "telemetry", "health")}


@pytest.mark.parametrize(("kind", "good"), [
    ("alert", contract_alert("pump-1", 4)), ("state", contract_state("pump-1", 2)),
    ("telemetry", contract_telemetry("pump-1", 7)), ("health", HEALTH)])
def test_the_compiled_schemas_agree_with_jsonschema(kind, good):
    variants = _variants(kind, good)
    accepted = 0
    for payload in variants:
        outcome = VALIDATOR.check(f"cm/pump-1/{kind}", json.dumps(payload).encode())
        ours = isinstance(outcome, Accepted) or outcome.reason == "device_mismatch"  # past the schema
        assert ours == REFERENCE[kind].is_valid(payload), (payload, outcome)
        accepted += ours
    assert 1 < accepted < len(variants) / 2  # both verdicts were exercised


def test_where_the_compiled_schema_is_the_stricter():
    # `$` before a trailing newline: re.search's reading, jsonschema's; the compiled schema's `$` ends the text
    payload = {**ALERT, "model": {**ALERT["model"], "sha256": "ab" * 32 + "\n"}}
    assert REFERENCE["alert"].is_valid(payload)  # what jsonschema alone let through
    outcome = VALIDATOR.check("cm/pump-1/alert", encode(payload))
    assert isinstance(outcome, Rejected) and outcome.reason == "schema", outcome
