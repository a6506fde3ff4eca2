"""Every shell command in README.md and deploy/README.md runs, as written: the fenced `sh` blocks are read from
the docs, and each command is run here, run by the test named in ELSEWHERE, or listed in EXCLUDED with the
reason (hardware, root, a system to change). A command that appears in the docs and is in none of these fails
the inventory, and so does an entry whose command has left the docs.

The commands run in a working directory laid out as the docs assume: the CWRU files beside it, `../shared/data`
the shared real data, a DAQ's CSV folder, the seeds' table and a labelled table, and `demo-out/run` (what `make
demo` writes: a cm-synth run to failure; here tests/trained.py's). The few places the docs name on a reader's
machine are mapped into it (PLACES): the full IMS set 1 is the shared sample of it, the pty's path is the
test's, `pi.lan:7000` is a loopback server standing in for the Pi. `sudo` runs the command as the test's user:
only commands that need no root are run.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from signals import defect_signal
from tables import write_fraud_table, write_seed_table
from trained import shared_run
from waiting import eventually

from firmware_bridge.frame import Frame, FrameDecoder
from firmware_bridge.ims import list_ims_files
from firmware_bridge.link import SerialLink

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DOCS = ("README.md", "deploy/README.md")
SHELLS = ("sh", "bash", "shell", "console")  # the fences whose lines are commands
WAIT_S = 120.0  # safety net only
FRAMES_PER_IMS_FILE = 20_480 // 256

pytestmark = pytest.mark.slow

# Run by another test, as written.
ELSEWHERE = {
    "make demo": "tests/test_demo.py",
    "cm-fleet serve --config fleet.toml": "tests/fleet_helpers.py",  # every fleet test's service (FleetService)
    "make fleet-demo": "tests/test_fleet_demo.py",
    "cm-fleet keygen --out keys/": "tests/test_signature_cli.py",  # into a test's folder, the second refused
    "cm-fleet sign bundles/pump7 --key keys/bundle-signing.key": "tests/test_signature_cli.py",
    "cm-fleet user add ada --role admin --password-file ada.password --config fleet.toml": "tests/test_fleet_web_cli.py",
    "cm-fleet token add ada --config fleet.toml": "tests/test_fleet_web_cli.py",
    "cm-fleet machine place pump-7 --site plant-a --tags pumps,line-3 --config fleet.toml": "tests/test_fleet_web_cli.py",
    "cm-fleet rollout create bundles/pump7 --devices all --canary 5% --wave-wait 1h --max-failed 10% --config fleet.toml":
        "tests/test_fleet_rollout.py",  # a bundle signed by a key the agents do not trust: halted at the canary
    "cm-fleet rollout status --config fleet.toml": "tests/test_fleet_rollout.py",
    "cm-fleet commission pump-7 --config fleet.toml": "tests/test_commissioning_chain.py",
    "cm-fleet commission status --config fleet.toml": "tests/test_commissioning_chain.py",
    "cm-fleet commission learn-again pump-7 --config fleet.toml": "tests/test_commissioning_chain.py",
    "cm-train baseline --channels bearing1,bearing2,bearing3,bearing4 --sample-rate 20000 --snapshot-samples 20480 "
    "--interval-s 600 --min-level-g 0.02 --out bundles/pump9": "tests/test_baseline.py",
    "cm-train fit pump-9-telemetry.csv --feature-spec bundles/pump9 --out bundles/pump9-model":
        "tests/test_trainer_spec.py",  # on the baseline card above and a run's features as its agent published them
}

EXCLUDED = {
    "cm-fleet rollout status r-3f9a0c1d --config fleet.toml":
        "the id is the one create printed: tests/test_fleet_rollout.py runs status ID with its own",
    "cm-fleet rollout pause r-3f9a0c1d --config fleet.toml":
        "the id is the one create printed: tests/test_fleet_rollout*.py pause, resume, abort and roll back their own",
    "make test": "this suite is what it runs",
    "pip install -e '.[fleet]'": "make install installs the fleet extra into the venv this suite runs in",
    'curl -H "Authorization: Bearer $TOKEN" http://127.0.0.1:8080/alerts.json?filter=unacknowledged':
        "a running service on port 8080 (tests/test_fleet_web.py sends the same header to /alerts.json on its own port)",
    "cm-replay /data/ims/2nd_test --port /dev/ttyUSB0 --baudrate 2000000 --speed 60":
        "hardware: a USB-UART adapter wired to a Pi (the same replay through a pty and a socket runs here)",
    "sudo deploy/install.sh --bundle ~/bundles/ims1":
        "root: installs the agent into this machine's /opt, /etc and systemd (its dry run runs here; make pi-check "
        "installs the same venv on an emulated Pi)",
    "sudo install -m 0640 -o root -g mosquitto /dev/null /etc/mosquitto/cm.passwd":
        "root: writes the broker's password file in /etc (tests/test_security.py runs the broker on this config)",
    "sudo mosquitto_passwd /etc/mosquitto/cm.passwd pump-07": "root, and prompts for a password",
    "sudo mosquitto_passwd /etc/mosquitto/cm.passwd homeassistant": "root, and prompts for a password",
    "sudo systemctl restart mosquitto": "root: restarts this machine's broker",
    "sudo install -m 0640 -o root -g cm-edge /dev/stdin /etc/cm/mqtt.secret <<< 'the-password'":
        "root: writes into /etc/cm, owned by the cm-edge user that only the install creates",
    "sudo -u cm-edge /opt/cm-edge/venv/bin/cm-edge --config /etc/cm/edge.toml --check":
        "hardware: opens the sensor's serial port, as installed on a Pi (tests/test_bad_input.py and test_hil.py "
        "run --check)",
    "sudo systemctl start cm-edge && journalctl -u cm-edge -f": "root and systemd: the installed service",
    "sudo install -m 0644 bundle-signing.pub /etc/cm/bundle-signing.pub":
        "root: writes into this machine's /etc/cm (tests/test_signature*.py read keys from the tests' folders)",
    "mosquitto_sub -h <broker> -u homeassistant -P <password> -t 'cm/#' -v":
        "the deployed broker and its users' passwords (tests/test_security.py subscribes with this ACL)",
    # deploy/README.md, the fleet service on a server
    "sudo useradd --system --home-dir /var/lib/cm-fleet --shell /usr/sbin/nologin cm-fleet":
        "root: adds a system user to this machine",
    "sudo python3 -m venv /opt/cm-fleet/venv && sudo /opt/cm-fleet/venv/bin/pip install '.[fleet]'":
        "root: installs into this machine's /opt (make install installs the same extra into the suite's venv)",
    "sudo install -D -m 0640 -o root -g cm-fleet deploy/fleet.example.toml /etc/cm/fleet.toml":
        "root: writes /etc/cm, group-owned by the cm-fleet user that only the install creates "
        "(tests/test_fleet_deploy.py reads the example as cm-fleet does)",
    'sudo sed -i "s/^group = .*/group = \\"cm-fleet-$(openssl rand -hex 12)\\"/" /etc/cm/fleet.toml':
        "root: edits /etc/cm/fleet.toml (tests/test_fleet_deploy.py runs this line, as written, on a copy of the "
        "example and cm-fleet reads the result)",
    "sudo mosquitto_passwd /etc/mosquitto/cm.passwd cm-fleet": "root, and prompts for a password",
    "sudo install -m 0640 -o root -g cm-fleet /dev/stdin /etc/cm/fleet-mqtt.secret <<< 'the-fleet-password'":
        "root: writes into /etc/cm, owned by the cm-fleet user that only the install creates",
    "sudo install -m 0644 deploy/cm-fleet.service /etc/systemd/system/ && sudo systemctl daemon-reload":
        "root and systemd: this machine's units (tests/test_fleet_deploy.py runs systemd-analyze verify on it)",
    "sudo systemctl enable --now cm-fleet && journalctl -u cm-fleet -f": "root and systemd: the installed service",
    "sudo -u postgres createuser cm-fleet && sudo -u postgres createdb --owner cm-fleet cm_fleet":
        "root: this machine's PostgreSQL (tests/postgres.py starts a private cluster instead)",
    "sudo install -d -m 0750 -o cm-fleet -g cm-fleet /var/backups/cm-fleet":
        "root: writes /var/backups for the cm-fleet user that only the install creates",
    "sudo -u cm-fleet sqlite3 /var/lib/cm-fleet/historian.sqlite "
    "\".backup '/var/backups/cm-fleet/historian-$(date +%F).sqlite'\"":
        "root: the installed service's private state directory",
    "sudo -u cm-fleet pg_dump --format=custom --file=/var/backups/cm-fleet/cm_fleet-$(date +%F).dump cm_fleet":
        "root: the installed service's database",
    # deploy/README.md, shipping a new model to the fleet
    "sudo install -d -m 0750 -o root -g cm-fleet /var/lib/cm-fleet/bundles":
        "root: writes the installed service's state directory (tests/test_fleet_web_start_rollout.py offers the "
        "bundles of a directory of its own)",
    "sudo cp -r bundles/pump7 /var/lib/cm-fleet/bundles/":
        "root: writes the installed service's bundles directory (tests/test_fleet_web_start_rollout.py copies "
        "signed bundles into its own)",
    'curl -X POST -H "Authorization: Bearer $TOKEN" -H \'Content-Type: application/json\' -d \'{"bundle": "pump7", '
    '"devices": "all", "canary": "5%"}\' https://fleet.plant.example/rollouts.json':
        "a deployed dashboard behind its TLS proxy (tests/test_fleet_web_start_rollout.py posts the same JSON to "
        "/rollouts.json with a bearer token on its own port)",
    "cm-fleet rollout rollback r-3f9a0c1d --config fleet.toml":
        "the id is the one create printed: tests/test_fleet_rollout.py rolls back its own",
}

# Run here, block by block, in the order the docs give them.
TRAINING = (
    "cm-train fit /data/ims/1st_test --channels 1,3,5,7 --train-until 2003-11-01T00:00:00 --out bundles/pump7",
    "cm-train fit ../shared/data/femto/Bearing1_2 --train-fraction 0.3 --out bundles/femto12",
    "cm-train fit normal_0_97.mat --sample-rate 48000 --snapshot-samples 16384 --channels DE,FE --train-fraction 1 "
    "--out bundles/cwru",
    "cm-train fit daq/ --format csv --sample-rate 10000 --channels x,z --out bundles/daq",
    "cm-train fit merged.csv --train-fraction 0.3 --out bundles/merged",
    "cm-train fit creditcard.csv --label-column Class --out bundles/fraud",
    "cm-train evaluate bundles/pump7 /data/ims/1st_test --channels 1,3,5,7 --out report/ "
    "--failure-at 2003-11-25T23:39:56",
)
VIBRATION = (
    "cm-train fit ../shared/data/femto/Bearing1_2 --train-fraction 0.3 --feature-set vibration --bearing pronostia "
    "--shaft-rpm 1800 --out bundles/femto12-vib",
    "cm-train fit normal_0_97.mat --sample-rate 48000 --snapshot-samples 16384 --channels DE,FE --train-fraction 1 "
    "--feature-set vibration --bearing 6205-2rs --shaft-rpm 1796 --out bundles/cwru",
    "cm-train evaluate bundles/cwru 48k_Drive_End_IR007_0_109.mat --out report-ir/",
)
INSTALL = (
    "git clone <this repository> && cd condition-monitor",
    "sudo deploy/install.sh --dry-run",
)
REPLAY_ONCE = "cm-replay demo-out/run --port pty:/tmp/ttyREPLAY --speed max"
REPLAY_SOCKET = "cm-replay demo-out/run --port socket://pi.lan:7000 --loop"
REPLAY_MCU = "cm-replay demo-out/run --port pty:/tmp/ttyREPLAY --continuous --boot-time --speed realtime --loop"
RUN_HERE = (*TRAINING, *VIBRATION, *INSTALL, REPLAY_ONCE, REPLAY_SOCKET, REPLAY_MCU)


@dataclass(frozen=True)
class DocCommand:
    doc: str
    line: int
    text: str


def _strip_comment(line: str) -> str:
    """The command without its trailing `# ...` comment (a `#` after a blank, outside quotes)."""
    for match in re.finditer(r"\s#", line):
        before = line[:match.start()]
        if before.count("'") % 2 == 0 and before.count('"') % 2 == 0:
            return before.rstrip()
    return line.rstrip()


def doc_commands(doc: str) -> list[DocCommand]:
    """Every command of the fenced shell blocks of `doc`, continuation lines joined, comments dropped."""
    commands: list[DocCommand] = []
    fence: str | None = None
    pending, start = "", 0
    for number, line in enumerate((REPO / doc).read_text().splitlines(), 1):
        if line.startswith("```"):
            fence = None if fence is not None else line[3:].strip()
            continue
        if fence not in SHELLS:
            continue
        text = _strip_comment(line) if not line.lstrip().startswith("#") else ""
        if not pending:
            start = number
        pending = f"{pending} {text.strip()}".strip()
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip()
            continue
        if pending:
            commands.append(DocCommand(doc, start, pending))
        pending = ""
    return commands


def test_every_command_in_the_docs_is_run_or_excluded_with_a_reason() -> None:
    documented = {c.text: c for doc in DOCS for c in doc_commands(doc)}
    listed = set(RUN_HERE) | set(ELSEWHERE) | set(EXCLUDED)
    new = [f"{c.doc}:{c.line}: {c.text}" for text, c in documented.items() if text not in listed]
    assert not new, "commands in the docs that this test neither runs nor excludes (add them to RUN_HERE, " \
                    "ELSEWHERE or EXCLUDED with the reason):\n" + "\n".join(new)
    assert not listed - set(documented), f"listed here but no longer in the docs: {sorted(listed - set(documented))}"
    assert not set(RUN_HERE) & set(EXCLUDED)
    for command, test in ELSEWHERE.items():  # the test named runs exactly that command line
        argv = ", ".join(f'"{word}"' for word in command.split())
        assert f"[{argv}]" in (REPO / test).read_text(), f"{test} does not run {command!r}"


# -- the working directory the docs assume --------------------------------------------------------------------


def write_daq_folder(folder: Path, files: int = 40, samples: int = 2048, rate: int = 10_000) -> Path:
    """A DAQ's folder of CSV snapshots, one file each with the header x,y,z, in g, one snapshot every 10 min."""
    folder.mkdir()
    for i in range(files):
        values = np.column_stack([defect_signal(rate, samples, None, seed=3 * i + axis) for axis in range(3)])
        rows = "\n".join(",".join(f"{v:.3f}" for v in row) for row in values)
        minute = 10 * i
        (folder / f"2024.01.01.{minute // 60:02d}.{minute % 60:02d}.00.csv").write_text(f"x,y,z\n{rows}\n")
    return folder


