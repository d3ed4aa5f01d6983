"""Apply: carry out a plan's actions against the API and record each completed call.

Actions run concurrently (bounded by ``parallelism``) through one shared
:class:`~reconciler.client.SnapshotClient`, whose per-action rate limiters keep
the whole run under the API's limit. Every completed call is recorded in the
state before the next step of that task, and one task's failure never stops
the others. A failed state write (a full disk) does: no new call is started,
the calls in flight finish (their intents stay journaled), and the run raises
the :class:`~reconciler.errors.WriteError`. So does an error nothing foresaw (an
``on_result`` callback that raises): no new call is started, and the run raises it
once the calls in flight are answered and recorded.

Adoption: StartSnapshot answers "already started" for a task that runs, whoever
started it. An established state (:attr:`StateStore.held_tasks`) counts that as
converged and records the task ("already running, adopted"). A state that held no
task before this run records it only with ``adopt`` (the recovery of a lost
state): otherwise the task is *not adopted*, its intent withdrawn, and the run
ends not ok, so that a new file, a mistyped workspace or another folder never
takes over (and a later ``destroy`` never stops) tasks another state runs. Such a
run that also started tasks leaves an established state: it remembers the tasks it
did not adopt (``StateStore.record_not_adopted``), which stay refused without ``adopt``.

The intent of such a StartSnapshot keeps when it was sent (``owned_if_started_after``):
if the run dies, or its disk fills, before the refusal is recorded, the intent stays
pending, and a later run cannot tell that task from one this state started and never
recorded. So a later run reads such a task (GetSnapshotTask) before it sends anything:
one started since the call (give or take :data:`START_TIME_SKEW_S`) is this state's; one
running from before is another's, sent nothing and not adopted; one not found (never
started, or older than the read's 72 hours) may only be started, never stopped or
updated, and an "already started" answer is judged by StartTime again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from . import api
from .client import CallResult, Outcome, SnapshotClient
from .errors import ApiError, InvalidParameterError, RunStoppedError, WriteError
from .plan import ActionKind, Plan
from .state import StateStore

log = logging.getLogger("snapctl.apply")
#: What a refresh saw of a task that runs (the API answers StartSnapshot "already started").
RUNS = (api.Observed.running.value, api.Observed.not_started.value)
#: How far the API's clock (a task's StartTime) and this machine's (when a call was sent) may
#: differ: a task that started this much before a state's first StartSnapshot for it, or later,
#: may be that call's; one that started earlier is another's (see the module's docstring).
START_TIME_SKEW_S = 60.0


@dataclass
class ActionResult:
    """What happened to one task."""

    address: str
    kind: str  # an ActionKind value, or "reassert" for reconcile's re-start of an unchanged task
    ok: bool = False
    calls: list[CallResult] = field(default_factory=list)
    error: ApiError | None = None
    #: reconcile: the task was not running and StartSnapshot brought it back.
    healed: bool = False
    #: It already ran, and the state may not adopt it (a state that held no task, or that did not
    #: adopt it in an earlier run, without --adopt).
    not_adopted: bool = False
    #: What the refresh saw of a healed task, in the API's words: ``ended (IdleTimeOut)``.
    was: str = ""
    #: reconcile: the task fails to run (its StopReason); started again, which is no heal.
    failing: str = ""

    @property
    def outcome(self) -> str:
        if self.not_adopted:
            return "not_adopted"
        if not self.ok:
            return "failed"
        return self.calls[-1].outcome.value if self.calls else "ok"

    @property
    def adopted(self) -> bool:
        """A create the API answered "already started": recorded as running, not added."""
        return (
            self.ok
            and self.kind == ActionKind.create.value
            and bool(self.calls)
            and self.calls[-1].outcome is Outcome.already_started
        )


@dataclass
class ApplyReport:
    results: list[ActionResult]
    elapsed_s: float
    interrupted: bool = False
    #: The error that concerns every call (credentials, an unreachable endpoint) and stopped the run.
    stopped_by: ApiError | None = None
    #: Tasks never attempted because the run stopped.
    not_attempted: int = 0
    #: Tasks never attempted because the run was interrupted (SIGINT/SIGTERM).
    skipped: int = 0
    #: Which state the run recorded in (location and workspace), whether it held a task
    #: before the run, and whether it was told to adopt running tasks.
    state: str = ""
    held_tasks: bool = True
    adopt: bool = False

    @property
    def failures(self) -> list[ActionResult]:
        return [r for r in self.results if not r.ok and not r.not_adopted]

    @property
    def not_adopted(self) -> list[ActionResult]:
        """Tasks that already ran and were left to whatever state runs them."""
        return [r for r in self.results if r.not_adopted]

    @property
    def adopted(self) -> list[ActionResult]:
        return [r for r in self.results if r.adopted]

    @property
    def healed(self) -> list[ActionResult]:
        return [r for r in self.results if r.healed]

    @property
    def ok(self) -> bool:
        return not self.failures and not self.not_adopted and not self.interrupted and self.stopped_by is None

    @property
    def worth_retrying(self) -> bool:
        """Whether running the command again may finish the job without changing anything."""
        if self.interrupted:
            return True
        if self.stopped_by is not None:
            return self.stopped_by.retryable
        return any(r.error is not None and r.error.retryable for r in self.failures)


def stop_request(body: Mapping, address: str | None = None) -> api.StopSnapshotRequest:
    """The StopSnapshot of a task the state records as running ``body``; with ``address``, a
    record that names another task (a hand-edited state) is refused: that Stop would end it."""
    named = f"{body['AppId']}/{body['RoomId']}/{body['TaskId']}"
    if address is not None and named != address:
        raise ValueError(f"the state's record of {address} names another task, {named}")
    return api.StopSnapshotRequest(
        app_id=body["AppId"], business_id=body.get("BusinessId"), room_id=body["RoomId"], task_id=body["TaskId"]
    )


def update_request(request: api.StartSnapshotRequest) -> api.UpdateSnapshotRequest:
    return api.UpdateSnapshotRequest(
        app_id=request.app_id,
        business_id=request.business_id,
        room_id=request.room_id,
        task_id=request.task_id,
        image_config=request.image_config,
    )


class Applier:
    """Runs actions for one apply; ``requests`` holds the desired requests with their secrets."""

    def __init__(
        self,
        client: SnapshotClient,
        store: StateStore,
        requests: Mapping[str, api.StartSnapshotRequest],
        *,
        parallelism: int = 64,
        on_result: Callable[[ActionResult], None] | None = None,
        stop_event=None,  # anything with is_set(): asyncio.Event or threading.Event
        adopt: bool = False,
    ):
        self.client = client
        self.store = store
        self.requests = requests
        self.parallelism = max(1, parallelism)
        self.on_result = on_result
        self.stop_event = stop_event
        self.adopt = adopt
        #: Tasks whose StartSnapshot answered "already started" and that this state may not adopt.
        self._refused: set[str] = set()
        #: Tasks a new state's unsettled first Start left, read and found this state's (started since).
        self._found_own: set[str] = set()

    def may_adopt(self, address: str) -> bool:
        """Whether a task that already runs may be recorded as this state's (see the module's docstring)."""
        return self.adopt or (self.store.held_tasks and not self.store.refused_before(address))

    async def run(self, plan: Plan, reassert: Sequence[str] = ()) -> ApplyReport:
        """Apply ``plan``; also StartSnapshot each address of ``reassert`` (reconcile)."""
        if plan.display_only:  # its new tasks' fingerprints were never computed: nothing to record
            raise ValueError("a plan made only to be shown (fingerprint_creates=False) cannot be applied")
        began = time.monotonic()
        jobs: list[tuple[str, str]] = [(a.address, a.kind.value) for a in plan.actions]
        jobs += [(address, "reassert") for address in reassert]
        plan_actions = {a.address: a for a in plan.actions}
        semaphore = asyncio.Semaphore(self.parallelism)
        results: list[ActionResult] = []
        skipped = 0
        write_failure: WriteError | None = None
        not_attempted = 0
        unrecorded: list[str] = []  # answered, but the state write after the answer failed
        unforeseen: Exception | None = None  # e.g. an on_result callback that raised

        async def run_one(address: str, kind: str) -> None:
            nonlocal skipped, write_failure, not_attempted
            async with semaphore:
                if write_failure is not None or unforeseen is not None:
                    return
                if self.stop_event is not None and self.stop_event.is_set():
                    skipped += 1
                    return
                if self.client.stopped_by is not None:
                    not_attempted += 1
                    return
                result = ActionResult(address=address, kind=kind)
                try:
                    await self._perform(result, plan_actions.get(address))
                    result.ok = not result.not_adopted
                except RunStoppedError as exc:
                    if not result.calls:
                        not_attempted += 1
                        return
                    result.error = exc  # e.g. a replace stopped the task, then could not start it
                except ApiError as exc:
                    result.error = exc
                except WriteError as exc:
                    write_failure = write_failure or exc
                    if result.calls:
                        unrecorded.append(address)
                    return
                results.append(result)
                _log_result(result)
                # An error of the whole run is named once, in the summary, not per task.
                if self.on_result is not None and not (result.error is not None and result.error.stops_run):
                    self.on_result(result)

        async def settled(address: str, kind: str) -> None:
            # An error nothing here foresaw fails the run only once the calls in flight are
            # answered and recorded: raised at once, it would leave them unrecorded.
            nonlocal unforeseen
            try:
                await run_one(address, kind)
            except Exception as exc:
                unforeseen = unforeseen or exc

        await asyncio.gather(*(settled(address, kind) for address, kind in jobs))
        if write_failure is not None:
            if unrecorded:
                unrecorded.sort()
                listed = ", ".join(unrecorded[:5]) + (" …" if len(unrecorded) > 5 else "")
                raise WriteError(
                    f"{write_failure} ({len(unrecorded)} call(s) answered after it stay pending: {listed})",
                    path=write_failure.path,
                    errno=write_failure.errno,
                )
            raise write_failure
        refused = sorted(r.address for r in results if r.not_adopted)
        if refused and (self.store.state.tasks or self.store.state.pending):
            # The state holds tasks (this run's or earlier ones'), so it counts as established
            # next time: it remembers what it did not adopt, so a plain run again refuses it too.
            running = [api.Observation(address, api.Observed.running) for address in refused]
            await self._record(self.store.record_not_adopted, running)
        if unforeseen is not None:
            raise unforeseen
        results.sort(key=lambda r: r.address)
        return ApplyReport(
            results=results,
            elapsed_s=time.monotonic() - began,
            interrupted=bool(skipped),
            skipped=skipped,
            stopped_by=self.client.stopped_by,
            not_attempted=not_attempted,
            state=self.store.described,
            held_tasks=self.store.held_tasks,
            adopt=self.adopt,
        )

    async def _record(self, record: Callable[..., Any], *args: Any) -> Any:
        """A state record, durable when this returns, written off the event loop (a commit
        or an fsync waits on the disk): the other tasks' calls go on meanwhile."""
        return await asyncio.to_thread(record, *args)

    async def _call(
        self,
        address: str,
        action: str,
        running_if_done: dict,
        call: Coroutine[Any, Any, CallResult],
        replace: str | None = None,
    ) -> CallResult:
        """Send one call with its intent journaled first: if the process dies before the
        outcome is recorded, the state still knows the task may run ``running_if_done``
        (or, for a Stop, may have stopped). A StartSnapshot answered "already started"
        that this state may not adopt withdraws its intent: the API did nothing.
        ``replace``: see ``StateStore.record_intent``."""
        owned_after = self._owned_if_started_after(address) if action == "StartSnapshot" else None
        intent = functools.partial(self.store.record_intent, replace=replace, owned_if_started_after=owned_after)
        try:
            previous = await self._record(intent, address, action, running_if_done)
        except BaseException:
            call.close()  # never sent
            raise
        try:
            done = await call
        except ApiError as exc:
            if not exc.may_have_run:
                # Refused, or never sent: the API did nothing, so no intent is left open.
                await self._record(self.store.record_not_done, address, previous)
            raise
        if action == "StartSnapshot" and await self._not_adoptable(address, done, owned_after):
            self._refused.add(address)
            # The API did nothing. An earlier run's intent of the same first start goes too: it
            # was this refusal, never recorded (see the module's docstring).
            unowned = previous is not None and previous.get("owned_if_started_after") is not None
            await self._record(self.store.record_not_done, address, None if unowned else previous)
        return done

    def _owned_if_started_after(self, address: str) -> int | None:
        """For the intent of a StartSnapshot: when a state that may not adopt the task sent its
        first call for it (epoch ms), kept from an earlier run's intent; None where it may."""
        if address in self._found_own:
            return None  # read already, and this state's: an "already started" needs no second read
        earlier = self.store.state.pending.get(address)
        if earlier is not None and earlier.get("owned_if_started_after") is not None:
            return earlier["owned_if_started_after"]
        if self.may_adopt(address):
            return None
        return int(time.time() * 1000)

    async def _first_start_found(self, result: ActionResult) -> bool | None:
        """For a task this state holds only as the pending intent of a first StartSnapshot it may
        not adopt the answer of (an earlier run died before it recorded the answer): whether that
        call's task is found (GetSnapshotTask). Started since the call, it is this state's (True);
        running from before, another state's: nothing is sent to it (no Start that would adopt
        it, no Stop of a destroy or a replacement, no Update), it is not adopted and the intent
        withdrawn (None); not found or not running, nothing of this state's runs there (False):
        it may only be started, still as a first Start. True for any other task."""
        address = result.address
        intent = self.store.state.pending.get(address)
        owned_after = intent.get("owned_if_started_after") if intent is not None else None
        if owned_after is None or self.adopt or address in self.store.state.tasks:
            return True
        # A failed read raises (the task's result is an error): its intent stays pending, judged next run.
        seen = await self.client.get_task(*address.split("/", 2))
        if _started_since(seen, owned_after):
            self._found_own.add(address)
            return True
        if seen.observed.value not in RUNS:
            return False
        await self._record(self.store.record_not_done, address, None)
        self._refused.add(address)
        result.not_adopted = True
        return None

    async def _not_adoptable(self, address: str, call: CallResult, owned_after: int | None) -> bool:
        """A StartSnapshot answered "already started" for a task another state runs, as far as this
        one can tell: it held no task (or did not adopt this one before) and was not told to adopt;
        or an earlier run's first StartSnapshot for it was never settled, and the task started
        before that call (its StartTime, read now). After an attempt that may have acted, the
        answer may be this call's own start: then the task is this state's."""
        if call.outcome is not Outcome.already_started or call.retried_after_acting or self.adopt:
            return False
        if not self.may_adopt(address):
            return True
        if owned_after is None:
            return False
        # A failed read raises (the task's result is an error): its intent stays pending, judged next run.
        seen = await self.client.get_task(*address.split("/", 2))
        return not (seen.observed.value in RUNS and _started_since(seen, owned_after))

    async def _perform(self, result: ActionResult, action) -> None:
        address, kind = result.address, result.kind
        if (
            not self.may_adopt(address)
            and action is not None
            and action.observed in RUNS
            and address not in self.store.state.tasks
        ):
            # A refresh saw it run, and this state does not hold it: nothing is sent, neither
            # a Start that would adopt it nor the Stop of a replacement that would take it over.
            result.not_adopted = True
            return
        found = await self._first_start_found(result)
        if found is None:
            return
        if found is False and kind == ActionKind.delete.value:
            # Nothing of this state's runs there (and what the read cannot see, a task started
            # more than 72 hours ago, is another's): no Stop; the state forgets the call.
            await self._record(self.store.record_not_done, address, None)
            return
        # Every request of the action is built and serialised before its first call:
        # a task is never stopped for a Start that could not be sent.
        stop: api.StopSnapshotRequest | None = None
        start: api.StartSnapshotRequest | None = None
        update: api.UpdateSnapshotRequest | None = None
        with _building(address):
            if kind in (ActionKind.delete.value, ActionKind.replace.value) and found:
                stop = stop_request(action.current, address)
                orjson.dumps(stop.wire())
            if kind != ActionKind.delete.value:
                start = self.requests[address]
                desired = start.wire()
                orjson.dumps(desired)
                if kind == ActionKind.update.value and found:
                    update = update_request(start)
        if stop is not None:
            result.calls.append(await self._call(address, "StopSnapshot", action.current, self.client.stop(stop)))
            if start is None:
                await self._record(self.store.record_delete, address)
            else:  # half a replace: one record says the start is owed, until it is answered
                stopped = functools.partial(self.store.record_intent, replace="stopped")
                await self._record(stopped, address, "StartSnapshot", desired)
        if start is None:
            return
        if update is not None:
            call = await self._call(address, "UpdateSnapshot", desired, self.client.update(update))
            result.calls.append(call)
            if call.outcome is not Outcome.not_running:
                await self._record(self.store.record_put, address, desired, call.request_id)
                return
            # The task idled out: bring it back with the whole desired request.
        if kind == "reassert":
            # The state already says the task runs this request: whatever becomes of this
            # call, that stays the best knowledge there is, so no intent is needed.
            call = await self.client.start(start)
        else:
            replacing = "starting" if stop is not None else None
            call = await self._call(address, "StartSnapshot", desired, self.client.start(start), replace=replacing)
        result.calls.append(call)
        if kind != "reassert" and address in self._refused:
            result.not_adopted = True
            return
        if kind == "reassert":
            if call.outcome is Outcome.already_started:
                return  # running as recorded: nothing new to remember
            result.healed = True
        elif action is not None and action.observed in ("ended", "failed"):
            result.healed = True  # a refresh found it stopped: started again
            result.was = f"{action.observed} ({action.stop_reason})" if action.stop_reason else action.observed
        await self._record(self.store.record_put, address, desired, call.request_id)


