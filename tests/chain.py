"""The chain as it runs in the field, for the tests that drive it from outside: cm-edge as a subprocess reading a
pseudo-terminal that cm-replay (or the test) writes into, publishing to a test broker.

    from chain import BIN, DEVICE, TOPIC, Chain
"""
from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from broker import Mosquitto, Subscriber
from waiting import eventually

BIN = Path(sys.executable).parent
DEVICE = "pump-7"
TOPIC = f"cm/{DEVICE}"


def write_config(tmp_path: Path, broker: Mosquitto, bundle: Path, tty: Path, device: str = DEVICE) -> Path:
    config = tmp_path / "edge.toml"
    config.write_text(f"""device_id = "{device}"
[serial]
port = "{tty}"
[model]
bundle = "{bundle}"
[mqtt]
host = "127.0.0.1"
port = {broker.port}
[outbox]
path = "{tmp_path / 'outbox.sqlite'}"
[telemetry]
counters_interval_s = 1
""")
    return config


class Chain:
    """cm-edge reading a pty that cm-replay (or the test) writes into."""

    def __init__(self, tmp_path: Path, broker: Mosquitto, bundle: Path, device: str = DEVICE) -> None:
        tmp_path.mkdir(parents=True, exist_ok=True)
        self.tmp_path = tmp_path
        self.tty = tmp_path / "ttyREPLAY"
        self.config = write_config(tmp_path, broker, bundle, self.tty, device)
        self.log = tmp_path / "agent.log"
        self.agent: subprocess.Popen | None = None

    def start_agent(self) -> subprocess.Popen:
        with self.log.open("ab") as log:
            self.agent = subprocess.Popen([BIN / "cm-edge", "--config", self.config], stdout=log,
                                          stderr=subprocess.STDOUT)
        return self.agent

    def start_online(self, subscriber: Subscriber) -> None:
        """Start the agent and wait for its `online`: telemetry sent before the connection is dropped (QoS 0)."""
        self.start_agent()
        assert subscriber.wait_for(lambda s: s.on(f"{TOPIC}/status")[-1:] == [b"online"], 30), self.agent_log()

    def replay_command(self, run_dir: Path, *extra: str) -> list:
        return [BIN / "cm-replay", run_dir, "--port", f"pty:{self.tty}", "--speed", "max", "--no-progress", *extra]

    def replay(self, run_dir: Path, *extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(self.replay_command(run_dir, *extra), capture_output=True, text=True, timeout=120)

    def replay_waiting(self, run_dir: Path) -> subprocess.Popen:
        """cm-replay started before the agent: it makes the pty and writes nothing until the agent opens it."""
        replay = subprocess.Popen(self.replay_command(run_dir), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        assert eventually(lambda: self.tty.exists() or replay.poll() is not None, 60), "cm-replay made no pty"
        return replay

    def stop_agent(self) -> int:
        assert self.agent is not None
        if self.agent.poll() is None:
            self.agent.send_signal(signal.SIGTERM)
        return self.agent.wait(30)

    def kill_agent(self) -> None:
        if self.agent is not None and self.agent.poll() is None:
            self.agent.kill()
            self.agent.wait()

    def agent_log(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""