@dataclass(frozen=True)
class Workdir:
    cwd: Path
    places: dict[str, str]
    env: dict[str, str]

    def placed(self, command: str) -> str:
        for written, here in self.places.items():
            command = command.replace(written, here)
        return command


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory, ims_dir: Path, femto_dir: Path, cwru_dir: Path) -> Workdir:
    root = tmp_path_factory.mktemp("docs")
    cwd = root / "work"
    cwd.mkdir()
    (root / "shared").mkdir()
    (root / "shared" / "data").symlink_to(femto_dir.parent)  # ../shared/data, as beside a checkout
    for recording in cwru_dir.glob("*.mat"):
        (cwd / recording.name).symlink_to(recording)
    write_daq_folder(cwd / "daq")
    write_seed_table(cwd / "merged.csv")
    write_fraud_table(cwd / "creditcard.csv")
    (cwd / "demo-out").mkdir()
    (cwd / "demo-out" / "run").symlink_to(shared_run())
    (root / "src").mkdir()
    (root / "src" / "condition-monitor").symlink_to(REPO)  # a clone's name, whatever this checkout is called
    shims = root / "bin"
    shims.mkdir()
    (shims / "sudo").write_text('#!/bin/sh\nexec "$@"\n')  # runs the command as the test's user (see above)
    (shims / "sudo").chmod(0o755)
    env = {**os.environ, "PATH": f"{shims}:{BIN}:{os.environ['PATH']}", "HOME": str(root)}
    places = {"/data/ims/1st_test": str(ims_dir), "<this repository>": str(root / "src" / "condition-monitor"),
              "/tmp/ttyREPLAY": str(cwd / "ttyREPLAY")}
    return Workdir(cwd, places, env)


