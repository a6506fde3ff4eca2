"""fleet.toml: defaults from the dataclasses, and errors that name the file, the key and the value."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fleet.config import FleetConfig, FleetConfigError, HistorianConfig, load_config


def write(tmp_path, text: str):
    path = tmp_path / "fleet.toml"
    path.write_text(text)
    return path


def test_an_empty_file_gives_the_defaults(tmp_path):
    assert load_config(write(tmp_path, "")) == FleetConfig()


def test_values_are_read(tmp_path):
    config = load_config(write(tmp_path, """[mqtt]
host = "broker.plant"
port = 8883
group = "north"
topic_prefix = "site/north/cm"
session_expiry_s = 3600
[historian]
url = "postgresql://cm@db/cm_fleet"
raw_retention_days = 7
[ingest]
batch_size = 50
"""))
    assert (config.mqtt.host, config.mqtt.port, config.mqtt.group, config.mqtt.topic_prefix) == (
        "broker.plant", 8883, "north", "site/north/cm")
    assert config.historian == HistorianConfig(url="postgresql://cm@db/cm_fleet", raw_retention_days=7.0)
    assert config.ingest.batch_size == 50 and config.mqtt.session_id.startswith("cm-fleet-")


@pytest.mark.parametrize(("text", "message"), [
    ("[mqtt]\nport = \"1883\"\n", "mqtt.port: expected int, got '1883'"),
    ("[mqtt]\nport = true\n", "mqtt.port: expected int, got True"),
    ("[mqtt]\nhots = \"x\"\n", "mqtt.hots: unknown key"),
    ("[mqtt]\ngroup = \"a/b\"\n", "mqtt.group: expected 1-64 of A-Z a-z 0-9 _ -, got 'a/b'"),
    ("[mqtt]\ntopic_prefix = \"cm/#\"\n", "mqtt.topic_prefix: expected levels of A-Z a-z 0-9 _ -, got 'cm/#'"),
    ("[mqtt]\nport = 0\n", "mqtt.port: expected 1-65535, got 0"),
    ("[historian]\nurl = \"mysql://x\"\n", "historian.url: expected sqlite:///path or postgresql://..., got 'mysql://x'"),
    ("[historian]\nbucket_s = 0\n", "historian.bucket_s: expected > 0, got 0"),
    ("[ingest]\nmax_payload_bytes = 10\n", "ingest.max_payload_bytes: expected >= 1024, got 10"),
    ("[dashboard]\nport = 1\n", "dashboard: unknown section"),
    ("[web]\nport = 70000\n", "web.port: expected 0-65535, got 70000"),
    ("[web]\nallow_anonymous = 1\n", "web.allow_anonymous: expected bool, got 1"),
    ("[web]\nsession_hours = 0\n", "web.session_hours: expected > 0, got 0"),
    ("[web]\nlogin_attempts = 0\n", "web.login_attempts: expected >= 1, got 0"),
    ("mqtt = 1\n", "[mqtt] must be a table, got 1"),
    ("[mqtt\n", "not valid TOML"),
])
def test_errors_name_the_key_and_the_value(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(FleetConfigError) as error:
        load_config(path)
    assert str(error.value).startswith(f"{path}: ") and message in str(error.value)


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(FleetConfigError, match="missing.toml: cannot read the config"):
        load_config(tmp_path / "missing.toml")


def test_a_float_setting_takes_an_integer(tmp_path):
    assert load_config(write(tmp_path, "[historian]\ncompact_interval_s = 5\n")).historian.compact_interval_s == 5


def test_the_readmes_example_is_a_valid_config(tmp_path):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Fleet view\n", 1)[1]
    example = section.split("```toml\n", 1)[1].split("```", 1)[0]
    config = load_config(write(tmp_path, example))
    assert config.mqtt.client_id == "cm-fleet-1" and config.historian.bucket_s == 600 and config.web is not None


def test_cm_fleet_names_the_bad_key_and_exits_2(tmp_path):
    path = write(tmp_path, "[historian]\nbucket_s = -5\n")
    result = subprocess.run([Path(sys.executable).parent / "cm-fleet", "serve", "--config", path],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and f"{path}: historian.bucket_s: expected > 0, got -5" in result.stderr
