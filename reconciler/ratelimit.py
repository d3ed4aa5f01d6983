"""A smooth rate limiter shared by every concurrent call of one action."""

from __future__ import annotations

import asyncio
import collections
import time


class RateLimiter:
    """Spaces calls at least ``1/qps`` apart and never lets more than ``qps``
    start in any one-second window (a sliding log of the last ``qps`` starts
    guards against bunching after a late wake-up). ``qps <= 0`` disables it."""

    #: Slack for the trip to the server: arrival times differ a little from send times.
    MARGIN_S = 0.003

    def __init__(self, qps: float, clock=time.monotonic):
        self.qps = qps
        self._clock = clock
        self._interval = 1.0 / qps if qps > 0 else 0.0
        self._next = 0.0
        self._window: collections.deque[float] = collections.deque(maxlen=max(1, int(qps)))
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        if self.qps <= 0:
            return
        async with self._lock:
            now = self._clock()
            slot = max(now, self._next)
            if len(self._window) == self._window.maxlen:
                slot = max(slot, self._window[0] + 1.0 + self.MARGIN_S)
            if slot > now:
                await asyncio.sleep(slot - now)
            sent = max(self._clock(), slot)
            self._window.append(sent)
            self._next = sent + self._interval
