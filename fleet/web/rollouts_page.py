"""The rollouts page: every staged rollout (newest first) with its waves and each device's status and reason,
and what an admin does from here: start one (a signed bundle from `[rollout] bundles`, fleet.offers) and pause,
resume and abort it. The scheduler in cm-fleet serve acts on them at its next tick (fleet/rollout.py); a form post
returns to the page, an API call (POST /rollouts.json with a bearer token) gets the rollout as JSON.

A rollout started here goes through the very `fleet.rollout.Request` and `create` that `cm-fleet rollout create`
uses: the same defaults, checks and messages (which name the option and the value)."""
from __future__ import annotations

from typing import Any

from flask import Blueprint, g, jsonify, redirect, render_template, request, url_for

from edge.model.bundle import BundleError
from fleet import offers
from fleet import rollout as r
from fleet.historian import rollouts as book
from fleet.web.auth import refuse, requires, wants_json
from fleet.web.services import services
from fleet.web.twins import plain, respond, twin_routes

blueprint = Blueprint("rollouts", __name__)
SHOWN = 50  # the newest rollouts on the page; older ones stay in the historian (cm-fleet rollout status ID)
ACTIONS = ("pause", "resume", "abort")
# The form's fields, each with the `cm-fleet rollout create` option its messages name (fleet.rollout's wording).
FIELDS = {"bundle": "bundle", "devices": "--devices", "canary": "--canary", "wave_wait": "--wave-wait",
          "max_failed": "--max-failed", "device_timeout": "--device-timeout",
          "probation_snapshots": "--probation-snapshots", "probation_seconds": "--probation-seconds"}
DEFAULTS = {"canary": r.DEFAULT_CANARY, "wave_wait": r.DEFAULT_WAVE_WAIT, "max_failed": r.DEFAULT_MAX_FAILED,
            "device_timeout": r.DEFAULT_DEVICE_TIMEOUT}  # fleet.rollout's, stated there


def _is_admin() -> bool:
    return g.user is not None and g.user.may("admin")  # an anonymous visitor is a viewer


def _page_data() -> dict[str, Any]:
    historian = services().historian
    shown = [book.detail(historian, r.id) for r in book.rollouts(historian)[:SHOWN]]
    data: dict[str, Any] = {"rollouts": shown, "actions": list(ACTIONS)}
    if _is_admin():  # what may be started, and how: for those who may start one
        data |= {"offers": offers.offers(services().rollout), "defaults": dict(DEFAULTS)}
    return data


def rollouts_page(fmt: str) -> Any:
    return respond(fmt, "rollouts.html", _page_data())


twin_routes(blueprint, "/rollouts", "rollouts_page", rollouts_page)


def _change(action: str) -> Any:
    body = request.get_json(silent=True) if request.is_json else None
    rollout_id = str((body or {}).get("rollout") if isinstance(body, dict) else request.form.get("rollout") or "").strip()
    try:
        changed = book.request(services().historian, rollout_id, action, g.user.name)
    except book.RolloutError as error:
        return refuse(404 if "no such rollout" in str(error) else 409, str(error))
    if wants_json():
        return jsonify(plain(changed))
    return redirect(url_for("rollouts.rollouts_page"), code=303)


@blueprint.post("/rollouts/pause")
@requires("admin")
def pause_rollout() -> Any:
    return _change("pause")


@blueprint.post("/rollouts/resume")
@requires("admin")
def resume_rollout() -> Any:
    return _change("resume")


@blueprint.post("/rollouts/abort")
@requires("admin")
def abort_rollout() -> Any:
    return _change("abort")


def _text(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    return "" if value is None else str(value).strip()


def _number(option: str, text: str, kind: type[int] | type[float]) -> int | float | None:
    """An optional whole number or number from a text field (empty: the agents' default)."""
    if not text:
        return None
    try:
        return kind(text)
    except ValueError:
        expected = "a whole number" if kind is int else "a number"
        raise book.RolloutError(f"{option} {text!r}: expected {expected}") from None


def _request(body: dict[str, Any]) -> r.Request:
    """The posted fields as `cm-fleet rollout create` would take them; the rollout's own checks follow in create."""
    config = services().rollout
    values = {name: _text(body, name) for name in FIELDS}
    if not values["devices"]:
        raise book.RolloutError("--devices '': expected all, device ids, globs (pump-*), site:NAME or tag:NAME")
    snapshots = _number("--probation-snapshots", values["probation_snapshots"], int)
    return r.Request(
        offers.bundle_path(config, values["bundle"]), values["devices"],
        canary=values["canary"] or DEFAULTS["canary"], wave_wait=values["wave_wait"] or DEFAULTS["wave_wait"],
        max_failed=values["max_failed"] or DEFAULTS["max_failed"],
        device_timeout=values["device_timeout"] or DEFAULTS["device_timeout"],
        probation_snapshots=None if snapshots is None else int(snapshots),
        probation_seconds=_number("--probation-seconds", values["probation_seconds"], float),
        trusted_keys=config.trusted_keys, created_by=g.user.name)


def _field(message: str) -> str | None:
    """Which field a message from fleet.rollout is about: it begins with the option's name."""
    for name, option in FIELDS.items():
        if message.startswith(f"{option} "):
            return name
    return "bundle" if message.startswith(str(services().rollout.bundles)) else None


@blueprint.post("/rollouts.json")
@blueprint.post("/rollouts")  # registered first (the innermost): url_for names the form's page, not its twin
@requires("admin")
def create_rollout() -> Any:
    as_json = request.path.endswith(".json") or request.is_json
    body = request.get_json(silent=True) if request.is_json else request.form.to_dict()
    if not isinstance(body, dict):
        return refuse(400, "expected a JSON object: {\"bundle\": NAME, \"devices\": SELECTOR, ...}")
    try:
        detail = r.create(services().historian, _request(body))
    except (book.RolloutError, BundleError, ValueError) as error:  # ValueError: a trusted key file that will not load
        message = str(error)
        if as_json:
            response = jsonify(error=message, field=_field(message))
            response.status_code = 400
            return response
        typed = {name: _text(body, name) for name in FIELDS}
        return render_template("rollouts.html", **_page_data(), form=typed, error=message, error_field=_field(message)), 400
    if as_json:
        response = jsonify(plain(detail))
        response.status_code = 201
        return response
    return redirect(url_for("rollouts.rollouts_page", _anchor=detail.rollout.id), code=303)
