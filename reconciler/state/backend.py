"""The state protocol every backend keeps (see :class:`StateStore`).

A backend reads a state, takes and releases its lock (naming the holder to
anyone refused), journals each record durably before returning (an intent
before an API call, a put or delete after it), writes the whole state
(checkpoint), lists, creates and drops its workspaces and describes where it is,
with no password. Everything else (recording, endpoint binding, fingerprints,
refusing a workspace that does not exist) is shared here.

Workspaces are created, never conjured: a store opened on a workspace other than
``default`` (which always exists) refuses to go on when it does not exist, unless it
is made with ``must_exist=False`` (``workspace new``, the destination of ``state migrate``).
"""

from __future__ import annotations

import abc
import contextlib
import datetime as _dt
import logging
import os
import re
import socket
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import StateError, StateMoved, UsageError, WriteError
from .model import Signpost, State, has_legacy_fingerprints

log = logging.getLogger("snapctl.state")

DEFAULT_WORKSPACE = "default"
#: What the controller keeps beside a task's observation (see ``reconciler.restarts``).
OBSERVATION_FACTS = ("failures", "idle_outs", "not_adopted")
#: Facts kept until named: ``not_adopted`` (see :meth:`StateStore.record_not_adopted`) is not the
#: controller's to judge, so its facts (failures, idle-outs) never drop it.
STICKY_FACTS = ("not_adopted",)
#: A workspace name, matched whole (fullmatch: ``$`` would also match before a final newline).
WORKSPACE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
#: A new holder writes its record just after taking the lock: how long a refused
#: process waits for that record, to name the holder rather than "another process".
HOLDER_RECORD_WAIT_S = 2.0


def check_workspace(name: str) -> str:
    if not isinstance(name, str) or not WORKSPACE_RE.fullmatch(name) or ".." in name:
        raise UsageError(
            f"workspace {name!r}: use letters, digits, '_', '-' or '.', starting with a letter or digit (at most 63)"
        )
    return name


def missing_workspace(name: str, existing: list[str], location: str, source: str = "") -> UsageError:
    """The one line that refuses a workspace that does not exist: the workspaces that do,
    and the nearest of them for a near miss."""
    import difflib

    near = difflib.get_close_matches(name, existing, n=1, cutoff=0.6)
    hint = f"; did you mean {near[0]}?" if near else "."
    given = f" ({source})" if source else ""
    return UsageError(
        f"workspace {name}{given} does not exist in {location} (workspaces there: {', '.join(existing)}){hint} "
        f"Nothing was sent. To create it: snapctl workspace new {name}"
    )


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class LockHolder:
    host: str
    pid: int
    started_at: str
    command: str

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host} ({self.command}), since {self.started_at}"

    def may_be_alive(self) -> bool:
        """False only for a holder on this host whose process is gone (a record left by a killed run)."""
        if self.host != socket.gethostname():
            return True
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except OSError:
            return True
        return True

    @classmethod
    def me(cls, command: str) -> LockHolder:
        return cls(socket.gethostname(), os.getpid(), now_iso(), command)


def check_binding(state: State, endpoint: str, region: str, location: str) -> None:
    """Refuse to use a state bound to another endpoint or region (before any request)."""
    if state.endpoint is None:
        return
    if (state.endpoint, state.region) != (endpoint, region):
        raise UsageError(
            f"state {location} belongs to endpoint {state.endpoint} (region {state.region}), "
            f"not {endpoint} (region {region}); nothing was sent. Use the endpoint the state was applied "
            "against, another --state/--workspace, or `snapctl state rebind` to move this state deliberately"
        )


@dataclass
class _Queued:
    """A record waiting for its group to be written."""

    entry: dict[str, Any]
    done: bool = False
    error: BaseException | None = None


