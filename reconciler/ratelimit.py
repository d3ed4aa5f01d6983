"""A smooth rate limiter shared by every concurrent call of one action."""

from __future__ import annotations

import asyncio
import collections
import time


class RateLimiter:
    """Starts calls on a regular schedule ``1/qps`` apart and never lets more than
    ``qps`` start in any one-second window (a sliding log of the last ``qps`` starts
    guards against bunching). ``qps <= 0`` disables it.

    The event loop's timers wake up late by design (the selector rounds its timeout
    up to whole milliseconds, and a busy loop runs other callbacks first), and at
    150/s (6.7 ms apart) a lateness that pushed every later slot back would cost
    about a tenth of the rate. So the wait sleeps until just before the slot and
    yields to the loop for the rest of it (:attr:`SPIN_S` at most), and a call that
    still starts late does not delay the schedule: the next call may start at once
    to catch up, by at most one interval (two calls are never closer than that
    with another between them). Lateness beyond one interval is given up, never
    made up in a burst.
    """

    #: Slack for the trip to the server: arrival times differ from send times by a few
    #: milliseconds under load, and with the schedule kept (calls catching up) the window
    #: runs full: at 3 ms about 0.4% of an apply's calls were throttled, at 8 ms 0.1%.
    MARGIN_S = 0.008
    #: The end of a wait spent yielding to the event loop rather than in a timer
    #: (the loop's timers have a resolution of one millisecond, rounded up).
    SPIN_S = 0.0012

    def __init__(self, qps: float, clock=time.monotonic):
        self.qps = qps
        self._clock = clock
        self._interval = 1.0 / qps if qps > 0 else 0.0
        self._next = 0.0
        self._window: collections.deque[float] = collections.deque(maxlen=max(1, int(qps)))
        self._lock = asyncio.Lock()

    async def acquire(self) -> float:
        """Wait for the next free slot; returns the moment (on the limiter's clock) the call
        was let start, the time every guarantee of the limiter is about."""
        if self.qps <= 0:
            return self._clock()
        async with self._lock:
            now = self._clock()
            slot = max(now, self._next)
            if len(self._window) == self._window.maxlen:
                slot = max(slot, self._window[0] + 1.0 + self.MARGIN_S)
            if slot > now:
                await self._wait_until(slot)
            sent = max(self._clock(), slot)
            self._window.append(sent)
            self._next = max(slot, sent - self._interval) + self._interval
            return sent

    async def _wait_until(self, slot: float) -> None:
        clock = self._clock
        while True:
            remaining = slot - clock()
            if remaining <= 0:
                return
            # A timer for all but the last stretch, then one loop turn at a time.
            await asyncio.sleep(remaining - self.SPIN_S if remaining > self.SPIN_S else 0)
