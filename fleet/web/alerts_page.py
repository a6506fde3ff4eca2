"""The alerts page: one table across the fleet (active, unacknowledged, closed or all), and the two changes a
person makes to an alert: acknowledge it (who, when, comment) and close it with a failure mode. Changes need an
operator or an admin; a form post returns to the page it came from, an API call gets the alert as JSON."""
from __future__ import annotations

from typing import Any

from flask import Blueprint, g, jsonify, redirect, request, url_for

from fleet.historian.alert_book import (
    CALM,
    FAILURE_MODES,
    FILTERS,
    REPAIRS,
    AlertBookError,
    AlreadyDone,
    acknowledge,
    alert_rows,
    close,
)
from fleet.web.auth import refuse, requires, wants_json
from fleet.web.services import services
from fleet.web.twins import plain, respond, twin_routes

blueprint = Blueprint("alerts", __name__)
MAX_COMMENT = 2000


def alerts_page(fmt: str) -> Any:
    which = request.args.get("filter", "active")
    device_id = request.args.get("machine") or None
    try:
        rows = alert_rows(services().historian, which, device_id=device_id)
    except AlertBookError as error:
        return refuse(400, str(error))
    return respond(fmt, "alerts.html", {"alerts": rows, "filter": which, "filters": list(FILTERS), "machine": device_id,
                                        "failure_modes": list(FAILURE_MODES), "repairs": list(REPAIRS), "calm": CALM})


twin_routes(blueprint, "/alerts", "alerts_page", alerts_page)


def _field(name: str) -> str:
    body = request.get_json(silent=True) if request.is_json else None
    value = (body or {}).get(name) if isinstance(body, dict) else request.form.get(name)
    return str(value or "").strip()


def _done(change: Any) -> Any:
    try:
        row = change()
    except LookupError:
        return refuse(404, "no such alert")
    except AlreadyDone as error:
        return refuse(409, str(error))
    except AlertBookError as error:
        return refuse(400, str(error))
    if wants_json():
        return jsonify(plain(row))
    return redirect(_back(), code=303)


def _back() -> str:
    target = request.form.get("back", "")
    return target if target.startswith("/") and not target.startswith("//") else url_for("alerts.alerts_page")


@blueprint.post("/alerts/<alert_id>/acknowledge")
@requires("operator")
def acknowledge_alert(alert_id: str) -> Any:
    comment = _field("comment")[:MAX_COMMENT]
    return _done(lambda: acknowledge(services().historian, alert_id, g.user.name, comment))


@blueprint.post("/alerts/<alert_id>/close")
@requires("operator")
def close_alert(alert_id: str) -> Any:
    comment, mode, repair = _field("comment")[:MAX_COMMENT], _field("failure_mode"), _field("repair") or None
    return _done(lambda: close(services().historian, alert_id, g.user.name, mode, comment, repair))
