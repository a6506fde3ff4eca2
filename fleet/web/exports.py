"""Exports for the trainer: a machine's raw telemetry as a features table (`cm-train fit` reads it: a timestamp
column, then one column per channel) and the same table with a `label` column, 1 inside the episodes of alerts
closed with a real failure mode and 0 elsewhere (`cm-train evaluate --label-column label` scores a model
against it). Only raw telemetry is exported: folded buckets are no snapshots to train on."""
from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from typing import Any

from flask import Blueprint, Response

from edge.ingest.clock import iso_time
from fleet.historian.alert_book import failure_episodes
from fleet.historian.series import feature_rows
from fleet.web.auth import refuse
from fleet.web.services import services

blueprint = Blueprint("exports", __name__)
TIME_COLUMN = "timestamp"
LABEL_COLUMN = "label"


def _csv(header: list[str], rows: Iterable[list[Any]], filename: str) -> Response:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return Response(text.getvalue(), mimetype="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="{filename}"'})


def _cell(value: float | None) -> str:
    return "" if value is None else repr(float(value))


@blueprint.get("/machines/<device_id>/telemetry.csv")
def telemetry_csv(device_id: str) -> Any:
    channels, rows = feature_rows(services().historian, device_id)
    if not rows:
        return refuse(404, f"no raw telemetry for {device_id!r}")
    return _csv([TIME_COLUMN, *channels], ([iso_time(t), *map(_cell, values)] for t, values in rows),
                f"{device_id}-telemetry.csv")


def labelled(time_us: int, episodes: list[tuple[int, int | None]]) -> int:
    return int(any(start <= time_us and (end is None or time_us < end) for start, end in episodes))


@blueprint.get("/machines/<device_id>/labels.csv")
def labels_csv(device_id: str) -> Any:
    historian = services().historian
    channels, rows = feature_rows(historian, device_id)
    if not rows:
        return refuse(404, f"no raw telemetry for {device_id!r}")
    episodes = failure_episodes(historian, device_id)
    return _csv([TIME_COLUMN, *channels, LABEL_COLUMN],
                ([iso_time(t), *map(_cell, values), labelled(t, episodes)] for t, values in rows), f"{device_id}-labels.csv")
