"""What differs between SQLite and PostgreSQL, and nothing else: connecting, the parameter marker,
transactions, and the two-argument min/max. The historian's SQL is written once, with `?` markers."""
from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit


class HistorianError(RuntimeError):
    """The historian cannot be opened or used; the message names the database (never its password)."""


class Dialect(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def least(self) -> str: ...  # the two-argument minimum: SQLite's min(a, b), PostgreSQL's LEAST(a, b)

    @property
    def greatest(self) -> str: ...

    def sql(self, text: str) -> str: ...

    def transaction(self, connection: Any) -> contextlib.AbstractContextManager[None]: ...

    def lock_schema(self, connection: Any) -> None: ...

    @property
    def document_cte(self) -> str: ...  # how a CTE of parsed documents is kept: MATERIALIZED if parsing is costly

    def json_document(self, column: str) -> str: ...  # a TEXT column of JSON, parsed once per row

    def json_number(self, document: str) -> str: ...  # SQL of the number at the path given by the `?` that follows

    def json_path(self, keys: Sequence[str]) -> Any: ...  # that `?`'s value for a path of object keys


def redact(url: str) -> str:
    """The url without a password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


@dataclass(frozen=True)
class SqliteDialect:
    name: str = "sqlite"
    least: str = "min"
    greatest: str = "max"
    document_cte: str = "NOT MATERIALIZED"  # the text itself: json_extract keeps its last parses

    def sql(self, text: str) -> str:
        return text

    @contextlib.contextmanager
    def transaction(self, connection: sqlite3.Connection) -> Iterator[None]:
        connection.execute("BEGIN IMMEDIATE")  # take the write lock now: no upgrade deadlock between writers
        try:
            yield
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")

    def lock_schema(self, connection: sqlite3.Connection) -> None:
        pass  # BEGIN IMMEDIATE already serialises migrations

    def json_document(self, column: str) -> str:
        return column

    def json_number(self, document: str) -> str:
        return f"json_extract({document}, ?)"

    def json_path(self, keys: Sequence[str]) -> str:
        return "$" + "".join('."' + key.replace('"', '""') + '"' for key in keys)


def sqlite_path(url: str) -> Path:
    """`sqlite:///var/lib/x.sqlite` is /var/lib/x.sqlite; `sqlite://x.sqlite` is relative to the working directory."""
    return Path(url.removeprefix("sqlite://"))


def connect_sqlite(url: str) -> sqlite3.Connection:
    path = sqlite_path(url)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: transactions are explicit (SqliteDialect.transaction); one connection is shared
        # by the service's threads under the historian's lock.
        connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        connection.execute("PRAGMA journal_mode=WAL")  # readers (the dashboard) never block the ingest
        connection.execute("PRAGMA synchronous=NORMAL")  # WAL keeps it consistent; a power cut may lose the last commit
    except (OSError, sqlite3.Error) as error:
        raise HistorianError(f"{url}: cannot open the SQLite historian: {error}") from None
    return connection


@dataclass(frozen=True)
class PostgresDialect:
    name: str = "postgresql"
    least: str = "LEAST"
    greatest: str = "GREATEST"
    document_cte: str = "MATERIALIZED"  # each payload cast to jsonb once, not once per value read from it

    def sql(self, text: str) -> str:
        return text.replace("?", "%s")

    @contextlib.contextmanager
    def transaction(self, connection: Any) -> Iterator[None]:
        with connection.transaction():
            yield

    def lock_schema(self, connection: Any) -> None:
        # Two instances starting at once: one migrates, the other waits and then finds it done.
        connection.execute("SELECT pg_advisory_xact_lock(7311004)")

    def json_document(self, column: str) -> str:
        return f"CAST({column} AS jsonb)"

    def json_number(self, document: str) -> str:
        return f"CAST({document} #>> CAST(? AS text[]) AS DOUBLE PRECISION)"

    def json_path(self, keys: Sequence[str]) -> list[str]:
        return list(keys)


def connect_postgres(url: str, password_file: str | None) -> Any:
    import psycopg  # the fleet extra; only needed for a PostgreSQL historian

    kwargs: dict[str, Any] = {"autocommit": True}  # transactions are explicit (PostgresDialect.transaction)
    if password_file is not None:
        try:
            kwargs["password"] = Path(password_file).read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as error:
            raise HistorianError(f"{password_file}: cannot read the historian's password file: {error}") from None
    try:
        return psycopg.connect(url.replace("postgres://", "postgresql://", 1), **kwargs)
    except psycopg.Error as error:
        raise HistorianError(f"{redact(url)}: cannot connect to the PostgreSQL historian: {error}") from None
