"""The agent dates a sensor without a wall clock: boot-relative frames anchored to the agent's clock, re-anchored
after the sensor restarts, and the recorder never overwrites a file. The real Agent in-process (real codec,
pipeline, outbox and recorder); only the MQTT publisher records instead of sending, and the clock is a stand-in
so the test knows what "now" was."""
from __future__ import annotations

from datetime import datetime
from pathlib import Path

from publishing import RecordingPublisher
from trained import shared_bundle, shared_run

from edge.agent import Agent
from edge.config import load_config
from edge.model.bundle import load_bundle
from edge.mqtt.outbox import Outbox
from firmware_bridge.frame import FLAG_BOOT_TIME, FrameDecoder
from firmware_bridge.ims import IMS_SAMPLE_RATE, IMS_SCALE, list_ims_files, read_counts
from firmware_bridge.replay import frames_for_file

NOW = 1_795_000_000.0  # 2026-11-18, s
SNAPSHOT_S = 20480 / IMS_SAMPLE_RATE


class Clock:
    """What the agent reads time from; the test moves it as the samples are taken."""

    def __init__(self) -> None:
        self.now = NOW

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now - NOW


def epoch_s(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


def test_boot_relative_time_is_anchored_and_re_anchored_after_a_sensor_restart(tmp_path: Path) -> None:
    recordings = tmp_path / "recordings"
    config = tmp_path / "edge.toml"
    config.write_text(f'device_id = "unit"\n[serial]\nport = "loop://"\n[model]\nbundle = "{shared_bundle()}"\n'
                      f'[mqtt]\nhost = "127.0.0.1"\n[outbox]\npath = "{tmp_path / "outbox.sqlite"}"\n'
                      f'[sensor]\nsnapshot_interval_s = 0\n'
                      f'[recorder]\nenabled = true\ndirectory = "{recordings}"\ninterval_s = 0\n')
    publisher = RecordingPublisher()
    clock = Clock()
    agent = Agent(load_config(config), load_bundle(shared_bundle()), outbox=Outbox(tmp_path / "outbox.sqlite"),
                  publisher=publisher, clock=clock)
    decoder = FrameDecoder()
    files = list_ims_files(shared_run())[:8]
    sequence = 0
    for snapshots in (files[:5], files[5:]):  # the sensor restarts after five snapshots
        boot_us = 3_000_000  # each boot starts its clock and sample index at zero; 3 s after reset, say
        for number, ims in enumerate(snapshots):
            counts = read_counts(ims.path)
            for wire in frames_for_file(counts, first_sample=number * len(counts), sequence=sequence,
                                        capture_time_us=boot_us + int(number * SNAPSHOT_S * 1e6),
                                        sample_rate_hz=IMS_SAMPLE_RATE, scale=IMS_SCALE, frame_samples=256,
                                        flags=FLAG_BOOT_TIME):
                sequence += 1
                clock.now += 256 / IMS_SAMPLE_RATE  # the frame arrives once its samples were taken
                for frame in decoder.feed(wire):
                    agent.on_frame(frame)
        clock.now += 7.0  # the reboot takes a while
    agent.outbox.close()

    telemetry = publisher.telemetry
    assert len(telemetry) == 8 and {t["time_source"] for t in telemetry} == {"agent"}
    stamps = [epoch_s(t["timestamp"]) for t in telemetry]
    # Dated by this clock when each snapshot began: a snapshot's length before it was complete, to the ms.
    first_done = NOW + SNAPSHOT_S
    assert abs(stamps[0] - (first_done - SNAPSHOT_S)) < 0.002
    assert all(later > earlier for earlier, later in zip(stamps, stamps[1:]))  # the restart did not go back
    assert stamps[5] - stamps[4] > 7.0  # the reboot's gap is in the timeline, not hidden
    assert agent.intake.clock.anchors == 2
    assert all(t["state"] == "normal" for t in telemetry)
    # Every scored snapshot kept as its own file: the restart overwrote nothing.
    assert len(list_ims_files(recordings)) == 8
