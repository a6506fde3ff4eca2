"""Signed bundles, in process: the manifest covers every file, and verification refuses an unsigned, changed
or foreign bundle naming the file or key; the agent's config reads its trusted keys and names a bad one.

Real files and real keys (fleet.signing, as `cm-fleet keygen` and `sign` call it). The bundle is a small one
written here (a card and model files that load_bundle accepts; their bytes are all a signature is about), so
this file needs no trainer and no subprocess: `make lowest` runs it at cryptography's floor and `make pi-check`
on both emulated Pi OS flavours (the CI subset), where cryptography's ARM wheel does the work. The console
scripts and the agent's start with a trained bundle are tested in test_signature_cli.py.
"""
from __future__ import annotations

import hashlib
import json
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from edge.config import ConfigError, load_config
from edge.model.bundle import FLOAT_MODEL_FILE, INT8_MODEL_FILE, DetectorSettings, FeatureSpec, ModelCard, Scaler, write_card
from edge.model.signature import MANIFEST_FILE, SIGNATURE_FILE, SignatureError, TrustedKey, load_public_key, verify
from fleet.signing import KeyPair, SigningError, keygen, sign

CONFIG = """device_id = "pump-7"
[serial]
port = "/dev/cm-sensor"
[model]
bundle = "bundle"
{trust}
[mqtt]
host = "localhost"
[outbox]
path = "state/outbox.sqlite"
"""


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[KeyPair, KeyPair]:
    """The fleet's key pair, and another (a foreign key, or the next one in a rotation)."""
    return keygen(tmp_path_factory.mktemp("fleet")), keygen(tmp_path_factory.mktemp("other"))


def trusted(*pairs: KeyPair) -> list[TrustedKey]:
    return [load_public_key(pair.public) for pair in pairs]


def write_bundle(bundle: Path) -> Path:
    """A bundle directory load_bundle accepts: a card, and model files with a TFLite identifier (not a model that
    scores: what is signed is bytes)."""
    bundle.mkdir()
    model = b"\x1c\x00\x00\x00TFL3" + bytes(range(256)) * 8
    (bundle / INT8_MODEL_FILE).write_bytes(model)
    (bundle / FLOAT_MODEL_FILE).write_bytes(model[::-1])
    spec = FeatureSpec("mean_abs", ("b1", "b2"), 20_000, 20_480, 1)
    write_card(ModelCard("unit", "2026-01-01T00:00:00Z", spec, Scaler((0.0, 0.0), (1.0, 1.0)), "test",
                         DetectorSettings(1.0, 2.0), (0.0, 0.0), {}, {}, INT8_MODEL_FILE,
                         hashlib.sha256(model).hexdigest()), bundle)
    return bundle


def signed_copy(root: Path, signer: KeyPair | None) -> Path:
    bundle = write_bundle(root / "bundle")
    if signer is not None:
        assert sign(bundle, signer.private) == signer.key_id
    return bundle


def test_keygen_writes_a_private_key_only_its_owner_reads_and_never_overwrites(keys: tuple[KeyPair, KeyPair]) -> None:
    fleet, _ = keys
    assert stat.S_IMODE(fleet.private.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in fleet.private.read_bytes() and b"PUBLIC KEY" in fleet.public.read_bytes()
    assert load_public_key(fleet.public).key_id == fleet.key_id
    before = fleet.private.read_bytes()
    with pytest.raises(SigningError, match=f"{fleet.private}: already exists"):
        keygen(fleet.private.parent)
    assert fleet.private.read_bytes() == before


def test_the_manifest_lists_every_file_with_its_sha256(tmp_path: Path, keys: tuple[KeyPair, KeyPair]) -> None:
    fleet, _ = keys
    bundle = signed_copy(tmp_path, fleet)
    listed = json.loads((bundle / MANIFEST_FILE).read_text())["files"]
    on_disk = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in bundle.iterdir()
               if p.name not in (MANIFEST_FILE, SIGNATURE_FILE)}
    assert listed == on_disk and {"model_int8.tflite", "model_card.json"} <= listed.keys()
    verified = verify(bundle, trusted(fleet))
    assert verified.key.key_id == fleet.key_id and verified.files == on_disk


def test_rotation_either_trusted_key_verifies(tmp_path: Path, keys: tuple[KeyPair, KeyPair]) -> None:
    fleet, other = keys
    assert verify(signed_copy(tmp_path, other), trusted(fleet, other)).key.key_id == other.key_id


def tamper_model(bundle: Path) -> str:
    model = bundle / "model_int8.tflite"
    data = bytearray(model.read_bytes())
    data[-1] ^= 0x01
    model.write_bytes(bytes(data))
    return f"{model}: sha256"


def tamper_card(bundle: Path) -> str:
    """Thresholds a hundred times higher: a card that still loads, and a model that would never alarm."""
    card = bundle / "model_card.json"
    document = json.loads(card.read_text())
    document["detector"]["alarm_threshold"] *= 100
    card.write_text(json.dumps(document))
    return f"{card}: sha256"


