"""Home Assistant MQTT discovery: the agent's device and entities appear in Home Assistant by themselves.

Retained config messages under `{discovery_prefix}/{component}/{device_id}/{object_id}/config` describe
entities that read the agent's own topics: the health state (an enum sensor) and a `problem` binary
sensor from the retained `state`, the score from `state` too (refreshed at the telemetry cadence), the
per-channel features from `telemetry`, and the link and snapshot counters as diagnostic entities. Every
entity has a `unique_id`, the shared `device`, and our `status` topic as availability, so Home Assistant
shows them unavailable when the agent's last will says "offline". When Home Assistant restarts it
publishes "online" on `{discovery_prefix}/status`, and the configs are sent again. The device names the model
in charge: when a rollout switches bundles (or rolls back), the agent sends the configs again with the new id,
retained, so Home Assistant never shows a model the agent no longer runs.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from edge.mqtt.publisher import Publisher, Topics
from edge.scoring.detector import State

log = logging.getLogger(__name__)

BIRTH = b"online"


@dataclass(frozen=True)
class Entity:
    component: str  # "sensor" or "binary_sensor"
    object_id: str
    config: dict[str, Any]


def _version() -> str:
    try:
        return metadata.version("condition-monitor")
    except metadata.PackageNotFoundError:
        return "unknown"


def entities(device_id: str, topics: Topics, channels: Sequence[str], counters: Iterable[str],
             model_id: str) -> list[Entity]:
    """The discovery configs, before the shared keys (unique_id, device, availability) are added."""
    states = [str(s) for s in State]
    found: list[Entity] = [
        Entity("sensor", "health", {
            "name": "Health", "state_topic": topics.state, "value_template": "{{ value_json.state }}",
            "device_class": "enum", "options": states, "json_attributes_topic": topics.state,
            "icon": "mdi:sine-wave"}),
        Entity("binary_sensor", "problem", {
            "name": "Problem", "state_topic": topics.state, "device_class": "problem",
            # learning (a baseline card, no model yet) is no problem: the machine is being learned, not judged.
            "value_template": "{{ 'OFF' if value_json.state in ('normal', 'learning') else 'ON' }}"}),
        # The agent's own faults (edge/mqtt/health.py): storage, broker refusals, clock, link; the faults are
        # its attributes. A diagnostic entity: it is about the monitor, not the machine.
        Entity("binary_sensor", "agent_problem", {
            "name": "Agent problem", "state_topic": topics.health, "device_class": "problem",
            "value_template": "{{ 'ON' if value_json.problem else 'OFF' }}", "json_attributes_topic": topics.health,
            "json_attributes_template": "{{ value_json.faults | tojson }}", "entity_category": "diagnostic"}),
        Entity("sensor", "score", {
            # A null score (faulty or lost snapshot) renders "None", which Home Assistant shows as unknown.
            "name": "Anomaly score", "state_topic": topics.state, "value_template": "{{ value_json.score }}",
            "state_class": "measurement", "suggested_display_precision": 4, "icon": "mdi:chart-bell-curve"}),
    ]
    for channel in channels:
        found.append(Entity("sensor", f"feature_{_slug(channel)}", {
            "name": f"{channel} vibration", "state_topic": topics.telemetry,
            "value_template": f"{{{{ value_json.features[{json.dumps(channel)}] }}}}",
            "unit_of_measurement": "g", "state_class": "measurement", "suggested_display_precision": 4,
            "icon": "mdi:vibrate"}))
    for counter in counters:
        found.append(Entity("sensor", f"counter_{counter}", {
            "name": counter.replace("_", " ").capitalize(), "state_topic": topics.telemetry,
            "value_template": f"{{{{ value_json.counters.{counter} }}}}", "state_class": "total_increasing"
            if counter not in ("alerts_pending",) else "measurement",
            "entity_category": "diagnostic", "icon": "mdi:counter"}))
    for entity in found:
        entity.config["device"] = {"identifiers": [f"cm-edge-{device_id}"], "name": f"Condition monitor {device_id}",
                                   "manufacturer": "condition-monitor", "model": f"cm-edge (model {model_id})",
                                   "sw_version": _version()}
        entity.config["unique_id"] = f"cm_{device_id}_{entity.object_id}"
        entity.config["availability_topic"] = topics.status
        entity.config["payload_available"] = "online"
        entity.config["payload_not_available"] = "offline"
    return found


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name.lower())


class Discovery:
    """Publishes the configs through the agent's publisher and again whenever Home Assistant comes online."""

    def __init__(self, publisher: Publisher, prefix: str, device_id: str, found: list[Entity]) -> None:
        self.publisher = publisher
        self.prefix = prefix
        self.device_id = device_id
        self.messages = self._messages(found)

    def _messages(self, found: list[Entity]) -> dict[str, bytes]:
        return {f"{self.prefix}/{e.component}/{self.device_id}/{e.object_id}/config":
                json.dumps(e.config, separators=(",", ":")).encode() for e in found}

    def start(self) -> None:
        self.announce()
        self.publisher.listen(f"{self.prefix}/status", self._on_status)

    def announce(self) -> None:
        for topic, payload in self.messages.items():
            self.publisher.publish_retained(topic, payload)

    def update(self, found: list[Entity]) -> None:
        """New configs (another model in charge): sent at once, retained, and on every birth from now on. The dict
        is replaced whole, so a birth handled on the MQTT thread meanwhile sends the old set or the new, never a mix."""
        self.messages = self._messages(found)
        log.info("Home Assistant discovery sent again: %d entities", len(self.messages))
        self.announce()

    def _on_status(self, payload: bytes) -> None:
        if payload.strip() == BIRTH:
            log.info("Home Assistant is online: discovery sent again (%d entities)", len(self.messages))
            self.announce()
