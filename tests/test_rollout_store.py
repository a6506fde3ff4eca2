"""The agent's bundle store (edge.model.store): content-addressed, never half a bundle, even when the process is
killed mid-write; archives that are not plain bundles are refused. Real files and real processes."""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest
from test_signature import write_bundle

from edge.config import load_config
from edge.model.store import CURRENT_FILE, INCOMING_PREFIX, BundleStore, StoreError, archive_sha256, pack
from edge.rollout import startup_bundle, store_path


def test_pack_is_deterministic_and_unpacks_to_the_same_files(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path / "bundle")
    archive = pack(bundle)
    os.utime(bundle / "model_card.json", (0, 12345))  # times are not part of the archive
    assert pack(bundle) == archive
    store = BundleStore(tmp_path / "store")
    path = store.add(archive, archive_sha256(archive), check=lambda directory: None)
    assert path == tmp_path / "store" / archive_sha256(archive)
    assert {p.name: p.read_bytes() for p in path.iterdir()} == {p.name: p.read_bytes() for p in bundle.iterdir()}


def test_an_archive_whose_sha256_is_not_the_named_one_is_refused(tmp_path: Path) -> None:
    archive = pack(write_bundle(tmp_path / "bundle"))
    with pytest.raises(StoreError, match="corrupted or not the archive named"):
        BundleStore(tmp_path / "store").add(archive[:-1] + b"x", archive_sha256(archive), check=lambda d: None)
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").iterdir())


def tar_of(members: list[tarfile.TarInfo], data: bytes = b"x") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for member in members:
            if member.isfile():
                member.size = len(data)
                archive.addfile(member, io.BytesIO(data))
            else:
                archive.addfile(member)
    return buffer.getvalue()


def member(name: str, kind: bytes = tarfile.REGTYPE, target: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


@pytest.mark.parametrize("members", [
    [member("../escape")], [member("sub/file")], [member("/etc/cron.d/x")],
    [member("link", tarfile.SYMTYPE, "/etc/passwd")], [member("hard", tarfile.LNKTYPE, "model_card.json")],
    [member("dir", tarfile.DIRTYPE)], [member(f"f{n}") for n in range(65)],
], ids=["dotdot", "subdir", "absolute", "symlink", "hardlink", "directory", "too-many"])
def test_an_archive_that_is_not_plain_files_is_refused_and_leaves_nothing(tmp_path: Path, members) -> None:
    archive = tar_of(members)
    store = BundleStore(tmp_path / "store")
    with pytest.raises(StoreError, match="member|members"):
        store.add(archive, archive_sha256(archive), check=lambda d: None)
    assert list((tmp_path / "store").iterdir()) == []
    assert not (tmp_path / "escape").exists()


def test_not_a_tar_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="not a readable tar archive"):
        BundleStore(tmp_path).add(b"PK\x03\x04 a zip", archive_sha256(b"PK\x03\x04 a zip"), check=lambda d: None)


def test_a_check_that_refuses_keeps_nothing(tmp_path: Path) -> None:
    archive = pack(write_bundle(tmp_path / "bundle"))

    def refuse(directory: Path) -> None:
        raise StoreError(f"{directory}: refused")

    store = BundleStore(tmp_path / "store")
    with pytest.raises(StoreError, match="refused"):
        store.add(archive, archive_sha256(archive), check=refuse)
    assert list(store.root.iterdir()) == []


def test_activate_keeps_the_previous_bundle_and_prunes_older_ones(tmp_path: Path) -> None:
    store = BundleStore(tmp_path / "store")
    shas = []
    for name in "abc":  # three different archives, each added as a rollout would (before it is activated)
        bundle = write_bundle(tmp_path / name)
        (bundle / "note.txt").write_text(name)
        archive = pack(bundle)
        shas.append(archive_sha256(archive))
        store.add(archive, shas[-1], check=lambda d: None)
        if len(shas) > 1:
            store.activate(shas[-1], previous=shas[-2])
    current = store.current()
    assert current is not None and (current.active, current.previous) == (shas[2], shas[1])
    assert sorted(p.name for p in store.root.iterdir() if p.is_dir()) == sorted(shas[1:])


KILLED_MID_WRITE = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from edge.model.store import BundleStore, archive_sha256
    archive = Path(sys.argv[2]).read_bytes()

    def power_cut(directory):  # every file is written: the process dies before the rename makes it a bundle
        os.kill(os.getpid(), signal.SIGKILL)

    BundleStore(sys.argv[1]).add(archive, archive_sha256(archive), check=power_cut)
""")


def test_a_process_killed_mid_write_leaves_the_old_bundle_active_and_no_half_bundle(tmp_path: Path) -> None:
    """A real SIGKILL between unpacking and the rename; then a start: the leftover is removed, the config's
    bundle is used, and the store holds no directory by the new bundle's name."""
    config_path = tmp_path / "edge.toml"
    config_path.write_text(f'device_id = "pump-7"\n[serial]\nport = "/dev/null"\n[model]\nbundle = "active"\n'
                           f'[mqtt]\nhost = "localhost"\n[outbox]\npath = "{tmp_path / "state" / "outbox.sqlite"}"\n')
    config = load_config(config_path)
    write_bundle(tmp_path / "active")
    candidate = write_bundle(tmp_path / "candidate")
    (candidate / "note.txt").write_text("new")
    archive_path = tmp_path / "candidate.tar"
    archive_path.write_bytes(pack(candidate))
    result = subprocess.run([sys.executable, "-c", KILLED_MID_WRITE, store_path(config), archive_path], timeout=60)
    assert result.returncode == -signal.SIGKILL
    leftovers = [p for p in store_path(config).iterdir() if p.name.startswith(INCOMING_PREFIX)]
    assert len(leftovers) == 1 and (leftovers[0] / "model_card.json").exists()  # it was mid-write
    assert not (store_path(config) / archive_sha256(archive_path.read_bytes())).exists()
    assert startup_bundle(config) == tmp_path / "active"
    assert [p.name for p in store_path(config).iterdir()] == []


def test_a_torn_pointer_write_leaves_the_last_complete_one(tmp_path: Path) -> None:
    """current.json is replaced by rename: a power cut leaves the temporary file half written, never current.json."""
    store = BundleStore(tmp_path)
    archive = pack(write_bundle(tmp_path / "b"))
    store.add(archive, archive_sha256(archive), check=lambda d: None)
    store.activate(archive_sha256(archive), previous=None)
    (tmp_path / f"{CURRENT_FILE}.tmp").write_text('{"active": "00')  # what a cut during the next write leaves
    current = store.current()
    assert current is not None and current.active == archive_sha256(archive)
    assert json.loads((tmp_path / CURRENT_FILE).read_text())["active"] == archive_sha256(archive)
