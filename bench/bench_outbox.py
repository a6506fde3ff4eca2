"""The outbox on this machine's disk: what a durable add costs the scoring loop, and what an acknowledgement
costs paho's network thread (it only marks the id; the writer thread deletes in batches)."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

from figures import figure

from edge.mqtt.outbox import Outbox

ALERTS = 200
PAYLOAD = b'{"id":"6f1c2b9e-8a53-4c1e-9a0e-3d2f8f0f3b7a","state":"alarm"}' * 6  # about an alert's size


def run() -> dict:
    with tempfile.TemporaryDirectory() as scratch, Outbox(Path(scratch) / "outbox.sqlite") as outbox:
        adds, removes = [], []
        ids = []
        for _ in range(ALERTS):
            start = time.perf_counter()
            ids.append(outbox.add("cm/pump-7/alert", PAYLOAD))
            adds.append((time.perf_counter() - start) * 1e3)
        for item_id in ids:
            start = time.perf_counter()
            outbox.remove(item_id)
            removes.append((time.perf_counter() - start) * 1e6)
        start = time.perf_counter()
        outbox.flush()  # the writer thread's batch: one transaction, one fsync
        batch = (time.perf_counter() - start) * 1e3
    return {"add_durable": figure(adds, "ms"), "remove_on_network_thread": figure(removes, "us"),
            "delete_batch_of_200": figure([batch], "ms")}


if __name__ == "__main__":
    for name, value in run().items():
        print(name, value)
