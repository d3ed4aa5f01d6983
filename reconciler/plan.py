"""The plan: what apply would do to make the state match the manifests.

A plan compares the desired requests with the state and, after a refresh, with
the observations GetSnapshotTask made of the live tasks; it never touches the
network itself. It is a value: printed, saved to a file, and applied later.
"""

from __future__ import annotations

import datetime as _dt
import enum
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import orjson
from pydantic import BaseModel, Field, PrivateAttr, computed_field

from .api import Observation, Observed, comparable
from .errors import UsageError
from .state import FINGERPRINT_PREFIX, SECRET_FIELDS, State, has_legacy_fingerprints, is_fingerprint, secret_holders

#: Saved plans this snapctl writes; it also reads format 1 (before restarts had their own
#: kind, an ended or failed task's restart was a create: read as a restart).
PLAN_FORMAT_VERSION = 2
READABLE_PLAN_FORMATS = (1, 2)
#: The reasons of plain creates and deletes (renderers leave these unsaid).
CREATE_REASON, DELETE_REASON = "not in the state", "not in the manifests"
#: A secret's value in a plan made without secret values (``plan --no-secrets``).
UNKNOWN_SECRET = "(unknown)"
#: Stands for the fingerprint of a new task's secret in a plan made only to be shown
#: (``make_plan(..., fingerprint_creates=False)``): shown as ``(sensitive)`` like any
#: fingerprint, and such a plan is never saved or applied (:attr:`Plan.display_only`).
NOT_COMPUTED = FINGERPRINT_PREFIX + "not-computed"
#: The only field UpdateSnapshot can change in place.
IN_PLACE_FIELDS = frozenset({"ImageConfig.Interval"})


class ActionKind(str, enum.Enum):
    create = "create"
    update = "update"
    replace = "replace"  # type: ignore[assignment]  # shadows str.replace, never called on a kind
    delete = "delete"
    #: A declared task a refresh saw ended or failed: StartSnapshot again, as recorded.
    restart = "restart"


SYMBOLS = {
    ActionKind.create: "+",
    ActionKind.restart: ">",
    ActionKind.update: "~",
    ActionKind.replace: "-/+",
    ActionKind.delete: "-",
}
#: The kinds that start a task from nothing running (every field is new).
STARTS = frozenset({ActionKind.create, ActionKind.restart})


class FieldChange(BaseModel):
    """One field that differs. Secrets appear only as ``(sensitive)`` markers."""

    path: str
    old: Any = None
    new: Any = None
    forces_replacement: bool
    sensitive: bool = False


class PlannedAction(BaseModel):
    address: str
    kind: ActionKind
    reason: str = ""
    changes: list[FieldChange] = Field(default_factory=list)
    #: The desired StartSnapshot body, secrets fingerprinted (None for delete).
    desired: dict[str, Any] | None = None
    #: What the state holds (None for create); after a refresh, what runs.
    current: dict[str, Any] | None = None
    #: After a refresh: the task's observed status (running, not_started, ended,
    #: failed, unknown) and the API's StopReason, when the action is planned for them.
    observed: str | None = None
    stop_reason: str | None = None
    #: The live configuration differs from the state's record: someone changed
    #: the task outside snapctl (``changes`` go from the live to the declared values).
    changed_outside: bool = False
    #: An interrupted apply left this task half-done: what it had sent ("stop sent, start
    #: not yet" for a replace cut between its calls); the action finishes it.
    pending: str | None = None

    @property
    def symbol(self) -> str:
        return SYMBOLS[self.kind]


