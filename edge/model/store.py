"""The agent's bundle store: bundles delivered over the air, each in its own directory, and which one is active.

Layout (beside the outbox by default, edge.rollout.store_path):

    bundles/<sha256>/        one bundle per archive, named by the archive's sha256 (content-addressed)
    bundles/current.json     {"active": sha256, "previous": sha256 | null}: the one pointer that switches

Nothing is ever half there: an archive is unpacked into a `.incoming-*` directory, every file and the
directory fsynced, checked (signature, card), and only then renamed to its sha256 (rename is atomic on one
file system); the switch rewrites current.json the same way (temporary file, fsync, rename, fsync of the
directory). A power cut at any point leaves the old bundle active and at worst an `.incoming-*` leftover,
which the next start removes. The previous bundle is kept for rollback; older ones are pruned.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from edge.model.bundle import BundleError

CURRENT_FILE = "current.json"
INCOMING_PREFIX = ".incoming-"
MAX_FILES = 64  # a bundle has a handful; an archive of thousands is not one
MAX_UNPACKED_BYTES = 256 << 20  # beyond any model this agent runs: a decompression bomb is refused


class StoreError(BundleError):
    """An archive that cannot become a bundle, or a store that cannot be written; names the file and why."""


@dataclass(frozen=True)
class Current:
    active: str
    previous: str | None


def archive_sha256(archive: bytes) -> str:
    return hashlib.sha256(archive).hexdigest()


def pack(directory: str | Path) -> bytes:
    """A bundle directory as the fleet sends it: an uncompressed tar of its regular files (models barely
    compress), in sorted order with fixed metadata, so the same bundle always gives the same sha256."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for path in sorted(Path(directory).iterdir()):
            if not path.is_file() or path.is_symlink():
                raise StoreError(f"{path}: expected only regular files in a bundle directory")
            info = tarfile.TarInfo(path.name)
            info.size, info.mode, info.mtime = path.stat().st_size, 0o644, 0
            with path.open("rb") as stream:
                archive.addfile(info, stream)
    return buffer.getvalue()


class BundleStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def clean(self) -> list[Path]:
        """Remove what an interrupted unpack left (a power cut mid-write); returns what was removed."""
        if not self.root.is_dir():
            return []
        leftovers = [path for path in self.root.iterdir() if path.name.startswith(INCOMING_PREFIX)]
        for path in leftovers:
            shutil.rmtree(path, ignore_errors=True)
        return leftovers

    def path(self, sha256: str) -> Path:
        return self.root / sha256

    def has(self, sha256: str) -> bool:
        return self.path(sha256).is_dir()

    def add(self, archive: bytes, sha256: str, check: Callable[[Path], None]) -> Path:
        """Unpack `archive` (whose sha256 must be `sha256`) into the store; `check(directory)` runs on the
        unpacked files before they get their final name and raises to refuse them (nothing is kept then)."""
        actual = archive_sha256(archive)
        if actual != sha256:
            raise StoreError(f"bundle archive {sha256}: its sha256 is {actual}: corrupted or not the archive named")
        final = self.path(sha256)
        if final.is_dir():
            check(final)  # the same archive again: still checked (the trusted keys may have changed)
            return final
        self.root.mkdir(parents=True, exist_ok=True)
        incoming = self.root / f"{INCOMING_PREFIX}{sha256[:16]}-{os.getpid()}"
        shutil.rmtree(incoming, ignore_errors=True)
        incoming.mkdir()
        try:
            _unpack(archive, incoming, sha256)
            check(incoming)
            _fsync(incoming)
            os.rename(incoming, final)
            _fsync(self.root)
        except BaseException:
            shutil.rmtree(incoming, ignore_errors=True)
            raise
        return final

    def current(self) -> Current | None:
        path = self.root / CURRENT_FILE
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
            current = Current(str(document["active"]), document.get("previous"))
        except (FileNotFoundError, NotADirectoryError):  # no store yet (or no state directory: preflight's to say)
            return None
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise StoreError(f"{path}: expected {{\"active\": sha256, \"previous\": sha256 or null}}: {error}") from None
        if not self.has(current.active):
            raise StoreError(f"{path}: active bundle {current.active} is not in {self.root}")
        return current

    def activate(self, sha256: str, previous: str | None) -> None:
        """Make `sha256` the active bundle, atomically; `previous` is kept for rollback, older ones pruned."""
        if not self.has(sha256):
            raise StoreError(f"{self.path(sha256)}: no such bundle in the store")
        write_atomically(self.root / CURRENT_FILE, json.dumps({"active": sha256, "previous": previous}).encode())
        for path in self.root.iterdir():
            if path.is_dir() and path.name not in (sha256, previous) and not path.name.startswith(INCOMING_PREFIX):
                shutil.rmtree(path, ignore_errors=True)


def _unpack(archive: bytes, directory: Path, sha256: str) -> None:
    """Regular files with plain names only: no paths, links or devices (tarfile's own filters are newer than
    Debian bookworm's Python 3.11.2, so the members are checked here)."""
    where = f"bundle archive {sha256}"
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:*") as tar:
            members = tar.getmembers()
            if len(members) > MAX_FILES:
                raise StoreError(f"{where}: {len(members)} members, expected at most {MAX_FILES}")
            if sum(member.size for member in members) > MAX_UNPACKED_BYTES:
                raise StoreError(f"{where}: unpacks to more than {MAX_UNPACKED_BYTES >> 20} MiB")
            for member in members:
                name = PurePosixPath(member.name)
                if not member.isfile() or len(name.parts) != 1 or name.name in ("", ".", ".."):
                    raise StoreError(f"{where}: member {member.name!r}: expected a regular file with a plain name")
                source = tar.extractfile(member)
                assert source is not None  # a regular file has contents
                with (directory / name.name).open("wb") as target:
                    shutil.copyfileobj(source, target)
                    target.flush()
                    os.fsync(target.fileno())
    except (tarfile.TarError, EOFError) as error:
        raise StoreError(f"{where}: not a readable tar archive: {error}") from None


def _fsync(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(f"{path.name}.tmp")
    with temporary.open("wb") as stream:
        stream.write(data)
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(temporary, path)
    _fsync(path.parent)