class StateStore(abc.ABC):
    """Exclusive, crash-safe write access to one state.

    Open it (a context manager) to take the lock and read the state; every
    ``record_*`` call is durable when it returns. A failed write raises
    :class:`~reconciler.errors.WriteError` and is kept in :attr:`write_failure`;
    what was recorded before it is intact.
    """

    #: "file" or "postgresql".
    kind: str = ""

    def __init__(
        self,
        *,
        workspace: str = DEFAULT_WORKSPACE,
        lock_timeout_s: float = 0.0,
        command: str = "snapctl",
        must_exist: bool = True,
    ):
        self.workspace = check_workspace(workspace)
        #: Opening refuses a workspace that does not exist (see :meth:`require_workspace`).
        self.must_exist = must_exist
        self._lock_timeout_s = lock_timeout_s
        self._command = command
        self._binding: tuple[str, str] | None = None
        self._is_open = False
        # Records come from several threads at once (apply writes them off its event loop):
        # they queue here and are written in groups, one group at a time (see _append).
        self._group = threading.Condition()
        self._queue: list[_Queued] = []
        self._writing = False
        #: Records under way in any thread; closing waits for them (see :meth:`close`).
        self._recording_now = 0
        self.write_failure: WriteError | None = None
        self.state: State = State.new()
        #: This run found no state: one it leaves holding nothing is removed on release.
        self._scratch = False
        #: Whether the state held a task or a pending call when this run opened it (see :meth:`open`).
        self.held_tasks = False
        #: A signpost found here is read, not refused: ``state migrate`` brings its state back.
        self.replaces_signpost = False

    # The protocol: what a backend implements ---------------------------------------

    @property
    @abc.abstractmethod
    def location(self) -> str:
        """Where the state is, for messages (never with a password)."""

    @property
    def described(self) -> str:
        """The location and the workspace, for a message that must say exactly which state."""
        return f"{self.location} (workspace {self.workspace})"

    @property
    def identity(self) -> str:
        """What names this state exactly (a saved plan records it): the location, a file's resolved."""
        return self.location

    @property
    def reference(self) -> str:
        """The state as any directory names it (a signpost records it): :attr:`described`, a file's path absolute."""
        return self.described

    @abc.abstractmethod
    def read_stored(self) -> State:
        """What is stored, without the lock: the state as of every recorded call, a new one if
        there is none, or a signpost (:attr:`State.signpost`) where a state was migrated away."""

    def read(self) -> State:
        """The state as of every recorded call, without the lock; a new one if there is none.
        A signpost is refused (:class:`StateMoved`, naming where the state went), so that a
        forgotten ``--state`` or workspace never acts on what was migrated away."""
        state = self.read_stored()
        if state.signpost is not None and not self.replaces_signpost:
            raise StateMoved(state.signpost.refusal(self.described))
        return state

    @abc.abstractmethod
    def _lock(self) -> None:
        """Take the lock (waiting up to the lock timeout) and record this process as its holder,
        or raise LockError naming the holder."""

    @abc.abstractmethod
    def _unlock(self) -> None:
        """Release the lock and forget its holder record; never raises."""

    @abc.abstractmethod
    def lock_holder(self) -> LockHolder | None:
        """Who holds (or last held) the lock, as recorded; readable without the lock."""

    @abc.abstractmethod
    def _journal(self, entries: list[dict[str, Any]]) -> None:
        """Make these records durable, in order, all or none (each has op, address, serial), or raise
        WriteError. Whatever the error, none may count as written: the run treats each as lost."""

    @abc.abstractmethod
    def checkpoint(self) -> None:
        """Write the whole of :attr:`state` (header, tasks, pending)."""

    @abc.abstractmethod
    def workspaces(self) -> list[str]:
        """The workspaces this backend holds, sorted, ``default`` always among them."""

    @abc.abstractmethod
    def workspace_exists(self) -> bool:
        """Whether this store's workspace exists (``default`` always does); without the lock."""

    @abc.abstractmethod
    def _drop(self) -> None:
        """Under the lock: remove this workspace and everything it holds (``workspace delete``)."""

    @abc.abstractmethod
    def lock_is_held(self) -> bool:
        """True while some process holds the lock."""

    @abc.abstractmethod
    def forget_holder(self) -> bool:
        """Remove the holder record of a lock nobody holds (``force-unlock``); whether there was one."""

    def write_header(self) -> None:
        """Write what the state says besides its tasks (the endpoint binding); by default the whole state."""
        self.checkpoint()

    def _after_open(self) -> None:
        """Fold in what a killed run left (file: its journal)."""
        return

    def _before_close(self) -> None:
        """Write what is still only journaled (file: a checkpoint)."""
        return

    def _after_signpost(self) -> None:
        """Remove what still holds the state besides the signpost just written (file: its backup)."""
        return

    # Shared ------------------------------------------------------------------------------

    def __enter__(self) -> StateStore:
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def open(self) -> None:
        """Take the lock, then read the state and fold in anything a killed run left.
        A workspace that does not exist is refused (with ``must_exist``), under the lock.

        It also settles whether the state is *established* (:attr:`held_tasks`): it held
        a task entry or a pending call when this run opened it, pending calls included
        because a task a killed run may have started is this state's own. A new file or
        workspace holds none, and so does one emptied (by ``destroy`` or ``state rm``):
        every task it stopped or forgot is no longer its own. Only an established state
        counts a StartSnapshot answered "already started" as its own task without
        ``--adopt`` (see :class:`~reconciler.apply.Applier`)."""
        self._scratch = False  # until this open has read what is there
        self.held_tasks = False
        self._lock()
        try:
            self.state = self.read()
            self._scratch = not self.state.exists
            if self.must_exist and not self.state.exists and self.workspace != DEFAULT_WORKSPACE:
                raise self._missing()
            self._after_open()
            self.held_tasks = bool(self.state.tasks or self.state.pending)
            self._is_open = True
        except BaseException:
            self._unlock()
            raise

    def close(self) -> None:
        """Write what is still only journaled and release the lock, once every record under way
        in another thread is written: a run stopped at once (a second signal) cancels the tasks
        that wait for their records, not the threads that write them, and a close meanwhile would
        release the lock (another writer may take it) with the record landing after it."""
        with self._group:
            if self._recording_now:
                log.debug("closing the state waits for %d record(s) in progress", self._recording_now)
            while self._recording_now:
                self._group.wait()
        try:
            if self._is_open:
                self._before_close()
        finally:
            self._is_open = False
            self._unlock()
            self._scratch = False

    # Workspaces ---------------------------------------------------------------------------

    def _missing(self, source: str = "") -> UsageError:
        return missing_workspace(self.workspace, self.workspaces(), self.where, source)

    @property
    def where(self) -> str:
        """The place that holds the workspaces (the location without the workspace)."""
        return self.location

    def require_workspace(self, source: str = "") -> None:
        """Refuse a workspace that does not exist, before anything is sent or written: one line
        naming the workspaces that do (``source``: where the name came from, for the message)."""
        if self.workspace != DEFAULT_WORKSPACE and not self.workspace_exists():
            raise self._missing(source)

    def create_workspace(self) -> None:
        """Create this store's workspace, holding nothing (``snapctl workspace new``)."""
        if self.workspace == DEFAULT_WORKSPACE or self.workspace_exists():
            raise UsageError(f"workspace {self.workspace} already exists in {self.where}")
        must_exist, self.must_exist = self.must_exist, False
        try:
            with self:
                if self.state.exists:  # made by another run since the check
                    raise UsageError(f"workspace {self.workspace} already exists in {self.where}")
                self._scratch = False  # asked for, though it holds nothing
                self.checkpoint()
        finally:
            self.must_exist = must_exist

    def delete_workspace(self, *, force: bool = False) -> State:
        """Remove this workspace under its lock (``snapctl workspace delete``); the state it held.
        One that holds tasks or pending calls is refused, naming them, unless ``force``:
        its tasks are then forgotten, not stopped."""
        if self.workspace == DEFAULT_WORKSPACE:
            raise UsageError("the default workspace cannot be deleted")
        self.replaces_signpost = True  # a signpost holds nothing: it may be deleted
        with self:
            held = sorted(set(self.state.tasks) | set(self.state.pending))
            if held and not force:
                shown = ", ".join(held[:5]) + (f" and {len(held) - 5} more" if len(held) > 5 else "")
                raise UsageError(
                    f"workspace {self.workspace} holds {len(held)} task(s) or pending call(s): {shown}. "
                    "Destroy them first (snapctl destroy), or pass --force to forget them without stopping them"
                )
            self._drop()
            self.state.exists = False
        return self.state

    def bind(self, endpoint: str, region: str) -> None:
        """Refuse another endpoint than the state's; a state not bound yet is bound when it next
        records a completed call."""
        check_binding(self.state, endpoint, region, self.location)
        self._binding = (endpoint, region)

    def rebind(self, endpoint: str, region: str) -> None:
        """Bind the state to ``endpoint`` deliberately (``snapctl state rebind``)."""
        self.state.endpoint, self.state.region = endpoint, region
        self.state.serial += 1
        self.write_header()

    def _left_no_state(self) -> bool:
        """Whether this run found no state and leaves none worth keeping: nothing recorded but
        intents it withdrew (a run refused at its first call), every write done. Such a state
        is removed when the lock is released, so that a refused first run writes nothing."""
        return self._scratch and self.write_failure is None and self.state.holds_nothing()

    def _fail(self, error: WriteError) -> WriteError:
        if self.write_failure is None:
            self.write_failure = error
        return error

    @contextlib.contextmanager
    def _recording(self) -> Iterator[None]:
        """A record under way, from its first step (a fingerprint) to its durable write: :meth:`close` waits for it."""
        with self._group:
            self._recording_now += 1
        try:
            yield
        finally:
            with self._group:
                self._recording_now -= 1
                self._group.notify_all()

    def _append(self, entry: dict[str, Any]) -> None:
        """Journal ``entry`` durably, then apply it in memory; on a failed write neither happens.

        Group commit: a record that arrives while another group is being written waits, and the
        next writer takes every waiting record into one durable write (one commit, one fsync),
        so concurrent calls share the cost of durability. Each caller returns only once its own
        record is durable, and every caller of a failed group gets its error.
        """
        queued = _Queued(entry)
        with self._group:
            self._queue.append(queued)
            while self._writing and not queued.done:
                self._group.wait()
            leader = not queued.done  # nobody wrote it: this caller writes every waiting record
            if leader:
                self._writing = True
                group, self._queue = self._queue, []
        if leader:
            try:
                self._write_group(group)
            finally:
                with self._group:
                    self._writing = False
                    self._group.notify_all()
        if queued.error is not None:
            raise queued.error

    def _write_group(self, group: list[_Queued]) -> None:
        entries = [queued.entry for queued in group]
        try:
            self._journal_entries(entries)
        except BaseException as exc:
            for queued in group:
                queued.error = exc
        for queued in group:
            queued.done = True

    def _journal_entries(self, entries: list[dict[str, Any]]) -> None:
        if not self._is_open:
            raise RuntimeError("state store is not open")
        if self.write_failure is not None:
            raise self.write_failure
        if (
            self._binding is not None
            and self.state.endpoint is None
            and any(entry["op"] in ("put", "delete") for entry in entries)
        ):
            # Bound with its first completed call: a run that reached no API binds nothing.
            self.state.endpoint, self.state.region = self._binding
            self.write_header()
        elif not self.state.exists:
            self.checkpoint()
        for number, entry in enumerate(entries, 1):
            entry["serial"] = serial = self.state.serial + number
            # Each record of a task and each observation keeps the serial it was written at,
            # so which is newer is known exactly (their times have one-second resolution).
            if entry["op"] == "put":
                entry["entry"]["serial"] = serial
            elif entry["op"] == "observe":
                for seen in entry["observed"].values():
                    if seen is not None:
                        seen["serial"] = serial
        self._journal(entries)
        for entry in entries:
            self.state.apply_entry(entry)

    def record_put(
        self, address: str, request_wire: dict[str, Any], request_id: str = "", applied_at: str | None = None
    ) -> None:
        """Remember that ``address`` now runs ``request_wire`` (secrets are fingerprinted here)."""
        with self._recording():
            entry = {
                "request": self.state.fingerprint(request_wire),
                "request_id": request_id,
                "applied_at": applied_at or now_iso(),
            }
            self._append({"op": "put", "address": address, "entry": entry})

    def record_observations(
        self, observations: Iterable[Any], facts: Mapping[str, Mapping[str, Any]] | None = None
    ) -> int:
        """Remember what a refresh saw (``api.Observation`` values): one journal entry
        for every task whose status or stop reason changed since the last one, none
        when nothing did (a converged controller round writes nothing). ``facts``: by
        address, what the controller counts beside the observation (``failures``,
        ``idle_outs``: see ``reconciler.restarts``; None removes one), recorded when
        they change. Returns how many changed."""
        now = now_iso()
        changed: dict[str, dict[str, Any]] = {}
        for seen in observations:
            summary = seen.summary()
            record = {
                "status": summary["status"],
                "stop_reason": summary["stop_reason"],
                "started": summary["started"],
                "ended": summary["ended"],
            }
            last = self.state.observed.get(seen.address)
            extra = (facts or {}).get(seen.address)
            if extra is None and last is not None:  # facts not judged this time: kept as they are
                extra = {key: last[key] for key in OBSERVATION_FACTS if key in last}
            elif extra is not None and last is not None:
                extra = {**{key: last[key] for key in STICKY_FACTS if key in last}, **extra}
            extra = {key: value for key, value in (extra or {}).items() if value is not None}
            if last is not None and {k: last.get(k) for k in record} == record:
                if {key: last.get(key) for key in OBSERVATION_FACTS} == {
                    key: extra.get(key) for key in OBSERVATION_FACTS
                }:
                    continue
                changed[seen.address] = record | {"since": last.get("since", now)} | extra
                continue
            changed[seen.address] = record | {"since": now} | extra
        if changed:
            with self._recording():
                self._append({"op": "observe", "address": "", "observed": changed})
        return len(changed)

    def record_not_adopted(self, observations: Iterable[Any]) -> int:
        """Remember tasks this state found running and did not adopt (``api.Observation``
        values: they run). An established state counts a task StartSnapshot answers "already
        started" as its own, except one it refused before: the run on it when it was new
        that refused them also created other tasks, which made it established, and a plain
        run again must not take over what another state runs (only ``--adopt`` does)."""
        observations = list(observations)
        return self.record_observations(observations, {seen.address: {"not_adopted": True} for seen in observations})

    def refused_before(self, address: str) -> bool:
        """Whether this state did not adopt ``address`` in an earlier run (:meth:`record_not_adopted`)
        and holds no task there since."""
        return address not in self.state.tasks and bool((self.state.observed.get(address) or {}).get("not_adopted"))

    def record_delete(self, address: str) -> None:
        with self._recording():
            self._append({"op": "delete", "address": address})

    def record_intent(
        self,
        address: str,
        action: str,
        request_wire: dict[str, Any],
        *,
        replace: str | None = None,
        owned_if_started_after: int | None = None,
    ) -> dict[str, Any] | None:
        """Before sending ``action``: remember that ``address`` may run ``request_wire`` (or, for a
        Stop, may have stopped) until the outcome is recorded. Returns the intent it replaced.
        ``replace``: how far a replace got, kept in the intent for ``plan`` to show: "stopped"
        (its stop answered, its start not sent yet), "starting" (the start sent).
        ``owned_if_started_after``: a StartSnapshot this state may not adopt the answer of
        (epoch ms of its first call; see :mod:`reconciler.apply`)."""
        with self._recording():
            intent: dict[str, Any] = {"action": action, "request": self.state.fingerprint(request_wire)}
            if replace is not None:
                intent["replace"] = replace
            if owned_if_started_after is not None:
                intent["owned_if_started_after"] = owned_if_started_after
            # Only this task records for ``address`` (one record at a time), so nothing moves it meanwhile.
            previous = self.state.pending.get(address)
            self._append({"op": "intent", "address": address, "intent": intent})
            return previous

    def record_not_done(self, address: str, previous: dict[str, Any] | None) -> None:
        """The call of the last intent was certainly not done (refused on its only attempt)."""
        with self._recording():
            self._append({"op": "intent", "address": address, "intent": previous})

    def upgrade_fingerprints(self, address: str, request_wire: dict[str, Any]) -> bool:
        """Re-record a task whose stored fingerprints are of the old HMAC kind, if they match
        ``request_wire`` (its desired request): the secrets are then fingerprinted anew. No API call."""
        entry = self.state.tasks.get(address)
        if entry is None or not has_legacy_fingerprints(entry["request"]):
            return False
        if self.state.fingerprint(request_wire, like=entry["request"]) != entry["request"]:
            return False
        self.record_put(address, request_wire, entry.get("request_id", ""), entry.get("applied_at"))
        return True

    def replace_state(self, state: State) -> None:
        """Write ``state`` as the new state, at a serial above the current one (``state rm``)."""
        state.serial = max(state.serial, self.state.serial) + 1
        self.state = state
        self.checkpoint()

    def copy_from(self, source: State) -> None:
        """Make this state an exact copy of ``source`` (``state migrate``): same lineage and serial.
        A destination that holds nothing (:meth:`State.holds_nothing`) is taken over whatever its lineage;
        a signpost only by the state it names, coming back (its lineage, at its serial or later)."""
        self._scratch = False  # asked for, even if it holds no task
        signpost = self.state.signpost
        if signpost is not None:
            if self.state.lineage != source.lineage or source.serial < self.state.serial:
                raise StateError(
                    f"{self.location} holds the signpost of another state (lineage {self.state.lineage}, serial "
                    f"{self.state.serial}, migrated to {signpost.moved_to}); the source has lineage {source.lineage}, "
                    f"serial {source.serial}. Nothing copied"
                )
            self.state.exists = False  # the state comes back: the signpost gives way
        elif self.state.exists and self.state.holds_nothing():
            self.state.exists = False  # nothing there to keep, nor to be ahead of
        if self.state.exists and self.state.lineage != source.lineage:
            raise StateError(
                f"{self.location} holds another state (lineage {self.state.lineage}, the source has "
                f"{source.lineage}); migrate into an empty workspace or another file"
            )
        if self.state.exists and self.state.serial > source.serial:
            raise StateError(
                f"{self.location} is ahead of the source (serial {self.state.serial} > {source.serial}); "
                "it was written after the last migration. Nothing copied"
            )
        self.state.copy_as(source)
        self.checkpoint()

    def leave_signpost(self, moved_to: str) -> Signpost:
        """Replace this state by a signpost naming ``moved_to`` and now (``state migrate``, once the
        copy is written there): its tasks, pending calls, observations and key leave this place."""
        signpost = Signpost(moved_to, now_iso())
        self.state = State.signpost_of(self.state, signpost)
        self.checkpoint()
        self._after_signpost()
        return signpost
