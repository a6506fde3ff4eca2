"""The outbox: alerts are committed to SQLite before they are published and leave only when acknowledged.

Store-and-forward keeps the promise "an outage delays alerts, never drops them": the agent may be killed,
the Pi may lose power, the broker may be down for a day, and every alert still reaches the broker, in
order, once it is back. WAL with synchronous=FULL makes each `add` durable when it returns.

The storage itself may fail, and then the outbox holds on rather than giving up:
- a full or read-only disk: `add` keeps the message in memory (still in order, still published) and a
  background writer stores it once the disk takes writes again; the fault is reported, never raised;
- a damaged file (`database disk image is malformed`), found by the integrity check at start or by an
  error later: it is moved aside for inspection (`outbox.sqlite.damaged-<time>`), every row that can still
  be read is re-queued into a fresh file, and the fault says how many. Rows are read through SQLite where
  it can, and straight from the pages where it cannot (edge.mqtt.salvage: a damaged page 1 hides the
  schema and with it every row);
- damage inside a row, which SQLite's own checks cannot see (a payload is only bytes to it): every row
  carries a CRC-32 of all its fields, checked whenever it is read to be published. Every row is also kept
  twice, in `outbox` and `outbox_copy` (written in the same transaction, on other pages), so one damaged
  page or row costs no alert: a row that fails its check is replaced by its copy; one whose copies all
  fail is moved to the table `quarantine` (kept for inspection, never sent) and reported;
- a damaged frame in the write-ahead log left by an unclean stop: SQLite replays the log up to it and
  drops every commit after it without a word; at start the log's pages are read too, and the intact rows
  SQLite does not see are stored again and reported.

One outbox, one agent: the outbox holds an exclusive lock on `<outbox>.lock` (with the holder's pid) while
it is open. A second agent on the same path would publish the first one's alerts twice and share its
session; it is refused at start, and `cm-edge --check` uses the lock to tell that the agent is running.

Removals (the broker's PUBACKs, on paho's network thread) only mark the id; the writer thread deletes the
marked rows in batches, so the network thread never waits for an fsync. A removal lost to a power cut
costs a duplicate after the restart, which consumers de-duplicate by the alert's id; never a lost alert.
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
import threading
import time
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from edge.mqtt import salvage
from edge.mqtt.health import LOG_ONLY, FaultSink

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2  # 2: a checksum per row, the copy table and the quarantine (1 is migrated at open)
RETRY_S = 1.0  # how often the writer retries a failed disk and flushes removals
SALVAGE_PROBES = 100_000  # ids probed one by one past a damaged page when salvaging
SALVAGE_UNKNOWN_END = 1_000  # how far to probe when even the highest id cannot be read

# AUTOINCREMENT: ids are never reused, so ordering by id is insertion order even after deletions.
# The checksum column comes last, as version 1's ALTER TABLE adds it: a row has the same layout either way.
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL CHECK (qos IN (0, 1, 2)),
    retain INTEGER NOT NULL CHECK (retain IN (0, 1)),
    created REAL NOT NULL,
    checksum INTEGER NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS outbox_copy (
    id INTEGER PRIMARY KEY, topic TEXT NOT NULL, payload BLOB NOT NULL, qos INTEGER NOT NULL,
    retain INTEGER NOT NULL, created REAL NOT NULL, checksum INTEGER NOT NULL
)""",
    # No types: what lands here failed its check, and may hold anything. Nine columns: the page reader
    # (seven per stored row) never takes a quarantined row for a pending one.
    """CREATE TABLE IF NOT EXISTS quarantine (
    id, topic, payload, qos, retain, created, checksum, reason TEXT, quarantined REAL
)""",
)
_TABLES = ("outbox", "outbox_copy")  # the row and its copy
_COLUMNS = "id, topic, payload, qos, retain, created"
_STORED = f"{_COLUMNS}, checksum"
_DAMAGED = {11, 26}  # SQLITE_CORRUPT, SQLITE_NOTADB (primary result codes)


class OutboxError(RuntimeError):
    """The outbox path cannot be used at all (e.g. it is a directory); the message names it."""


def lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