class PlanSummary(BaseModel):
    add: int = 0
    change: int = 0
    replace: int = 0
    destroy: int = 0
    restart: int = 0

    @classmethod
    def of(cls, actions: Sequence[PlannedAction]) -> PlanSummary:
        return cls(
            add=sum(a.kind is ActionKind.create for a in actions),
            change=sum(a.kind is ActionKind.update for a in actions),
            replace=sum(a.kind is ActionKind.replace for a in actions),
            destroy=sum(a.kind is ActionKind.delete for a in actions),
            restart=sum(a.kind is ActionKind.restart for a in actions),
        )

    @property
    def total(self) -> int:
        return self.add + self.change + self.replace + self.destroy + self.restart

    def line(self) -> str:
        restart = f"{self.restart} to restart, " if self.restart else ""
        return (
            f"Plan: {self.add} to add, {restart}{self.change} to change, {self.replace} to replace, "
            f"{self.destroy} to destroy."
        )


class UnknownTask(BaseModel):
    """A task a refresh could not see: no change is planned for it."""

    address: str
    detail: str = ""


class Plan(BaseModel):
    """A plan and what it was made against (for refusing it once stale)."""

    format_version: int = PLAN_FORMAT_VERSION
    created_at: str = Field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    state_lineage: str
    state_serial: int
    state_exists: bool
    #: Only for a plan made before any state existed: apply creates the state
    #: with this lineage and fingerprint key, so the plan's fingerprints hold.
    new_state_key: str | None = None
    #: Absolute paths, so the plan applies from any directory.
    manifest_paths: list[str] = Field(default_factory=list)
    #: The state the plan was made for (:attr:`StateStore.identity`: a file's absolute path, or a
    #: database's host, port and name with the workspace; never a password): apply refuses any other.
    state_path: str | None = None
    #: The scope it was made with: apply plans again with them to check that nothing changed.
    targets: list[str] = Field(default_factory=list)
    replace: list[str] = Field(default_factory=list)
    destroy: bool = False
    #: Made without secret values (``plan --no-secrets``): secret fields are unknown,
    #: never planned as changed, and the plan cannot be applied.
    secrets_unknown: bool = False
    actions: list[PlannedAction] = Field(default_factory=list)
    unchanged: int = 0
    #: Made with --refresh: against what GetSnapshotTask showed of the live tasks.
    refreshed: bool = False
    #: Tasks read with --refresh: how many of each observed status (``new``: not found and not
    #: in the state, a create like any other).
    observed: dict[str, int] = Field(default_factory=dict)
    #: Tasks the refresh could not see (not found, older than the read window).
    unknown: list[UnknownTask] = Field(default_factory=list)
    #: How long the refresh took (seconds): one read per task at the read limit.
    refresh_s: float | None = None
    #: The API endpoint and region the plan was made for (apply refuses another).
    endpoint: str | None = None
    region: str | None = None
    #: Unchanged tasks whose stored secret fingerprints are of the old HMAC kind (apply re-records them).
    legacy_fingerprints: list[str] = Field(default_factory=list)

    _display_only: bool = PrivateAttr(default=False)

    @property
    def has_changes(self) -> bool:
        return bool(self.actions)

    @property
    def display_only(self) -> bool:
        """Made to be shown only: new tasks' secrets were not fingerprinted (see :func:`make_plan`)."""
        return self._display_only

    @computed_field  # type: ignore[prop-decorator]
    @property
    def summary(self) -> PlanSummary:
        """Counted from the actions, always: a plan file's own summary is never read (an edited
        one could say "0 to destroy" above a task that will be destroyed)."""
        return PlanSummary.of(self.actions)

    @classmethod
    def from_json(cls, raw: bytes, source: str) -> Plan:
        """A saved plan (``plan --out``), refused in one line unless it is one this snapctl reads:
        the one place that reads plan files, for ``show`` and ``apply`` alike."""
        from pydantic_core import from_json  # keeps an integer beyond 64 bits (orjson reads it as a float)

        try:
            doc = from_json(raw)
        except ValueError:
            doc = None
        if not isinstance(doc, dict) or "format_version" not in doc:
            raise UsageError(f"{source}: not a snapctl plan file (save one with snapctl plan --out FILE)")
        version = doc.get("format_version")
        if version not in READABLE_PLAN_FORMATS:
            readable = " and ".join(str(v) for v in READABLE_PLAN_FORMATS)
            raise UsageError(
                f"{source}: plan format {version!r} is not supported (this snapctl reads {readable}); "
                "run snapctl plan --out FILE with this snapctl"
            )
        try:
            return upgrade_plan(cls.model_validate(doc))
        except ValueError:
            raise UsageError(f"{source}: not a snapctl plan file (save one with snapctl plan --out FILE)") from None


