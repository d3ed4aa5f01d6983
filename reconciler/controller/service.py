"""The controller as a service (``reconcile --watch``): continuous, risk-ordered observation.
Reads flow steadily at the read budget, soonest due first (:mod:`.schedule`); findings are acted
on under short holds of the state's lock; one replica leads (see ``state.leader``)."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .. import api, engine
from ..apply import ActionResult
from ..errors import SnapctlError
from ..plan import Plan
from ..state import DEFAULT_WORKSPACE, store_for
from .metrics import Metrics
from .once import _judged
from .reports import Hold
from .schedule import Schedule
from .status import ControllerStatus, EventKind, Role

_DOCUMENTED_REASONS = frozenset(reason.value for reason in api.StopReason)

log = logging.getLogger("snapctl.controller")

#: A task just started (by snapctl or a heal) is read again this soon: a start that fails is seen quickly.
READ_AGAIN_AFTER_START_S = 15.0
#: Findings are acted on this often (the heals of this long are batched into one hold of the lock).
ACT_EVERY_S = 0.25
#: At most this many actions per hold of the state's lock; the rest in the next hold.
ACTIONS_PER_HOLD = 100
#: After a hold that left work for the next one, the lock is left free this long (others' turn).
LOCK_PAUSE_S = 0.3
#: After a hold that failed (a full disk, a database down), the next waits LOCK_PAUSE_S, doubled
#: at each further failure in a row up to this: a state that stays broken is not hammered, and
#: one that is mended is used again within this long.
FAILED_HOLD_PAUSE_MAX_S = 5.0
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
        from ..restarts import IdleRestart

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
        #: Why the reads not recorded yet could not be written as the controller stopped (else None).
        self.unrecorded_at_stop: SnapctlError | None = None
        self._failed_holds = 0  # in a row
        self.leading = False
        self._announced = False
        self.client: Any = None
        self._store = store_for(state_path, workspace=workspace, command="snapctl reconcile --watch")
        from ..state.leader import leadership_for

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
                        except BrokenPipeError:
                            raise  # stdout was closed: nothing more can be said (commands.output.output_closed)
                        except Exception as exc:  # an error nobody foresaw must not end the controller
                            log.error("controller hold failed unexpectedly", exc_info=True)
                            self.on_line(f"Error: unexpected {type(exc).__name__}: {exc}; the controller goes on")
                            self._next_hold = time.monotonic() + LOCK_PAUSE_S
                            hold = Hold(
                                time.time(), 0.0, 0.0, 0, None, None, {}, {},
                                error=SnapctlError(f"unexpected {type(exc).__name__}: {exc}"),
                            )  # fmt: skip
                        self._pause_after(hold)
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
                try:
                    await asyncio.to_thread(self._record_only)
                except SnapctlError as exc:  # reads only: every call is already in the state
                    self.unrecorded_at_stop = exc
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
        why = ""  # why leadership could not even be tried (said when standing by is announced)
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
            why = f" ({exc})"
            self.status.update(state_reachable=False, state_error=str(exc))
        if not self.leading and not self.leadership.standby and holder is not None:
            raise SnapctlError(
                f"state {self._store.location} already has a controller: {holder.describe()}. "
                "A file state takes one controller; use a PostgreSQL state for standbys"
            )
        if self.leading:
            from ..state import LockHolder

            self.status.update(role=Role.leading, leader=LockHolder.me(_leader_command()).describe())
        else:
            self.status.update(role=Role.standing_by, leader=holder.describe() if holder else None)
        if not self.leading and not self._announced:
            self._announced = True
            self.on_line("Standing by: " + (f"{holder.describe()} leads." if holder else f"not leading{why}."))
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
        from ..manifest import ManifestError

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

        from ..errors import ApiError, AuthError

        slots = max(2, min(self.settings.parallelism, int(self.settings.read_qps) + 1))
        semaphore = asyncio.Semaphore(slots)

        def later(address: str) -> None:
            """Read ``address`` again once a new client may answer. A read that ends without this
            or ``schedule.read`` leaves its task out of the schedule: never read, never healed."""
            self.schedule.read(address, time.monotonic() - self.interval_s + API_PAUSE_S)

        async def read_one(address: str) -> None:
            app, room, task = address.split("/")
            began = time.time()
            client = self.client
            try:
                if client is None:  # the client was closed after an error that concerns every call
                    later(address)
                    return
                state = self.cache
                entry = state.tasks.get(address) if state is not None else None
                stored = entry.get("request") if entry is not None else None
                fingerprint = (lambda raw: state.fingerprint(raw, like=stored)) if state is not None else None
                try:
                    seen = await client.get_task(app, room, task, fingerprint=fingerprint)
                except ApiError as exc:
                    if isinstance(exc, AuthError) or exc.stops_run:
                        later(address)
                        return
                    seen = engine.failed_read(address, exc)
                except Exception:  # a read nothing foresaw fails: nothing is concluded, the task stays watched
                    log.error("read of %s failed unexpectedly", address, exc_info=True)
                    later(address)
                    return
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
        from ..restarts import judge

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
        from ..state import store_for as open_

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

        from ..apply import Applier
        from ..errors import LockError

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
            return Hold(started, time.monotonic() - t0, 0.0, 0, None, None, {}, {}, error=exc, reads=reads)
        self.status.update(state_reachable=True, state_error=None)
        waited = time.monotonic() - t0
        try:
            # A pipeline writes its manifests, then applies them under this lock: a hold planned
            # with the copy loaded before that (checked only every MANIFEST_CHECK_S) would set its
            # changes back. A stat of the files, under the lock, before planning; a load if they changed.
            await asyncio.to_thread(self._reload_manifests)
            state = store.state
            # Secrets' fingerprints (scrypt) computed once for the controller's life, not at each hold:
            # the memo's keys hold the state's fingerprint key and parameters.
            state._memo = self._memo
            store.bind(*self.settings.target())
            now = time.time()
            observations: dict[str, api.Observation] = {}
            facts: dict[str, dict[str, Any]] = {}
            failing: dict[str, str] = {}
            deferred: dict[str, float | None] = {}
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
                    deferred[address] = verdict.retry_at
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
            if self._manifests_changed:
                # Manifests changed (or the last such plan left work): every declared task and
                # every task of the state (creates, deletes, changes).
                plan = engine.plan(self.manifests, state, observations=observations, target=self.settings.target())
            else:
                # Otherwise only what was read calls for an act: the plan of those tasks alone,
                # against the state as it is now. A plan of every task (a tenth of a second at
                # 10,000) held up the reads on this loop at each hold: 56 of the 60 reads/s.
                plan = _plan_observed(self.manifests, state, observations)
                plan.endpoint, plan.region = self.settings.target()
                others = sum(1 for a in self.manifests.tasks if a in state.tasks and a not in observations)
                plan.unchanged += others
            reassert = [
                a
                for a in engine.unchanged_addresses(plan, self.manifests, state, among=observations)
                if observations[a].confirmable
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
                    # SIGTERM: the calls in flight finish and are recorded, and no new one starts.
                    stop_event=self.stop,
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
            return Hold(started, waited, time.monotonic() - t0 - waited, 0, None, None, {}, {}, error=exc, reads=reads)
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

    def _pause_after(self, hold: Hold) -> None:
        """After a hold that failed for another reason than a lock held by someone else, the next
        waits LOCK_PAUSE_S, doubled at each failure in a row up to FAILED_HOLD_PAUSE_MAX_S
        (``hold.retry_in_s``); a hold that succeeds starts the count again."""
        from ..errors import LockError

        if hold.error is None:
            self._failed_holds = 0
            return
        if isinstance(hold.error, LockError):
            return
        self._failed_holds += 1
        pause = min(LOCK_PAUSE_S * 2 ** min(self._failed_holds - 1, 32), FAILED_HOLD_PAUSE_MAX_S)
        self._next_hold = max(self._next_hold, time.monotonic() + pause)
        hold.retry_in_s = round(pause, 3)

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
    from ..state.leader import Leadership

    return Leadership.command


def _iso_floor(at: float) -> str:
    """``at`` as the state writes times (seconds), rounded down: a record of the same second counts as later."""
    from ..restarts import iso

    return iso(int(at))


def _new_finding(seen: api.Observation, last: dict[str, Any] | None) -> bool:
    """Whether ``seen`` differs from the task's last recorded observation."""
    summary = seen.summary()
    return last is None or any(last.get(k) != summary[k] for k in ("status", "stop_reason", "started", "ended"))


def watch(
    paths: Sequence[Path], state_path: Path | str, settings: engine.Settings, *, stop: threading.Event, **options: Any
) -> Controller:
    """Build a :class:`Controller` with ``options`` (its keyword arguments: ``status`` receives
    its health facts and events; ``metrics``, ``on_hold``, ``interval_s``, …) and run it until
    ``stop`` is set: the one place a controller is built (``reconcile --watch`` calls it).
    Returns the controller (its counters: ``reads``, ``holds``)."""
    ctl = Controller(paths, state_path, settings, stop=stop, **options)
    ctl.run()
    return ctl


def _plan_observed(manifests: Any, state: Any, observed: dict[str, api.Observation]) -> Plan:
    """The plan for the ``observed`` tasks alone (drift, stopped), against ``state``: what
    they need, without looking at the thousands of others (the controller asks this often)."""
    from ..plan import make_plan
    from ..state import State

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
