"""Every page has a JSON twin (`/alerts` and `/alerts.json`), as Datasette's tables do: one view, one query,
two renderings. A page's template gets the same dictionary the JSON twin returns."""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

from flask import Blueprint, jsonify, render_template

Twin = Callable[[str], Any]


@functools.cache
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def plain(value: Any) -> Any:
    """Dataclasses (and lists and dicts of them) as JSON-ready dicts."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {name: plain(getattr(value, name)) for name in _field_names(type(value))}
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def respond(fmt: str, template: str, data: dict[str, Any]) -> Any:
    if fmt == "json":
        return jsonify(plain(data))
    return render_template(template, **data)


def twin_routes(blueprint: Blueprint, rule: str, endpoint: str, view: Twin) -> None:
    """`rule` as a page and `rule.json` as its JSON twin, both to `view(fmt)`."""
    blueprint.add_url_rule(rule, endpoint, view, defaults={"fmt": "html"}, methods=["GET"])
    blueprint.add_url_rule(f"{rule}.json", endpoint, view, defaults={"fmt": "json"}, methods=["GET"])