def _path_text(parts: Sequence[Any]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def mask_secrets(value: Any) -> Any:
    """Replace fingerprints, however deep, by a marker: output shows that a secret changed, never what it is."""
    if is_fingerprint(value):
        return "(sensitive)"
    if isinstance(value, dict):
        return {k: mask_secrets(v) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_secrets(v) for v in value]
    return value


def _has_secret(value: Any) -> bool:
    if isinstance(value, dict):
        return any(_has_secret(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_secret(v) for v in value)
    return is_fingerprint(value)


def diff_requests(current: Mapping[str, Any], desired: Mapping[str, Any]) -> list[FieldChange]:
    """Field-by-field changes from ``current`` to ``desired`` (both wire bodies), in a stable order."""
    differences: list[tuple[list, Any, Any]] = []
    if not _leaf_changes(dict(current), dict(desired), [], differences):
        differences = _deepdiff_changes(current, desired)
    changes: list[FieldChange] = []
    for parts, old, new in differences:
        path = _path_text(parts)
        sensitive = _has_secret(old) or _has_secret(new)
        changes.append(
            FieldChange(
                path=path,
                old=mask_secrets(old),
                new=mask_secrets(new),
                forces_replacement=path not in IN_PLACE_FIELDS,
                sensitive=sensitive,
            )
        )
    changes.sort(key=lambda c: c.path)
    return changes


def _deepdiff_changes(current: Mapping[str, Any], desired: Mapping[str, Any]) -> list[tuple[list, Any, Any]]:
    from deepdiff import DeepDiff  # imported only when needed (about 20 ms)

    diff = DeepDiff(dict(current), dict(desired), view="tree", verbose_level=2)
    return [
        (
            level.path(output_format="list"),
            None if _missing(level.t1) else level.t1,
            None if _missing(level.t2) else level.t2,
        )
        for report in diff.values()
        for level in report
    ]


_PLAIN = (str, int, bool, type(None))


def _leaf_changes(old: Any, new: Any, parts: list, out: list) -> bool:
    """The changes DeepDiff reports between two wire bodies, in the common cases,
    appended to ``out`` as ``(path parts, old, new)``; False when a case is left
    to DeepDiff (lists of different lengths, values of other types).

    DeepDiff (tree view) reports a value of another type as one change at its
    path (``type_changes``), a differing value of the same type likewise
    (``values_changed``), a key on one side only as a change from or to
    nothing (``dictionary_item_added``/``removed``), and descends into
    mappings and lists of equal length item by item.
    """
    kind = type(old)
    if kind is not type(new):
        out.append((parts, old, new))
        return True
    if kind is dict:
        for key, value in old.items():
            if key in new:
                if value is not new[key] and not _leaf_changes(value, new[key], [*parts, key], out):
                    return False
            else:
                out.append(([*parts, key], value, None))
        for key, value in new.items():
            if key not in old:
                out.append(([*parts, key], None, value))
        return True
    if kind is list:
        if len(old) != len(new):
            return False
        for index, (a, b) in enumerate(zip(old, new)):
            if a is not b and not _leaf_changes(a, b, [*parts, index], out):
                return False
        return True
    if kind in _PLAIN:
        if old != new:
            out.append((parts, old, new))
        return True
    return False


def _missing(value: Any) -> bool:
    return type(value).__name__ == "NotPresent"


class Targets:
    """``--target`` values: each names a task (APP/ROOM/TASK), a room (APP/ROOM) or an app (APP).
    An address matches by set lookups of itself and of its prefixes at each '/', so
    matching costs the same whatever the number of targets (5,000 over 10,000 tasks)."""

    __slots__ = ("given", "names")

    def __init__(self, targets: Iterable[str]):
        self.given = list(targets)
        self.names = frozenset(target.strip("/") for target in self.given)

    def __bool__(self) -> bool:
        return bool(self.given)

    def matches(self, address: str) -> bool:
        names = self.names
        if address in names:
            return True
        cut = address.find("/")
        while cut >= 0:
            if address[:cut] in names:
                return True
            cut = address.find("/", cut + 1)
        return False

    def check_each_matches(self, addresses: Iterable[str]) -> None:
        """Refuse a target that matches none of ``addresses``."""
        prefixes: set[str] = set()
        for address in addresses:
            prefixes.add(address)
            cut = address.find("/")
            while cut >= 0:
                prefixes.add(address[:cut])
                cut = address.find("/", cut + 1)
        for target in self.given:
            if target.strip("/") not in prefixes:
                raise UsageError(
                    f"--target {target} matches no task in the manifests or the state (see snapctl state list)"
                )


#: How a state entry written by snapctl starts: its request (see ``StateStore.record_put``).
_STORED = b'{"request":'


def make_plan(
    desired: Mapping[str, Mapping[str, Any]],
    state: State,
    *,
    targets: Sequence[str] = (),
    replace: Sequence[str] = (),
    destroy: bool = False,
    manifest_paths: Sequence[str] = (),
    secrets_unknown: bool = False,
    observations: Mapping[str, Observation] | None = None,
    fingerprint_creates: bool = True,
) -> Plan:
    """Diff desired wire requests (by address, secrets in clear) against ``state``
    and, given ``observations`` (a refresh), against what runs.

    With ``secrets_unknown`` the desired secret values are not known: each
    secret field is taken as the state has it (never a change), or shown as
    ``UNKNOWN_SECRET`` for a task the state does not hold.

    Without ``fingerprint_creates``, the secrets of a task the state does not hold are
    not fingerprinted (a key derivation each, and nothing to compare them with): the
    plan is the same to show, but :attr:`Plan.display_only`, never saved or applied.

    ``targets`` limits the plan to those addresses (or their rooms/apps);
    ``replace`` forces a replacement; ``destroy`` plans the deletion of everything in scope.

    A task with a pending intent (a call an interrupted run sent and never saw
    answered) is planned as if it ran the intent's request: a change then stops
    it or updates it, both of which accept "not running". Where the manifests ask
    for exactly that request, the call is made again (StartSnapshot, or
    UpdateSnapshot for an update), since the task may not run it.

    With observations, a declared task that ended or failed is started again
    (the API's StopReason in the reason); a running (or not yet started) one is
    compared by its live configuration (:func:`api.comparable` on both sides;
    BusinessId, which the read does not return, from the state), and marked
    ``changed_outside`` when that differs from the state's record; an unknown
    one is planned offline and listed in ``Plan.unknown``.
    """
    scope = Targets(targets)
    for address in replace:
        if address not in desired or address not in state.tasks:
            raise UsageError(f"--replace {address}: no such task in both the manifests and the state")
        if scope and not scope.matches(address):
            # Dropping it silently would apply less than asked; adding it, more than targeted.
            raise UsageError(
                f"--replace {address} is outside --target {', '.join(targets)}: add --target {address}, "
                "or leave out --target"
            )
    if destroy:
        desired = {}
    actions: list[PlannedAction] = []
    unchanged = 0
    tasks = state.tasks
    if state.pending:
        tasks = tasks.copy()  # type: ignore[attr-defined]  # a TaskTable or a dict: both copy cheaply
        for address, intent in state.pending.items():
            tasks[address] = {"request": intent["request"]}
    # Every address once, sorted. Both sides usually come sorted already,
    # and sorting two sorted runs is a merge.
    addresses = list(desired)
    addresses.extend(address for address in tasks if address not in desired)
    addresses.sort()
    scope.check_each_matches(addresses)
    fingerprint = _Fingerprints(state)
    display_only = False
    unknown: list[UnknownTask] = []
    observed: dict[str, int] = {}
    legacy: list[str] = []
    # A task whose secrets' scrypt fingerprints are still being computed (in the background)
    # is planned after the others: the loop goes on meanwhile.
    deferred: list[tuple[str, Mapping[str, Any], dict[str, Any] | None]] = []

    def plan_task(address: str, want: dict[str, Any] | None, have: dict[str, Any] | None) -> None:
        nonlocal unchanged
        seen = observations.get(address) if observations is not None else None
        if seen is not None and have is None and _not_found(seen):
            observed["new"] = observed.get("new", 0) + 1  # not in the state either: created below
            seen = None
        if seen is not None:
            observed[seen.observed.value] = observed.get(seen.observed.value, 0) + 1
            if seen.live is None or seen.observed is Observed.unknown:  # nothing is planned from what was not seen
                unknown.append(UnknownTask(address=address, detail=seen.detail))
            elif want is not None and address not in replace:
                action = _plan_observed(address, want, have, seen)
                if action is None:
                    unchanged += 1
                else:
                    actions.append(action)
                return
        if have is None:
            actions.append(PlannedAction(address=address, kind=ActionKind.create, desired=want, reason=CREATE_REASON))
        elif want is None:
            actions.append(PlannedAction(address=address, kind=ActionKind.delete, current=have, reason=DELETE_REASON))
        elif address in replace:
            actions.append(
                PlannedAction(
                    address=address,
                    kind=ActionKind.replace,
                    desired=want,
                    current=have,
                    changes=diff_requests(have, want),
                    reason="replacement requested with --replace",
                )
            )
        elif want == have:
            unchanged += 1
        else:
            changes = diff_requests(have, want)
            kind = ActionKind.replace if any(c.forces_replacement for c in changes) else ActionKind.update
            reason = (
                "only ImageConfig.Interval differs: UpdateSnapshot changes it in place"
                if kind is ActionKind.update
                else "fields the API cannot update in place differ"
            )
            actions.append(
                PlannedAction(address=address, kind=kind, desired=want, current=have, changes=changes, reason=reason)
            )

    # Where the state keeps a task's entry as written (snapctl's compact JSON, request first: _STORED)
    # and the desired request serializes to the same bytes, the task is unchanged: no dict is
    # made, decoded or compared. Anything else (secrets, which the state fingerprints; another
    # layout) takes the comparison below, which decides alike.
    json_of: Callable[[str], bytes] | None = getattr(desired, "json_of", None)
    stored_bytes: Callable[[str], bytes | None] | None = getattr(tasks, "stored_bytes", None)
    if secrets_unknown:
        json_of = None
    # An observed task is compared by what runs; the others may take the shortcut.
    compared = set(replace) | set(state.pending) | set(observations or ())
    for address in addresses:
        if scope and not scope.matches(address):
            continue
        if json_of is not None and stored_bytes is not None and address not in compared:
            stored = stored_bytes(address)
            if stored is not None and address in desired and stored.startswith(_STORED + json_of(address) + b","):
                unchanged += 1
                continue
        want = desired.get(address)
        entry = tasks.get(address)
        have = entry.get("request") if entry is not None else None
        if want is not None:
            if secrets_unknown:  # each secret as the state has it: nothing is fingerprinted
                want = _secrets_as_known(want, have)
            elif have is None and not fingerprint_creates and observations is None:
                want = _secrets_as_known(want, None, NOT_COMPUTED)
                display_only = True
            elif have is not None and has_legacy_fingerprints(have):
                # Compare an old HMAC fingerprint with the same kind, so an unchanged secret stays unchanged.
                want = state.fingerprint(dict(want), like=have)
                if want == have:
                    legacy.append(address)
            else:
                done = fingerprint.fingerprinted(want, wait=False)
                if done is None:
                    deferred.append((address, want, have))
                    continue
                want = done
        plan_task(address, want, have)
    if deferred:
        for address, want, have in deferred:
            plan_task(address, fingerprint(want), have)
        # Back in address order, as if planned in turn.
        actions.sort(key=lambda a: a.address)
        unknown.sort(key=lambda u: u.address)
    if state.pending and not destroy:
        planned = {a.address for a in actions}
        for address, intent in sorted(state.pending.items()):
            if address in planned or address not in desired or (scope and not scope.matches(address)):
                continue
            unchanged -= 1
            if intent["action"] == "UpdateSnapshot":
                actions.append(
                    PlannedAction(
                        address=address,
                        kind=ActionKind.update,
                        desired=intent["request"],
                        current=intent["request"],
                        reason="an interrupted apply sent UpdateSnapshot and never learned its outcome: sent again",
                    )
                )
            else:
                actions.append(
                    PlannedAction(
                        address=address,
                        kind=ActionKind.create,
                        desired=intent["request"],
                        reason=(
                            "an interrupted replace stopped the task and never started it again: started again"
                            if intent.get("replace")
                            else f"an interrupted apply sent {intent['action']} and never learned its outcome: "
                            "started again"
                        ),
                    )
                )
        actions.sort(key=lambda a: a.address)
    for action in actions:
        unsettled = state.pending.get(action.address)
        if unsettled is not None:
            action.pending = pending_text(unsettled)
    made = Plan(
        state_lineage=state.lineage,
        state_serial=state.serial,
        state_exists=state.exists,
        new_state_key=None if state.exists else state.fingerprint_key,
        manifest_paths=list(manifest_paths),
        targets=list(targets),
        replace=list(replace),
        destroy=destroy,
        secrets_unknown=secrets_unknown,
        actions=actions,
        unchanged=unchanged,
        legacy_fingerprints=legacy,
        refreshed=observations is not None,
        observed=dict(sorted(observed.items())),
        unknown=unknown,
    )
    made._display_only = display_only
    return made


def pending_text(intent: Mapping[str, Any]) -> str:
    """What an unsettled intent says of its task: ``stop sent, start not yet``."""
    replace = intent.get("replace")
    if replace == "stopped":
        return "stop sent, start not yet"
    if replace == "starting":
        return "stopped, then StartSnapshot sent: outcome not known"
    return f"{intent['action']} sent, outcome not known"


def _not_found(seen: Observation) -> bool:
    """The read answered "not found" (no status: not a failed read, nor Status 0, nor an
    answer of another shape, each of which says nothing of whether the task exists)."""
    return seen.live is None and seen.status is None and not seen.read_error and not getattr(seen, "unreadable", False)


def _plan_observed(address: str, want: dict[str, Any], have: dict[str, Any] | None, seen: Observation):
    """The action for a declared task that was read (None: it runs as declared)."""
    if seen.stopped:
        return PlannedAction(
            address=address,
            kind=ActionKind.restart,
            desired=want,
            current=have,
            reason=f"{seen.describe()}: started again",
            observed=seen.observed.value,
            stop_reason=seen.stop_reason or None,
        )
    live = dict(seen.live or {})
    declared = comparable(want)
    # BusinessId cannot be read: the state's record stands for the live value.
    if have is not None and "BusinessId" in have:
        live["BusinessId"] = have["BusinessId"]
    if "BusinessId" in want:
        declared["BusinessId"] = want["BusinessId"]
    if live == declared:
        if have is None:
            return PlannedAction(
                address=address,
                kind=ActionKind.create,
                desired=want,
                reason="runs as declared but is not in the state: StartSnapshot (already started) adopts it",
                observed=seen.observed.value,
            )
        return None
    changes = diff_requests(live, declared)
    outside = have is None or comparable(have) != seen.live
    kind = ActionKind.replace if any(c.forces_replacement for c in changes) else ActionKind.update
    how = (
        "UpdateSnapshot changes it in place"
        if kind is ActionKind.update
        else "fields the API cannot update in place differ"
    )
    if outside:
        fields = ", ".join(c.path for c in changes)
        reason = f"changed outside snapctl: the live {fields} differ from the declared values; {how}"
    else:
        reason = (
            "only ImageConfig.Interval differs: UpdateSnapshot changes it in place"
            if kind is ActionKind.update
            else "fields the API cannot update in place differ"
        )
    return PlannedAction(
        address=address,
        kind=kind,
        desired=want,
        current=live,
        changes=changes,
        reason=reason,
        observed=seen.observed.value,
        changed_outside=outside,
    )


def _secrets_as_known(
    want: Mapping[str, Any], have: Mapping[str, Any] | None, missing: str = UNKNOWN_SECRET
) -> dict[str, Any]:
    """``want`` with each secret field as ``have`` holds it, else ``missing``."""
    out = dict(want)
    for path in SECRET_FIELDS:
        parent: Any = out
        ok = True
        for part in path[:-1]:
            child = parent.get(part) if isinstance(parent, dict) else None
            if not isinstance(child, dict):
                ok = False
                break
            parent[part] = child = dict(child)  # copied: the desired body may be shared
            parent = child
        if not ok or path[-1] not in parent:
            continue
        known: Any = have
        for part in path:
            known = known.get(part) if isinstance(known, Mapping) else None
        parent[path[-1]] = known if known is not None else missing
    return out


class _Fingerprints:
    """``state.fingerprint(dict(request))`` for many requests, each secret-holding
    part fingerprinted once per distinct value (requests mostly share their
    storage block, and a fingerprint costs a deep copy and an HMAC)."""

    def __init__(self, state: State):
        self.state = state
        self.tops = tuple(dict.fromkeys(path[0] for path in SECRET_FIELDS))
        self.memo: dict[tuple, Any] = {}

    def __call__(self, request: Mapping[str, Any]) -> dict[str, Any]:
        done = self.fingerprinted(request, wait=True)
        assert done is not None
        return done

    def fingerprinted(self, request: Mapping[str, Any], *, wait: bool) -> dict[str, Any] | None:
        """The request fingerprinted; without ``wait``, None while its secrets' fingerprints
        are being computed (they are started in the background then)."""
        request = request if type(request) is dict else dict(request)
        if not _holds_secret(request):
            return request
        out = dict(request)
        for top in self.tops:
            if top not in request:
                continue
            value = request[top]
            try:
                key = (top, orjson.dumps(value) if isinstance(value, (dict, list)) else value)
                hash(key)
            except (TypeError, orjson.JSONEncodeError):
                return self.state.fingerprint(dict(request))
            done = self.memo.get(key)
            if done is None:
                if not wait and not self.state.prefetch_fingerprints(_secret_values({top: value})):
                    return None
                done = self.memo[key] = self.state.fingerprint({top: value})[top]
            out[top] = done
        return out


def _secret_values(request: Mapping[str, Any]) -> list[Any]:
    """The secret values ``state.fingerprint`` would fingerprint (scrypt) in ``request``."""
    values = []
    for path in SECRET_FIELDS:
        parent: Any = request
        for part in path[:-1]:
            parent = parent.get(part) if isinstance(parent, dict) else None
        if isinstance(parent, dict) and path[-1] in parent and not is_fingerprint(parent[path[-1]]):
            values.append(parent[path[-1]])
    return values


def _holds_secret(request: dict[str, Any]) -> bool:
    """Whether ``state.fingerprint`` has something to fingerprint in ``request``."""
    return any(
        name in parent and not is_fingerprint(parent[name])
        for parent, names in secret_holders(request)
        for name in names
    )


def upgrade_plan(plan: Plan) -> Plan:
    """A saved plan of an older readable format as this snapctl makes it (format 1: the
    restart of an ended or failed task was a create carrying its observation)."""
    if plan.format_version == 1:
        for action in plan.actions:
            if action.kind is ActionKind.create and action.observed in ("ended", "failed"):
                action.kind = ActionKind.restart
        plan.format_version = PLAN_FORMAT_VERSION
    return plan


def check_plan_current(plan: Plan, state: State, state_path: str) -> None:
    """Refuse a saved plan whose state has moved on or belongs to another state."""
    if plan.state_exists and state.exists and plan.state_lineage != state.lineage:
        raise UsageError(
            f"the saved plan was made for another state (lineage {plan.state_lineage}, "
            f"{state_path} has {state.lineage}); run snapctl plan again"
        )
    if plan.state_exists != state.exists or plan.state_serial != state.serial:
        raise UsageError(
            f"the saved plan is stale: the state moved on since it was saved (made against serial {plan.state_serial}, "
            f"{state_path} is now at serial {state.serial if state.exists else 'none (no state)'}); run snapctl plan again"
        )


def observations_of(saved: Plan) -> dict[str, Observation]:
    """The observations a saved ``--refresh`` plan acted on, as its actions record them,
    so that planning again offline gives the same plan while nothing else moved.
    (Tasks it found running as declared are planned offline, against the state.)"""
    seen: dict[str, Observation] = {}
    for action in saved.actions:
        if action.observed is None:
            continue
        if action.current is not None and action.kind not in STARTS:
            live = {k: v for k, v in action.current.items() if k != "BusinessId"}
        else:  # a restart (the live configuration is not used) or an adoption (it was the declared one)
            live = comparable(action.desired or {})
        seen[action.address] = Observation(
            action.address, Observed(action.observed), stop_reason=action.stop_reason or "", live=live
        )
    return seen


def check_plan_unchanged(saved: Plan, fresh: Plan) -> None:
    """Refuse a saved plan that differs from ``fresh``, the plan the same state and the
    current manifests give (same scope): a changed secret, or a changed manifest,
    anywhere in scope, not only in the tasks the saved plan acts on."""
    old = {a.address: a for a in saved.actions}
    new = {a.address: a for a in fresh.actions}
    for address in sorted(old.keys() | new.keys()):
        before, after = old.get(address), new.get(address)
        if before is not None and after is not None and _same_action(before, after):
            continue
        same_but_secrets = (
            before is not None
            and after is not None
            and before.kind is after.kind
            and mask_secrets(before.desired) == mask_secrets(after.desired)
            and mask_secrets(before.current) == mask_secrets(after.current)
        )
        only_secrets = (
            before is None and after is not None and bool(after.changes) and all(c.sensitive for c in after.changes)
        )
        if same_but_secrets or only_secrets:
            raise UsageError(
                f"the saved plan is stale: a secret changed since it was saved: the storage credentials of {address} "
                "are not those it was planned with; run snapctl plan again"
            )
        if after is None:
            what = f"the saved plan would {before.kind.value} it, and now it needs no change" if before else "changed"
        elif before is None:
            what = f"it now needs {_article(after.kind)} (not in the saved plan)"
        elif before.kind is not after.kind:
            what = f"it now needs {_article(after.kind)}, the saved plan has {_article(before.kind)}"
        else:
            what = f"its declaration changed ({before.kind.value} to another request)"
        raise UsageError(
            f"the saved plan is stale: the manifests changed since it was saved: {address}: {what}; run snapctl plan again"
        )


def _same_action(a: PlannedAction, b: PlannedAction) -> bool:
    return a.kind is b.kind and a.desired == b.desired and a.current == b.current


def _article(kind: ActionKind) -> str:
    return {
        "create": "a create",
        "restart": "a restart",
        "update": "an update",
        "replace": "a replace",
        "delete": "a delete",
    }[kind.value]
