"""make demo: the whole chain on one machine, as it runs in the field.

1. cm-synth writes a synthetic run to failure (IMS format, bearing 3 fails, the sensor drops out at the end).
2. cm-train fit learns the healthy part and exports an int8 TFLite bundle.
3. cm-train evaluate writes report.json and score.png.
4. The real chain: cm-replay streams the files into a pseudo-terminal, cm-edge reads it like a serial
   port, scores every snapshot and publishes to an MQTT broker; a subscriber prints each alert.

The broker is Mosquitto on loopback when it is installed, otherwise an embedded amqtt broker.
"""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(os.environ.get("CM_DEMO_OUT", ROOT / "demo-out"))
BIN = Path(sys.executable).parent
FILES, FAIL_BEARING, SEED = 180, 3, 7
TRAIN_FRACTION = 0.4  # the first 40% of the run is healthy: that is all the model may learn from
DEVICE = "demo-pump"


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def run(*args: str | Path) -> None:
    print("$ " + " ".join(str(a) for a in args), flush=True)
    subprocess.run([str(a) for a in args], check=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"no broker listening on 127.0.0.1:{port} after {timeout} s")


def start_broker(port: int) -> tuple[str, callable]:
    """Mosquitto when installed; otherwise amqtt in a thread (it speaks MQTT 3.1.1 only).

    CM_DEMO_BROKER=embedded picks amqtt even where Mosquitto is installed.
    """
    mosquitto = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if mosquitto and os.environ.get("CM_DEMO_BROKER") != "embedded":
        conf = OUT / "mosquitto.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        process = subprocess.Popen([mosquitto, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(port)
        return "5", lambda: (process.terminate(), process.wait(5))
    from amqtt.broker import Broker

    loop = asyncio.new_event_loop()
    ready = threading.Event()

    async def serve() -> None:
        broker = Broker({"listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
                         "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}}})
        await broker.start()
        ready.set()

    threading.Thread(target=lambda: (loop.run_until_complete(serve()), loop.run_forever()), daemon=True).start()
    ready.wait(15)
    wait_for_port(port)
    return "3.1.1", lambda: loop.call_soon_threadsafe(loop.stop)


class AlertPrinter:
    """The subscriber side: one readable line per alert, and a count of telemetry records."""

    def __init__(self, port: int) -> None:
        self.alerts: list[dict] = []
        self.telemetry = 0
        self.online = False
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        self.client.on_message = self.on_message
        self.client.on_connect = lambda c, *_: c.subscribe(f"cm/{DEVICE}/#", qos=1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def on_message(self, client, userdata, message) -> None:
        topic = message.topic.rsplit("/", 1)[-1]
        if topic == "telemetry":
            self.telemetry += 1
        elif topic == "alert":
            alert = json.loads(message.payload)
            self.alerts.append(alert)
            score = "-" if alert["score"] is None else f"{alert['score']:.3f}"
            print(f"  ALERT {alert['timestamp']}  {alert['previous_state']:>12} -> {alert['state']:<12} "
                  f"score {score:>7}  top {alert['top_channel']}  {alert['reason'] or ''}", flush=True)
        elif topic == "status":
            self.online = message.payload == b"online"
            print(f"  status: {message.payload.decode()}", flush=True)

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def write_config(port: int, protocol: str, tty: Path) -> Path:
    config = OUT / "edge.toml"
    config.write_text(f"""device_id = "{DEVICE}"
[serial]
port = "{tty}"
[model]
bundle = "{OUT / 'bundle'}"
[mqtt]
host = "127.0.0.1"
port = {port}
protocol = "{protocol}"
[outbox]
path = "{OUT / 'outbox.sqlite'}"
[telemetry]
counters_interval_s = 5
""")
    return config


def live_chain() -> tuple[AlertPrinter, float]:
    port = free_port()
    protocol, stop_broker = start_broker(port)
    printer = AlertPrinter(port)
    tty = OUT / "ttyDEMO"
    config = write_config(port, protocol, tty)
    started = time.monotonic()
    agent = subprocess.Popen([BIN / "cm-edge", "--config", config])
    replay = None
    try:
        # Telemetry is QoS 0 and not kept while the agent is offline: start the sensor once it is online.
        deadline = time.monotonic() + 60
        while not printer.online and time.monotonic() < deadline and agent.poll() is None:
            time.sleep(0.1)
        replay = subprocess.Popen([BIN / "cm-replay", OUT / "run", "--port", f"pty:{tty}", "--speed", "max",
                                   "--no-progress"])
        deadline = time.monotonic() + 180
        while printer.telemetry < FILES and time.monotonic() < deadline and agent.poll() is None:
            time.sleep(0.2)
        time.sleep(1.0)  # let the last alerts' acknowledgements arrive
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(20)
        if replay is not None:
            replay.terminate()
            replay.wait(10)
        printer.stop()
        stop_broker()
    return printer, time.monotonic() - started


def main() -> int:
    started = time.monotonic()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter hides the demo's steps
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)

    step(f"1/4 synthetic run to failure: {FILES} snapshots, bearing {FAIL_BEARING} fails")
    run(BIN / "cm-synth", OUT / "run", "--files", str(FILES), "--fail-bearing", str(FAIL_BEARING),
        "--seed", str(SEED), "--dropout-at-end")
    step("2/4 train on the healthy part and export the int8 bundle")
    run(BIN / "cm-train", "fit", OUT / "run", "--out", OUT / "bundle", "--train-fraction", str(TRAIN_FRACTION),
        "--seed", str(SEED))
    step("3/4 evaluate the int8 model over the whole run")
    run(BIN / "cm-train", "evaluate", OUT / "bundle", OUT / "run", "--out", OUT / "report")
    report = json.loads((OUT / "report" / "report.json").read_text())
    step("4/4 live: cm-replay -> pty -> cm-edge -> MQTT -> subscriber")
    printer, live_seconds = live_chain()
    # The report and the live chain run the same int8 model and detector: they must tell the same story.
    live_alarm = next((a["timestamp"] for a in printer.alerts if a["state"] == "alarm"), None)

    step("summary")
    print(f"report:      {OUT / 'report' / 'report.json'}")
    print(f"plot:        {OUT / 'report' / 'score.png'}")
    print(f"first alarm: {report.get('first_alarm')}  (lead time {report.get('lead_time_hours')} h before the end,"
          f" top channel {report.get('top_channel_at_first_alarm')})")
    states = " -> ".join(["normal"] + [a["state"] for a in printer.alerts])
    print(f"live chain:  {printer.telemetry} snapshots scored, {len(printer.alerts)} alerts ({states}) "
          f"in {live_seconds:.1f} s; first alarm at {live_alarm}")
    print(f"total:       {time.monotonic() - started:.0f} s")
    return 0 if printer.telemetry >= FILES and live_alarm else 1


if __name__ == "__main__":
    raise SystemExit(main())
