"""The outbox keeps every alert, in order, until it is removed; across restarts and SIGKILL."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from edge.mqtt.health import Health
from edge.mqtt.outbox import Outbox, OutboxError, OutboxItem, checksum, holder


def test_items_come_back_in_insertion_order_with_their_fields(tmp_path: Path) -> None:
    with Outbox(tmp_path / "outbox.sqlite") as outbox:
        first = outbox.add("cm/pi/alert", b'{"n":1}')
        second = outbox.add("cm/pi/state", b"\x00binary", qos=0, retain=True)
        items = outbox.pending()
    assert [item.id for item in items] == [first, second]
    assert items[0] == OutboxItem(first, "cm/pi/alert", b'{"n":1}', 1, False, items[0].created)
    assert (items[1].payload, items[1].qos, items[1].retain) == (b"\x00binary", 0, True)
    assert items[0].created <= items[1].created


def test_remove_takes_out_only_that_item_and_ids_are_never_reused(tmp_path: Path) -> None:
    with Outbox(tmp_path / "outbox.sqlite") as outbox:
        ids = [outbox.add("t", str(n).encode()) for n in range(3)]
        outbox.remove(ids[1])
        outbox.remove(ids[1])  # a duplicate PUBACK after a reconnect is harmless
        assert [item.payload for item in outbox.pending()] == [b"0", b"2"]
        assert len(outbox) == 2
        for item_id in ids:
            outbox.remove(item_id)
        later = outbox.add("t", b"3")
    assert later > max(ids)  # ordering by id stays insertion order even after the outbox drained


def test_contents_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "state" / "outbox.sqlite"  # the parent directory is created
    with Outbox(path) as outbox:
        for n in range(5):
            outbox.add("cm/pi/alert", f"alert {n}".encode())
        outbox.remove(outbox.pending()[0].id)
    with Outbox(path) as outbox:
        assert [item.payload for item in outbox.pending()] == [f"alert {n}".encode() for n in range(1, 5)]


def test_concurrent_adds_and_removes_lose_nothing(tmp_path: Path) -> None:
    # The agent adds from its main thread while paho's network thread removes acknowledged items.
    outbox = Outbox(tmp_path / "outbox.sqlite")
    added: list[list[int]] = [[] for _ in range(4)]

    def producer(slot: int) -> None:
        for n in range(50):
            added[slot].append(outbox.add("t", f"{slot}:{n}".encode()))

    def remover() -> None:
        removed = 0
        while removed < 100:
            for item in outbox.pending()[:min(10, 100 - removed)]:
                outbox.remove(item.id)
                removed += 1

    threads = [threading.Thread(target=producer, args=(slot,)) for slot in range(4)] + [threading.Thread(target=remover)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    left = outbox.pending()
    outbox.close()
    assert len(left) == 100
    for slot in range(4):  # each producer's items stay in its own order
        mine = [item.id for item in left if item.payload.startswith(f"{slot}:".encode())]
        assert mine == sorted(mine)
    assert len({i for ids in added for i in ids}) == 200


CHILD = """
import sys
from edge.mqtt.outbox import Outbox
outbox = Outbox(sys.argv[1])
n = 0
while True:
    item_id = outbox.add("cm/pi/alert", f"alert {n}".encode())
    print(item_id, flush=True)
    n += 1
