"""The fleet page: every machine with its state, since when, score, bearing, defect, ISO zone, model, last seen
agent health and commissioning phase (learning with its progress, training, probation, monitoring); filtered by state, unacknowledged alerts, site or tag, and sorted; its JSON twin is what the
page polls to update without a reload."""
from __future__ import annotations

from typing import Any

from flask import Blueprint, redirect, request, url_for

from fleet.historian.commissioning import summaries
from fleet.historian.overview import SORTS, STATES, FleetFilter, OverviewError, fleet_counts, fleet_rows, sites_and_tags
from fleet.web.auth import refuse
from fleet.web.services import services
from fleet.web.twins import respond, twin_routes

blueprint = Blueprint("fleet", __name__)


@blueprint.get("/")
def home() -> Any:
    return redirect(url_for("fleet.fleet_page"))


def _filter() -> FleetFilter:
    args = request.args
    limit = args.get("limit", "")
    return FleetFilter(state=args.get("state") or None, unacknowledged=args.get("unacknowledged") in ("1", "true", "on"),
                       site=args.get("site") or None, tag=args.get("tag") or None, sort=args.get("sort") or "severity",
                       limit=int(limit) if limit.isdigit() else FleetFilter.limit)


def fleet_page(fmt: str) -> Any:
    chosen = _filter()
    historian = services().historian
    try:
        machines = fleet_rows(historian, chosen)
    except OverviewError as error:
        return refuse(400, str(error))
    counts = fleet_counts(historian, chosen)
    sites, tags = sites_and_tags(historian)
    return respond(fmt, "fleet.html", {"machines": machines, "total": sum(counts.values()), "counts": counts,
                                       "filter": chosen, "states": list(STATES), "sorts": list(SORTS), "sites": sites,
                                       "tags": tags, "phases": summaries(historian)})


twin_routes(blueprint, "/fleet", "fleet_page", fleet_page)
