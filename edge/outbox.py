"""The outbox: alerts are committed to SQLite before they are published and leave only when acknowledged.

Store-and-forward keeps the promise "an outage delays alerts, never drops them": the agent may be killed,
the Pi may lose power, the broker may be down for a day, and every alert still reaches the broker, in
order, once it is back. WAL with synchronous=FULL makes each `add` durable when it returns.
"""
from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

SCHEMA_VERSION = 1

# AUTOINCREMENT: ids are never reused, so ordering by id is insertion order even after deletions.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL CHECK (qos IN (0, 1, 2)),
    retain INTEGER NOT NULL CHECK (retain IN (0, 1)),
    created REAL NOT NULL
)
"""


class OutboxError(RuntimeError):
    """The outbox file cannot be opened or used; the message names the file."""


@dataclass(frozen=True)
class OutboxItem:
    id: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    created: float  # seconds since the Unix epoch when the item was added


class Outbox:
    """A durable FIFO of MQTT messages. Safe to share between threads (paho's network thread removes)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: every statement commits on its own, so `add` is durable when it returns.
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._check_version()
            self._db.execute(_SCHEMA)
        except (OSError, sqlite3.Error) as error:
            raise OutboxError(f"{self.path}: cannot open the outbox database: {error}") from None

    def _check_version(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        elif version != SCHEMA_VERSION:
            raise OutboxError(f"{self.path}: outbox schema version {version}, expected {SCHEMA_VERSION}")

    def add(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> int:
        """Store a message; it is on disk when this returns. Returns its id."""
        if qos not in (0, 1, 2):
            raise ValueError(f"outbox: qos must be 0, 1 or 2, got {qos!r}")
        with self._lock:
            try:
                cursor = self._db.execute(
                    "INSERT INTO outbox (topic, payload, qos, retain, created) VALUES (?, ?, ?, ?, ?)",
                    (topic, bytes(payload), qos, int(retain), time.time()))
            except sqlite3.Error as error:  # e.g. the disk is full: the alert could not be kept
                raise OutboxError(f"{self.path}: cannot store a message for {topic}: {error}") from None
            return int(cursor.lastrowid)

    def pending(self) -> list[OutboxItem]:
        """Every stored message, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT id, topic, payload, qos, retain, created FROM outbox ORDER BY id").fetchall()
        return [OutboxItem(id=r[0], topic=r[1], payload=bytes(r[2]), qos=r[3], retain=bool(r[4]), created=r[5])
                for r in rows]

    def remove(self, item_id: int) -> None:
        """Forget a message the broker acknowledged; removing an unknown id is a no-op."""
        with self._lock:
            self._db.execute("DELETE FROM outbox WHERE id = ?", (item_id,))

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
