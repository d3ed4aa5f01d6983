"""The plan: what apply would do to make the state match the manifests.

A plan compares the desired requests with the state and, after a refresh, with
the observations GetSnapshotTask made of the live tasks; it never touches the
network itself. It is a value: printed, saved to a file, and applied later.

The package, one idea a module, each using only those listed before it:

- :mod:`.model`: the plan as a value, and its saved-file format;
- :mod:`.diff`: the field changes between two requests;
- :mod:`.fingerprints`: the desired secrets as the state would record them;
- :mod:`.planner`: :func:`make_plan`, the planning itself;
- :mod:`.checks`: whether a saved plan still holds.
"""

from __future__ import annotations

from .checks import check_plan_current, check_plan_unchanged, observations_of
from .diff import IN_PLACE_FIELDS, diff_requests, mask_secrets
from .model import (
    CREATE_REASON,
    DELETE_REASON,
    NOT_COMPUTED,
    PLAN_FORMAT_VERSION,
    READABLE_PLAN_FORMATS,
    STARTS,
    SYMBOLS,
    UNKNOWN_SECRET,
    ActionKind,
    FieldChange,
    Plan,
    PlannedAction,
    PlanSummary,
    UnknownTask,
    upgrade_plan,
)
from .planner import Targets, make_plan, pending_text

__all__ = [
    "CREATE_REASON",
    "DELETE_REASON",
    "IN_PLACE_FIELDS",
    "NOT_COMPUTED",
    "PLAN_FORMAT_VERSION",
    "READABLE_PLAN_FORMATS",
    "STARTS",
    "SYMBOLS",
    "UNKNOWN_SECRET",
    "ActionKind",
    "FieldChange",
    "Plan",
    "PlanSummary",
    "PlannedAction",
    "Targets",
    "UnknownTask",
    "check_plan_current",
    "check_plan_unchanged",
    "diff_requests",
    "make_plan",
    "mask_secrets",
    "observations_of",
    "pending_text",
    "upgrade_plan",
]
