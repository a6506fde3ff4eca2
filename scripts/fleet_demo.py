"""make fleet-demo: a small fleet on one machine, as it runs in a plant.

1. A synthetic run to failure and a bundle trained on its healthy part (reused from `make demo` when it left
   them in demo-out/, or from CM_FLEET_DEMO_RUN and CM_FLEET_DEMO_BUNDLE).
2. Debian's Mosquitto on a loopback port (MQTT 5: the fleet's shared subscription needs it).
3. `cm-fleet serve` with a SQLite historian, and the dashboard when this build has it (step 3b).
4. A few agents, each the real chain: cm-replay loops the run into a pseudo-terminal, cm-edge reads it like a
   serial port, scores every snapshot and publishes; every machine goes normal -> warning -> alarm -> sensor
   fault and back, again and again.
Then it prints the dashboard's URL and a login (or, without the dashboard, the fleet as the historian sees it)
until Ctrl-C, or for CM_FLEET_DEMO_SECONDS seconds.

    CM_FLEET_DEMO_OUT (fleet-demo-out)   CM_FLEET_DEMO_AGENTS (3)   CM_FLEET_DEMO_SPEED (6000, or max)
"""
from __future__ import annotations

import getpass
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from demo import free_port, run, step  # scripts/demo.py, beside this one (make demo): the same steps, printed alike

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(os.environ.get("CM_FLEET_DEMO_OUT", ROOT / "fleet-demo-out"))
BIN = Path(sys.executable).parent
AGENTS = int(os.environ.get("CM_FLEET_DEMO_AGENTS", "3"))
SPEED = os.environ.get("CM_FLEET_DEMO_SPEED", "6000")  # 10 snapshots/s per agent: a pass of the run in ~15 s
SECONDS = float(os.environ.get("CM_FLEET_DEMO_SECONDS", "0"))  # 0: until Ctrl-C
STATUS_EVERY_S = 5.0
DEMO_USER = "demo"



def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} after {timeout} s")
        time.sleep(0.1)


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


class Processes:
    """Everything the demo started, stopped in reverse order (SIGTERM, then SIGKILL after 20 s)."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen] = []

    def start(self, *args: str | Path, log: Path) -> subprocess.Popen:
        with log.open("ab") as out:
            process = subprocess.Popen([str(a) for a in args], stdout=out, stderr=subprocess.STDOUT)
        self.started.append(process)
        return process

    def stop(self) -> None:
        for process in reversed(self.started):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def run_and_bundle() -> tuple[Path, Path]:
    """The recording to replay and the bundle to score it with: given, left by `make demo`, or made here."""
    given = os.environ.get("CM_FLEET_DEMO_RUN"), os.environ.get("CM_FLEET_DEMO_BUNDLE")
    if all(given):
        return Path(given[0]), Path(given[1])  # type: ignore[arg-type]
    demo = ROOT / "demo-out"
    if (demo / "run").is_dir() and (demo / "bundle" / "model_card.json").exists():
        print(f"reusing {demo / 'run'} and {demo / 'bundle'} (make demo's)")
        return demo / "run", demo / "bundle"
    run(BIN / "cm-synth", OUT / "run", "--files", "140", "--fail-bearing", "3", "--seed", "7", "--dropout-at-end")
    run(BIN / "cm-train", "fit", OUT / "run", "--out", OUT / "bundle", "--train-fraction", "0.4", "--seed", "7")
    return OUT / "run", OUT / "bundle"


def start_broker(processes: Processes, port: int) -> None:
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not os.access(mosquitto, os.X_OK):
        raise SystemExit("make fleet-demo needs Debian's mosquitto (MQTT 5 shared subscriptions): make system-deps")
    conf = OUT / "mosquitto.conf"
    # `user`: started as root, Mosquitto would switch to the mosquitto user; the demo's broker stays the caller's.
    conf.write_text(f"user {getpass.getuser()}\nlistener {port} 127.0.0.1\nallow_anonymous true\n"
                    "max_queued_messages 1000000\n")
    processes.start(mosquitto, "-c", conf, log=OUT / "mosquitto.log")
    wait_until(lambda: listening(port), 10, f"no broker on 127.0.0.1:{port}")


# -- 3b: the dashboard -------------------------------------------------------------------------------------------


def web_section() -> tuple[str, str]:
    """[web] lines for fleet.toml and the dashboard's URL: on loopback, a free port."""
    port = free_port()
    return f'[web]\nhost = "127.0.0.1"\nport = {port}\n', f"http://127.0.0.1:{port}/"