def run_block(workdir: Workdir, commands: tuple[str, ...]) -> subprocess.CompletedProcess:
    """The commands as one shell script (a `cd` carries on, as in a terminal), each traced on stderr."""
    script = "set -euo pipefail -x\n" + "\n".join(workdir.placed(c) for c in commands) + "\n"
    result = subprocess.run(["bash", "-c", script], cwd=workdir.cwd, env=workdir.env, capture_output=True,
                            text=True, timeout=1800)
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


def outputs(commands: tuple[str, ...]) -> Iterator[tuple[str, str]]:
    for command in commands:
        words = command.split()
        yield words[1], words[words.index("--out") + 1]


@pytest.mark.timeout(1800)  # ten trainings, 3-5 minutes on an idle 2-core machine, much more under a loaded one
@pytest.mark.parametrize("block", [TRAINING, VIBRATION], ids=["training-on-your-own-data", "feature-sets"])
def test_the_training_commands_run_as_written(workdir: Workdir, block: tuple[str, ...]) -> None:
    run_block(workdir, block)
    for verb, out in outputs(block):
        assert (workdir.cwd / out / ("model_card.json" if verb == "fit" else "report.json")).is_file(), out


def test_the_install_walk_through_runs_as_written_up_to_root(workdir: Workdir) -> None:
    result = run_block(workdir, INSTALL)
    assert "==> dry run: nothing is changed" in result.stdout
    assert "systemctl enable cm-edge.service" in result.stdout


