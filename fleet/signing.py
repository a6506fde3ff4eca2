"""Signing bundles with the fleet's private key: `cm-fleet keygen` and `cm-fleet sign`.

The private key stays here (the signing workstation or the fleet server), never on a device; the agent holds
only public keys (edge.model.signature, which also owns the manifest: this module writes what it defines).
Ed25519 through `cryptography`, as OpenSSH and Mender use it: small keys, deterministic signatures.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.model.bundle import load_deployable
from edge.model.signature import MANIFEST_FILE, SIGNATURE_FILE, key_id, manifest, signature_document

PRIVATE_KEY_FILE = "bundle-signing.key"
PUBLIC_KEY_FILE = "bundle-signing.pub"


class SigningError(ValueError):
    """A key or bundle that cannot be used for signing; names the file."""


@dataclass(frozen=True)
class KeyPair:
    private: Path
    public: Path
    key_id: str


def keygen(directory: str | Path) -> KeyPair:
    """A new Ed25519 key pair in `directory`: the private key readable by its owner only (0600), never overwritten."""
    directory = Path(directory)
    private, public = directory / PRIVATE_KEY_FILE, directory / PUBLIC_KEY_FILE
    for path in (private, public):
        if path.exists():
            raise SigningError(f"{path}: already exists; keygen never overwrites a key (move it away to make a new one)")
    directory.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    # O_EXCL with mode 0600: the key is never readable by others, not even for a moment.
    descriptor = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as stream:
        stream.write(pem)
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return KeyPair(private, public, key_id(raw))


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise SigningError(f"--key {path}: cannot read: {error.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as error:
        raise SigningError(f"--key {path}: expected an unencrypted PEM private key as cm-fleet keygen writes: {error}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningError(f"--key {path}: expected an Ed25519 private key, got {type(key).__name__}")
    return key


def sign(bundle: str | Path, key_path: str | Path) -> str:
    """Write MANIFEST.json and MANIFEST.sig into the bundle directory (replacing an earlier signature); returns
    the signing key's id. The bundle must load first: a signature never vouches for a broken bundle."""
    directory = Path(bundle)
    key = load_private_key(key_path)
    load_deployable(directory)  # a model bundle or a baseline card; BundleError names the file and key when neither
    for name in (MANIFEST_FILE, SIGNATURE_FILE):
        (directory / name).unlink(missing_ok=True)
    signed = manifest(directory)
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    (directory / MANIFEST_FILE).write_bytes(signed)
    (directory / SIGNATURE_FILE).write_bytes(signature_document(key.sign(signed), raw))
    return key_id(raw)
