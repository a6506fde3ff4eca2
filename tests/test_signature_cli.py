"""The console scripts of signing: `cm-fleet keygen` and `cm-fleet sign` make a signed bundle, and `cm-edge`
(at start and with --check) refuses an unsigned, changed or foreign one once its config lists trusted keys.

Real processes as installed, real files. The rules themselves are tested in process (test_signature.py).
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_signature import CONFIG
from trained import shared_bundle

from edge.model.signature import load_public_key
from fleet.signing import PRIVATE_KEY_FILE, PUBLIC_KEY_FILE

BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Keys:
    private: Path
    public: Path

    @property
    def key_id(self) -> str:
        return load_public_key(self.public).key_id


def run(*args: object, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=120, cwd=cwd)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Keys, Keys]:
    pairs = []
    for name in ("fleet", "other"):
        folder = tmp_path_factory.mktemp(name)
        result = run(BIN / "cm-fleet", "keygen", "--out", folder)
        assert result.returncode == 0, result.stderr
        pair = Keys(folder / PRIVATE_KEY_FILE, folder / PUBLIC_KEY_FILE)
        assert f"key {pair.key_id}: private {pair.private}" in result.stdout
        pairs.append(pair)
    again = run(BIN / "cm-fleet", "keygen", "--out", pairs[0].private.parent)
    assert again.returncode == 2 and "already exists" in again.stderr
    return pairs[0], pairs[1]


def setup(root: Path, trust: list[Path] | None, signer: Keys | None) -> Path:
    shutil.copytree(shared_bundle(), root / "bundle")
    if signer is not None:
        result = run(BIN / "cm-fleet", "sign", root / "bundle", "--key", signer.private)
        assert result.returncode == 0 and f"signed with key {signer.key_id}" in result.stdout, result.stderr
    config = root / "edge.toml"
    config.write_text(CONFIG.format(trust="" if trust is None else f"trusted_keys = {json.dumps([str(p) for p in trust])}"))
    return config


def check(config: Path) -> subprocess.CompletedProcess:
    return run(BIN / "cm-edge", "--config", config, "--check", "--offline")


def test_a_bundle_signed_by_a_trusted_key_passes_the_check(tmp_path: Path, keys: tuple[Keys, Keys]) -> None:
    fleet, _ = keys
    result = check(setup(tmp_path, [fleet.public], fleet))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"signature by key {fleet.key_id}" in result.stdout and ": OK:" in result.stdout


def test_a_tampered_model_is_refused_by_the_check(tmp_path: Path, keys: tuple[Keys, Keys]) -> None:
    fleet, _ = keys
    config = setup(tmp_path, [fleet.public], fleet)
    model = tmp_path / "bundle" / "model_int8.tflite"
    model.write_bytes(model.read_bytes()[:-1] + b"\x00")
    result = check(config)
    assert result.returncode == 2 and f"{model}: sha256" in result.stdout, result.stdout


def test_an_unsigned_bundle_is_refused_by_the_check(tmp_path: Path, keys: tuple[Keys, Keys]) -> None:
    fleet, _ = keys
    result = check(setup(tmp_path, [fleet.public], None))
    assert result.returncode == 2 and "unsigned bundle" in result.stdout, result.stdout


def test_the_agent_itself_refuses_a_foreign_key_at_start(tmp_path: Path, keys: tuple[Keys, Keys]) -> None:
    """Not only --check: cm-edge exits 2 (systemd does not restart it) before opening the port or the broker."""
    fleet, other = keys
    result = run(BIN / "cm-edge", "--config", setup(tmp_path, [fleet.public], other))
    assert result.returncode == 2, result.stdout
    assert f"signed by key {other.key_id}, which is not trusted" in result.stdout


def test_sign_names_a_bad_key_file(tmp_path: Path, keys: tuple[Keys, Keys]) -> None:
    fleet, _ = keys
    shutil.copytree(shared_bundle(), tmp_path / "bundle")
    result = run(BIN / "cm-fleet", "sign", tmp_path / "bundle", "--key", fleet.public)
    assert result.returncode == 2 and f"--key {fleet.public}: expected an unencrypted PEM private key" in result.stderr


def test_the_readme_commands_as_written(tmp_path: Path) -> None:
    """README.md's two lines (tests/test_docs.py lists them here), in a folder laid out as they assume."""
    shutil.copytree(shared_bundle(), tmp_path / "bundles" / "pump7")
    for command in (["cm-fleet", "keygen", "--out", "keys/"],
                    ["cm-fleet", "sign", "bundles/pump7", "--key", "keys/bundle-signing.key"]):
        result = run(BIN / command[0], *command[1:], cwd=tmp_path)
        assert result.returncode == 0, result.stderr
    key = load_public_key(tmp_path / "keys" / PUBLIC_KEY_FILE)
    assert f"signed with key {key.key_id}" in result.stdout
    assert json.loads((tmp_path / "bundles" / "pump7" / "MANIFEST.sig").read_text())["key_id"] == key.key_id
