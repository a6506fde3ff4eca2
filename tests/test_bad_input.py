"""Every malformed config, model card or model file: `cm-edge --check` exits 2 with exactly one line that
names the file and the key, and never a traceback. (The agent runs the same checks before it starts.)

Each case starts from a good config and a real trained bundle and breaks one thing, as a user or a
failing SD card would.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from trained import as_version_1, shared_bundle

BIN = Path(sys.executable).parent
GOOD_CONFIG = """device_id = "pump-7"
log_level = "INFO"
[serial]
port = "/dev/cm-sensor"
baudrate = 921600
[model]
bundle = "bundle"
[mqtt]
host = "localhost"
port = 1883
keepalive = 30
[outbox]
path = "state/outbox.sqlite"
[recorder]
enabled = true
directory = "recordings"
quota_mb = 1024
interval_s = 600
[telemetry]
counters_interval_s = 60
"""


@dataclass
class Setup:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "edge.toml"

    @property
    def bundle(self) -> Path:
        return self.root / "bundle"

    @property
    def card(self) -> Path:
        return self.bundle / "model_card.json"

    @property
    def model(self) -> Path:
        return self.bundle / "model_int8.tflite"

    def edit_config(self, old: str, new: str) -> None:
        text = self.config.read_text()
        assert old in text, old
        self.config.write_text(text.replace(old, new, 1))

    def edit_card(self, change: Callable[[dict], object]) -> None:
        card = json.loads(self.card.read_text())
        change(card)
        self.card.write_text(json.dumps(card))

    def replace_model(self, data: bytes) -> None:
        """A different model file whose sha256 the card records, so only its content can be wrong."""
        self.model.write_bytes(data)
        self.edit_card(lambda card: card.update(model_sha256=hashlib.sha256(data).hexdigest()))


def spec(**values: object) -> Callable[[dict], object]:
    return lambda card: card["feature_spec"].update(values)


def drop_last_channel(card: dict) -> None:
    for keys in (("feature_spec", "channels"), ("scaler", "minimum"), ("scaler", "maximum")):
        card[keys[0]][keys[1]].pop()
    for key in ("healthy_min", "channel_error_reference"):  # the card's other one-per-channel lists
        if isinstance(card.get(key), list):
            card[key].pop()


def detector(**values: object) -> Callable[[dict], object]:
    """The thresholds' one home in a card of schema_version 2."""
    return lambda card: card["detector"].update(values)


def version_1(change: Callable[[dict], object]) -> Callable[[dict], object]:
    """`change` applied to the card as a trainer before schema_version 2 wrote it (the thresholds twice)."""
    return lambda card: change(as_version_1(card))


def invert_scaler(card: dict) -> None:
    card["scaler"]["maximum"][2] = card["scaler"]["minimum"][2] - 0.01


def config_case(old: str, new: str) -> Callable[[Setup], None]:
    return lambda setup: setup.edit_config(old, new)


def card_case(change: Callable[[dict], object]) -> Callable[[Setup], None]:
    return lambda setup: setup.edit_card(change)


def raw_config(data: bytes) -> Callable[[Setup], None]:
    return lambda setup: setup.config.write_bytes(data)


def raw_card(data: bytes) -> Callable[[Setup], None]:
    return lambda setup: setup.card.write_bytes(data)


def card_is_a_directory(setup: Setup) -> None:
    setup.card.unlink()
    setup.card.mkdir()


def recorder_dir_is_a_file(setup: Setup) -> None:
    (setup.root / "recordings").write_text("not a directory\n")


def outbox_parent_is_a_file(setup: Setup) -> None:
    (setup.root / "state").write_text("not a directory\n")


def outbox_is_a_directory(setup: Setup) -> None:
    (setup.root / "state" / "outbox.sqlite").mkdir(parents=True)


def model_is_missing(setup: Setup) -> None:
    setup.model.unlink()


def config_is_a_directory(setup: Setup) -> None:
    setup.config.unlink()
    setup.config.mkdir()


