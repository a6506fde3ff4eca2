"""The login rate limit: after `attempts` failures within `window_s`, for one user name or from one address,
logins for it are refused (HTTP 429) until the oldest failure leaves the window. Per user, so that guessing one
account's password from many addresses is slow; per address, so that trying many accounts from one is too.
Kept in memory: a restart forgets it, which costs an attacker a restart of the service per window.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

MAX_KEYS = 100_000  # bounds the memory a flood of made-up names can take; the oldest keys go first


class LoginThrottle:
    def __init__(self, attempts: int, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.attempts = attempts
        self.window_s = window_s
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        failures = self._failures.get(key, deque())
        while failures and failures[0] <= now - self.window_s:
            failures.popleft()
        return failures

    def wait_s(self, user: str, address: str) -> float:
        """0 if a login may be tried now; else the seconds until it may."""
        now = self._clock()
        with self._lock:
            waits = [failures[0] + self.window_s - now for key in (f"user:{user}", f"address:{address}")
                     if len(failures := self._recent(key, now)) >= self.attempts]
        return max(waits, default=0.0)

    def failed(self, user: str, address: str) -> None:
        now = self._clock()
        with self._lock:
            for key in (f"user:{user}", f"address:{address}"):
                failures = self._recent(key, now)
                failures.append(now)
                self._failures.pop(key, None)
                self._failures[key] = failures  # re-inserted: the dict's order is the keys' last failure
            while len(self._failures) > MAX_KEYS:
                del self._failures[next(iter(self._failures))]
