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
from dataclasses import dataclass, field, replace
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
    #: Declared tasks that fail to run (address → StopReason): restarted, or held back by backoff.
    failing: dict[str, str] = field(default_factory=dict)
    #: Stopped tasks not started this round (backoff, idle policy): address → when a start is due
    #: (seconds since the epoch; None: not by itself, ``--idle-restart never``).
    deferred: dict[str, float | None] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Everything done and no declared task failing to run."""
        return self.error is None and self.report is not None and self.report.ok and not self.failing

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

        r = self.registry = CollectorRegistry()
        self.declared = Gauge("snapctl_tasks_declared", "Tasks declared in the manifests in force", registry=r)
        self.converged = Gauge(
            "snapctl_tasks_converged", "Declared tasks running (or waiting for streams) as last read", registry=r
        )
        self.failed = Gauge("snapctl_tasks_failed", "Tasks whose last action failed (last hold that acted)", registry=r)
        self.failing = Gauge(
            "snapctl_tasks_failing",
            "Declared tasks that fail to run (Status 4, or stopped again right after a start), by StopReason",
            ["reason"],
            registry=r,
        )
        self.failing_reasons: set[str] = set()
        self.healed = Counter("snapctl_tasks_healed", "Tasks found not running and started again", registry=r)
        self.requests = Counter(
            "snapctl_api_requests", "API requests by action and outcome", ["action", "outcome"], registry=r
        )
        self.throttled = Counter("snapctl_api_throttled", "API answers FlowLimitExceeded", registry=r)
        self.observed = Gauge(
            "snapctl_tasks_observed", "Declared tasks by the status their last read showed", ["status"], registry=r
        )
        self.task_failures = Counter(
            "snapctl_task_failures", "Tasks found ended or failed, by the API's StopReason", ["reason"], registry=r
        )
        self.reads_total = Counter("snapctl_task_reads", "GetSnapshotTask reads", registry=r)
        self.sweep = Gauge(
            "snapctl_read_period_seconds",
            "How often each declared task is read: max(declared / read budget, --interval)",
            registry=r,
        )
        self.read_lag = Gauge(
            "snapctl_read_lag_seconds", "How far the oldest due read is behind its schedule", registry=r
        )
        self.holds = Counter("snapctl_lock_holds", "Holds of the state's lock, by result", ["result"], registry=r)
        self.hold_seconds = Gauge("snapctl_lock_hold_seconds", "How long the last hold of the lock took", registry=r)
        self.lock_wait_seconds = Gauge(
            "snapctl_lock_wait_seconds", "How long the last hold waited for the lock", registry=r
        )
        self.manifests_valid = Gauge(
            "snapctl_manifests_valid", "1 when the manifests on disk are the set in force, 0 when broken", registry=r
        )
        self.leader = Gauge("snapctl_controller_leader", "1 while this controller leads, 0 standing by", registry=r)
        self.last_tick = Gauge(
            "snapctl_loop_tick_timestamp_seconds", "When the controller's loop last went round", registry=r
        )
        self._seen_requests: dict[tuple[str, str], int] = {}
        self._seen_throttled = 0
        self.server = self.thread = None
        if port is not None:
            self.server, self.thread = start_http_server(port, addr=host, registry=r)

    def observe_client(self, client: Any) -> None:
        """Count the requests a client made since the last look."""
        if client is None:
            return
        for key, count in client.stats.requests.items():
            seen = self._seen_requests.get(key, 0)
            if count > seen:
                self.requests.labels(*key).inc(count - seen)
            self._seen_requests[key] = count
        if client.stats.throttled > self._seen_throttled:
            self.throttled.inc(client.stats.throttled - self._seen_throttled)
        self._seen_throttled = client.stats.throttled

    def forget_client(self) -> None:
        self._seen_requests, self._seen_throttled = {}, 0

    def observe_hold(self, hold: Hold, client: Any) -> None:
        self.holds.labels("ok" if hold.error is None else "failed").inc()
        self.lock_wait_seconds.set(hold.waited_s)
        if hold.error is None:
            self.hold_seconds.set(hold.held_s)
        if hold.report is not None:
            self.healed.inc(len(hold.report.healed))
            self.failed.set(len(hold.report.failures))
        self.observe_client(client)

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
    idle_restart: Any = None,
) -> Round:
    """One round: load, read every declared task (``refresh``), plan against what
    runs and apply; StartSnapshot only the tasks the read could not see. Without
    ``refresh``, StartSnapshot every unchanged task (the blind re-assert).
    ``adopt``: as for apply (see :mod:`reconciler.apply`)."""
    started, t0 = time.time(), time.monotonic()
    client = reader = None
    observations = None
    interrupted: str | None = None
    failing: dict[str, str] = {}
    deferred: dict[str, float | None] = {}
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
                failing, deferred, facts = judge_round(observations, store.state, manifests, idle_restart)
                store.record_observations(observations.values(), facts)
            # A stopped task whose restart is not due yet is left as it is (planned against the state).
            acting = {a: o for a, o in observations.items() if a not in deferred} if observations is not None else None
            client = settings.client()
            plan = engine.plan(manifests, store.state, observations=acting, target=target)
            reassert = engine.unchanged_addresses(plan, manifests, store.state)
            if acting is not None:
                # Only what could not be seen needs StartSnapshot to confirm it.
                reassert = [a for a in reassert if a in acting and acting[a].confirmable]
            report = engine.run_apply(
                plan,
                manifests,
                store,
                client,
                parallelism=settings.parallelism,
                reassert=reassert,
                on_result=_judged(failing, on_result),
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
        failing=failing,
        deferred=deferred,
    )


def _judged(
    failing: dict[str, str], on_result: Callable[[ActionResult], None] | None
) -> Callable[[ActionResult], None]:
    """``on_result``, after marking the results of failing tasks: restarted, not healed."""

    def judged(result: ActionResult) -> None:
        if result.address in failing:
            result.healed, result.failing = False, failing[result.address]
        if on_result is not None:
            on_result(result)

    return judged


def judge_round(
    observations: dict[str, api.Observation], state: Any, manifests: Any, idle_restart: Any = None
) -> tuple[dict[str, str], dict[str, float | None], dict[str, dict[str, Any]]]:
    """Judge a round's observations (see ``reconciler.restarts``): the failing tasks (address →
    StopReason), the stopped ones whose restart is not due (address → when it is), and the facts
    to record."""
    from .restarts import IdleRestart, judge

    now = time.time()
    policy = IdleRestart(idle_restart or IdleRestart.backoff)
    failing: dict[str, str] = {}
    deferred: dict[str, float | None] = {}
    facts: dict[str, dict[str, Any]] = {}
    for address, seen in observations.items():
        task = manifests.tasks.get(address)
        if task is None:
            continue
        verdict = judge(
            seen,
            state.observed.get(address),
            max_idle_s=task.request.max_idle_time,
            idle_restart=policy,
            now=now,
        )
        facts[address] = verdict.facts
        if verdict.failing:
            failing[address] = verdict.reason
        if seen.stopped and not verdict.restart:
            deferred[address] = verdict.retry_at
    return failing, deferred, facts


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


# The controller as a service: continuous, risk-ordered observation ----------------------------

#: A task just started (by snapctl or a heal) is read again this soon: a start that fails is seen quickly.
READ_AGAIN_AFTER_START_S = 15.0
#: Findings are acted on this often (the heals of this long are batched into one hold of the lock).
ACT_EVERY_S = 0.25
#: At most this many actions per hold of the state's lock; the rest in the next hold.
ACTIONS_PER_HOLD = 100
#: After a hold that left work for the next one, the lock is left free this long (others' turn).
LOCK_PAUSE_S = 0.3
#: How long one attempt to take the state's lock waits (a pipeline holds it meanwhile).
LOCK_WAIT_S = 2.0
#: Observations that need no action are recorded in the state at least this often.
RECORD_EVERY_S = 5.0
#: How often the manifests' files are checked for changes, and the state re-read without the lock.
MANIFEST_CHECK_S = 1.0
STATE_REREAD_S = 10.0
#: How often a leader checks it still leads, and a standby tries to lead.
LEADER_CHECK_S = 2.0
#: After an error that concerns every call (credentials, an unreachable endpoint): wait, then a new client.
API_PAUSE_S = 5.0


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


@dataclass
class Hold:
    """One hold of the state's lock by the controller: what it recorded and did."""

    started_at: float
    waited_s: float
    held_s: float
    recorded: int
    plan: Plan | None
    report: ApplyReport | None
    #: Tasks found failing in this hold (address → reason), and those not restarted yet (backoff).
    failing: dict[str, str]
    deferred: int
    error: SnapctlError | None = None
    reads: int = 0
    observed: dict[str, int] | None = None
    #: Of the tasks acted on, the most reads the controller made between a task's read and the act
    #: (a finding is acted on at once: a handful, never a sweep).
    acted_after_reads: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None and (self.report is None or self.report.ok)