# (case id, how to break the good setup, the file the message must name, the key it must name)
CASES: list[tuple[str, Callable[[Setup], None], str, str]] = [
    # -- the config file itself
    ("config-not-utf8", raw_config(GOOD_CONFIG.encode().replace(b"pump-7", b"pump-\xe9")), "config", "UTF-8"),
    ("config-latin1-comment", raw_config(b"# Pumpe f\xfcr Halle 3\n" + GOOD_CONFIG.encode()), "config", "UTF-8"),
    ("config-not-toml", config_case('device_id = "pump-7"', "device_id = pump-7"), "config", "TOML"),
    ("config-is-a-directory", config_is_a_directory, "config", "cannot read"),
    ("config-integer-5000-digits", config_case("port = 1883", "port = " + "1" * 5000), "config", "TOML"),
    ("config-unknown-key", config_case("[serial]", "colour = 1\n[serial]"), "config", "colour"),
    ("device-id-missing", config_case('device_id = "pump-7"', ""), "config", "device_id"),
    ("device-id-slash", config_case('"pump-7"', '"pump/7"'), "config", "device_id"),
    ("log-level-unknown", config_case('"INFO"', '"LOUD"'), "config", "log_level"),
    ("serial-port-empty", config_case('"/dev/cm-sensor"', '""'), "config", "serial.port"),
    ("serial-baudrate-negative", config_case("921600", "-1"), "config", "serial.baudrate"),
    ("model-bundle-empty", config_case('bundle = "bundle"', 'bundle = ""'), "config", "model.bundle"),
    ("mqtt-host-empty", config_case('host = "localhost"', 'host = ""'), "config", "mqtt.host"),
    ("mqtt-host-blank", config_case('host = "localhost"', 'host = "  "'), "config", "mqtt.host"),
    ("mqtt-host-missing", config_case('host = "localhost"', ""), "config", "mqtt.host"),
    ("mqtt-port-zero", config_case("port = 1883", "port = 0"), "config", "mqtt.port"),
    ("mqtt-port-text", config_case("port = 1883", 'port = "1883"'), "config", "mqtt.port"),
    ("mqtt-keepalive-huge", config_case("keepalive = 30", "keepalive = 100000"), "config", "mqtt.keepalive"),
    ("mqtt-protocol-4", config_case("keepalive = 30", 'keepalive = 30\nprotocol = "4"'), "config", "mqtt.protocol"),
    ("mqtt-prefix-wildcard", config_case("keepalive = 30", 'keepalive = 30\ntopic_prefix = "cm/#"'), "config",
     "mqtt.topic_prefix"),
    ("mqtt-password-file-missing", config_case("keepalive = 30", 'keepalive = 30\nusername = "pump-7"\n'
                                                                 'password_file = "nope.secret"'),
     "config", "mqtt.password_file"),
    ("mqtt-client-id-empty", config_case("keepalive = 30", 'keepalive = 30\nclient_id = ""'), "config",
     "mqtt.client_id"),
    ("outbox-is-a-directory", outbox_is_a_directory, "config", "outbox.path"),
    ("outbox-parent-is-a-file", outbox_parent_is_a_file, "config", "outbox.path"),
    ("recorder-directory-is-a-file", recorder_dir_is_a_file, "config", "recorder.directory"),
    ("recorder-quota-zero", config_case("quota_mb = 1024", "quota_mb = 0"), "config", "recorder.quota_mb"),
    ("recorder-interval-negative", config_case("interval_s = 600", "interval_s = -1"), "config",
     "recorder.interval_s"),
    ("recorder-quota-10**400", config_case("quota_mb = 1024", "quota_mb = 1" + "0" * 400), "config",
     "recorder.quota_mb"),
    ("recorder-quota-nan", config_case("quota_mb = 1024", "quota_mb = nan"), "config", "recorder.quota_mb"),
    ("counters-interval-inf", config_case("counters_interval_s = 60", "counters_interval_s = inf"), "config",
     "telemetry.counters_interval_s"),
    ("thresholds-inf", config_case("[telemetry]", "[detector]\nwarning_threshold = inf\nalarm_threshold = inf\n"
                                                  "[telemetry]"), "config", "detector.warning_threshold"),
    ("alarm-threshold-inf", config_case("[telemetry]", "[detector]\nalarm_threshold = inf\n[telemetry]"), "config",
     "detector.alarm_threshold"),
    ("warning-threshold-nan", config_case("[telemetry]", "[detector]\nwarning_threshold = nan\n[telemetry]"),
     "config", "detector.warning_threshold"),
    ("detector-k-above-n", config_case("[telemetry]", "[detector]\nk = 9\n[telemetry]"), "config", "[detector]"),
    ("alarm-below-warning", config_case("[telemetry]", "[detector]\nwarning_threshold = 0.9\nalarm_threshold = 0.5\n"
                                                       "[telemetry]"), "config", "[detector]"),
    ("sensor-channels-mismatch", config_case("[telemetry]", '[sensor]\nchannels = ["x", "y"]\n[telemetry]'), "config",
     "sensor.channels"),
    ("sensor-snapshot-samples-1e13", config_case("[telemetry]", "[sensor]\nsnapshot_samples = 10000000000000\n"
                                                                "[telemetry]"), "config", "sensor.snapshot_samples"),
    ("sensor-stale-after-inf", config_case("[telemetry]", "[sensor]\nstale_after_s = inf\n[telemetry]"), "config",
     "sensor.stale_after_s"),
    # -- the model card
    ("card-not-utf8", lambda s: s.card.write_bytes(s.card.read_bytes().replace(b"bearing1", b"bearing\xe9")),
     "card", "UTF-8"),
    ("card-is-a-directory", card_is_a_directory, "card", "cannot read the model card"),
    ("card-deeply-nested", raw_card(b"[" * 100_000 + b"]" * 100_000), "card", "nested too deeply"),
    ("card-not-json", raw_card(b'{"schema_version": 1,'), "card", "not valid JSON"),
    ("card-a-list", raw_card(b"[]"), "card", "(top level)"),
    ("card-integer-5000-digits", raw_card(b'{"schema_version": ' + b"1" * 5000 + b"}"), "card", "not valid JSON"),
    ("card-empty", raw_card(b""), "card", "not valid JSON"),
    ("card-missing", lambda s: s.card.unlink(), "card", "missing"),
    ("card-schema-version-2", card_case(version_1(lambda c: c.update(schema_version=2))), "card", "schema_version"),
    ("card-schema-version-3", card_case(lambda c: c.update(schema_version=3)), "card", "schema_version"),
    ("card-feature-set-rms", card_case(spec(feature_set="rms")), "card", "feature_spec.feature_set"),
    ("card-snapshot-samples-1e13", card_case(spec(snapshot_samples=1e13)), "card", "feature_spec.snapshot_samples"),
    ("card-snapshot-samples-10**13", card_case(spec(snapshot_samples=10**13)), "card",
     "feature_spec.snapshot_samples"),
    ("card-sample-rate-huge", card_case(spec(sample_rate_hz=10**12)), "card", "feature_spec.sample_rate_hz"),
    ("card-window-zero", card_case(spec(window=0)), "card", "feature_spec.window"),
    ("card-window-not-the-models", card_case(spec(window=3)), "card", "feature_spec.window"),
    ("card-channels-not-the-models", card_case(drop_last_channel), "card", "feature_spec.channels"),
    ("card-channels-empty", card_case(spec(channels=[])), "card", "feature_spec.channels"),
    ("card-warning-inf", card_case(detector(warning_threshold=float("inf"))), "card", "detector.warning_threshold"),
    ("card-both-thresholds-inf", card_case(detector(warning_threshold=float("inf"), alarm_threshold=float("inf"))),
     "card", "detector.warning_threshold"),
    ("card-alarm-nan", card_case(detector(alarm_threshold=float("nan"))), "card", "detector.alarm_threshold"),
    ("card-threshold-negative", card_case(detector(warning_threshold=-0.1)), "card", "threshold"),
    ("card-v1-warning-inf", card_case(version_1(lambda c: c.update(warning_threshold=float("inf")))), "card",
     "warning_threshold"),
    ("card-v1-alarm-nan", card_case(version_1(lambda c: c.update(alarm_threshold=float("nan")))), "card",
     "alarm_threshold"),
    ("card-v1-threshold-negative", card_case(version_1(lambda c: (c.update(warning_threshold=-0.1),
                                                                  c["detector"].update(warning_threshold=-0.1)))),
     "card", "threshold"),
    ("card-v1-detector-threshold-differs", card_case(version_1(lambda c: c["detector"].update(alarm_threshold=99.0))),
     "card", "detector.alarm_threshold"),
    ("card-v2-threshold-at-the-top", card_case(lambda c: c.update(alarm_threshold=99.0)), "card", "alarm_threshold"),
    ("card-detector-k-zero", card_case(lambda c: c["detector"].update(k=0)), "card", "detector.k"),
    ("card-persist-negative", card_case(detector(persist_s=-60)), "card", "detector.persist_s"),
    ("card-clear-after-text", card_case(detector(clear_after_s="1h")), "card", "detector.clear_after_s"),
    ("card-clear-after-a-century", card_case(detector(clear_after_s=3.2e9)), "card", "clear_after_s"),
    ("card-scaler-max-below-min", card_case(invert_scaler), "card", "scaler.maximum[2]"),
    ("card-scaler-short", card_case(lambda c: c["scaler"]["minimum"].pop()), "card", "scaler.minimum"),
    ("card-scaler-inf", card_case(lambda c: c["scaler"]["maximum"].__setitem__(0, float("inf"))), "card",
     "scaler.maximum"),
    ("card-scaler-10**400", card_case(lambda c: c["scaler"]["maximum"].__setitem__(0, 10**400)), "card",
     "scaler.maximum"),
    ("card-scaler-text", card_case(lambda c: c["scaler"].update(minimum="0,0,0,0")), "card", "scaler.minimum"),
    ("card-healthy-min-short", card_case(lambda c: c["healthy_min"].pop()), "card", "healthy_min"),
    ("card-id-empty", card_case(lambda c: c.update(id="")), "card", "id"),
    ("card-model-file-escapes", card_case(lambda c: c.update(model_file="../model_int8.tflite")), "card",
     "model_file"),
    # -- the model file
    ("model-missing", model_is_missing, "card", "model_file"),
    ("model-sha256-differs", lambda s: s.model.write_bytes(s.model.read_bytes() + b"\0"), "model", "sha256"),
    ("model-not-tflite-sha-matches", lambda s: s.replace_model(b"PK\x03\x04 this is a zip archive" * 20), "card",
     "model_file"),
    ("model-empty-sha-matches", lambda s: s.replace_model(b""), "card", "model_file"),
    ("model-truncated-sha-matches", lambda s: s.replace_model(s.model.read_bytes()[:200]), "card", "model_file"),
]


