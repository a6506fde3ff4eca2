"""The outbox keeps every alert, in order, until it is removed; across restarts and SIGKILL."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from edge.outbox import Outbox, OutboxError, OutboxItem


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
from edge.outbox import Outbox
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


def test_unusable_file_is_reported_with_its_path(tmp_path: Path) -> None:
    bogus = tmp_path / "outbox.sqlite"
    bogus.write_bytes(b"this is not a database" * 100)
    with pytest.raises(OutboxError, match=str(bogus)):
        Outbox(bogus)
    with pytest.raises(OutboxError, match="cannot open"):
        Outbox(tmp_path)  # a directory


def test_bad_qos_is_refused(tmp_path: Path) -> None:
    with Outbox(tmp_path / "outbox.sqlite") as outbox, pytest.raises(ValueError, match="qos"):
        outbox.add("t", b"x", qos=3)
