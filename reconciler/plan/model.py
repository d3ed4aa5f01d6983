"""The plan as a value: its actions, their kinds and field changes, what it was made
against, and its saved-file format (``plan --out``; read back by :meth:`Plan.from_json`,
an older readable format upgraded on the way).
"""

from __future__ import annotations

import datetime as _dt
import enum
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, Field, PrivateAttr, computed_field

from ..errors import UsageError
from ..state import FINGERPRINT_PREFIX

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


def upgrade_plan(plan: Plan) -> Plan:
    """A saved plan of an older readable format as this snapctl makes it (format 1: the
    restart of an ended or failed task was a create carrying its observation)."""
    if plan.format_version == 1:
        for action in plan.actions:
            if action.kind is ActionKind.create and action.observed in ("ended", "failed"):
                action.kind = ActionKind.restart
        plan.format_version = PLAN_FORMAT_VERSION
    return plan
