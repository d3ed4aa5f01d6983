"""When the controller reads each declared task next."""

from __future__ import annotations


class Schedule:
    """When each declared task is read next: a heap of next-read times.

    Two queues, read soonest first: *urgent* reads (a task just started, a
    restart coming due) go before the *regular* ones, which are due
    ``interval_s`` after the task's last observation, so that under a full read
    budget the oldest observation is read first."""

    def __init__(self, interval_s: float):
        import heapq

        self._heapq = heapq
        self.interval_s = interval_s
        self._regular: list[tuple[float, str]] = []
        self._urgent: list[tuple[float, str]] = []
        self._due: dict[str, float] = {}
        self._urgent_due: dict[str, float] = {}
        self._reading: set[str] = set()

    def __len__(self) -> int:
        return len(self._due) + len(self._reading)

    def add(self, address: str, due: float) -> None:
        if address in self._due or address in self._reading:
            return
        self._due[address] = due
        self._heapq.heappush(self._regular, (due, address))

    def remove(self, address: str) -> None:
        self._due.pop(address, None)
        self._urgent_due.pop(address, None)
        self._reading.discard(address)

    def urgent(self, address: str, due: float) -> None:
        """Read ``address`` at ``due`` (or sooner, if it is due sooner anyway) before the regular reads."""
        if address not in self._due and address not in self._reading:
            return
        if self._urgent_due.get(address, float("inf")) <= due:
            return
        self._urgent_due[address] = due
        self._heapq.heappush(self._urgent, (due, address))

    def pop_due(self, now: float) -> str | None:
        """The next task to read now, taken off the schedule until :meth:`read` puts it back."""
        for heap, dues in ((self._urgent, self._urgent_due), (self._regular, self._due)):
            while heap and heap[0][0] <= now:
                due, address = self._heapq.heappop(heap)
                if dues.get(address) != due or address in self._reading:
                    continue  # superseded or being read
                self._urgent_due.pop(address, None)
                if address in self._due:
                    del self._due[address]
                    self._reading.add(address)
                    return address
        return None

    def read(self, address: str, now: float) -> None:
        """``address`` was read at ``now``: next regular read ``interval_s`` later."""
        if address not in self._reading:
            return  # no longer declared
        self._reading.discard(address)
        self._due[address] = now + self.interval_s
        self._heapq.heappush(self._regular, (now + self.interval_s, address))

    def next_due(self) -> float | None:
        heads = [h[0][0] for h in (self._urgent, self._regular) if h]
        return min(heads) if heads else None

    def oldest_due(self) -> float | None:
        """The earliest regular due time (how far behind the reads are)."""
        return min(self._due.values(), default=None)