def add_file(bundle: Path) -> str:
    (bundle / "extra.py").write_text("print('hello')\n")
    return f"{bundle / 'extra.py'}: not in the signed MANIFEST.json"


def remove_file(bundle: Path) -> str:
    (bundle / "model_float32.tflite").unlink()
    return f"{bundle / 'model_float32.tflite'}: listed in the signed MANIFEST.json but missing"


def rewrite_manifest(bundle: Path) -> str:
    """Whoever changes the model and the manifest to match: the signature no longer fits."""
    tamper_model(bundle)
    manifest = json.loads((bundle / MANIFEST_FILE).read_text())
    manifest["files"]["model_int8.tflite"] = hashlib.sha256((bundle / "model_int8.tflite").read_bytes()).hexdigest()
    (bundle / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return f"{bundle / SIGNATURE_FILE}: the signature of MANIFEST.json by key"


def drop_signature(bundle: Path) -> str:
    (bundle / SIGNATURE_FILE).unlink()
    return f"{bundle}: unsigned bundle: MANIFEST.sig missing"


def link_a_file(bundle: Path) -> str:
    (bundle / "passwd").symlink_to("/etc/passwd")
    return f"{bundle / 'passwd'}: expected a regular file in the bundle, got a link"


@pytest.mark.parametrize("breaks", [tamper_model, tamper_card, add_file, remove_file, rewrite_manifest, drop_signature,
                                    link_a_file])
def test_a_changed_bundle_is_refused_naming_the_file(tmp_path: Path, keys: tuple[KeyPair, KeyPair],
                                                     breaks: Callable[[Path], str]) -> None:
    fleet, _ = keys
    bundle = signed_copy(tmp_path, fleet)
    verify(bundle, trusted(fleet))  # it was good before
    reason = breaks(bundle)
    with pytest.raises(SignatureError) as raised:
        verify(bundle, trusted(fleet))
    assert reason in str(raised.value)


def test_an_unsigned_bundle_is_refused(tmp_path: Path, keys: tuple[KeyPair, KeyPair]) -> None:
    fleet, _ = keys
    bundle = signed_copy(tmp_path, None)
    with pytest.raises(SignatureError, match="unsigned bundle: MANIFEST.json and MANIFEST.sig missing"):
        verify(bundle, trusted(fleet))


def test_a_foreign_key_is_refused_naming_it_and_the_trusted_ones(tmp_path: Path, keys: tuple[KeyPair, KeyPair]) -> None:
    fleet, other = keys
    bundle = signed_copy(tmp_path, other)
    with pytest.raises(SignatureError) as raised:
        verify(bundle, trusted(fleet))
    assert (f"{bundle / SIGNATURE_FILE}: signed by key {other.key_id}, which is not trusted "
            f"(model.trusted_keys: {fleet.key_id} ({fleet.public}))") in str(raised.value)


def test_a_forged_key_id_does_not_pass(tmp_path: Path, keys: tuple[KeyPair, KeyPair]) -> None:
    """A signature by a foreign key that claims the trusted key's id: the id picks the key, the key checks."""
    fleet, other = keys
    bundle = signed_copy(tmp_path, other)
    document = json.loads((bundle / SIGNATURE_FILE).read_text())
    (bundle / SIGNATURE_FILE).write_text(json.dumps(document | {"key_id": fleet.key_id}))
    with pytest.raises(SignatureError, match=f"by key {fleet.key_id} .* is not valid"):
        verify(bundle, trusted(fleet))


def test_trusted_key_errors_name_the_key_and_the_file(tmp_path: Path, keys: tuple[KeyPair, KeyPair]) -> None:
    fleet, _ = keys
    cases = {
        "[]": "model.trusted_keys: expected a non-empty list of public key files",
        f'["{fleet.public}", "{tmp_path / "missing.pub"}"]': f"model.trusted_keys[1]: cannot read {tmp_path / 'missing.pub'}",
        f'["{fleet.private}"]': f"model.trusted_keys[0]: {fleet.private}: expected a PEM public key",
    }
    for index, (value, message) in enumerate(cases.items()):
        config = tmp_path / f"edge{index}.toml"
        config.write_text(CONFIG.format(trust=f"trusted_keys = {value}"))
        with pytest.raises(ConfigError) as raised:
            load_config(config)
        assert f"{config}: {message}" in str(raised.value)


def test_a_p256_key_is_not_an_ed25519_key(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pem = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "p256.pub").write_bytes(pem)
    with pytest.raises(ValueError, match="expected an Ed25519 public key, got"):
        load_public_key(tmp_path / "p256.pub")


def test_signing_refuses_a_public_key_and_what_is_not_a_bundle(tmp_path: Path, keys: tuple[KeyPair, KeyPair]) -> None:
    fleet, _ = keys
    with pytest.raises(SigningError, match="expected an unencrypted PEM private key"):
        sign(signed_copy(tmp_path, None), fleet.public)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="model_card.json"):
        sign(tmp_path / "empty", fleet.private)
    assert not (tmp_path / "empty" / MANIFEST_FILE).exists()
