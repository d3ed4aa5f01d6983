"""The checks a saved plan passes before it is applied: made against this state and its
serial, and the same plan the current manifests give (a changed secret named as such).
"""

from __future__ import annotations

from ..api import Observation, Observed, comparable
from ..errors import UsageError
from ..state import State
from .diff import mask_secrets
from .model import STARTS, ActionKind, Plan, PlannedAction


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
