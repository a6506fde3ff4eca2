"""Config validation: a bad config stops the agent at start with the key, the value and what was expected."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from edge.config import (
    AgentConfig,
    ConfigError,
    HomeAssistantConfig,
    MachineConfig,
    MqttConfig,
    RecorderConfig,
    SensorConfig,
    SerialConfig,
    load_config,
)

GOOD = """
device_id = "pump-7"
[serial]
port = "/dev/cm-sensor"
[model]
bundle = "bundle"
[mqtt]
host = "localhost"
port = 1883
[outbox]
path = "outbox.sqlite"
[detector]
k = 2
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "edge.toml"
    path.write_text(text)
    return path


def test_good_config_loads_with_defaults_and_relative_paths(tmp_path):
    config = load_config(write(tmp_path, GOOD))
    assert config.device_id == "pump-7"
    assert config.serial.baudrate == 2_000_000  # carries 4 channels at 20 kHz (PROTOCOL.md §6)
    assert config.bundle == tmp_path / "bundle"  # relative to the config file
    assert config.mqtt.topic_prefix == "cm" and config.mqtt.device_id == "pump-7"
    assert config.detector.given() == {"k": 2}


@pytest.mark.parametrize(
    "change, message",
    [
        (("port = 1883", "port = \"abc\""), "mqtt.port: expected an integer, got 'abc'"),
        (("port = 1883", "port = 70000"), "mqtt.port: expected a TCP port between 1 and 65535, got 70000"),
        (("device_id = \"pump-7\"", "device_id = \"pump/7\""), "device_id: expected 1-64 letters"),
        (("[detector]\nk = 2", "[detector]\nk = 0"), "detector.k: expected a positive integer, got 0"),
        (("host = \"localhost\"", "hots = \"localhost\""), "mqtt.hots: unknown key (did you mean mqtt.host?)"),
        (("[serial]\nport = \"/dev/cm-sensor\"", ""), "[serial]: required section is missing"),
        (("[mqtt]", "[mqtt]\npassword_file = \"missing.txt\""), "mqtt.password_file: expected an existing readable file"),
        (("host = \"localhost\"", "host = \"\""), "mqtt.host: expected the broker's host name or IP address, got ''"),
        (("[detector]", "[sensor]\nsnapshot_interval_s = -1\n[detector]"), "sensor.snapshot_interval_s: expected a number"),
        (("[detector]", "[sensor]\nfull_scale_g = 0\n[detector]"), "sensor.full_scale_g: expected a positive number"),
        (("[detector]", "[homeassistant]\ndiscovery_prefix = \"ha/#\"\n[detector]"), "homeassistant.discovery_prefix"),
        (("[detector]", "[homeassistant]\nenable = true\n[detector]"), "did you mean homeassistant.enabled?"),
    ],
)
def test_bad_config_names_key_value_and_expectation(tmp_path, change, message):
    old, new = change
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, GOOD.replace(old, new)))
    assert message in str(error.value)
    assert str(tmp_path / "edge.toml") in str(error.value)


def test_not_toml_is_reported_with_the_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "device_id = \n"))


def test_cm_edge_check_exits_nonzero_on_a_bad_config(tmp_path):
    path = write(tmp_path, GOOD.replace("port = 1883", "port = -1"))
    result = subprocess.run([sys.executable, "-m", "edge.cli", "--config", str(path), "--check"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "mqtt.port" in result.stdout + result.stderr



def test_the_shipped_example_config_is_valid_with_every_optional_key_uncommented(tmp_path):
    example = Path(__file__).resolve().parents[1] / "deploy" / "edge.example.toml"
    assert load_config(example).serial.port == "/dev/cm-sensor"
    secret = tmp_path / "file"
    secret.write_text("x\n")
    lines = []
    for line in example.read_text().splitlines():
        if re.match(r"^# ([a-z_]+ = |\[[a-z]+\])", line):  # a documented optional key or section, commented out
            line = line[2:]
            if line.split()[0] in ("password_file", "tls_ca", "tls_cert", "tls_key"):
                line = f'{line.split()[0]} = "{secret}"'
        lines.append(line)
    config = load_config(write(tmp_path, "\n".join(lines)))
    assert config.mqtt.username == "pump-07" and config.mqtt.tls_ca == str(secret)
    assert config.detector.given() == {"warning_threshold": 0.05, "alarm_threshold": 0.08, "k": 3, "n": 5,
                                       "clear_after": 6, "fault_after": 2, "persist_s": 300.0, "clear_after_s": 3600.0}
    assert config.sensor.channels == ("bearing1", "bearing2", "bearing3", "bearing4")


def test_machine_section_for_the_vibration_set(tmp_path):
    base = 'device_id = "p"\n[serial]\nport = "/dev/x"\n[model]\nbundle = "b"\n[mqtt]\nhost = "h"\n'
    config = load_config(write(tmp_path, base + '[machine]\nshaft_rpm = 1500\niso_group = "1-flexible"\nzone_alarm = true\n'))
    assert (config.machine.shaft_rpm, config.machine.iso_group, config.machine.zone_alarm) == (1500.0, "1-flexible", True)
    assert load_config(write(tmp_path, base)).machine.iso_group == "2-rigid"
    with pytest.raises(ConfigError, match="machine.iso_group: expected one of 1-rigid, 1-flexible, 2-rigid"):
        load_config(write(tmp_path, base + '[machine]\niso_group = "3"\n'))
    with pytest.raises(ConfigError, match="machine.shaft_rpm: expected a positive number, got -5"):
        load_config(write(tmp_path, base + '[machine]\nshaft_rpm = -5\n'))


def test_a_minimal_config_gets_the_dataclasses_defaults(tmp_path):
    """Defaults are stated once, on the dataclass fields: the reader adds none of its own."""
    config = load_config(write(tmp_path, 'device_id = "p"\n[serial]\nport = "/dev/x"\n[model]\nbundle = "/b"\n'
                                         '[mqtt]\nhost = "h"\n'))
    assert config == AgentConfig(path=tmp_path / "edge.toml", device_id="p", serial=SerialConfig("/dev/x"),
                                 bundle=Path("/b"), mqtt=MqttConfig(host="h", device_id="p"))
    assert (config.sensor, config.recorder, config.machine, config.homeassistant) == (
        SensorConfig(), RecorderConfig(), MachineConfig(), HomeAssistantConfig())


def test_the_mqtt_protocol_may_be_written_as_a_number(tmp_path):
    config = load_config(write(tmp_path, GOOD.replace("port = 1883", "port = 1883\nprotocol = 5")))
    assert config.mqtt.protocol == "5"
    with pytest.raises(ConfigError, match="mqtt.protocol: expected one of 5, 3.1.1, got '4'"):
        load_config(write(tmp_path, GOOD.replace("port = 1883", "port = 1883\nprotocol = 4")))