@pytest.fixture(scope="module")
def bundle() -> Path:
    return shared_bundle()


def make_setup(root: Path, bundle: Path) -> Setup:
    setup = Setup(root)
    shutil.copytree(bundle, setup.bundle)
    setup.config.write_text(GOOD_CONFIG)
    return setup


def check(config: Path) -> subprocess.CompletedProcess:
    # --offline: no serial port or broker is tried, so nothing but the validation can answer.
    return subprocess.run([BIN / "cm-edge", "--config", config, "--check", "--offline"], capture_output=True,
                          text=True, timeout=60)


def test_the_good_setup_passes(tmp_path: Path, bundle: Path) -> None:
    setup = make_setup(tmp_path, bundle)
    result = check(setup.config)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{setup.config}: OK" in result.stdout
    assert len(CASES) >= 43 and len({case[0] for case in CASES}) == len(CASES)


@pytest.mark.parametrize("name, breaks, where, key", CASES, ids=[case[0] for case in CASES])
def test_bad_input_is_one_line_naming_the_file_and_key(tmp_path: Path, bundle: Path, name: str,
                                                       breaks: Callable[[Setup], None], where: str, key: str) -> None:
    setup = make_setup(tmp_path, bundle)
    breaks(setup)
    result = check(setup.config)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output
    lines = output.splitlines()
    assert len(lines) == 1, output
    named = {"config": setup.config, "card": setup.card, "model": setup.model}[where]
    assert str(named) in lines[0] and key in lines[0], lines[0]