"""


def test_every_add_that_returned_survives_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, text=True)
    confirmed = [int(child.stdout.readline()) for _ in range(200)]
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    child.stdout.close()
    with Outbox(path) as outbox:
        stored = [item.id for item in outbox.pending()]
    assert stored[:len(confirmed)] == confirmed  # at most the add in progress may be extra


def test_a_directory_is_refused_with_its_path(tmp_path: Path) -> None:
    with pytest.raises(OutboxError, match=f"{tmp_path}: cannot open the outbox database: it is a directory"):
        Outbox(tmp_path)


def test_the_outbox_file_is_private(tmp_path: Path) -> None:
    with Outbox(tmp_path / "outbox.sqlite") as outbox:
        outbox.add("cm/pi/alert", b"x")
        for suffix in ("", "-wal", "-shm"):
            assert stat.S_IMODE(os.stat(f"{outbox.path}{suffix}").st_mode) == 0o600, suffix


def fill(path: Path, count: int, size: int = 300) -> list[bytes]:
    payloads = [f"alert {n:05d} ".encode() + bytes([65 + n % 26]) * size for n in range(count)]
    with Outbox(path) as outbox:
        for payload in payloads:
            outbox.add("cm/pi/alert", payload)
    return payloads


def corrupt_page(path: Path, page: int, page_size: int = 4096) -> bytes:
    """Overwrite one page with noise, as a failing SD card does; returns the file as it was."""
    original = path.read_bytes()
    with path.open("r+b") as file:
        file.seek((page - 1) * page_size)
        file.write(os.urandom(page_size))
    return original


def page_of(path: Path, table: str) -> int:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)).fetchone()[0]


def test_a_damaged_file_is_moved_aside_and_every_readable_alert_is_requeued(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    payloads = fill(path, 200)
    with sqlite3.connect(path) as db:
        pages = db.execute("PRAGMA page_count").fetchone()[0]
    assert pages > 10
    corrupt_page(path, pages // 2)  # a leaf in the middle of the table: its rows are gone
    damaged = path.read_bytes()
    health = Health("pi")
    with Outbox(path, health=health) as outbox:
        recovered = [item.payload for item in outbox.pending()]
        later = outbox.add("cm/pi/alert", b"after")
        assert [i.payload for i in outbox.pending()][-1] == b"after" and later > 200
    # Every row is kept twice on other pages: one damaged page loses none, and they come back in order.
    assert recovered == payloads
    (aside,) = tmp_path.glob("outbox.sqlite.damaged-*[0-9TZ]")
    assert aside.read_bytes() == damaged  # kept for inspection, as it was
    message = health.faults()["storage"].message
    assert aside.name in message and f"{len(recovered)} stored message(s) recovered" in message
    with Outbox(path) as reopened:  # the fresh file is sound and holds them
        assert [i.payload for i in reopened.pending()] == recovered + [b"after"]


def test_damage_outside_the_alerts_loses_none_of_them(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    payloads = fill(path, 50)
    corrupt_page(path, page_of(path, "sqlite_sequence"))
    with Outbox(path, health=Health("pi")) as outbox:
        assert [item.payload for item in outbox.pending()] == payloads
        assert outbox.recovered


def test_a_file_that_is_not_a_database_is_replaced_not_fatal(tmp_path: Path) -> None:
    bogus = tmp_path / "outbox.sqlite"
    bogus.write_bytes(b"this is not a database" * 100)
    with Outbox(bogus) as outbox:
        outbox.add("t", b"x")
        assert len(outbox) == 1
    (aside,) = tmp_path.glob("outbox.sqlite.damaged-*[0-9TZ]")
    assert aside.read_bytes() == b"this is not a database" * 100


FULL_DISK = """
import json, resource, sys
from edge.mqtt.health import Health
from edge.mqtt.outbox import Outbox
path = sys.argv[1]
health = Health("pi")
outbox = Outbox(path, health=health)
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))  # the disk is full from here on
ids = [outbox.add("cm/pi/alert", b"%05d" % n + b"x" * 2000) for n in range(100)]
report = {"held": outbox.held, "pending": len(outbox), "fault": health.faults()["storage"].message}
outbox.remove(ids[0])  # acknowledged while still held in memory
resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))  # space again
outbox.flush()
report |= {"held_after": outbox.held, "faults_after": list(health.faults())}
outbox.close()
print(json.dumps(report))
"""


def test_a_full_disk_holds_alerts_in_memory_and_stores_them_once_it_has_room(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    result = subprocess.run([sys.executable, "-c", FULL_DISK, str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["held"] > 0 and report["pending"] == 100
    assert "held in memory" in report["fault"] and str(path) in report["fault"]
    assert report["held_after"] == 0 and report["faults_after"] == []
    with Outbox(path) as outbox:  # every alert is on disk now, in order, but the acknowledged one
        assert [item.payload[:5] for item in outbox.pending()] == [b"%05d" % n for n in range(1, 100)]


def test_bad_qos_is_refused(tmp_path: Path) -> None:
    with Outbox(tmp_path / "outbox.sqlite") as outbox, pytest.raises(ValueError, match="qos"):
        outbox.add("t", b"x", qos=3)


def test_an_acknowledgement_never_waits_for_the_disk(tmp_path: Path) -> None:
    """paho's network thread calls remove(): it must return while a write (an fsync) holds the database."""
    with Outbox(tmp_path / "outbox.sqlite") as outbox:
        item_id = outbox.add("cm/pi/alert", b"x")
        with outbox._lock:  # what a slow add or delete on an SD card looks like to other threads
            remover = threading.Thread(target=outbox.remove, args=(item_id,))
            remover.start()
            remover.join(5)
            assert not remover.is_alive()
        assert outbox.pending() == []
        outbox.flush()
    with Outbox(tmp_path / "outbox.sqlite") as reopened:
        assert len(reopened) == 0  # and the writer deleted it for good


