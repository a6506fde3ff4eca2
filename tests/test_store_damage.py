"""The agent's own store damaged while it is stopped, as a new user probing faults did: a real cm-edge, a real
Mosquitto, the real outbox file damaged between two runs (the checkpoint's refusal of a channel the bundle
lacks and the storage fault that clears once the disk is freed are in tests/test_faults.py).

- 64 bytes overwritten inside a stored alert: SQLite's integrity check sees nothing (the pages are well
  formed); the row's checksum does. With one copy damaged the alert arrives intact from the other; with
  both damaged it is kept in the table `quarantine`, reported, and never sent. Nothing that is not a valid
  alert ever reaches `alert`.
- page 1 overwritten (the schema: SQLite cannot open the file at all): every pending alert still arrives.
"""
from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from broker import Mosquitto, Subscriber
from chain import TOPIC, Chain
from trained import dropout_cycles, shared_bundle
from waiting import eventually

from edge.mqtt.schemas import validate

pytestmark = pytest.mark.waits
CYCLES = 2  # healthy, dropout, ...: two alerts a cycle (-> sensor_fault, -> normal)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return dropout_cycles(tmp_path_factory.mktemp("store") / "run", CYCLES)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path / "broker", persistence=True) as running:
        yield running


@pytest.fixture
def chain(tmp_path: Path, broker: Mosquitto) -> Iterator[Chain]:
    started = Chain(tmp_path / "agent", broker, shared_bundle())
    yield started
    started.kill_agent()


def stored(outbox: Path) -> list[bytes]:
    """The pending alerts' payloads, read the way a user would look (the agent is stopped)."""
    with contextlib.closing(sqlite3.connect(f"file:{outbox}?mode=ro", uri=True)) as db:
        return [bytes(row[0]) for row in db.execute("SELECT payload FROM outbox ORDER BY id")]


def alerts_stored_offline(chain: Chain, broker: Mosquitto, run: Path) -> list[bytes]:
    """One run with the broker down: its alerts wait in the outbox; the agent is stopped with them there."""
    broker.stop()
    chain.start_agent()
    assert chain.replay(run).returncode == 0
    outbox = chain.tmp_path / "outbox.sqlite"
    assert eventually(lambda: outbox.exists() and len(stored(outbox)) == 2 * CYCLES, 60), chain.agent_log()
    assert chain.stop_agent() == 0
    return stored(outbox)


def received(subscriber: Subscriber) -> list[dict]:
    """Every message on `alert`, each of which must be a valid alert; de-duplicated by id, in arrival order."""
    unique: dict[str, dict] = {}
    for payload in subscriber.on(f"{TOPIC}/alert"):
        alert = json.loads(payload)  # a garbled payload would fail here
        validate("alert", alert)
        unique.setdefault(alert["id"], alert)
    return list(unique.values())


def storage_fault(subscriber: Subscriber) -> str | None:
    reports = [json.loads(payload) for payload in subscriber.on(f"{TOPIC}/health")]
    faults = [report["faults"]["storage"]["message"] for report in reports if "storage" in report["faults"]]
    return faults[-1] if faults else None


@pytest.mark.parametrize("copies", [1, 2], ids=["one-copy", "both-copies"])
def test_a_garbled_stored_alert_is_never_sent(tmp_path: Path, broker: Mosquitto, chain: Chain, run: Path,
                                              copies: int) -> None:
    pending = alerts_stored_offline(chain, broker, run)
    outbox = chain.tmp_path / "outbox.sqlite"
    victim = pending[1]
    with contextlib.closing(sqlite3.connect(outbox)) as db:  # SQLite's dbstat: which page belongs to which table
        tables = dict(db.execute("SELECT pageno, name FROM dbstat"))
    data = bytearray(outbox.read_bytes())
    places = {tables[at // 4096 + 1]: at for at in range(len(data)) if data.startswith(victim, at)}
    assert sorted(places) == ["outbox", "outbox_copy"]  # the row and its copy
    for table in ["outbox", "outbox_copy"][:copies]:
        data[places[table] + 40:places[table] + 104] = os.urandom(64)
    outbox.write_bytes(bytes(data))
    broker.start()
    with Subscriber(broker.port, f"{TOPIC}/#") as subscriber:
        chain.start_agent()
        expected = [json.loads(p)["id"] for p in (pending if copies == 1 else pending[:1] + pending[2:])]
        assert subscriber.wait_for(lambda s: len(received(s)) >= len(expected), 30), chain.agent_log()
        assert subscriber.wait_for(lambda s: storage_fault(s) is not None, 30), chain.agent_log()
        assert subscriber.publish_acked(f"{TOPIC}/probe", b"")  # everything the agent sent has arrived
        assert [alert["id"] for alert in received(subscriber)] == expected
        message = storage_fault(subscriber)
        assert str(outbox) in message and "ids 2" in message and "failed their checksum" in message
        assert ("restored from their intact copy" if copies == 1 else "quarantine, never sent") in message
        assert chain.stop_agent() == 0
    with contextlib.closing(sqlite3.connect(outbox)) as db:  # kept for inspection, not deleted
        assert db.execute("SELECT COUNT(*) FROM quarantine WHERE id = 2").fetchone()[0] == copies
    assert "stored message 2 on 'cm/pump-7/alert' failed its checksum" in chain.agent_log()


def test_a_damaged_first_page_loses_no_pending_alert(tmp_path: Path, broker: Mosquitto, chain: Chain,
                                                     run: Path) -> None:
    pending = alerts_stored_offline(chain, broker, run)
    outbox = chain.tmp_path / "outbox.sqlite"
    with outbox.open("r+b") as file:  # the schema and the file header: SQLite cannot open it any more
        file.write(os.urandom(4096))
    damaged = outbox.read_bytes()
    with pytest.raises(sqlite3.DatabaseError):
        stored(outbox)
    broker.start()
    with Subscriber(broker.port, f"{TOPIC}/#") as subscriber:
        chain.start_agent()
        assert subscriber.wait_for(lambda s: len(received(s)) >= len(pending), 30), chain.agent_log()
        assert [alert["id"] for alert in received(subscriber)] == [json.loads(p)["id"] for p in pending]
        assert subscriber.wait_for(lambda s: storage_fault(s) is not None, 30), chain.agent_log()
        message = storage_fault(subscriber)
        assert f"{len(pending)} stored message(s) recovered" in message
        (aside,) = chain.tmp_path.glob("outbox.sqlite.damaged-*[0-9TZ]")
        assert aside.read_bytes() == damaged and aside.name in message  # kept for inspection, as it was
        assert chain.stop_agent() == 0