def holder(path: str | Path) -> int | None:
    """The pid of the process that has the outbox at `path` open (0 if it did not say), or None."""
    try:
        descriptor = os.open(lock_path(Path(path)), os.O_RDONLY)
    except OSError:
        return None  # no lock file: no agent has used this outbox yet
    try:
        fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        text = os.pread(descriptor, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text.isdigit() else 0
    else:
        return None
    finally:
        os.close(descriptor)  # also releases the probe's lock


@dataclass(frozen=True)
class OutboxItem:
    id: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    created: float  # seconds since the Unix epoch when the item was added


def _item(row: Sequence) -> OutboxItem:
    return OutboxItem(id=row[0], topic=row[1], payload=bytes(row[2]), qos=row[3], retain=bool(row[4]),
                      created=row[5])


def checksum(item: OutboxItem) -> int:
    """CRC-32 of every field of a stored message: damage anywhere in its row changes it."""
    head = f"{item.id}\x00{item.topic}\x00{item.qos}\x00{int(item.retain)}\x00{item.created!r}\x00"
    return zlib.crc32(item.payload, zlib.crc32(head.encode("utf-8", "surrogatepass")))


def _verified(row: Sequence) -> OutboxItem | None:
    """The message of a stored row (id, topic, payload, qos, retain, created, checksum) if it is intact.

    A checksum of None (a version 1 row, read from a file damaged before it could be migrated) cannot be
    checked: such a row is taken when its fields have their types, as version 1 did."""
    id_, topic, payload, qos, retain, created, check = row
    if not (isinstance(id_, int) and isinstance(topic, str) and isinstance(payload, bytes | memoryview)
            and qos in (0, 1, 2) and retain in (0, 1) and isinstance(created, int | float)):
        return None
    item = OutboxItem(id_, topic, bytes(payload), qos, bool(retain), float(created))
    if check is None:
        return item
    return item if check == checksum(item) else None


def _row(item: OutboxItem) -> tuple:
    return item.id, item.topic, item.payload, item.qos, int(item.retain), item.created, checksum(item)


def _damaged(error: sqlite3.Error) -> bool:
    code = getattr(error, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in _DAMAGED
    text = str(error)
    return "malformed" in text or "not a database" in text


class Outbox:
    """A durable FIFO of MQTT messages. Safe to share between threads (paho's network thread removes)."""

    def __init__(self, path: str | Path, health: FaultSink = LOG_ONLY) -> None:
        self.path = Path(path)
        self.health = health
        self._lock = threading.RLock()  # the connection and the held messages
        self._db: sqlite3.Connection | None = None
        self._held: dict[int, OutboxItem] = {}  # not on disk yet (the disk failed), oldest first
        self._next_id = 1
        self._acked: set[int] = set()  # acknowledged, delete pending; its own lock: PUBACKs never wait on I/O
        self._acked_lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = threading.Event()
        self.recovered: list[Path] = []  # damaged files moved aside by this outbox
        self._failing = False  # the disk refused the last write: a storage fault is raised
        if self.path.is_dir():
            raise OutboxError(f"{self.path}: cannot open the outbox database: it is a directory")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise OutboxError(f"{self.path}: cannot create the outbox directory: {error.strerror}") from None
        self._claim = self._take_claim()
        with self._lock:
            self._open(check=True)
        self._writer = threading.Thread(target=self._write_loop, name="outbox-writer", daemon=True)
        self._writer.start()

    def _take_claim(self) -> int | None:
        """The exclusive lock on `<outbox>.lock`, or OutboxError naming the pid that holds it. A disk that
        refuses the lock file (read-only, full) does not stop the agent: it runs unclaimed and says so."""
        path = lock_path(self.path)
        try:
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as error:
            log.warning("%s: cannot create the lock file (%s): a second agent on this outbox would not be refused",
                        path, error.strerror)
            return None
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            pid = os.pread(descriptor, 32, 0).decode("ascii", "replace").strip()
            os.close(descriptor)
            raise OutboxError(f"{self.path}: in use by another agent (pid {pid or 'unknown'}): one agent per "
                              "outbox; stop that one, or give this one its own [outbox] path") from None
        try:
            os.ftruncate(descriptor, 0)
            os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass  # the lock holds without the pid; only the message of a refused second agent is poorer
        return descriptor

    # -- opening, checking, recovering -----------------------------------------------------------------
    def _open(self, check: bool) -> bool:
        """Open (or reopen) the file; a damaged one is replaced. False (and a fault) if the disk refuses."""
        # A write-ahead log left behind (the agent was killed, the power cut) is read from its pages before
        # SQLite replays it: SQLite stops at the first damaged frame and drops every commit after it.
        logged = _rows_from_pages(self.path) if check and _log_left(self.path) else []
        try:
            self._db = self._connect()
            if check:
                result = self._db.execute("PRAGMA quick_check").fetchone()[0]
                if result != "ok":
                    raise sqlite3.DatabaseError(f"database disk image is malformed ({result})")
                self._requeue_unseen(logged)
        except sqlite3.Error as error:
            if _damaged(error):
                self._recover(error)
                return self._db is not None
            self._disk_failed(error, "open")
            return False
        return True

    def _requeue_unseen(self, rows: list[tuple]) -> None:
        """Store again the intact rows of the log's pages that SQLite does not see. Caller holds _lock."""
        assert self._db is not None
        seen = {row[0] for table in _TABLES for row in self._db.execute(f"SELECT id FROM {table}")}
        unseen = [item for item in (_verified(row) for row in rows) if item is not None and item.id not in seen]
        if not unseen:
            return
        unseen = list({item.id: item for item in unseen}.values())
        self._held = {item.id: item for item in sorted(unseen, key=lambda item: item.id)} | self._held
        self._next_id = max([self._next_id, *(item.id + 1 for item in unseen)])
        message = (f"{self.path}: {len(unseen)} stored message(s) (ids {_ids(unseen)}) were in its write-ahead log "
                   "but SQLite no longer read them (a damaged log frame drops every commit after it): re-queued")
        self.health.fault("storage", message, source="outbox-log")
        self._store_held()

    def _connect(self) -> sqlite3.Connection:
        if not self.path.exists():
            # Alerts name machines and their faults: the file is the agent's alone (sqlite gives the
            # -wal and -shm files the same mode).
            try:
                os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
            except OSError as error:  # a full or read-only disk: held in memory like a failed write
                raise sqlite3.OperationalError(f"cannot create the file: {error.strerror}") from None
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10)
        try:
            db.execute(f"PRAGMA page_size={salvage.DEFAULT_PAGE_SIZE}")  # a new file's: the page reader's guess
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version == 1:
                _migrate_from_1(db)
            elif version == 0:
                with _Transaction(db):
                    for statement in _SCHEMA:
                        db.execute(statement)
                    db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            elif version != SCHEMA_VERSION:
                raise OutboxError(f"{self.path}: outbox schema version {version}, expected {SCHEMA_VERSION}")
            row = db.execute("SELECT MAX(id) FROM outbox").fetchone()
            sequence = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
        except BaseException:
            db.close()
            raise
        self._next_id = max(self._next_id, (row[0] or 0) + 1, (sequence[0] if sequence else 0) + 1)
        return db

    def _recover(self, error: sqlite3.Error) -> None:
        """Move the damaged file aside, re-queue what can be read from it, go on with a fresh file."""
        if self._db is not None:
            try:
                self._db.close()
            except sqlite3.Error:
                pass
            self._db = None
        salvaged, damaged = _salvage(self.path)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        aside = self.path.with_name(f"{self.path.name}.damaged-{stamp}")
        try:
            for suffix in ("", "-wal", "-shm"):
                source = Path(f"{self.path}{suffix}")
                if source.exists():
                    os.replace(source, f"{aside}{suffix}")
        except OSError as move_error:
            self._disk_failed(sqlite3.OperationalError(f"cannot move the damaged outbox aside: {move_error}"), "recover")
            self._hold(salvaged)
            return
        self.recovered.append(aside)
        with self._acked_lock:
            acked = set(self._acked)
        salvaged = [item for item in salvaged if item.id not in acked]
        # The salvaged messages are older than anything held in memory: they go first.
        self._held = {item.id: item for item in salvaged} | self._held
        self._next_id = max([self._next_id, *(i.id + 1 for i in salvaged)])
        message = (f"{self.path} was damaged ({error}): moved to {aside.name} for inspection; "
                   f"{len(salvaged)} stored message(s) recovered into a fresh outbox")
        if damaged:
            message += (f"; {len(damaged)} that failed their checksum (ids {_ids(damaged)}) kept in its table "
                        "quarantine, never sent")
        self.health.fault("storage", message, source="outbox-damaged")
        try:
            self._db = self._connect()
        except sqlite3.Error as open_error:
            self._disk_failed(open_error, "open")
            return
        self._quarantine(damaged, "salvaged from a damaged file; failed its checksum")
        self._store_held()

    def _hold(self, items: Iterable[OutboxItem]) -> None:
        for item in items:
            self._held.setdefault(item.id, item)

    def _disk_failed(self, error: sqlite3.Error, action: str) -> None:
        self._failing = True
        message = (f"{self.path}: cannot {action} ({error}); {len(self._held)} alert(s) held in memory "
                   f"and retried every {RETRY_S:g} s")
        self.health.fault("storage", message, source="outbox")

    def _store_held(self) -> bool:
        """Write the held messages to disk, oldest first, in one transaction. Caller holds _lock."""
        if not self._held and not self._failing:
            return True
        if self._failing and self._db is not None:
            # After an I/O error SQLite may keep failing on the same connection: start afresh.
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = None
        if self._db is None and not self._open(check=False):
            return False
        assert self._db is not None
        items = list(self._held.values())
        try:
            with self._transaction():
                rows = [_row(item) for item in items]
                for table in _TABLES:
                    self._db.executemany(f"INSERT OR IGNORE INTO {table} ({_STORED}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                                         rows)
                if not items:  # everything held was acknowledged meanwhile: prove the disk takes a write
                    self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.Error as error:
            if _damaged(error):
                self._recover(error)
                return not self._held
            self._disk_failed(error, "store")
            return False
        self._held.clear()
        if self._failing:
            self._failing = False
            log.info("%s: the disk takes writes again; %d held message(s) stored", self.path, len(items))
            self.health.clear("storage", source="outbox")
        return True

    def _transaction(self) -> _Transaction:
        assert self._db is not None
        return _Transaction(self._db)

    # -- the FIFO ---------------------------------------------------------------------------------------
    def add(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> int:
        """Store a message: on disk when this returns, or held in memory (and reported) if the disk fails.

        Returns its id. Never raises because of the disk: the caller publishes the message either way.
        """
        if qos not in (0, 1, 2):
            raise ValueError(f"outbox: qos must be 0, 1 or 2, got {qos!r}")
        with self._lock:
            item = OutboxItem(self._next_id, topic, bytes(payload), qos, retain, time.time())
            self._next_id += 1
            self._held[item.id] = item
            if not self._store_held():  # behind older held messages, to keep the order on disk
                self._wake.set()
            return item.id

    def pending(self) -> list[OutboxItem]:
        """Every stored or held message not yet acknowledged, oldest first."""
        with self._lock:
            rows: list[OutboxItem] = []
            if self._db is not None or self._open(check=False):
                assert self._db is not None
                try:
                    rows = self._checked()
                except sqlite3.Error as error:
                    if _damaged(error):
                        self._recover(error)
                        return self.pending()
                    log.warning("%s: cannot read the outbox (%s): sending what is held in memory", self.path, error)
            held = list(self._held.values())
        with self._acked_lock:
            acked = set(self._acked)
        items = {item.id: item for item in rows if item.id not in acked}
        items.update((item.id, item) for item in held if item.id not in acked)
        return [items[key] for key in sorted(items)]

    def _checked(self) -> list[OutboxItem]:
        """The stored messages, each checked against its checksum; a damaged row is replaced by its intact
        copy, and a message with no intact copy is quarantined and reported. Caller holds _lock."""
        assert self._db is not None
        # The copy is read only where the row fails or is missing: a reconnect's re-send reads one table.
        main = {row[0]: row for row in self._db.execute(f"SELECT {_STORED} FROM outbox")}
        copies = {row[0] for row in self._db.execute("SELECT id FROM outbox_copy")}
        good: list[OutboxItem] = []
        repaired: list[OutboxItem] = []
        lost: list[tuple] = []
        for item_id in sorted(main.keys() | copies):
            row = main.get(item_id)
            intact = None if row is None else _verified(row)
            if intact is not None and item_id in copies:
                good.append(intact)
                continue
            copy = self._db.execute(f"SELECT {_STORED} FROM outbox_copy WHERE id = ?", (item_id,)).fetchone()
            rows = [found for found in (row, copy) if found is not None]
            checked = [_verified(found) for found in rows]
            intact = next((item for item in checked if item is not None), None)
            if intact is None:
                lost.extend(rows)
                continue
            good.append(intact)
            repaired.append(intact)
            self._quarantine([found for found, item in zip(rows, checked, strict=True) if item is None],
                             "failed its checksum; replaced by its intact copy")
        if repaired:
            with self._transaction():
                for table in _TABLES:
                    self._db.executemany(f"INSERT OR REPLACE INTO {table} ({_STORED}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                                         [_row(item) for item in repaired])
            log.warning("%s: stored message(s) %s damaged, restored from their intact copy", self.path,
                        _ids(repaired))
        if lost:
            self._quarantine(lost, "failed its checksum, and so did its copy")
            with self._transaction():
                for table in _TABLES:
                    self._db.executemany(f"DELETE FROM {table} WHERE id = ?", [(row[0],) for row in lost])
        if repaired or lost:
            self._report_damage(repaired, lost)
        return good

    def _report_damage(self, repaired: list[OutboxItem], lost: list[tuple]) -> None:
        parts = []
        if repaired:
            parts.append(f"{len(repaired)} restored from their intact copy (ids {_ids(repaired)})")
        if lost:
            ids = sorted({row[0] for row in lost})
            parts.append(f"{len(ids)} with no intact copy (ids {', '.join(map(str, ids))}) moved to its table "
                         "quarantine, never sent")
        message = (f"{self.path}: stored message(s) failed their checksum (the storage may be failing): "
                   f"{'; '.join(parts)}")
        self.health.fault("storage", message, source="outbox-record")

    def _quarantine(self, rows: Sequence[tuple], reason: str) -> None:
        """Keep damaged rows for inspection in the table `quarantine`. Caller holds _lock."""
        if not rows or self._db is None:
            return
        now = time.time()
        for row in rows:
            log.error("%s: stored message %s on %r failed its checksum: %s; kept in its table quarantine",
                      self.path, row[0], row[1], reason)
        try:
            with self._transaction():
                self._db.executemany("INSERT INTO quarantine VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                     [(*row, reason, now) for row in rows])
        except sqlite3.Error as error:  # not sent either way; only the evidence is lost
            log.error("%s: cannot keep the damaged row(s) in quarantine (%s)", self.path, error)

    def remove(self, item_id: int) -> None:
        """Forget a message the broker acknowledged; removing an unknown id is a no-op. Never blocks on I/O."""
        with self._acked_lock:
            self._acked.add(item_id)
        self._wake.set()

    def __len__(self) -> int:
        """Messages not yet acknowledged; counted in SQLite, not read out (the counters ask every snapshot)."""
        with self._acked_lock:
            acked = set(self._acked)
        if len(acked) > 500 or self._db is None:  # a long-failing disk: rare enough to read them all
            return len(self.pending())
        with self._lock:
            if self._db is None:
                return len(self.pending())
            marks = ",".join("?" * len(acked))
            try:
                stored = self._db.execute(f"SELECT COUNT(*) FROM outbox WHERE id NOT IN ({marks})",
                                          tuple(acked)).fetchone()[0]
            except sqlite3.Error:
                return len(self.pending())
            return int(stored) + sum(1 for item_id in self._held if item_id not in acked)

    @property
    def held(self) -> int:
        """Messages kept in memory only, because the disk failed."""
        with self._lock:
            return len(self._held)

    # -- the writer thread ------------------------------------------------------------------------------
    def _write_loop(self) -> None:
        while not self._closed.is_set():
            self._wake.wait(RETRY_S)
            self._wake.clear()
            self.flush()

    def flush(self) -> None:
        """Delete acknowledged messages and store held ones (the writer thread does this every RETRY_S)."""
        with self._lock:
            self._store_held()
            with self._acked_lock:
                acked = set(self._acked)
            if not acked:
                return
            for item_id in acked:
                self._held.pop(item_id, None)
            if self._db is None:
                return
            try:
                with self._transaction():
                    for table in _TABLES:
                        self._db.executemany(f"DELETE FROM {table} WHERE id = ?", [(i,) for i in acked])
            except sqlite3.Error as error:
                if _damaged(error):
                    self._recover(error)
                return  # the disk refuses even deletes: they stay marked and are retried
            with self._acked_lock:
                self._acked -= acked

    def close(self) -> None:
        self._closed.set()
        self._wake.set()
        if self._writer.is_alive() and self._writer is not threading.current_thread():
            self._writer.join(5)
        with self._lock:
            self.flush()
            if self._held:
                log.error("%s: %d alert(s) could not be stored and are lost with this process", self.path,
                          len(self._held))
            if self._db is not None:
                self._db.close()
                self._db = None
            if self._claim is not None:
                os.close(self._claim)  # releases the lock
                self._claim = None

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on error (the connection runs in autocommit mode)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, kind: object, error: object, traceback: object) -> None:
        if kind is None:
            self.db.execute("COMMIT")
            return
        try:
            self.db.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # no transaction is active after some errors


def _log_left(path: Path) -> bool:
    try:
        return Path(f"{path}-wal").stat().st_size > 0
    except OSError:
        return False


def _ids(items: Iterable[OutboxItem | tuple]) -> str:
    return ", ".join(str(item.id if isinstance(item, OutboxItem) else item[0]) for item in items)


def _migrate_from_1(db: sqlite3.Connection) -> None:
    """Version 1 (one table, no checksums): its rows were trusted as they are; now they are checksummed
    and copied, in one transaction."""
    with _Transaction(db):
        db.execute("ALTER TABLE outbox ADD COLUMN checksum INTEGER NOT NULL DEFAULT 0")
        items = [_item(row) for row in db.execute(f"SELECT {_COLUMNS} FROM outbox")]
        db.executemany("UPDATE outbox SET checksum = ? WHERE id = ?", [(checksum(i), i.id) for i in items])
        for statement in _SCHEMA[1:]:
            db.execute(statement)
        db.execute(f"INSERT INTO outbox_copy ({_STORED}) SELECT {_STORED} FROM outbox")
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")


def _salvage(path: Path) -> tuple[list[OutboxItem], list[tuple]]:
    """Every intact message that can still be read from a damaged outbox, oldest first, through SQLite and
    from the pages themselves; and the rows found whose every version failed its checksum."""
    versions: dict[int, list[tuple]] = {}
    for row in [*_rows_through_sqlite(path), *_rows_from_pages(path)]:
        versions.setdefault(row[0], []).append(row)
    intact: list[OutboxItem] = []
    damaged: list[tuple] = []
    for item_id in sorted(versions):
        item = next((found for found in map(_verified, versions[item_id]) if found is not None), None)
        if item is None:
            damaged.append(versions[item_id][0])
        else:
            intact.append(item)
    return intact, damaged


def _rows_from_pages(path: Path) -> list[tuple]:
    """Candidate rows read from the table pages, as (id, topic, payload, qos, retain, created, checksum)."""
    rows = []
    for record in salvage.records(path):
        values = record.values
        if len(values) == 6:  # a version 1 row: no checksum to check
            values = (*values, None)
        if len(values) == 7 and values[0] is None:  # the id is the rowid; SQLite stores NULL in its place
            rows.append((record.rowid, *values[1:]))
    return rows


def _rows_through_sqlite(path: Path) -> list[tuple]:
    """The rows SQLite can still read from both tables, past a damaged page by looking ids up one by one."""
    rows: list[tuple] = []
    try:
        db = sqlite3.connect(path, isolation_level=None)
    except sqlite3.Error:
        return rows
    try:
        for table in _TABLES:
            rows.extend(_table_rows(db, table))
    finally:
        db.close()
    return rows


def _table_rows(db: sqlite3.Connection, table: str) -> list[tuple]:
    columns = _STORED
    try:
        names = [row[1] for row in db.execute(f"PRAGMA table_info({table})")]
    except sqlite3.Error:
        return []
    if not names:
        return []
    if "checksum" not in names:  # version 1
        columns = f"{_COLUMNS}, NULL"
    rows: dict[int, tuple] = {}
    last = 0
    try:
        for row in db.execute(f"SELECT {columns} FROM {table} ORDER BY id"):
            rows[row[0]] = row
            last = row[0]
        return list(rows.values())
    except sqlite3.Error:
        pass  # the scan stopped at a damaged page: look up the ids beyond it one by one
    highest = last + SALVAGE_UNKNOWN_END
    for query in ("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'", f"SELECT MAX(id) FROM {table}"):
        try:
            found = db.execute(query).fetchone()
        except sqlite3.Error:
            continue
        if found and found[0] is not None:
            highest = max(int(found[0]), last)
            break
    for item_id in range(last + 1, min(highest, last + SALVAGE_PROBES) + 1):
        try:
            row = db.execute(f"SELECT {columns} FROM {table} WHERE id = ?", (item_id,)).fetchone()
        except sqlite3.Error:
            continue
        if row is not None:
            rows[row[0]] = row
    return list(rows.values())
