"""The bundles the fleet can offer: the directories under `[rollout] bundles` (fleet.toml), each a signed bundle
(`cm-fleet sign`) copied there by whoever trains them. The dashboard lists them for an admin to roll out; only
signed ones (and, given `[rollout] trusted_keys`, signed by one of those keys with no file changed since) are
offerable, the others are listed with the reason.

A bundle is named by its directory's name, never by a path: a name with a separator, `..`, or a link leading out
of the directory is refused, so a form post can only ever reach a directory an operator put there.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from edge.model.bundle import BundleError, load_deployable
from edge.model.signature import MANIFEST_FILE, SIGNATURE_FILE, TrustedKey, load_public_key, verify
from fleet.config import RolloutConfig
from fleet.historian.rollouts import RolloutError


@dataclass(frozen=True)
class Offer:
    name: str  # the directory's name under rollout.bundles: what the form posts
    model_id: str | None  # the card's id (None: no readable card)
    created: str | None  # the card's creation time
    key_id: str | None  # the key that signed it, as MANIFEST.sig says (None: unsigned)
    problem: str | None  # why it is not offerable; None: it is

    @property
    def offerable(self) -> bool:
        return self.problem is None


def bundle_path(config: RolloutConfig, name: str) -> Path:
    """The directory `name` under rollout.bundles; RolloutError for any name that could lead elsewhere."""
    root = Path(config.bundles)
    if not name or name in (".", "..") or any(c in name for c in "/\\\0") or name.startswith("."):
        raise RolloutError(f"bundle {name!r}: expected the name of a bundle directory in {root} (rollout.bundles)")
    path = root / name
    if path.is_symlink() or not path.resolve().is_relative_to(root.resolve()):
        raise RolloutError(f"bundle {name!r}: a link; only bundle directories copied into {root} are offered")
    if not path.is_dir():
        raise RolloutError(f"bundle {name!r}: no such bundle directory in {root} (rollout.bundles)")
    return path


def signer(path: Path) -> str | None:
    """The key id MANIFEST.sig names (not yet a proof: `verify` is)."""
    try:
        document = json.loads((path / SIGNATURE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    found = document.get("key_id") if isinstance(document, dict) else None
    return found if isinstance(found, str) else None


def problem(config: RolloutConfig, path: Path) -> str | None:
    """Why the bundle at `path` cannot be rolled out, as the rollout's own check (fleet.rollout.check_signed) and
    the agents would say it; None: nothing."""
    missing = [name for name in (MANIFEST_FILE, SIGNATURE_FILE) if not (path / name).is_file()]
    if missing:
        return f"unsigned ({' and '.join(missing)} missing): cm-fleet sign {path} --key KEY"
    if config.trusted_keys:
        try:
            verify(path, trusted_keys(config))
        except BundleError as error:
            return str(error)
    return None


def trusted_keys(config: RolloutConfig) -> list[TrustedKey]:
    """rollout.trusted_keys, loaded; RolloutError names the key and the file."""
    try:
        return [load_public_key(path) for path in config.trusted_keys]
    except ValueError as error:
        raise RolloutError(f"rollout.trusted_keys: {error}") from None


def offers(config: RolloutConfig) -> list[Offer]:
    """Every directory under rollout.bundles, newest name last; an empty list when there is no such directory yet."""
    root = Path(config.bundles)
    try:
        entries = sorted(p for p in root.iterdir() if not p.name.startswith("."))
    except OSError:
        return []
    found = []
    for entry in entries:
        if entry.is_symlink() or not entry.is_dir():
            continue  # a stray file or a link: nothing to offer (bundle_path refuses them by name too)
        try:
            card = load_deployable(entry).card
        except (BundleError, ValueError, OSError) as error:
            found.append(Offer(entry.name, None, None, signer(entry), f"not a bundle: {error}"))
            continue
        found.append(Offer(entry.name, card.id, card.created, signer(entry), problem(config, entry)))
    return found
