"""The controller's surface for an ops layer: the events of its loop (:class:`Event`), the
facts a probe needs (:class:`Health`) and the role of a replica (:class:`Role`), gathered by a
thread-safe :class:`ControllerStatus` (see the package's docstring)."""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

log = logging.getLogger("snapctl.controller")


class EventKind(str, enum.Enum):
    """What an :class:`Event` reports."""

    #: A declared task fails to run (Status 4, or ended again right after snapctl started it).
    failing = "failing"
    #: A task that was failing runs again.
    recovered = "recovered"
    #: A task found ended (not failing) was started again.
    healed = "healed"
    #: A task changed outside snapctl was put back as declared.
    drift_corrected = "drift_corrected"
    #: The manifests fail to load or validate: the last good set stays in force.
    manifests_broken = "manifests_broken"
    #: The manifests load again (after ``manifests_broken``).
    manifests_fixed = "manifests_fixed"
    #: This replica started or stopped leading (``reason``: "leading" or "standing_by").
    leadership_changed = "leadership_changed"


@dataclass(frozen=True)
class Event:
    """One thing the controller did or found. Never holds a secret."""

    kind: EventKind
    #: When (seconds since the epoch).
    at: float
    #: The task, for task events.
    address: str | None = None
    #: The API's StopReason of a failing task, the first error line of broken manifests,
    #: "leading" or "standing_by" for leadership.
    reason: str | None = None
    #: One human-readable line.
    detail: str = ""

    def document(self) -> dict[str, Any]:
        """The event as JSON-ready data."""
        return {
            "type": "event",
            "event": self.kind.value,
            "at": self.at,
            "address": self.address,
            "reason": self.reason,
            "detail": self.detail,
        }


Observer = Callable[[Event], None]


class Role(str, enum.Enum):
    starting = "starting"
    leading = "leading"
    standing_by = "standing_by"
    stopped = "stopped"


@dataclass(frozen=True)
class Health:
    """A snapshot of the controller's health facts (see :meth:`ControllerStatus.health`)."""

    #: When the loop last went round (``time.monotonic()`` and ``time.time()``); None before its first tick.
    last_tick_monotonic: float | None = None
    last_tick_at: float | None = None
    role: Role = Role.starting
    #: Who leads (``pid N on HOST (command), since T``), when known.
    leader: str | None = None
    #: A good manifest set is in force (the last good one if the current files are broken).
    manifests_loaded: bool = False
    #: Why the manifests on disk are not in force (None when they are); the last good set stays in force.
    manifests_error: str | None = None
    #: The state answered the last time the controller used it.
    state_reachable: bool = True
    state_error: str | None = None
    declared: int = 0
    failing: int = 0

    def alive(self, stuck_after_s: float = 120.0) -> bool:
        """The loop went round within ``stuck_after_s`` (or has not started yet)."""
        if self.role is Role.stopped:
            return False
        return self.last_tick_monotonic is None or time.monotonic() - self.last_tick_monotonic <= stuck_after_s

    def ready(self) -> tuple[bool, str]:
        """Ready: leading or standing by, with a manifest set in force and the state reachable;
        else why not. Broken manifests while the last good set is in force are ready, said in the reason."""
        if self.role not in (Role.leading, Role.standing_by):
            return False, f"controller is {self.role.value.replace('_', ' ')}"
        if not self.manifests_loaded:
            return False, f"no manifests loaded: {self.manifests_error or 'not yet'}"
        if not self.state_reachable:
            return False, f"state unreachable: {self.state_error}"
        role = "leading" if self.role is Role.leading else "standing by"
        if self.manifests_error:
            return True, f"{role}; manifests broken, the last good set in force: {self.manifests_error}"
        return True, role


class ControllerStatus:
    """The health facts of a running controller and its observers; thread-safe."""

    def __init__(self, observers: Sequence[Observer] = ()):
        self._lock = threading.Lock()
        self._health = Health()
        self._observers: list[Observer] = list(observers)

    def subscribe(self, observer: Observer) -> None:
        with self._lock:
            self._observers.append(observer)

    def health(self) -> Health:
        with self._lock:
            return self._health

    def update(self, **facts: Any) -> None:
        with self._lock:
            self._health = replace(self._health, **facts)

    def tick(self) -> None:
        self.update(last_tick_monotonic=time.monotonic(), last_tick_at=time.time())

    def emit(self, kind: EventKind, address: str | None = None, reason: str | None = None, detail: str = "") -> None:
        event = Event(kind, time.time(), address, reason, detail)
        with self._lock:
            observers = list(self._observers)
        for observer in observers:
            try:
                observer(event)
            except Exception:
                log.warning("event observer %r failed on %s", observer, kind.value, exc_info=True)
