"""Waiting on a condition, the one way tests wait: poll what the test needs to be true (a file, a counter, a
process state) until it is, with a deadline that is only a safety net. Never a fixed sleep that hopes.

    from waiting import eventually
"""
from __future__ import annotations

import time
from collections.abc import Callable

POLL_S = 0.01  # how often a condition is looked at: most waits end within milliseconds


def eventually(condition: Callable[[], bool], timeout: float = 15.0) -> bool:
    """Poll until `condition()` holds; False after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL_S)
    return True