def _manifest_signature(paths: Sequence[Path]) -> tuple:
    """What changes when a manifest file is added, removed or written."""
    seen: list[tuple] = []
    for path in paths:
        candidates = [path]
        if path.is_dir():
            candidates = sorted(p for p in path.rglob("*") if p.is_file())
        for candidate in candidates:
            try:
                info = candidate.stat()
            except OSError:
                seen.append((str(candidate), None))
                continue
            seen.append((str(candidate), info.st_mtime_ns, info.st_size, info.st_ino))
    return tuple(seen)


class Controller:
    """``reconcile --watch``: reads flow steadily at the read budget, soonest due first;
    findings are acted on within a fraction of a second, under short holds of the
    state's lock; one replica leads (see ``state.leader``).

    Detection time: a task is read every ``max(N / read_qps, interval_s)`` seconds
    (N declared tasks); one that ends is found within that (half of it on average)
    and started within ``ACT_EVERY_S`` plus one hold of the lock after."""

    def __init__(
        self,
        paths: Sequence[Path],
        state_path: Path | str,
        settings: engine.Settings,
        *,
        stop: threading.Event,
        workspace: str = DEFAULT_WORKSPACE,
        interval_s: float = 10.0,
        lock_wait_s: float = LOCK_WAIT_S,
        idle_restart: Any = None,
        status: ControllerStatus | None = None,
        metrics: Metrics | None = None,
        on_result: Callable[[ActionResult], None] | None = None,
        on_hold: Callable[[Hold], None] | None = None,
        on_line: Callable[[str], None] | None = None,
        adopt: bool = False,
    ):
        from .restarts import IdleRestart

        self.paths = list(paths)
        #: Record tasks found running though the state held none (``--adopt``; see ``reconciler.apply``).
        self.adopt = adopt
        self.state_path = state_path
        self.settings = settings
        self.stop = stop
        self.workspace = workspace
        self.interval_s = interval_s
        self.lock_wait_s = lock_wait_s
        self.idle_restart = IdleRestart(idle_restart or IdleRestart.backoff)
        self.status = status or ControllerStatus()
        self.metrics = metrics
        self.on_result = on_result
        self.on_hold = on_hold
        self.on_line = on_line or (lambda line: log.info("%s", line))
        self.schedule = Schedule(interval_s)
        self.manifests: Any = None
        self._signature: tuple | None = None
        self._manifests_changed = False
        self._broken: str | None = None
        self.cache: Any = None  # the state as last seen (without the lock between holds)
        self._cache_read_at = 0.0
        self._applied: dict[str, str] = {}  # address → applied_at seen: starts by others are read again soon
        #: Findings not acted on yet: address → (observation, time.time() its read began).
        self.findings: dict[str, tuple[api.Observation, float]] = {}
        self._to_record: dict[str, api.Observation] = {}
        self._to_record_facts: dict[str, dict[str, Any]] = {}
        self._to_record_since: float | None = None
        self.latest: dict[str, api.Observation] = {}
        self.failing: dict[str, str] = {}
        self._found_at: dict[str, int] = {}
        self._memo: dict[tuple, str] = {}
        self.reads = 0
        self._reads_reported = 0
        self._next_hold = 0.0
        self.holds = 0
        self.leading = False
        self._announced = False
        self.client: Any = None
        self._store = store_for(state_path, workspace=workspace, command="snapctl reconcile --watch")
        from .state.leader import leadership_for

        self.leadership = leadership_for(self._store)

    # The loop ------------------------------------------------------------------------------------

    def run(self) -> None:
        import asyncio

        try:
            asyncio.run(self._run())
        finally:
            self.leadership.release()
            self.status.update(role=Role.stopped)

    async def _run(self) -> None:
        import asyncio

        reader = asyncio.create_task(self._read_loop())
        next_manifest_check = next_leader_check = 0.0
        try:
            while not self.stop.is_set():
                self.status.tick()
                now = time.monotonic()
                if now >= next_manifest_check:
                    next_manifest_check = now + MANIFEST_CHECK_S
                    await asyncio.to_thread(self._reload_manifests)
                if now >= next_leader_check:
                    next_leader_check = now + LEADER_CHECK_S
                    await self._check_leadership()
                if self.leading and self.manifests is not None:
                    if now - self._cache_read_at >= STATE_REREAD_S:
                        await asyncio.to_thread(self._reread_state)
                    if self.client is not None and self.client.stopped_by is not None:
                        await self._new_client_after(self.client.stopped_by)
                    elif now >= self._next_hold and self._needs_hold():
                        try:
                            hold = await self._hold()
                        except Exception as exc:  # an error nobody foresaw must not end the controller
                            log.error("controller hold failed unexpectedly", exc_info=True)
                            self.on_line(f"Error: unexpected {type(exc).__name__}: {exc}; the controller goes on")
                            self._next_hold = time.monotonic() + LOCK_PAUSE_S
                            hold = Hold(
                                time.time(), 0.0, 0.0, 0, None, None, {}, 0,
                                error=SnapctlError(f"unexpected {type(exc).__name__}: {exc}"),
                            )  # fmt: skip
                        self._report(hold)
                self._update_metrics()
                await asyncio.sleep(ACT_EVERY_S)
        finally:
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader
            if self.leading and (self._to_record or self.findings):
                # What was read and not recorded yet goes into the state before the controller stops.
                for address, (seen, _) in self.findings.items():
                    self._to_record.setdefault(address, seen)
                self.findings.clear()
                with contextlib.suppress(SnapctlError):
                    await asyncio.to_thread(self._record_only)
            if self.client is not None:
                await self.client.aclose()

    async def _new_client_after(self, error: SnapctlError) -> None:
        import asyncio

        self.on_line(f"API error that concerns every call: {error}; trying again in {API_PAUSE_S:g}s")
        if self.metrics is not None:
            self.metrics.observe_client(self.client)
            self.metrics.forget_client()
        await self.client.aclose()
        self.client = None
        await asyncio.sleep(API_PAUSE_S)
        self.client = self.settings.client()

    # Leadership ----------------------------------------------------------------------------------

    async def _check_leadership(self) -> None:
        import asyncio

        was = self.leading
        try:
            if was:
                self.leading = await asyncio.to_thread(self.leadership.still_leading)
            if not self.leading:
                self.leading = await asyncio.to_thread(self.leadership.try_lead)
            holder = None if self.leading else await asyncio.to_thread(self.leadership.leader)
            self.status.update(state_reachable=True, state_error=None)
        except SnapctlError as exc:
            self.leading = False
            holder = None
            self.status.update(state_reachable=False, state_error=str(exc))
        if not self.leading and not self.leadership.standby and holder is not None:
            raise SnapctlError(
                f"state {self._store.location} already has a controller: {holder.describe()}. "
                "A file state takes one controller; use a PostgreSQL state for standbys"
            )
        if self.leading:
            from .state import LockHolder

            self.status.update(role=Role.leading, leader=LockHolder.me(_leader_command()).describe())
        else:
            self.status.update(role=Role.standing_by, leader=holder.describe() if holder else None)
        if not self.leading and not self._announced:
            self._announced = True
            self.on_line("Standing by: " + (f"{holder.describe()} leads." if holder else "not leading."))
        if self.leading != was:
            self._announced = True
            role = "leading" if self.leading else "standing_by"
            self.status.emit(EventKind.leadership_changed, reason=role, detail=f"this controller is now {role}")
            self.on_line(
                "Leading: this controller reads and acts."
                if self.leading
                else "Standing by: " + (f"{holder.describe()} leads." if holder else "not leading.")
            )
            if self.leading:
                self._start_leading()
            else:
                self.findings.clear()
                self._to_record.clear()
                self._to_record_facts.clear()
        if self.metrics is not None:
            self.metrics.leader.set(1 if self.leading else 0)

    def _start_leading(self) -> None:
        """A new leader knows nothing: every declared task is due now."""
        self.schedule = Schedule(self.interval_s)
        self._cache_read_at = 0.0
        if self.manifests is not None:
            now = time.monotonic()
            for address in self.manifests.tasks:
                self.schedule.add(address, now)
        if self.client is None:
            self.client = self.settings.client()

    # Manifests -------------------------------------------------------------------------------------

    def _reload_manifests(self) -> None:
        """Load the manifests when their files changed; a set that fails keeps the last good one."""
        from .manifest import ManifestError

        signature = _manifest_signature(self.paths)
        if signature == self._signature:
            return
        self._signature = signature
        try:
            manifests = engine.load_manifests(self.paths)
        except (ManifestError, SnapctlError) as exc:
            line = " ".join(str(exc).split("\n")[0].split()) or "invalid manifests"
            self.status.update(manifests_error=line)
            if self.metrics is not None:
                self.metrics.manifests_valid.set(0)
            if self._broken != line:
                self._broken = line
                kept = "the last good manifests stay in force" if self.manifests is not None else "nothing loaded yet"
                self.on_line(f"Error: manifests broken ({kept}): {line}")
                for diagnostic in getattr(exc, "diagnostics", [])[:20]:
                    self.on_line(f"  {diagnostic}")
                self.status.emit(EventKind.manifests_broken, reason=line, detail=f"manifests broken: {line}")
            return
        was_broken = self._broken is not None
        self._broken = None
        old = set(self.manifests.tasks) if self.manifests is not None else set()
        self.manifests = manifests
        self._manifests_changed = True
        self.status.update(manifests_loaded=True, manifests_error=None, declared=len(manifests.tasks))
        if self.metrics is not None:
            self.metrics.manifests_valid.set(1)
            self.metrics.declared.set(len(manifests.tasks))
        now = time.monotonic()
        for address in manifests.tasks:
            if address not in old:
                self.schedule.add(address, now)
        for address in old - set(manifests.tasks):
            self.schedule.remove(address)
            self.findings.pop(address, None)
            self.latest.pop(address, None)
            self.failing.pop(address, None)
        if was_broken:
            self.on_line(f"Manifests fixed: {len(manifests.tasks)} task(s) declared.")
            self.status.emit(EventKind.manifests_fixed, detail="manifests load again")

    # Reading ---------------------------------------------------------------------------------------

    def _reread_state(self) -> None:
        try:
            state = self._store.read()
        except SnapctlError as exc:
            self.status.update(state_reachable=False, state_error=str(exc))
            return
        self.status.update(state_reachable=True, state_error=None)
        self._take_state(state)

    def _take_state(self, state: Any) -> None:
        """Our copy of the state; tasks started by others since the last look are read again soon."""
        state._memo = self._memo
        self.cache = state
        self._cache_read_at = time.monotonic()
        now = time.monotonic()
        for address, entry in state.tasks.items():
            applied = entry.get("applied_at", "")
            if self._applied.get(address, applied) != applied:
                self.schedule.urgent(address, now + READ_AGAIN_AFTER_START_S)
            self._applied[address] = applied

    async def _read_loop(self) -> None:
        import asyncio

        from .errors import ApiError, AuthError

        slots = max(2, min(self.settings.parallelism, int(self.settings.read_qps) + 1))
        semaphore = asyncio.Semaphore(slots)

        async def read_one(address: str) -> None:
            app, room, task = address.split("/")
            began = time.time()
            client = self.client
            try:
                state = self.cache
                entry = state.tasks.get(address) if state is not None else None
                stored = entry.get("request") if entry is not None else None
                fingerprint = (lambda raw: state.fingerprint(raw, like=stored)) if state is not None else None
                try:
                    seen = await client.get_task(app, room, task, fingerprint=fingerprint)
                except ApiError as exc:
                    if isinstance(exc, AuthError) or exc.stops_run:
                        self.schedule.read(address, time.monotonic() - self.interval_s + API_PAUSE_S)
                        return
                    seen = api.Observation(address, api.Observed.unknown, detail=f"read failed: {exc}", read_error=True)
            finally:
                semaphore.release()
            self.reads += 1
            if self.metrics is not None:
                self.metrics.reads_total.inc()
            self.schedule.read(address, time.monotonic())
            if self.manifests is not None and address in self.manifests.tasks and self.leading:
                self.findings[address] = (seen, began)
                self._found_at[address] = self.reads
                self.latest[address] = seen

        while True:
            if not self.leading or self.manifests is None or self.client is None or self.cache is None:
                await asyncio.sleep(0.1)
                continue
            await semaphore.acquire()
            address = self.schedule.pop_due(time.monotonic())
            if address is None:
                semaphore.release()
                next_due = self.schedule.next_due()
                await asyncio.sleep(min(0.1, max(0.005, (next_due or 0) - time.monotonic())))
                continue
            asyncio.get_running_loop().create_task(read_one(address))

    # Acting ----------------------------------------------------------------------------------------

    def _judge(self, seen: api.Observation, state: Any, now: float):
        from .restarts import judge

        task = self.manifests.tasks.get(seen.address)
        max_idle = task.request.max_idle_time if task is not None else api.DEFAULT_MAX_IDLE_TIME
        last = state.observed.get(seen.address) if state is not None else None
        pending = self._to_record_facts.get(seen.address)
        if pending is not None:  # judged since, not recorded yet: what we know is newer
            last = {**(last or {}), **pending}
        return judge(
            seen,
            last,
            max_idle_s=max_idle,
            idle_restart=self.idle_restart,
            now=now,
        )

    def _needs_hold(self) -> bool:
        """Whether the findings (judged against our copy of the state) call for the lock now.
        Findings that call for nothing are kept to be recorded (at least every ``RECORD_EVERY_S``)."""
        if self._manifests_changed:
            return True
        now = time.time()
        quiet: dict[str, tuple[api.Observation, Any]] = {}
        act = False
        for address, (seen, _) in list(self.findings.items()):
            verdict = self._judge(seen, self.cache, now)
            if (seen.stopped and verdict.restart) or seen.confirmable:
                act = True
            else:
                quiet[address] = (seen, verdict)
        if not act and quiet:
            observed = {address: seen for address, (seen, _) in quiet.items()}
            act = bool(_plan_observed(self.manifests, self.cache, observed).actions)
        if not act:
            for address, (seen, verdict) in quiet.items():
                if self._changed(seen) or verdict.facts != self._facts_of(address):
                    self._to_record[address] = seen
                    self._to_record_facts[address] = verdict.facts
                    self._to_record_since = self._to_record_since or time.monotonic()
                self._verdict_events(seen, verdict)
                self.findings.pop(address, None)
        due = bool(self._to_record) and time.monotonic() - (self._to_record_since or 0) >= RECORD_EVERY_S
        return act or due

    def _facts_of(self, address: str) -> dict[str, Any]:
        last = self.cache.observed.get(address) if self.cache is not None else None
        return {key: (last or {}).get(key) for key in ("failures", "idle_outs")}

    def _changed(self, seen: api.Observation) -> bool:
        return _new_finding(seen, self.cache.observed.get(seen.address) if self.cache is not None else None)

    def _verdict_events(self, seen: api.Observation, verdict: Any) -> None:
        address = seen.address
        if verdict.failing:
            if address not in self.failing:
                self.status.emit(
                    EventKind.failing,
                    address=address,
                    reason=verdict.reason,
                    detail=f"{address} fails to run ({verdict.reason})",
                )
                self.on_line(f"{address}: failing ({verdict.reason})")
            self.failing[address] = verdict.reason
        elif address in self.failing and (verdict.recovered or seen.observed is api.Observed.running):
            del self.failing[address]
            self.status.emit(EventKind.recovered, address=address, detail=f"{address} runs again")
            self.on_line(f"{address}: recovered (runs again)")
        self.status.update(failing=len(self.failing))

    def _open_store(self):
        from .state import store_for as open_

        store = open_(
            self.state_path,
            workspace=self.workspace,
            lock_timeout_s=self.lock_wait_s,
            command="snapctl reconcile --watch",
        )
        store.open()
        return store

    def _record_only(self) -> None:
        store = self._open_store()
        try:
            store.record_observations(self._to_record.values(), self._to_record_facts)
        finally:
            store.close()
        self._take_state(store.state)
        self._to_record.clear()
        self._to_record_facts.clear()
        self._to_record_since = None

    async def _hold(self) -> Hold:
        """Take the lock, record the findings, plan against the state as it is now, act, release."""
        import asyncio

        from .apply import Applier
        from .errors import LockError

        findings, self.findings = self.findings, {}
        started, t0 = time.time(), time.monotonic()
        reads, self._reads_reported = self.reads - self._reads_reported, self.reads
        try:
            store = await asyncio.to_thread(self._open_store)
        except (LockError, SnapctlError) as exc:
            for address, found in findings.items():
                self.findings.setdefault(address, found)
            self._next_hold = time.monotonic() + ACT_EVERY_S
            if not isinstance(exc, LockError):
                self.status.update(state_reachable=False, state_error=str(exc))
            return Hold(started, time.monotonic() - t0, 0.0, 0, None, None, {}, 0, error=exc, reads=reads)
        self.status.update(state_reachable=True, state_error=None)
        waited = time.monotonic() - t0
        try:
            state = store.state
            # Secrets' fingerprints (scrypt) computed once for the controller's life, not at each hold:
            # the memo's keys hold the state's fingerprint key and parameters.
            state._memo = self._memo
            store.bind(*self.settings.target())
            now = time.time()
            observations: dict[str, api.Observation] = {}
            facts: dict[str, dict[str, Any]] = {}
            failing: dict[str, str] = {}
            deferred = 0
            held_back: list[api.Observation] = []
            # Reads fingerprint secrets with our copy's key: another state (a first write, a migration) reads again.
            same_key = self.cache is not None and self.cache.fingerprint_key == state.fingerprint_key
            for address, (seen, began) in findings.items():
                entry = state.tasks.get(address)
                if not same_key or (entry is not None and entry.get("applied_at", "") >= _iso_floor(began)):
                    # Started (by a pipeline, or by us) after this read began: read it again first.
                    self.schedule.urgent(address, time.monotonic())
                    continue
                self._to_record.pop(address, None)
                if seen.stopped and self.metrics is not None and _new_finding(seen, state.observed.get(address)):
                    # The documented reasons only: a label per name an answer makes up would grow without end.
                    reason = seen.stop_reason if seen.stop_reason in _DOCUMENTED_REASONS else "other"
                    self.metrics.task_failures.labels(reason or "none").inc()
                verdict = self._judge(seen, state, now)
                self._to_record_facts.pop(address, None)
                facts[address] = verdict.facts
                self._verdict_events(seen, verdict)
                if verdict.failing:
                    failing[address] = verdict.reason
                if seen.stopped and not verdict.restart:
                    deferred += 1
                    if verdict.retry_at is not None:
                        self.schedule.urgent(address, time.monotonic() + max(0.0, verdict.retry_at - now))
                    held_back.append(seen)
                    continue
                observations[address] = seen
            recorded = await asyncio.to_thread(
                store.record_observations,
                [*self._to_record.values(), *held_back, *observations.values()],
                {**self._to_record_facts, **facts},
            )
            self._to_record.clear()
            self._to_record_facts.clear()
            self._to_record_since = None
            plan = engine.plan(self.manifests, state, observations=observations, target=self.settings.target())
            reassert = [
                a
                for a in engine.unchanged_addresses(plan, self.manifests, state)
                if a in observations and observations[a].confirmable
            ]
            left = max(0, len(plan.actions) + len(reassert) - ACTIONS_PER_HOLD)
            if left:
                kept = plan.actions[:ACTIONS_PER_HOLD]
                for action in plan.actions[ACTIONS_PER_HOLD:]:
                    if action.address in observations:
                        self.findings[action.address] = (observations[action.address], findings[action.address][1])
                reassert_kept = reassert[: max(0, ACTIONS_PER_HOLD - len(kept))]
                for address in reassert[len(reassert_kept) :]:
                    self.findings[address] = findings[address]
                plan = plan.model_copy(update={"actions": kept})
                reassert = reassert_kept
            self._manifests_changed = bool(left)
            report = None
            if plan.actions or reassert:
                for address in plan.legacy_fingerprints:
                    task = self.manifests.tasks.get(address)
                    if task is not None:
                        await asyncio.to_thread(store.upgrade_fingerprints, address, task.request.wire())
                applier = Applier(
                    self.client,
                    store,
                    engine.requests_of(self.manifests),
                    parallelism=self.settings.parallelism,
                    on_result=_judged(failing, self.on_result),
                    adopt=self.adopt,
                )
                report = await applier.run(plan, reassert)
                soon = time.monotonic() + READ_AGAIN_AFTER_START_S
                for result in report.results:
                    if any(call.action == "StartSnapshot" for call in result.calls):
                        self.schedule.urgent(result.address, soon)
                    if result.ok and result.address not in failing:
                        self._result_events(result)
        except SnapctlError as exc:
            await asyncio.to_thread(store.close)
            self._take_state(store.state)
            self._next_hold = time.monotonic() + LOCK_PAUSE_S
            return Hold(started, waited, time.monotonic() - t0 - waited, 0, None, None, {}, 0, error=exc, reads=reads)
        except BaseException:
            await asyncio.to_thread(store.close)
            raise
        await asyncio.to_thread(store.close)
        self._take_state(store.state)
        for result in report.results if report else []:
            self._applied[result.address] = (store.state.tasks.get(result.address) or {}).get("applied_at", "")
        held = time.monotonic() - t0 - waited
        self._next_hold = time.monotonic() + (LOCK_PAUSE_S if left else 0.0)
        self.holds += 1
        counts: dict[str, int] = {}
        for seen in self.latest.values():
            counts[seen.observed.value] = counts.get(seen.observed.value, 0) + 1
        acted = {r.address for r in report.results} if report else set()
        after = max((self.reads - self._found_at.get(a, self.reads) for a in acted), default=0)
        return Hold(
            started,
            waited,
            held,
            recorded,
            plan,
            report,
            failing,
            deferred,
            reads=reads,
            observed=counts,
            acted_after_reads=after,
        )

    def _result_events(self, result: ActionResult) -> None:
        if result.healed:
            self.status.emit(EventKind.healed, address=result.address, detail=f"{result.address} started again")
        elif result.kind in ("update", "replace"):
            self.status.emit(
                EventKind.drift_corrected, address=result.address, detail=f"{result.address} {result.kind}d"
            )

    def _record_failing_metrics(self) -> None:
        if self.metrics is None:
            return
        reasons: dict[str, int] = {}
        for reason in self.failing.values():
            reason = reason if reason in _DOCUMENTED_REASONS else "other"  # a bounded set of labels
            reasons[reason] = reasons.get(reason, 0) + 1
        for reason in set(reasons) | self.metrics.failing_reasons:
            self.metrics.failing.labels(reason).set(reasons.get(reason, 0))
        self.metrics.failing_reasons |= set(reasons)

    def _report(self, hold: Hold) -> None:
        if self.metrics is not None:
            self.metrics.observe_hold(hold, self.client)
        if self.on_hold is not None:
            self.on_hold(hold)

    def _update_metrics(self) -> None:
        self._record_failing_metrics()
        if self.metrics is None:
            return
        m = self.metrics
        m.last_tick.set(time.time())
        declared = len(self.manifests.tasks) if self.manifests is not None else 0
        budget = max(self.settings.read_qps, 0.001)
        m.sweep.set(max(declared / budget, self.interval_s))
        oldest = self.schedule.oldest_due()
        m.read_lag.set(max(0.0, time.monotonic() - oldest) if oldest is not None else 0.0)
        counts: dict[str, int] = {}
        for seen in self.latest.values():
            counts[seen.observed.value] = counts.get(seen.observed.value, 0) + 1
        for status in api.Observed:
            m.observed.labels(status.value).set(counts.get(status.value, 0))
        not_running = sum(1 for seen in self.latest.values() if not seen.healthy)
        m.converged.set(max(0, declared - not_running))


