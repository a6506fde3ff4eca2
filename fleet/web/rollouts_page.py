"""The rollouts page: every staged rollout (newest first) with its waves and each device's status and reason,
and the three changes an admin makes from here: pause, resume and abort. The scheduler in cm-fleet serve acts on
them at its next tick (fleet/rollout.py); a form post returns to the page, an API call gets the rollout as JSON."""
from __future__ import annotations

from typing import Any

from flask import Blueprint, g, jsonify, redirect, request, url_for

from fleet.historian import rollouts as book
from fleet.web.auth import refuse, requires, wants_json
from fleet.web.services import services
from fleet.web.twins import plain, respond, twin_routes

blueprint = Blueprint("rollouts", __name__)
SHOWN = 50  # the newest rollouts on the page; older ones stay in the historian (cm-fleet rollout status ID)
ACTIONS = ("pause", "resume", "abort")


def rollouts_page(fmt: str) -> Any:
    historian = services().historian
    shown = [book.detail(historian, r.id) for r in book.rollouts(historian)[:SHOWN]]
    return respond(fmt, "rollouts.html", {"rollouts": shown, "actions": list(ACTIONS)})


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