# -- cm-replay, with something reading what it sends --------------------------------------------------------


class PtyReader:
    """Reads frames from a pty's path once the replay has made it, as the agent does."""

    def __init__(self, path: Path) -> None:
        self.frames: list[Frame] = []
        self.stop = threading.Event()
        self.path = path
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        if not eventually(lambda: self.path.is_symlink() or self.stop.is_set(), WAIT_S):
            return
        with SerialLink(str(self.path), backoff_initial=0.01) as link:
            for frame in link.frames(self.stop):
                self.frames.append(frame)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(WAIT_S)


class SocketReader:
    """A TCP server standing in for the Pi at `pi.lan:7000`: decodes what the replay sends."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.frames: list[Frame] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        connection, _ = self.server.accept()
        decoder = FrameDecoder()
        with connection:
            while data := connection.recv(65536):
                self.frames.extend(decoder.feed(data))

    def close(self) -> None:
        self.server.close()
        self.thread.join(WAIT_S)


def start(workdir: Workdir, command: str, places: dict[str, str] | None = None) -> subprocess.Popen:
    text = workdir.placed(command)
    for written, here in (places or {}).items():
        text = text.replace(written, here)
    return subprocess.Popen(["bash", "-c", f"exec {text}"], cwd=workdir.cwd, env=workdir.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def stop_looping(process: subprocess.Popen) -> str:
    """SIGTERM, as a user's Ctrl-C or systemd would: a looping replay stops at once and says so."""
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=WAIT_S)
    assert process.returncode == 0 and "cm-replay: stopped" in err, err
    return err


