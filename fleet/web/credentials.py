"""Passwords and API tokens: what is stored is a hash, what is compared is compared in constant time.

Passwords: scrypt (memory-hard: 16 MiB per check at n=2**14, r=8), a random 16-byte salt per user, stored as
`scrypt$n$r$p$salt$hash` (base64). API tokens: 32 random bytes, shown once; stored as their sha256, which is
enough for a secret with 256 bits of entropy (no dictionary to guess from) and lets a request find its user.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
SALT_BYTES = 16
HASH_BYTES = 32
TOKEN_PREFIX = "cmf_"  # says what a leaked string is, as GitHub's ghp_ does
MIN_PASSWORD = 8


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=2 * 128 * n * r * p + 2**20,
                          dklen=HASH_BYTES)


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise ValueError(f"password: expected at least {MIN_PASSWORD} characters, got {len(password)}")
    salt = secrets.token_bytes(SALT_BYTES)
    digest = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


# Checked against when the user does not exist, so that an unknown name takes as long as a wrong password.
_DECOY = f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(bytes(SALT_BYTES))}${_b64(bytes(HASH_BYTES))}"


def check_password(password: str, stored: str | None) -> bool:
    try:
        scheme, n, r, p, salt, digest = (stored or _DECOY).split("$")
        expected = base64.b64decode(digest)
        actual = _scrypt(password, base64.b64decode(salt), int(n), int(r), int(p))
    except ValueError:  # a malformed stored hash matches nothing
        return False
    return scheme == "scrypt" and hmac.compare_digest(actual, expected) and stored is not None


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    """What the historian keeps of a random secret: an API token, or a session's id."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()
