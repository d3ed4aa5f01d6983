"""The ``--json`` documents: the plan (written an action at a time), the results of
apply, destroy and reconcile, and the diagnostics of manifests that cannot be used;
stable and documented in docs/json-output.md."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import orjson

from ..plan import FieldChange, Plan, PlannedAction
from .fields import action_changes, code_name
from .results import already_running, stopped_line

if TYPE_CHECKING:  # only annotations: rendering does not load the apply machinery
    from ..apply import ActionResult, ApplyReport

OUTPUT_FORMAT_VERSION = 1


def plan_document(plan: Plan) -> dict[str, Any]:
    """The ``--json`` plan: stable and documented in docs/json-output.md (see :func:`plan_json`)."""
    return _plan_head(plan) | {"actions": [_action_document(a) for a in plan.actions]}


def plan_json(plan: Plan) -> Iterator[bytes]:
    """:func:`plan_document` as indented JSON, byte for byte, written an action at a time:
    a first plan of 100,000 tasks lists some two million field changes, which as one
    document (dicts, then its text) took over a gigabyte."""
    head = _indented(_plan_head(plan) | {"actions": []})
    if not plan.actions:
        yield head + b"\n"
        return
    assert head.endswith(b"[]\n}")
    yield head[: -len(b"]\n}")] + b"\n"
    for number, action in enumerate(plan.actions):
        text = _indented(_action_document(action))
        yield (b",\n" if number else b"") + b"    " + text.replace(b"\n", b"\n    ")
    yield b"\n  ]\n}\n"


def _indented(document: Any) -> bytes:
    """``document`` as JSON indented by two spaces (as ``print_json`` writes it)."""
    try:
        return orjson.dumps(document, option=orjson.OPT_INDENT_2)
    except orjson.JSONEncodeError:  # an integer beyond 64 bits (a plan file may hold one): Python's JSON writes it
        return json.dumps(document, indent=2, ensure_ascii=False, default=str).encode()


def _plan_head(plan: Plan) -> dict[str, Any]:
    return {
        "format_version": OUTPUT_FORMAT_VERSION,
        "type": "plan",
        "created_at": plan.created_at,
        "state": {"lineage": plan.state_lineage, "serial": plan.state_serial},
        "destroy": plan.destroy,
        "secrets_unknown": plan.secrets_unknown,
        "summary": plan.summary.model_dump() | {"unchanged": plan.unchanged},
        "has_changes": plan.has_changes,
        "refreshed": plan.refreshed,
        "refresh_s": plan.refresh_s,
        "observed": plan.observed,
        "unknown": [u.model_dump() for u in plan.unknown],
    }


def _action_document(a: PlannedAction) -> dict[str, Any]:
    return {
        "address": a.address,
        "action": a.kind.value,
        "symbol": a.symbol,
        "reason": a.reason,
        "observed": a.observed,
        "stop_reason": a.stop_reason,
        "changed_outside": a.changed_outside,
        "pending": a.pending,
        "changes": [_change_document(c, a) for c in action_changes(a)],
    }


def diagnostic_document(diagnostic: Any) -> dict[str, Any]:
    """One manifest diagnostic as JSON: where (file, line, column; null when it concerns no
    place in a file), how bad, and what."""
    location = diagnostic.location
    return {
        "file": location.file if location else None,
        "line": location.line if location else None,
        "column": location.column if location else None,
        "severity": diagnostic.severity,
        "message": diagnostic.message,
    }


def invalid_document(diagnostics: Iterable[Any], command: str) -> dict[str, Any]:
    """``validate --json`` and ``plan --json`` on manifests that cannot be used."""
    diagnostics = list(diagnostics)
    return {
        "format_version": OUTPUT_FORMAT_VERSION,
        "type": command,
        "valid": False,
        "diagnostics": [diagnostic_document(d) for d in diagnostics],
    }


def _change_document(change: FieldChange, action: PlannedAction) -> dict[str, Any]:
    """A field change as JSON: the API's values, and the manifest's names of codes beside them."""
    return change.model_dump() | {
        "old_name": code_name(change.path, change.old, action.current),
        "new_name": code_name(change.path, change.new, action.desired),
    }


def _error_fields(result: ActionResult) -> dict[str, Any]:
    err = result.error
    if err is None:
        return {
            "code": None,
            "code_n": None,
            "message": None,
            "request_id": result.calls[-1].request_id if result.calls else None,
        }
    return {
        "code": err.code or type(err).__name__,
        "code_n": err.code_n or None,
        "message": err.message,
        "request_id": err.request_id or None,
    }


def _stop_fields(report: ApplyReport) -> dict[str, Any] | None:
    err = report.stopped_by
    if err is None:
        return None
    return {
        "code": err.code or type(err).__name__,
        "code_n": err.code_n or None,
        "message": stopped_line(report),
        "request_id": err.request_id or None,
    }


def reconcile_document(
    *,
    ok: bool,
    error: Exception | None,
    declared: int,
    duration_s: float,
    reads: int,
    observed: dict[str, int],
    failing: dict[str, str],
    deferred: dict[str, float | None],
    report: ApplyReport | None,
    plan: Plan | None,
    refreshed: bool = True,
    interrupted: bool = False,
    **hold: Any,
) -> dict[str, Any]:
    """The ``--json`` line of a ``reconcile`` round, or of a hold of the controller's lock
    (``--watch``), which adds what the hold did (``hold``: ``lock_wait_s``, ``recorded``,
    ``acted_after_reads``, ``retry_in_s``). ``deferred``: the stopped tasks whose restart is not due yet,
    with when it is (epoch seconds; None: never)."""
    from ..restarts import iso

    document = {
        "format_version": OUTPUT_FORMAT_VERSION,
        "type": "reconcile",
        "ok": ok,
        "error": str(error) if error else None,
        "declared": declared,
        "duration_s": round(duration_s, 3),
        "refreshed": refreshed,
        "reads": reads,
        "observed": observed,
        "interrupted": interrupted,
        "failing": failing,
        "deferred": {address: iso(at) if at is not None else None for address, at in deferred.items()},
        **hold,
    }
    if report is not None and plan is not None:
        document["result"] = apply_document(report, plan, command="reconcile")
    return document


def apply_document(report: ApplyReport, plan: Plan, *, command: str = "apply") -> dict[str, Any]:
    """The ``--json`` result of apply, destroy and reconcile."""
    return {
        "format_version": OUTPUT_FORMAT_VERSION,
        "type": command,
        "ok": report.ok,
        "interrupted": report.interrupted,
        "stopped_by": _stop_fields(report),
        "not_attempted": report.not_attempted,
        "elapsed_s": round(report.elapsed_s, 3),
        "summary": plan.summary.model_dump()
        | {
            "succeeded": sum(r.ok for r in report.results),
            "failed": len(report.failures),
            "healed": len(report.healed),
            "already_running": already_running(report),
            "not_adopted": len(report.not_adopted),
            "skipped": report.skipped,
        },
        "adoption": {
            "state": report.state,
            "held_tasks": report.held_tasks,
            "adopt": report.adopt,
            "adopted": [r.address for r in report.adopted],
            "not_adopted": [r.address for r in report.not_adopted],
        },
        "results": [
            {
                "address": r.address,
                "action": r.kind,
                "outcome": r.outcome,
                "healed": r.healed,
                "calls": [
                    {"action": c.action, "outcome": c.outcome.value, "request_id": c.request_id, "attempts": c.attempts}
                    for c in r.calls
                ],
                **_error_fields(r),
            }
            for r in report.results
        ],
    }
