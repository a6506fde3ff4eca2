"""A publisher that keeps what the agent hands over, for tests that drive the real Agent in-process and compare
what it would publish (the MQTT path itself is tested against a real broker in test_publisher and test_hil).

    from publishers import RecordingPublisher
"""
from __future__ import annotations

from typing import Any


class RecordingPublisher:
    """Stands in for edge.mqtt.publisher.Publisher: keeps what the agent hands over instead of sending it."""

    dropped_telemetry = 0

    def __init__(self) -> None:
        self.telemetry: list[dict[str, Any]] = []
        self.alerts: list[dict[str, Any]] = []
        self.states: list[dict[str, Any]] = []

    def start(self) -> None: ...

    def stop(self, timeout: float = 5.0) -> None: ...

    def pending(self) -> int:
        return 0

    def publish_alert(self, payload: dict[str, Any]) -> int:
        self.alerts.append(payload)
        return len(self.alerts)

    def publish_state(self, payload: dict[str, Any]) -> None:
        self.states.append(payload)

    def publish_telemetry(self, payload: dict[str, Any]) -> bool:
        self.telemetry.append(payload)
        return True

    def publish_health(self, payload: dict[str, Any]) -> None: ...