def _leader_command() -> str:
    from .state.leader import Leadership

    return Leadership.command


def _iso_floor(at: float) -> str:
    """``at`` as the state writes times (seconds), rounded down: a record of the same second counts as later."""
    from .restarts import iso

    return iso(int(at))


def _new_finding(seen: api.Observation, last: dict[str, Any] | None) -> bool:
    """Whether ``seen`` differs from the task's last recorded observation."""
    summary = seen.summary()
    return last is None or any(last.get(k) != summary[k] for k in ("status", "stop_reason", "started", "ended"))


def watch(
    paths: Sequence[Path],
    state_path: Path | str,
    settings: engine.Settings,
    *,
    stop: threading.Event,
    interval_s: float = 10.0,
    lock_wait_s: float = LOCK_WAIT_S,
    idle_restart: Any = None,
    metrics: Metrics | None = None,
    on_hold: Callable[[Hold], None] | None = None,
    on_result: Callable[[ActionResult], None] | None = None,
    on_line: Callable[[str], None] | None = None,
    workspace: str = DEFAULT_WORKSPACE,
    status: ControllerStatus | None = None,
    adopt: bool = False,
) -> Controller:
    """Run a :class:`Controller` until ``stop`` is set; ``status`` receives its health facts
    and events. Returns the controller (its counters: ``reads``, ``holds``)."""
    ctl = Controller(
        paths,
        state_path,
        settings,
        stop=stop,
        workspace=workspace,
        interval_s=interval_s,
        lock_wait_s=lock_wait_s,
        idle_restart=idle_restart,
        status=status,
        metrics=metrics,
        on_result=on_result,
        on_hold=on_hold,
        on_line=on_line,
        adopt=adopt,
    )
    ctl.run()
    return ctl


def _plan_observed(manifests: Any, state: Any, observed: dict[str, api.Observation]) -> Plan:
    """The plan for the ``observed`` tasks alone (drift, stopped), against ``state``: what
    they need, without looking at the thousands of others (the controller asks this often)."""
    from .plan import make_plan
    from .state import State

    desired = {a: manifests.tasks[a].request.wire() for a in observed if a in manifests.tasks}
    view = State(
        lineage=state.lineage,
        serial=state.serial,
        fingerprint_key=state.fingerprint_key,
        tasks={a: state.tasks[a] for a in desired if a in state.tasks},
        exists=state.exists,
        pending={a: state.pending[a] for a in desired if a in state.pending},
        endpoint=state.endpoint,
        region=state.region,
        fingerprint_params=state.fingerprint_params,
    )
    view._memo = state._memo
    return make_plan(desired, view, observations={a: observed[a] for a in desired})