def add_demo_user(config: Path) -> str:
    """The operator `demo` with a fresh password, read by cm-fleet from a private file."""
    password = secrets.token_urlsafe(12)
    secret = OUT / "demo-password"
    secret.touch(mode=0o600)
    secret.write_text(password + "\n")
    run(BIN / "cm-fleet", "user", "add", DEMO_USER, "--role", "operator", "--password-file", secret, "--config", config)
    return password


# ---------------------------------------------------------------------------------------------------------------


def write_fleet_config(broker_port: int, web: str) -> Path:
    config = OUT / "fleet.toml"
    config.write_text(f"""[mqtt]
host = "127.0.0.1"
port = {broker_port}
client_id = "cm-fleet-demo"
reconnect_min = 0.5
reconnect_max = 2.0
[historian]
url = "sqlite://{OUT / 'historian.sqlite'}"
{web}""")
    return config


def start_agent(processes: Processes, device: str, broker_port: int, run_dir: Path, bundle: Path) -> None:
    home = OUT / device
    home.mkdir()
    tty = home / "ttyREPLAY"
    config = home / "edge.toml"
    config.write_text(f"""device_id = "{device}"
[serial]
port = "{tty}"
[model]
bundle = "{bundle}"
[mqtt]
host = "127.0.0.1"
port = {broker_port}
[outbox]
path = "{home / 'outbox.sqlite'}"
""")
    # cm-replay makes the pty and waits for the agent to open it.
    processes.start(BIN / "cm-replay", run_dir, "--port", f"pty:{tty}", "--loop", "--speed", SPEED, "--no-progress",
                    log=home / "replay.log")
    wait_until(tty.exists, 30, f"cm-replay made no pty for {device}")
    processes.start(BIN / "cm-edge", "--config", config, log=home / "agent.log")


def print_fleet(historian) -> None:
    machines = historian.machines()
    alerts = {m.device_id: len(historian.alert_ids(m.device_id)) for m in machines}
    line = "  ".join(f"{m.device_id}: {m.state or '-'} ({alerts[m.device_id]} alerts)" for m in machines)
    print(f"  fleet: {line or 'no machine yet'}", flush=True)


def main() -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    processes = Processes()
    try:
        step("1/4 a run to failure and a bundle trained on its healthy part")
        run_dir, bundle = run_and_bundle()
        step("2/4 broker: Debian's Mosquitto")
        broker_port = free_port()
        start_broker(processes, broker_port)
        step("3/4 cm-fleet serve: ingest into the historian, and the dashboard")
        web, url = web_section()
        config = write_fleet_config(broker_port, web)
        password = add_demo_user(config)
        fleet = processes.start(BIN / "cm-fleet", "serve", "--config", config, log=OUT / "fleet.log")
        wait_until(lambda: "connected to" in (OUT / "fleet.log").read_text() or fleet.poll() is not None, 60,
                   "cm-fleet did not connect")
        if fleet.poll() is not None:
            raise RuntimeError(f"cm-fleet exited:\n{(OUT / 'fleet.log').read_text()}")
        step(f"4/4 {AGENTS} agents: cm-replay --loop -> pty -> cm-edge -> MQTT")
        for n in range(1, AGENTS + 1):
            start_agent(processes, f"pump-{n}", broker_port, run_dir, bundle)

        from fleet.config import HistorianConfig
        from fleet.historian import open_historian

        historian = open_historian(HistorianConfig(url=f"sqlite://{OUT / 'historian.sqlite'}"))
        step("running")
        print(f"dashboard:  {url}")
        print(f"login:      {DEMO_USER} / {password}")
        print(f"historian:  {OUT / 'historian.sqlite'}\nlogs:       {OUT}/*.log, {OUT}/pump-*/agent.log")
        print("Ctrl-C stops the demo." if not SECONDS else f"stopping after {SECONDS:.0f} s.", flush=True)
        started = next_status = time.monotonic()
        while not stop and not (SECONDS and time.monotonic() - started >= SECONDS):
            if time.monotonic() >= next_status:
                print_fleet(historian)
                next_status += STATUS_EVERY_S
            time.sleep(0.2)
        print_fleet(historian)
        historian.close()
    except KeyboardInterrupt:
        pass
    finally:
        processes.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
