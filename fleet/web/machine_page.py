"""A machine's page: score trend against its warning and alarm thresholds, per-bearing error, features and
velocity RMS against the ISO zones, the alert timeline, agent health, model history and commissioning (its phase,
"commission now" and "learn again" for operators). The charts' series come downsampled from the historian
(fleet/historian/series.py): any span is at most ~1000 points."""
from __future__ import annotations

from typing import Any

from flask import Blueprint, g, jsonify, redirect, request, url_for

from edge.scoring.diagnosis import DEFAULT_ISO_GROUP, ISO_GROUPS, VELOCITY_FEATURE
from fleet.historian import commissioning
from fleet.historian.alert_book import CALM, FAILURE_MODES, REPAIRS, alert_rows
from fleet.historian.overview import FleetFilter, fleet_rows, machine_picture, model_history
from fleet.historian.series import Span, latest_record, series, series_names, telemetry_extent
from fleet.web.auth import refuse, requires, wants_json
from fleet.web.services import services
from fleet.web.twins import plain, respond

blueprint = Blueprint("machine", __name__)
SPANS_S = {"1h": 3600, "1d": 86400, "7d": 7 * 86400, "30d": 30 * 86400, "365d": 365 * 86400, "all": None}
DEFAULT_SPAN = "7d"
TIMELINE = 200  # alerts on the page, newest first


def chosen_span(extent: tuple[int, int] | None, name: str) -> Span | None:
    """The span ending at the machine's newest telemetry (a replayed or silent machine still shows its data)."""
    if extent is None:
        return None
    end = extent[1] + 1
    seconds = SPANS_S[name]
    return Span(extent[0] if seconds is None else max(end - seconds * 1_000_000, extent[0]), end)


def charts(points: dict[str, list[Any]]) -> dict[str, dict[str, list[float]]]:
    """Each series as uPlot's columns: time (s), min, max, mean."""
    return {name: {"t": [p.time_us / 1e6 for p in found], "min": [p.min for p in found], "max": [p.max for p in found],
                   "mean": [p.mean for p in found]} for name, found in points.items()}


def machine_page(device_id: str, fmt: str) -> Any:
    span_name = request.args.get("span", DEFAULT_SPAN)
    iso_group = request.args.get("iso_group", DEFAULT_ISO_GROUP)
    if span_name not in SPANS_S:
        return refuse(400, f"span: expected one of {', '.join(SPANS_S)}, got {span_name!r}")
    if iso_group not in ISO_GROUPS:
        return refuse(400, f"iso_group: expected one of {', '.join(ISO_GROUPS)}, got {iso_group!r}")
    historian = services().historian
    found = fleet_rows(historian, FleetFilter(device_id=device_id))
    if not found:
        return refuse(404, f"no machine {device_id!r} in the historian")
    record = latest_record(historian, device_id)
    names = series_names(record)  # the compactor never folds a machine's newest bucket: a record is there
    span = chosen_span(telemetry_extent(historian, device_id, names), span_name)
    points = series(historian, device_id, names, span) if span is not None else {}
    timeline = alert_rows(historian, "all", device_id=device_id, raised_only=False, limit=TIMELINE)
    thresholds = next(({"warning": a.warning_threshold, "alarm": a.alarm_threshold} for a in timeline), None)
    state, health = machine_picture(historian, device_id)
    return respond(fmt, "machine.html", {
        "machine": found[0], "span": span_name, "spans": list(SPANS_S), "start_us": span and span.start_us,
        "end_us": span and span.end_us, "bucket_us": span and span.width_us, "thresholds": thresholds,
        "iso_group": iso_group, "iso_groups": list(ISO_GROUPS), "iso_boundaries": list(ISO_GROUPS[iso_group]),
        "velocity_feature": VELOCITY_FEATURE, "series": charts(points), "alerts": timeline, "state": state,
        "health": health, "counters": (record or {}).get("counters"), "time_source": (record or {}).get("time_source"),
        "models": model_history(historian, device_id), "failure_modes": list(FAILURE_MODES), "calm": CALM,
        "repairs": list(REPAIRS), "commissioning": commissioning.record(historian, device_id)})


blueprint.add_url_rule("/machines/<device_id>", "machine_page", machine_page, defaults={"fmt": "html"})
blueprint.add_url_rule("/machines/<device_id>.json", "machine_page", machine_page, defaults={"fmt": "json"})


def _commissioning_change(device_id: str, change: Any) -> Any:
    """"Commission now" and "learn again": the request goes into the historian, cm-fleet serve's worker acts on it."""
    try:
        found = change()
    except commissioning.CommissioningError as error:
        return refuse(409, str(error))
    if wants_json():
        return jsonify(plain(found))
    return redirect(url_for("machine.machine_page", device_id=device_id), code=303)


@blueprint.post("/machines/<device_id>/commission")
@requires("operator")
def commission_now(device_id: str) -> Any:
    return _commissioning_change(device_id, lambda: commissioning.request(services().historian, device_id, g.user.name))


@blueprint.post("/machines/<device_id>/learn-again")
@requires("operator")
def learn_again(device_id: str) -> Any:
    return _commissioning_change(device_id, lambda: commissioning.learn_again(
        services().historian, device_id, f"learn again by {g.user.name}"))
