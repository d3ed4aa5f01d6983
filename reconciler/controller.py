"""Reconcile: observe every declared task (GetSnapshotTask), then start what
ended or failed, correct drift and apply pending changes, once or as a
long-running GitOps controller with Prometheus metrics. A round over tasks that
all run as declared sends reads only.

The controller's surface for an ops layer (HTTP probes, notifications, logs):

- :class:`Event`: what happened that someone may want to hear about (a task
  failing, recovered, healed, drift corrected, manifests broken or fixed,
  leadership changed). Observers (``Callable[[Event], None]``) are given to
  :func:`watch` (``observers=``) or added with :meth:`ControllerStatus.subscribe`;
  they are called on the controller's loop, one event at a time, and must not
  block (queue the work elsewhere); an observer that raises is logged and kept.
  Events hold no secret: addresses, StopReasons and error lines only.
- :class:`Health`: the facts a probe needs (:meth:`ControllerStatus.health`):
  when the loop last ticked, whether this replica leads or stands by (and who
  leads), whether manifests are loaded (and the error of a broken set), whether
  the state is reachable. :meth:`Health.alive` and :meth:`Health.ready` judge them.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from . import api, engine
from .apply import ActionResult, ApplyReport
from .errors import Interrupted, SnapctlError
from .plan import Plan
from .state import DEFAULT_WORKSPACE, store_for

_DOCUMENTED_REASONS = frozenset(reason.value for reason in api.StopReason)

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
    #: Why the manifests on disk are not in force (None when they are).
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
        """Ready: leading or standing by, with manifests and the state reachable; else why not."""
        if self.role not in (Role.leading, Role.standing_by):
            return False, f"controller is {self.role.value.replace('_', ' ')}"
        if not self.manifests_loaded:
            return False, f"no manifests loaded: {self.manifests_error or 'not yet'}"
        if not self.state_reachable:
            return False, f"state unreachable: {self.state_error}"
        return True, "leading" if self.role is Role.leading else "standing by"


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


@dataclass
class Round:
    """The outcome of one reconcile round."""

    plan: Plan | None
    report: ApplyReport | None
    #: Why the round failed: a SnapctlError, or an unexpected error wrapped in one.
    error: SnapctlError | None
    declared: int
    started_at: float
    duration_s: float
    api_requests: dict[tuple[str, str], int]
    throttled: int
    #: The round read the tasks first (not --no-refresh), and what it saw.
    refreshed: bool = False
    observations: dict[str, api.Observation] | None = None
    #: SIGINT/SIGTERM stopped the round during its reads (before it changed anything):
    #: how far the reads got.
    interrupted: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.report is not None and self.report.ok

    @property
    def reads(self) -> int:
        return len(self.observations or {})

    @property
    def observed_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for seen in (self.observations or {}).values():
            counts[seen.observed.value] = counts.get(seen.observed.value, 0) + 1
        return dict(sorted(counts.items()))

    @property
    def changes(self) -> dict[str, int]:
        """What the round changed: tasks by action kind, and confirmed unknowns."""
        counts: dict[str, int] = {}
        for result in self.report.results if self.report else []:
            if result.ok and (result.kind != "reassert" or result.healed):
                counts[result.kind] = counts.get(result.kind, 0) + 1
        return counts


class Metrics:
    """Prometheus metrics of the controller, served on ``port`` by prometheus_client (None: not
    served here; ``reconcile --watch`` serves ``registry`` with :mod:`reconciler.ops_http`)."""

    def __init__(self, port: int | None = None, host: str = "127.0.0.1"):
        from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

        self.registry = CollectorRegistry()
        self.declared = Gauge("snapctl_tasks_declared", "Tasks declared in the manifests", registry=self.registry)
        self.converged = Gauge(
            "snapctl_tasks_converged", "Declared tasks running as declared after the last round", registry=self.registry
        )
        self.failed = Gauge("snapctl_tasks_failed", "Tasks whose last action failed", registry=self.registry)
        self.healed = Counter(
            "snapctl_tasks_healed", "Tasks found not running and started again", registry=self.registry
        )
        self.requests = Counter(
            "snapctl_api_requests", "API requests by action and outcome", ["action", "outcome"], registry=self.registry
        )
        self.throttled = Counter("snapctl_api_throttled", "API answers FlowLimitExceeded", registry=self.registry)
        self.observed = Gauge(
            "snapctl_tasks_observed",
            "Declared tasks by the status GetSnapshotTask showed in the last round",
            ["status"],
            registry=self.registry,
        )
        self.task_failures = Counter(
            "snapctl_task_failures",
            "Tasks found ended or failed, by the API's StopReason",
            ["reason"],
            registry=self.registry,
        )
        self.reads = Gauge(
            "snapctl_last_round_reads", "GetSnapshotTask reads of the last round", registry=self.registry
        )
        self.round_changes = Gauge(
            "snapctl_last_round_changes",
            "Tasks the last round changed, by action (create includes restarts)",
            ["action"],
            registry=self.registry,
        )
        self.rounds = Counter("snapctl_rounds", "Reconcile rounds by result", ["result"], registry=self.registry)
        self.last_round = Gauge(
            "snapctl_last_round_timestamp_seconds", "When the last round started", registry=self.registry
        )
        self.last_duration = Gauge(
            "snapctl_last_round_duration_seconds", "How long the last round took", registry=self.registry
        )
        self.server = self.thread = None
        if port is not None:
            self.server, self.thread = start_http_server(port, addr=host, registry=self.registry)

    def observe(self, round_: Round) -> None:
        self.declared.set(round_.declared)
        failed = len(round_.report.failures) if round_.report else 0
        self.failed.set(failed)
        self.converged.set(round_.declared - failed if round_.error is None else 0)
        if round_.report:
            self.healed.inc(len(round_.report.healed))
        for (action, outcome), count in round_.api_requests.items():
            self.requests.labels(action, outcome).inc(count)
        self.throttled.inc(round_.throttled)
        if round_.refreshed:
            counts = round_.observed_counts
            for status in api.Observed:
                self.observed.labels(status.value).set(counts.get(status.value, 0))
            for seen in (round_.observations or {}).values():
                if seen.stopped:
                    # The documented reasons only: a label per name an answer makes up would grow without end.
                    reason = seen.stop_reason if seen.stop_reason in _DOCUMENTED_REASONS else "other"
                    self.task_failures.labels(reason or "none").inc()
            self.reads.set(round_.reads)
        changes = round_.changes
        for kind in ("create", "restart", "update", "replace", "delete", "reassert"):
            self.round_changes.labels(kind).set(changes.get(kind, 0))
        self.rounds.labels("ok" if round_.ok else "failed").inc()
        self.last_round.set(round_.started_at)
        self.last_duration.set(round_.duration_s)

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()


def reconcile_once(
    paths: Sequence[Path],
    state_path: Path | str,
    settings: engine.Settings,
    *,
    lock_timeout_s: float = 0.0,
    on_result: Callable[[ActionResult], None] | None = None,
    stop_event: threading.Event | None = None,
    refresh: bool = True,
    workspace: str = DEFAULT_WORKSPACE,
    adopt: bool = False,
) -> Round:
    """One round: load, read every declared task (``refresh``), plan against what
    runs and apply; StartSnapshot only the tasks the read could not see. Without
    ``refresh``, StartSnapshot every unchanged task (the blind re-assert).
    ``adopt``: as for apply (see :mod:`reconciler.apply`)."""
    started, t0 = time.time(), time.monotonic()
    client = reader = None
    observations = None
    interrupted: str | None = None
    try:
        manifests = engine.load_manifests(list(paths))
        target = settings.target()
        with store_for(
            state_path, workspace=workspace, lock_timeout_s=lock_timeout_s, command="snapctl reconcile"
        ) as store:
            store.bind(*target)
            if refresh:
                reader = settings.client()
                try:
                    observations = engine.refresh(
                        reader,
                        sorted(manifests.tasks),
                        store.state,
                        parallelism=settings.parallelism,
                        stop_event=stop_event,
                    )
                except Interrupted as exc:  # SIGINT/SIGTERM: stop reading at once, keep what was read
                    observations = exc.observations
                    store.record_observations(observations.values())
                    raise
                store.record_observations(observations.values())
            client = settings.client()
            plan = engine.plan(manifests, store.state, observations=observations, target=target)
            reassert = engine.unchanged_addresses(plan, manifests, store.state)
            if observations is not None:
                # Only what could not be seen needs StartSnapshot to confirm it.
                reassert = [a for a in reassert if observations[a].confirmable]
            report = engine.run_apply(
                plan,
                manifests,
                store,
                client,
                parallelism=settings.parallelism,
                reassert=reassert,
                on_result=on_result,
                stop_event=stop_event,
                adopt=adopt,
            )
        error, declared = None, len(manifests.tasks)
    except Interrupted as exc:
        plan, report, error, declared = None, None, None, len(manifests.tasks)
        interrupted = f"{len(exc.observations)} of {exc.total} task(s) read (recorded in the state)"
    except SnapctlError as exc:
        plan, report, error, declared = None, None, exc, 0
    except Exception as exc:  # a round must never end the controller: report it and go on
        log.error("reconcile round failed unexpectedly", exc_info=True)
        plan, report, declared = None, None, 0
        error = SnapctlError(f"unexpected {type(exc).__name__}: {exc}")
    requests: dict[tuple[str, str], int] = {}
    throttled = 0
    for used in (reader, client):
        if used is not None:
            for key, count in used.stats.requests.items():
                requests[key] = requests.get(key, 0) + count
            throttled += used.stats.throttled
    return Round(
        plan,
        report,
        error,
        declared,
        started,
        time.monotonic() - t0,
        requests,
        throttled,
        refreshed=refresh,
        observations=observations,
        interrupted=interrupted,
    )


@contextlib.contextmanager
def graceful_stop() -> Iterator[threading.Event]:
    """SIGTERM/SIGINT set the event (in-flight calls finish, the state is written);
    a second signal interrupts at once."""
    stop = threading.Event()
    previous = {}

    def handler(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        previous[sig] = signal.signal(sig, handler)
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def watch(
    paths: Sequence[Path],
    state_path: Path | str,
    settings: engine.Settings,
    *,
    interval_s: float,
    stop: threading.Event,
    lock_timeout_s: float = 0.0,
    metrics: Metrics | None = None,
    on_round: Callable[[Round], None] | None = None,
    on_result: Callable[[ActionResult], None] | None = None,
    max_rounds: int | None = None,
    refresh: bool = True,
    workspace: str = DEFAULT_WORKSPACE,
    status: ControllerStatus | None = None,
    adopt: bool = False,
) -> int:
    """Reconcile every ``interval_s`` until ``stop`` is set; a failed round never ends the loop.
    ``status`` receives the health facts and events. Returns the number of rounds run."""
    from .manifest import ManifestError

    status = status or ControllerStatus()
    status.update(role=Role.leading)
    rounds = 0
    broken: str | None = None
    while not stop.is_set():
        status.tick()
        round_ = reconcile_once(
            paths,
            state_path,
            settings,
            lock_timeout_s=lock_timeout_s,
            on_result=on_result,
            stop_event=stop,
            refresh=refresh,
            workspace=workspace,
            adopt=adopt,
        )
        rounds += 1
        if isinstance(round_.error, ManifestError):
            line = str(round_.error).splitlines()[0] if str(round_.error) else "invalid manifests"
            status.update(manifests_loaded=False, manifests_error=line)
            if broken != line:
                status.emit(EventKind.manifests_broken, reason=line, detail=f"manifests broken: {line}")
            broken = line
        elif round_.error is None:
            status.update(manifests_loaded=True, manifests_error=None, declared=round_.declared)
            if broken is not None:
                status.emit(EventKind.manifests_fixed, detail="manifests load again")
            broken = None
        for result in round_.report.healed if round_.report else []:
            was = f" (was {result.was})" if result.was else ""
            status.emit(EventKind.healed, address=result.address, detail=f"{result.address} started again{was}")
        if metrics is not None:
            metrics.observe(round_)
        if on_round is not None:
            on_round(round_)
        if max_rounds is not None and rounds >= max_rounds:
            break
        stop.wait(interval_s)
    status.update(role=Role.stopped)
    return rounds
