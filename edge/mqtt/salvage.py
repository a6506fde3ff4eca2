"""Rows read straight from the pages of a damaged SQLite file, without SQLite.

SQLite finds a table's rows through its schema on page 1 and the b-tree's interior pages: one damaged page
there and every row is out of reach, although the pages that hold the rows are intact. This reads every
table leaf page of the file (and of its write-ahead log, whose page images are newer) on its own, as
SQLite's `.recover` does, and decodes the records on it (https://www.sqlite.org/fileformat2.html).

What it returns is only a candidate: garbage can look like a record. The outbox accepts a candidate only
when it has the outbox's columns and its checksum matches (edge.mqtt.outbox).
"""
from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

DEFAULT_PAGE_SIZE = 4096  # SQLite's default, and what the outbox sets on a new file
_HEADER = b"SQLite format 3\x00"
_TABLE_LEAF = 0x0D
_WAL_HEADER = 32
_WAL_FRAME_HEADER = 24

Value = int | float | str | bytes | None


@dataclass(frozen=True)
class Record:
    rowid: int
    values: tuple[Value, ...]


class _Damaged(ValueError):
    """A cell that does not decode: skipped."""


def records(path: Path) -> list[Record]:
    """Every record on a table leaf page of `path` and its `-wal`, the newest image of each page only."""
    try:
        data = path.read_bytes()
    except OSError:
        data = b""
    page_size = _page_size(data)
    pages = {number: data[(number - 1) * page_size:number * page_size]
             for number in range(1, len(data) // page_size + 1)}
    pages.update(_wal_pages(Path(f"{path}-wal"), page_size))
    found: list[Record] = []
    for number, page in sorted(pages.items()):
        found.extend(_leaf_records(page, 100 if number == 1 else 0, pages, page_size))
    return found


def _page_size(data: bytes) -> int:
    """The header's page size when it is sound, else the default (the header is on the damaged page 1)."""
    if data[:16] == _HEADER and len(data) >= 18:
        size = struct.unpack(">H", data[16:18])[0]
        size = 65536 if size == 1 else size
        if size >= 512 and size & (size - 1) == 0:
            return size
    return DEFAULT_PAGE_SIZE


def _wal_pages(path: Path, page_size: int) -> dict[int, bytes]:
    """The newest image of each page in the write-ahead log; frames of an older log generation are skipped."""
    try:
        wal = path.read_bytes()
    except OSError:
        return {}
    if len(wal) < _WAL_HEADER:
        return {}
    size = struct.unpack(">I", wal[8:12])[0]
    size = size if size >= 512 and size & (size - 1) == 0 and size <= 65536 else page_size
    salt = wal[16:24]
    pages: dict[int, bytes] = {}
    frame = _WAL_HEADER
    while frame + _WAL_FRAME_HEADER + size <= len(wal):
        number = struct.unpack(">I", wal[frame:frame + 4])[0]
        if number and wal[frame + 8:frame + 16] == salt:
            pages[number] = wal[frame + _WAL_FRAME_HEADER:frame + _WAL_FRAME_HEADER + size]
        frame += _WAL_FRAME_HEADER + size
    return pages


def _leaf_records(page: bytes, offset: int, pages: dict[int, bytes], page_size: int) -> Iterator[Record]:
    if len(page) < offset + 8 or page[offset] != _TABLE_LEAF:
        return
    cells = struct.unpack(">H", page[offset + 3:offset + 5])[0]
    for index in range(cells):
        pointer_at = offset + 8 + 2 * index
        if pointer_at + 2 > len(page):
            return
        try:
            yield _cell(page, struct.unpack(">H", page[pointer_at:pointer_at + 2])[0], pages, page_size)
        except (_Damaged, IndexError, struct.error, UnicodeDecodeError):
            continue  # one garbled cell does not hide the others on its page


def _cell(page: bytes, at: int, pages: dict[int, bytes], page_size: int) -> Record:
    size, at = _varint(page, at)
    rowid, at = _varint(page, at)
    usable = page_size  # (the outbox reserves no bytes per page)
    most = usable - 35
    if size <= most:
        payload = page[at:at + size]
    else:
        least = (usable - 12) * 32 // 255 - 23
        local = least + (size - least) % (usable - 4)
        local = local if local <= most else least
        payload = page[at:at + local] + _overflow(page[at + local:at + local + 4], size - local, pages, usable)
    if len(payload) != size:
        raise _Damaged("cut short")
    return Record(rowid, _values(payload))


def _overflow(link: bytes, remaining: int, pages: dict[int, bytes], usable: int) -> bytes:
    chunks, seen = [], set()
    number = struct.unpack(">I", link)[0]
    while remaining > 0:
        if number in seen or number not in pages:
            raise _Damaged("overflow chain broken")
        seen.add(number)
        page = pages[number]
        chunk = page[4:4 + min(remaining, usable - 4)]
        chunks.append(chunk)
        remaining -= len(chunk)
        number = struct.unpack(">I", page[:4])[0]
    return b"".join(chunks)


def _values(payload: bytes) -> tuple[Value, ...]:
    header_size, at = _varint(payload, 0)
    if not 0 < header_size <= len(payload):
        raise _Damaged("bad record header")
    kinds = []
    while at < header_size:
        kind, at = _varint(payload, at)
        kinds.append(kind)
    body = header_size
    values: list[Value] = []
    for kind in kinds:
        value, width = _value(kind, payload, body)
        values.append(value)
        body += width
    if body != len(payload):
        raise _Damaged("record length does not add up")
    return tuple(values)


_INTEGER_WIDTHS = {1: 1, 2: 2, 3: 3, 4: 4, 5: 6, 6: 8}


def _value(kind: int, payload: bytes, at: int) -> tuple[Value, int]:
    if kind == 0:
        return None, 0
    if kind in _INTEGER_WIDTHS:
        width = _INTEGER_WIDTHS[kind]
        if at + width > len(payload):
            raise _Damaged("integer cut short")
        return int.from_bytes(payload[at:at + width], "big", signed=True), width
    if kind == 7:
        return struct.unpack(">d", payload[at:at + 8])[0], 8
    if kind in (8, 9):
        return kind - 8, 0
    if kind >= 12:
        width = (kind - 12) // 2
        if at + width > len(payload):
            raise _Damaged("value cut short")
        chunk = payload[at:at + width]
        return (bytes(chunk) if kind % 2 == 0 else chunk.decode("utf-8")), width
    raise _Damaged(f"reserved serial type {kind}")


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = 0
    for index in range(9):
        byte = data[at + index]
        if index == 8:
            return (value << 8) | byte, at + 9
        value = (value << 7) | (byte & 0x7F)
        if byte < 0x80:
            return value, at + index + 1
    raise AssertionError("unreachable")
