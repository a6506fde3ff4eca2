"""What tests pass the Agent instead of an MQTT publisher, where what is compared is what the agent would publish."""
from __future__ import annotations

from typing import Any


class RecordingPublisher:
    """Stands in for edge.mqtt.publisher.Publisher (an edge.announcer.Publishing): keeps what the agent hands over
    instead of sending it, and in which order (`sent`: "alert", "state", "telemetry")."""

    dropped_telemetry = 0

    def __init__(self) -> None:
        self.telemetry: list[dict[str, Any]] = []
        self.alerts: list[dict[str, Any]] = []
        self.states: list[dict[str, Any]] = []
        self.sent: list[str] = []

    def start(self) -> None: ...

    def stop(self, timeout: float = 5.0) -> None: ...

    def pending(self) -> int:
        return 0

    def publish_alert(self, payload: dict[str, Any]) -> int:
        self.alerts.append(payload)
        self.sent.append("alert")
        return len(self.alerts)

    def publish_state(self, payload: dict[str, Any]) -> None:
        self.states.append(payload)
        self.sent.append("state")

    def publish_telemetry(self, payload: dict[str, Any]) -> bool:
        self.telemetry.append(payload)
        self.sent.append("telemetry")
        return True

    def publish_health(self, payload: dict[str, Any]) -> None: ...
