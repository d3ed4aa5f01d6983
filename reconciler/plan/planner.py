"""Planning: the desired requests diffed against the state and, after a refresh, against
what runs; ``--target``, ``--replace`` and ``destroy`` applied; an interrupted apply's
intents finished. It never touches the network.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from ..api import Observation, Observed, comparable
from ..errors import UsageError
from ..state import State, has_legacy_fingerprints
from .diff import diff_requests
from .fingerprints import _Fingerprints, _secrets_as_known
from .model import CREATE_REASON, DELETE_REASON, NOT_COMPUTED, ActionKind, Plan, PlannedAction, UnknownTask


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
            if unsettled.get("owned_if_started_after") is not None and action.address not in state.tasks:
                # A first Start whose answer may have been "already started" (see reconciler.apply).
                action.pending += "; apply reads the task first and leaves it alone if another state started it"
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