def test_one_outbox_one_agent_a_second_process_is_refused_naming_the_first(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    assert holder(path) is None  # never used
    first = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom edge.mqtt.outbox import Outbox\n"
                              f"o = Outbox({str(path)!r})\nprint('open', flush=True)\nsys.stdin.read()\no.close()"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout is not None and first.stdout.readline() == "open\n"
        assert holder(path) == first.pid
        with pytest.raises(OutboxError, match=rf"outbox.sqlite: in use by another agent \(pid {first.pid}\)"):
            Outbox(path)
    finally:
        first.communicate("", timeout=30)
    assert holder(path) is None  # closed: free again
    with Outbox(path) as outbox:
        outbox.add("cm/pi/alert", b"{}")
    assert stat.S_IMODE((tmp_path / "outbox.sqlite.lock").stat().st_mode) == 0o600


def places(path: Path, payload: bytes) -> dict[str, int]:
    """Where in the file each table keeps `payload`: the row in `outbox`, its copy in `outbox_copy`."""
    data = path.read_bytes()
    with contextlib.closing(sqlite3.connect(path)) as db:  # SQLite's dbstat: which page belongs to which table
        tables = dict(db.execute("SELECT pageno, name FROM dbstat"))
    found = {tables[at // 4096 + 1]: at for at in range(len(data)) if data.startswith(payload, at)}
    assert sorted(found) == ["outbox", "outbox_copy"], "each row is stored twice"
    return found


def garble(path: Path, payload: bytes, copies: int, size: int = 64) -> None:
    """Overwrite `size` bytes inside the row of `payload` (and inside its copy too if `copies` is 2), as a
    failing SD card does: the pages stay well formed, so SQLite's integrity check sees nothing."""
    found = places(path, payload)
    data = bytearray(path.read_bytes())
    for table in ["outbox", "outbox_copy"][:copies]:
        data[found[table] + 20:found[table] + 20 + size] = os.urandom(size)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("copies", [1, 2], ids=["one-copy", "both-copies"])
def test_a_garbled_row_is_never_handed_out(tmp_path: Path, copies: int) -> None:
    path = tmp_path / "outbox.sqlite"
    payloads = fill(path, 30)
    garble(path, payloads[7], copies)
    health = Health("pi")
    with Outbox(path, health=health) as outbox:
        assert not outbox.recovered  # the file itself is sound: only the row's own checksum can tell
        handed_out = [item.payload for item in outbox.pending()]
        again = [item.payload for item in outbox.pending()]
    message = health.faults()["storage"].message
    assert str(path) in message and "ids 8" in message
    if copies == 1:  # its copy is intact: nothing is lost, and the damaged row is repaired
        assert handed_out == again == payloads
        assert "restored from their intact copy" in message
    else:
        assert handed_out == again == payloads[:7] + payloads[8:]
        assert "moved to its table quarantine, never sent" in message
    with sqlite3.connect(path) as db:  # kept for inspection, not deleted
        kept = db.execute("SELECT id, topic, reason FROM quarantine").fetchall()
    assert len(kept) == copies and {row[0] for row in kept} == {8}
    with Outbox(path, health=Health("pi")) as reopened:  # repaired or quarantined for good
        assert [item.payload for item in reopened.pending()] == handed_out


def test_a_damaged_first_page_loses_no_pending_message(tmp_path: Path) -> None:
    """Page 1 holds the schema: SQLite cannot open the file at all, yet every row is still on its page."""
    path = tmp_path / "outbox.sqlite"
    payloads = fill(path, 23)
    with Outbox(path) as outbox:  # some acknowledged and deleted: those must not come back
        for item in outbox.pending()[:3]:
            outbox.remove(item.id)
    corrupt_page(path, 1)
    health = Health("pi")
    with Outbox(path, health=health) as outbox:
        assert [item.payload for item in outbox.pending()] == payloads[3:]
        assert outbox.recovered
    assert "20 stored message(s) recovered" in health.faults()["storage"].message


def test_one_damaged_page_anywhere_loses_no_pending_message(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    payloads = fill(path, 60)
    with sqlite3.connect(path) as db:
        pages = db.execute("PRAGMA page_count").fetchone()[0]
    original = path.read_bytes()
    for page in range(1, pages + 1):
        path.write_bytes(original)
        for leftover in tmp_path.glob("outbox.sqlite*"):
            if leftover != path:
                leftover.unlink()
        corrupt_page(path, page)
        with Outbox(path, health=Health("pi")) as outbox:
            assert [item.payload for item in outbox.pending()] == payloads, f"page {page} of {pages}"


VERSION_1 = """CREATE TABLE outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, payload BLOB NOT NULL,
    qos INTEGER NOT NULL CHECK (qos IN (0, 1, 2)), retain INTEGER NOT NULL CHECK (retain IN (0, 1)),
    created REAL NOT NULL)"""


def test_a_version_1_outbox_keeps_its_messages_and_gains_checksums(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute(VERSION_1)
        db.executemany("INSERT INTO outbox (topic, payload, qos, retain, created) VALUES (?, ?, 1, 0, ?)",
                       [("cm/pi/alert", f"old {n}".encode(), 1e9 + n) for n in range(5)])
        db.execute("PRAGMA user_version=1")
        db.commit()
    with Outbox(path) as outbox:
        assert [item.payload for item in outbox.pending()] == [f"old {n}".encode() for n in range(5)]
        outbox.add("cm/pi/alert", b"new")
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 2
        rows = db.execute("SELECT id, topic, payload, qos, retain, created, checksum FROM outbox_copy").fetchall()
    assert len(rows) == 6 and all(checksum(OutboxItem(*row[:4], bool(row[4]), row[5])) == row[6] for row in rows)


def test_acknowledged_alerts_do_not_come_back_from_a_damaged_file(tmp_path: Path) -> None:
    """A salvage from the pages reads only the cells a page still lists: rows deleted from a page, and whole
    pages freed by deletions (whose old bytes some SQLite builds leave in the file), are not sent again."""
    path = tmp_path / "outbox.sqlite"
    payloads = fill(path, 100)
    with Outbox(path) as outbox:
        for item in outbox.pending()[:90]:
            outbox.remove(item.id)
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA freelist_count").fetchone()[0] > 2  # whole pages were freed
    corrupt_page(path, 1)
    with Outbox(path, health=Health("pi")) as outbox:
        assert [item.payload for item in outbox.pending()] == payloads[90:]


def test_a_damaged_frame_of_a_killed_agents_log_loses_no_alert(tmp_path: Path) -> None:
    """SIGKILL leaves the newest rows in the write-ahead log (`-wal`). SQLite replays it up to the first frame
    whose checksum fails and silently drops every commit after it; the outbox reads the log's pages itself."""
    path = tmp_path / "outbox.sqlite"
    older = fill(path, 20)  # closed: in the file itself
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, text=True)
    confirmed = [int(child.stdout.readline()) for _ in range(60)]
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    child.stdout.close()
    log = Path(f"{path}-wal")
    frame = 24 + 4096
    with log.open("r+b") as file:  # the 4th frame's page: a damaged block of the SD card
        file.seek(32 + 3 * frame + 24 + 2000)
        file.write(os.urandom(64))
    health = Health("pi")
    with Outbox(path, health=health) as outbox:
        items = outbox.pending()
    assert [item.payload for item in items[:20]] == older
    assert [item.id for item in items[20:20 + len(confirmed)]] == confirmed  # at most the add in progress is extra
    assert "write-ahead log" in health.faults()["storage"].message
