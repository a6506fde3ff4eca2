"""The historian: SQLite by default, PostgreSQL by url, one schema (fleet/historian/schema.py), migrated on open.

    historian = open_historian(config.historian)   # or open_historian(HistorianConfig(url=...))
"""
from __future__ import annotations

from fleet.config import HistorianConfig
from fleet.historian.dialect import HistorianError, PostgresDialect, SqliteDialect, connect_postgres, connect_sqlite, redact
from fleet.historian.store import Historian

__all__ = ["Historian", "HistorianError", "open_historian"]


def open_historian(config: HistorianConfig) -> Historian:
    url = config.url
    if url.startswith("sqlite://"):
        historian = Historian(lambda: connect_sqlite(url), SqliteDialect(), url)
    elif url.startswith(("postgresql://", "postgres://")):
        historian = Historian(lambda: connect_postgres(url, config.password_file), PostgresDialect(), redact(url))
    else:
        raise HistorianError(f"historian.url: expected sqlite:///path or postgresql://..., got {redact(url)!r}")
    try:
        historian.migrate()
    except BaseException:
        historian.close()
        raise
    return historian