def _started_since(seen: api.Observation, sent_ms: int) -> bool:
    """Whether a task read started no earlier than a call sent at ``sent_ms`` (epoch ms), give or
    take :data:`START_TIME_SKEW_S`: it may be that call's. A task not found has no start time."""
    return seen.start_time_ms > 0 and seen.start_time_ms >= sent_ms - START_TIME_SKEW_S * 1000


@contextlib.contextmanager
def _building(address: str) -> Iterator[None]:
    """A request that cannot be built or serialised fails its task before anything is sent."""
    try:
        yield
    except (ValueError, TypeError, KeyError) as exc:  # orjson.JSONEncodeError is a TypeError
        raise InvalidParameterError(
            f"the request cannot be sent ({type(exc).__name__}: {exc}); nothing was called for {address}"
        ) from None


def _log_result(result: ActionResult) -> None:
    calls = " ".join(
        f"{c.action}={c.outcome.value}(attempts={c.attempts},request_id={c.request_id})" for c in result.calls
    )
    if result.ok:
        log.info("%s %s ok %s", result.address, result.kind, calls)
    elif result.not_adopted:
        log.warning(
            "%s %s not adopted: it already runs and the state may not adopt it %s", result.address, result.kind, calls
        )
    else:
        err = result.error
        assert err is not None
        log.warning(
            "%s %s failed code=%s code_n=%s request_id=%s message=%s %s",
            result.address,
            result.kind,
            err.code or type(err).__name__,
            err.code_n,
            err.request_id,
            err.message,
            calls,
        )
