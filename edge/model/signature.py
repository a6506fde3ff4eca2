"""Signed bundles: the rule a bundle's signature follows, and its check; the one home of both.

A signed bundle directory holds, beside its files, MANIFEST.json (every other regular file's path and sha256)
and MANIFEST.sig (an Ed25519 signature of MANIFEST.json's exact bytes, and which key made it). Azure Device
Update and Mender sign the same way: a manifest of hashes, so that one signature covers every file and a
change to any one of them names that file. The agent verifies (edge.cli, edge.rollout), the fleet signs
(fleet.signing, with the private key the agent never sees); both call `manifest` here, so the two can never
disagree on what is covered. Keys are identified by the first 16 hex digits of their raw public key's
sha256, so a refusal can say which key signed and which keys are trusted (several: rotation).
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.model.bundle import BundleError

MANIFEST_FILE = "MANIFEST.json"
SIGNATURE_FILE = "MANIFEST.sig"
MANIFEST_FORMAT = "cm-bundle-manifest/1"
ALGORITHM = "ed25519"
KEY_ID_DIGITS = 16


class SignatureError(BundleError):
    """A bundle that is unsigned, signed by a key not trusted, or changed since it was signed; says which."""


@dataclass(frozen=True)
class TrustedKey:
    """A public key the agent accepts bundles from; `source` is where it was read (for messages)."""

    source: str
    raw: bytes  # the 32-byte Ed25519 public key

    @property
    def key_id(self) -> str:
        return key_id(self.raw)


def key_id(raw_public_key: bytes) -> str:
    return hashlib.sha256(raw_public_key).hexdigest()[:KEY_ID_DIGITS]


def load_public_key(path: str | Path) -> TrustedKey:
    """An Ed25519 public key from a PEM file (as `cm-fleet keygen` writes); ValueError says what is wrong."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise ValueError(f"cannot read {path}: {error.strerror}") from None
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        raise ValueError(f"{path}: expected a PEM public key (-----BEGIN PUBLIC KEY-----), as cm-fleet keygen writes") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path}: expected an Ed25519 public key, got {type(key).__name__}")
    return TrustedKey(str(path), key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


def file_hashes(directory: Path) -> dict[str, str]:
    """Every regular file under `directory` but the manifest and its signature, by POSIX path, with its sha256.

    A symlink or a special file is refused: what it points to is not what was signed."""
    hashes = {}
    for path in sorted(directory.rglob("*")):
        relative = path.relative_to(directory).as_posix()
        if relative in (MANIFEST_FILE, SIGNATURE_FILE):
            continue
        if path.is_symlink() or not (path.is_file() or path.is_dir()):
            raise SignatureError(f"{path}: expected a regular file in the bundle, got a link or a special file")
        if path.is_file():
            hashes[relative] = _sha256(path)
    return hashes


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest(directory: str | Path) -> bytes:
    """MANIFEST.json's bytes for `directory` as it is now: canonical JSON (sorted keys), what is signed."""
    document = {"format": MANIFEST_FORMAT, "files": file_hashes(Path(directory))}
    return (json.dumps(document, indent=1, sort_keys=True) + "\n").encode()


def signature_document(signature: bytes, raw_public_key: bytes) -> bytes:
    """MANIFEST.sig's bytes: the signature and the id of the key that made it."""
    document = {"algorithm": ALGORITHM, "key_id": key_id(raw_public_key),
                "signature": base64.b64encode(signature).decode()}
    return (json.dumps(document, indent=1, sort_keys=True) + "\n").encode()


@dataclass(frozen=True)
class Verified:
    key: TrustedKey  # the trusted key that signed
    files: dict[str, str]  # path -> sha256, every file the signature covers


def verify(directory: str | Path, trusted: Sequence[TrustedKey]) -> Verified:
    """The bundle at `directory` was signed by one of `trusted` and no file changed since; else SignatureError
    naming the file (missing, added, other sha256) or the key (not trusted, signature not valid)."""
    directory = Path(directory)
    manifest_path, signature_path = directory / MANIFEST_FILE, directory / SIGNATURE_FILE
    if not trusted:
        raise SignatureError(f"{directory}: no trusted key to verify the bundle against (config model.trusted_keys)")
    if not manifest_path.is_file() or not signature_path.is_file():
        missing = " and ".join(p.name for p in (manifest_path, signature_path) if not p.is_file())
        raise SignatureError(f"{directory}: unsigned bundle: {missing} missing (sign it with cm-fleet sign), and "
                             f"model.trusted_keys is set, so only signed bundles are accepted")
    signed, claimed = manifest_path.read_bytes(), _signature(signature_path)
    key = _trusted_key(claimed, trusted, signature_path)
    try:
        Ed25519PublicKey.from_public_bytes(key.raw).verify(claimed["signature"], signed)
    except InvalidSignature:
        raise SignatureError(f"{signature_path}: the signature of {MANIFEST_FILE} by key {key.key_id} ({key.source}) is "
                             f"not valid: {MANIFEST_FILE} was changed after signing, or the signature was") from None
    files = _listed(signed, manifest_path)
    _compare(files, file_hashes(directory), directory)
    return Verified(key, files)


def _signature(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(document, dict) or document.get("algorithm") != ALGORITHM:
            raise ValueError(f"algorithm: expected {ALGORITHM!r}")
        return {"key_id": str(document["key_id"]), "signature": base64.b64decode(document["signature"], validate=True)}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, binascii.Error, ValueError) as error:
        raise SignatureError(f"{path}: expected a JSON signature document (algorithm, key_id, signature) as cm-fleet "
                             f"sign writes: {error}") from None


def _trusted_key(claimed: dict[str, Any], trusted: Sequence[TrustedKey], path: Path) -> TrustedKey:
    for key in trusted:
        if key.key_id == claimed["key_id"]:
            return key
    known = ", ".join(f"{key.key_id} ({key.source})" for key in trusted)
    raise SignatureError(f"{path}: signed by key {claimed['key_id']}, which is not trusted (model.trusted_keys: {known})")


def _listed(signed: bytes, path: Path) -> dict[str, str]:
    try:
        document = json.loads(signed)
        files = document["files"]
        if document.get("format") != MANIFEST_FORMAT or not isinstance(files, dict):
            raise ValueError(f"format: expected {MANIFEST_FORMAT!r} with a files object")
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise SignatureError(f"{path}: a signed manifest this agent cannot read: {error}") from None
    return {str(name): str(digest) for name, digest in files.items()}


def _compare(listed: dict[str, str], present: dict[str, str], directory: Path) -> None:
    for name, digest in listed.items():
        if name not in present:
            raise SignatureError(f"{directory / name}: listed in the signed {MANIFEST_FILE} but missing")
        if present[name] != digest:
            raise SignatureError(f"{directory / name}: sha256 {present[name]} differs from the signed {MANIFEST_FILE}'s "
                                 f"{digest}: the file was changed after signing")
    for name in present.keys() - listed.keys():
        raise SignatureError(f"{directory / name}: not in the signed {MANIFEST_FILE}: added after signing")