def test_replay_once_into_a_pty(workdir: Workdir) -> None:
    files = len(list_ims_files(workdir.cwd / "demo-out" / "run"))
    reader = PtyReader(workdir.cwd / "ttyREPLAY")
    try:
        process = start(workdir, REPLAY_ONCE)
        out, err = process.communicate(timeout=WAIT_S)
        assert process.returncode == 0, err
        assert f"replay: {files} files, {files * FRAMES_PER_IMS_FILE} frames" in out
        assert eventually(lambda: len(reader.frames) == files * FRAMES_PER_IMS_FILE, WAIT_S)
    finally:
        reader.close()


def test_replay_in_a_loop_to_a_socket(workdir: Workdir) -> None:
    files = len(list_ims_files(workdir.cwd / "demo-out" / "run"))
    reader = SocketReader()
    try:
        process = start(workdir, REPLAY_SOCKET, {"pi.lan:7000": f"127.0.0.1:{reader.port}"})
        # Past the end of the run: the loop starts again.
        assert eventually(lambda: len(reader.frames) > files * FRAMES_PER_IMS_FILE or process.poll() is not None,
                          WAIT_S), process.poll()
        stop_looping(process)
    finally:
        reader.close()
    sequences = [f.header.sequence for f in reader.frames]
    assert sequences == list(range(len(sequences)))


def test_replay_like_an_mcu_into_a_pty(workdir: Workdir) -> None:
    reader = PtyReader(workdir.cwd / "ttyREPLAY")
    try:
        process = start(workdir, REPLAY_MCU)
        # One snapshot's worth of frames at the sample rate: a second of stream.
        assert eventually(lambda: len(reader.frames) >= FRAMES_PER_IMS_FILE or process.poll() is not None,
                          WAIT_S), process.poll()
        stop_looping(process)
    finally:
        reader.close()
    headers = [f.header for f in reader.frames]
    assert all(h.boot_time for h in headers)
    assert [h.first_sample for h in headers] == [256 * i for i in range(len(headers))]
