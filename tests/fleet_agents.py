"""Real agents for the fleet tests: `cm-edge` reading a pseudo-terminal that `cm-replay` writes a recorded run
into, publishing to a test broker (the same chain as tests/test_hil.py's, kept here so that no test module
imports another).

    agent = ReplayedAgent(tmp_path / "pump-7", "pump-7", broker, bundle)
    agent.start(); agent.replay(run_dir); agent.stop()
"""
from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from broker import Mosquitto

BIN = Path(sys.executable).parent


class ReplayedAgent:
    def __init__(self, directory: Path, device_id: str, broker: Mosquitto, bundle: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.device_id = device_id
        self.tty = directory / "tty"
        self.log = directory / "agent.log"
        self.config = directory / "edge.toml"
        self.config.write_text(f"""device_id = "{device_id}"
[serial]
port = "{self.tty}"
[model]
bundle = "{bundle}"
[mqtt]
host = "127.0.0.1"
port = {broker.port}
[outbox]
path = "{directory / 'outbox.sqlite'}"
[telemetry]
counters_interval_s = 1
""")
        self.process: subprocess.Popen | None = None

    def start(self) -> ReplayedAgent:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen([BIN / "cm-edge", "--config", self.config], stdout=log,
                                            stderr=subprocess.STDOUT)
        return self

    def replay(self, run_dir: Path) -> subprocess.CompletedProcess:
        """The whole run at full speed into the agent's pty (cm-replay waits for the agent to open it)."""
        return subprocess.run([BIN / "cm-replay", run_dir, "--port", f"pty:{self.tty}", "--speed", "max",
                               "--no-progress"], capture_output=True, text=True, timeout=120)

    def stop(self) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(30)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def read_log(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""
