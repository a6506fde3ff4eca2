"""The outbox on this machine's disk: what a durable add costs the scoring loop (each row and its copy, one
transaction, one fsync), what an acknowledgement costs paho's network thread (it only marks the id; the
writer thread deletes in batches), what checking every row's checksum costs a reconnect's re-send, and
how long a start takes that salvages a file whose page 1 is damaged (rows read from the pages)."""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from figures import figure

from edge.mqtt.outbox import Outbox

ALERTS = 200
PAYLOAD = b'{"id":"6f1c2b9e-8a53-4c1e-9a0e-3d2f8f0f3b7a","state":"alarm"}' * 6  # about an alert's size
READS = 20


def run() -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "outbox.sqlite"
        with Outbox(path) as outbox:
            adds, removes = [], []
            ids = []
            for _ in range(ALERTS):
                start = time.perf_counter()
                ids.append(outbox.add("cm/pump-7/alert", PAYLOAD))
                adds.append((time.perf_counter() - start) * 1e3)
            reads = []
            for _ in range(READS):
                start = time.perf_counter()
                outbox.pending()  # what a reconnect re-sends, each row checked
                reads.append((time.perf_counter() - start) * 1e3)
        with path.open("r+b") as file:  # page 1: the schema; SQLite cannot open the file any more
            file.write(os.urandom(4096))
        start = time.perf_counter()
        with Outbox(path) as outbox:
            salvage = (time.perf_counter() - start) * 1e3
            recovered = len(outbox.pending())
            for item_id in ids:
                start = time.perf_counter()
                outbox.remove(item_id)
                removes.append((time.perf_counter() - start) * 1e6)
            start = time.perf_counter()
            outbox.flush()  # the writer thread's batch: one transaction, one fsync
            batch = (time.perf_counter() - start) * 1e3
    return {"add_durable": figure(adds, "ms"), "remove_on_network_thread": figure(removes, "us"),
            "delete_batch_of_200": figure([batch], "ms"),
            "pending_200_checked": figure(reads, "ms (every pending row read and its checksum checked)"),
            "open_salvaging_page_1_of_200": figure([salvage], f"ms ({recovered} of {ALERTS} recovered)")}


if __name__ == "__main__":
    for name, value in run().items():
        print(name, value)
