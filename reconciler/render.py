"""How plans and apply results look: for people (text, Markdown) and machines (JSON).

Renderers take values and return strings; they never print, so the CLI decides
where output goes and whether it is coloured. Secrets never reach here: plans
carry fingerprints, which are shown as ``(sensitive)``.
"""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import orjson

from .api import printable
from .plan import (
    CREATE_REASON,
    DELETE_REASON,
    STARTS,
    UNKNOWN_SECRET,
    ActionKind,
    FieldChange,
    Plan,
    PlannedAction,
    mask_secrets,
)
from .style import Style as Style  # re-exported: callers that render plans style them

if TYPE_CHECKING:  # only annotations: rendering a plan does not load the apply machinery
    from .apply import ActionResult, ApplyReport
    from .errors import ApiError

OUTPUT_FORMAT_VERSION = 1

_COLOURS = {
    ActionKind.create: "green",
    ActionKind.restart: "cyan",
    ActionKind.update: "yellow",
    ActionKind.replace: "magenta",
    ActionKind.delete: "red",
}
_HEADLINES = {
    ActionKind.create: "will be created",
    ActionKind.restart: "will be restarted",
    ActionKind.update: "will be updated in place",
    ActionKind.replace: "must be replaced",
    ActionKind.delete: "will be destroyed",
}


def field_value(value: Any, path: str = "", body: dict[str, Any] | None = None) -> str:
    """A field's value as plans and ``state show`` print it: JSON, secrets masked, and the
    manifest's name beside an API code (``0 (jpeg)``, ``0 (cn-beijing)``). ``body``: the
    request the value is part of (a region's name depends on its storage's vendor)."""
    if value is None:
        return "(none)"
    if value == UNKNOWN_SECRET:
        return UNKNOWN_SECRET
    # JSON escapes the C0 controls; printable the rest (C1 controls, separators), never cut.
    text = printable(json.dumps(mask_secrets(value), ensure_ascii=False, sort_keys=False), limit=sys.maxsize)
    name = code_name(path, value, body)
    return f"{text} ({name})" if name else text


def code_name(path: str, value: Any, body: dict[str, Any] | None = None) -> str | None:
    """The manifest's word for an API code at ``path`` (``ImageConfig.Format`` 1 -> ``png``;
    a storage ``Region`` by the vendor's table, the vendor read from ``body``)."""
    if type(value) is not int:
        return None
    if path.startswith("StorageConfig.") and path.endswith("Config.Region"):
        return _region_name(path, value, body)
    enum = _CODES.get(path.rsplit(".", 1)[-1] if path.endswith(".StreamType") else path)
    if enum is None:
        return None
    try:
        return enum(value).name
    except ValueError:
        return None


def _region_name(path: str, code: int, body: dict[str, Any] | None) -> str | None:
    from . import api, regions

    if path == "StorageConfig.TosConfig.Region":
        return regions.region_name("tos", None, code)
    if path != "StorageConfig.CustomConfig.Region" or body is None:
        return None
    custom = (body.get("StorageConfig") or {}).get("CustomConfig") or {}
    try:
        vendor = api.Vendor(custom.get("Vendor", 0)).name
    except (ValueError, TypeError):
        return None
    return regions.region_name("custom", vendor, code)


def _code_enums() -> dict[str, Any]:
    from . import api

    return {
        "ImageConfig.Format": api.Format,
        "StreamType": api.StreamType,
        "StorageConfig.Type": api.StorageType,
        "StorageConfig.CustomConfig.Vendor": api.Vendor,
    }


_CODES = _code_enums()


def code_names(body: dict[str, Any] | None) -> dict[str, str]:
    """The manifest's names of the API codes in ``body``, by flattened path (``{"ImageConfig.Format": "jpeg"}``)."""
    names = {path: code_name(path, value, body) for path, value in flatten(body)}
    return {path: name for path, name in names.items() if name is not None}


def flatten(body: dict[str, Any] | list[Any] | None, prefix: str = "") -> list[tuple[str, Any]]:
    """``{"A": {"B": 1}}`` -> ``[("A.B", 1)]``, lists as ``[i]``; secrets masked."""
    out: list[tuple[str, Any]] = []
    items: Iterable[tuple[Any, Any]] = (body or {}).items() if isinstance(body, dict) else enumerate(body or [])
    for key, value in items:
        path = f"{prefix}[{key}]" if isinstance(key, int) else (f"{prefix}.{key}" if prefix else str(key))
        if isinstance(value, (dict, list)) and value:
            out.extend(flatten(value, path))
        else:
            out.append((path, mask_secrets(value)))
    return out


def action_changes(action: PlannedAction) -> list[FieldChange]:
    """The field changes of an action; creates and deletes list every field."""
    if action.kind in STARTS:
        return [
            FieldChange(
                path=p, old=None, new=v, forces_replacement=False, sensitive=v in ("(sensitive)", UNKNOWN_SECRET)
            )
            for p, v in flatten(action.desired)
        ]
    if action.kind is ActionKind.delete:
        return [
            FieldChange(path=p, old=v, new=None, forces_replacement=False, sensitive=v == "(sensitive)")
            for p, v in flatten(action.current)
        ]
    return action.changes


def _refresh_lines(plan: Plan) -> list[str]:
    """What a refresh saw, and the tasks it could not see."""
    if not plan.refreshed:
        return []
    counts = ", ".join(f"{n} {status.replace('_', ' ')}" for status, n in plan.observed.items()) or "no task"
    took = f" in {plan.refresh_s:.1f} s" if plan.refresh_s is not None else ""
    lines = [f"Refreshed {sum(plan.observed.values())} task(s) with GetSnapshotTask{took}: {counts}."]
    if plan.unknown:
        lines.append(
            f"{len(plan.unknown)} task(s) could not be seen (no change planned; apply and reconcile "
            "confirm them with StartSnapshot, but for answers of another shape than documented):"
        )
        lines += [f"  ? {u.address}: {printable(u.detail)}" for u in plan.unknown]
    return lines


def _no_changes(plan: Plan) -> str:
    if plan.destroy:
        return "No changes. Nothing to destroy."
    if plan.refreshed:
        return f"No changes. {plan.unchanged} task(s) run as declared."
    return f"No changes. {plan.unchanged} task(s) match the state."


def headline(action: PlannedAction) -> str:
    """``will be created``; a restart with what the refresh saw: ``will be restarted (ended: IdleTimeOut)``;
    a task an interrupted apply left half-done with what it had sent: ``(pending: stop sent, start not yet)``."""
    words = _HEADLINES[action.kind]
    if action.kind is ActionKind.restart and action.observed:
        seen = f"{action.observed}: {action.stop_reason}" if action.stop_reason else action.observed
        words += f" ({seen})"
    if action.pending:
        words += f" (pending: {action.pending})"
    return words


def plan_text(plan: Plan, style: Style) -> str:
    """The human plan: every action with its field diff, then the summary line."""
    refresh = _refresh_lines(plan)
    if not plan.actions:
        return (
            "\n".join([*refresh, _no_changes(plan)]) + "\n" + (_NO_SECRETS_NOTE + "\n" if plan.secrets_unknown else "")
        )
    lines = [*refresh, *([""] if refresh else []), "snapctl will perform the following actions:", ""]
    for action in plan.actions:
        colour = _COLOURS[action.kind]
        lines.append(style(f"  # {action.address} {headline(action)}", "bold"))
        if action.reason not in ("", CREATE_REASON, DELETE_REASON) and action.kind is not ActionKind.restart:
            lines.append(style(f"  # ({action.reason})", "dim"))
        if action.changed_outside:
            lines.append(style("  # changed outside snapctl: live -> declared", "yellow"))
        lines.append(style(f"{action.symbol:>4} {action.address}", colour))
        changes = action_changes(action)
        old, new = action.current, action.desired  # what a region's name is read against
        width = max((len(c.path) for c in changes), default=0)
        for change in changes:
            if action.kind in STARTS:
                lines.append(
                    style(f"      + {change.path.ljust(width)} = {field_value(change.new, change.path, new)}", "green")
                )
            elif action.kind is ActionKind.delete:
                lines.append(
                    style(f"      - {change.path.ljust(width)} = {field_value(change.old, change.path, old)}", "red")
                )
            else:
                mark = (
                    style("  # forces replacement", "magenta")
                    if change.forces_replacement and action.kind is ActionKind.replace
                    else ""
                )
                lines.append(
                    f"      ~ {change.path.ljust(width)} = {field_value(change.old, change.path, old)} -> "
                    f"{field_value(change.new, change.path, new)}{mark}"
                )
        lines.append("")
    lines.append(style(plan.summary.line(), "bold"))
    if plan.secrets_unknown:
        lines.append(_NO_SECRETS_NOTE)
    return "\n".join(lines) + "\n"


_NO_SECRETS_NOTE = (
    "Planned with --no-secrets: secret fields are (unknown) and never planned as changed; this plan cannot be applied."
)


def _room_of(address: str) -> str:
    return address.rsplit("/", 1)[0]


def plan_markdown(plan: Plan, *, collapse_over: int = 10) -> str:
    """Markdown for a pull-request comment or job summary; rooms with many
    actions fold into ``<details>`` blocks."""
    lines = ["### snapctl plan", "", f"**{plan.summary.line()}**", ""]
    if plan.secrets_unknown:
        lines += [f"_{_NO_SECRETS_NOTE}_", ""]
    refresh = _refresh_lines(plan)
    if refresh:
        lines += [refresh[0], ""]
        if plan.unknown:
            lines += [refresh[1], "", *(f"- `{u.address}`: {u.detail}" for u in plan.unknown), ""]
    if not plan.actions:
        lines.append(_no_changes(plan))
        return "\n".join(lines) + "\n"
    for room, group in itertools.groupby(plan.actions, key=lambda a: _room_of(a.address)):
        actions = list(group)
        body = ["```diff"]
        for action in actions:
            prefix = {"+": "+", ">": "+", "~": "!", "-/+": "!", "-": "-"}[action.symbol]
            body.append(f"{prefix} {action.symbol} {action.address} ({headline(action)})")
            if action.observed is not None:  # planned from a refresh: say why, in the API's words
                body.append(f"#     {action.reason}")
            for change in action_changes(action):
                if action.kind in STARTS:
                    body.append(f"+     {change.path} = {field_value(change.new, change.path, action.desired)}")
                elif action.kind is ActionKind.delete:
                    body.append(f"-     {change.path} = {field_value(change.old, change.path, action.current)}")
                else:
                    note = (
                        "  # forces replacement"
                        if change.forces_replacement and action.kind is ActionKind.replace
                        else ""
                    )
                    body.append(
                        f"!     {change.path}: {field_value(change.old, change.path, action.current)} -> "
                        f"{field_value(change.new, change.path, action.desired)}{note}"
                    )
        body.append("```")
        title = f"Room `{room}`: {len(actions)} action(s)"
        if len(actions) > collapse_over:
            lines += [f"<details><summary>{title}</summary>", "", *body, "", "</details>", ""]
        else:
            lines += [f"#### {title}", "", *body, ""]
    return "\n".join(lines) + "\n"


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
    ``acted_after_reads``). ``deferred``: the stopped tasks whose restart is not due yet,
    with when it is (epoch seconds; None: never)."""
    from .restarts import iso

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


_DONE = {
    "create": "created",
    "restart": "restarted",
    "update": "updated",
    "replace": "replaced",
    "delete": "destroyed",
    "reassert": "running",
}


def result_line(result: ActionResult, style: Style) -> str:
    """One line per finished task (non-terminal progress and logs)."""
    calls = ", ".join(f"{c.action} {c.outcome.value.replace('_', ' ')}" for c in result.calls)
    if result.not_adopted:
        seen = f" ({calls})" if calls else " (a refresh saw it run; nothing sent)"
        return style(f"{result.address}: already running, not adopted{seen}", "yellow")
    if not result.ok:
        err = result.error
        rid = f" [RequestId {err.request_id}]" if err and err.request_id else ""
        return style(f"{result.address}: {result.kind} failed: {err}{rid}", "red")
    word = _DONE.get(result.kind, result.kind)
    if result.healed:
        word = f"healed: {result.was}" if result.was else "healed (was not running)"
    if result.adopted:
        word = "already running, adopted"
    if result.failing:
        word = f"restarted, failing ({result.failing})"
    return f"{result.address}: {word} ({calls})"


_CREDENTIAL_HINTS = {
    "SignatureDoesNotMatch": "check the secret key (VOLC_SECRETKEY or ~/.volc/credentials) and VOLC_REGION",
    "InvalidAccessKey": "check the access key (VOLC_ACCESSKEY or ~/.volc/credentials)",
    "InvalidTimestamp": "this machine's clock is more than 15 minutes off: set it right (NTP) and run again",
    "MissingAuthenticationToken": "the request carried no credentials the API accepts; check the session token (VOLC_SESSION_TOKEN)",
}


def credentials_refused(error: ApiError) -> str:
    """The credentials the API refused, with its RequestId and what to check (every command says it so)."""
    hint = _CREDENTIAL_HINTS.get(error.code, "check the credentials and this machine's clock")
    rid = f" [RequestId {error.request_id}]" if error.request_id else ""
    return f"the API refused the credentials: {error}{rid}; {hint}"


def stopped_line(report: ApplyReport) -> str:
    """The one line that names the error that stopped a run (credentials, an unreachable endpoint)."""
    from .errors import CredentialsError, NotSentError

    error = report.stopped_by
    assert error is not None
    if isinstance(error, CredentialsError):
        text = f"{credentials_refused(error)}. The run stopped at the first such answer"
    else:
        text = str(error)
    if not isinstance(error, (CredentialsError, NotSentError)):
        text += "; the run stopped at the first such answer"
    done = sum(r.ok for r in report.results)
    if done:
        text += f"; {done} task(s) done before that are recorded in the state"
    elif isinstance(error, NotSentError):
        text += "; nothing was sent"
    return text


def already_running(report: ApplyReport) -> int:
    """Creates the API answered "already started", recorded: they were running, adopted, not added."""
    return len(report.adopted)


def not_adopted_line(report: ApplyReport) -> str:
    """The one line that says which running tasks a state did not take over (it held no task, or
    did not adopt them before), and the ways on."""
    count = len(report.not_adopted)
    created = sum(r.ok for r in report.results)
    kept = f"; the {created} task(s) this run did act on are recorded" if created else ""
    why = (
        "which the state {state} did not adopt in an earlier run (when it held no task)"
        if report.held_tasks
        else "and the state {state} held no task before this run"
    ).format(state=report.state)
    return (
        f"{count} declared task(s) already run, {why}: "
        f"they were not adopted (nothing recorded for them{kept}). If this is their state and it was lost, "
        "run again with --adopt to take them over; otherwise use the state that runs them "
        "(--state, --workspace or snapctl.toml)"
    )


def apply_summary(report: ApplyReport, plan: Plan, style: Style, *, command: str = "Apply") -> str:
    s = plan.summary
    lines = []
    if report.stopped_by is not None:
        return ""  # the one line that names it is the error line (see stopped_line)
    if report.failures:
        lines.append(
            style(f"{command} failed for {len(report.failures)} of {len(report.results)} task(s):", "red", "bold")
        )
        for r in report.failures:
            lines.append(
                style(
                    f"  {r.address}: {r.error}"
                    + (f" [RequestId {r.error.request_id}]" if r.error and r.error.request_id else ""),
                    "red",
                )
            )
        lines.append(
            "Every success is recorded in the state; run the command again to finish the job."
            if report.worth_retrying
            else "Every success is recorded in the state; fix the failures above, then run the command again."
        )
    elif report.interrupted:
        lines.append(
            style(
                f"{command} interrupted: {report.skipped} task(s) not attempted; finished actions are recorded "
                "in the state; run it again to finish.",
                "yellow",
                "bold",
            )
        )
    else:
        kinds = ("create", "restart", "update", "replace")
        left = {kind: sum(r.kind == kind for r in report.not_adopted) for kind in kinds}
        already = already_running(report)
        added = f"{s.add - already - left['create']} added, " + (
            f"{already} already running, adopted, " if already else ""
        )
        restarted = s.restart - left["restart"]
        added += f"{restarted} restarted, " if restarted else ""
        counts = (
            f"Tasks: {added}{s.change - left['update']} changed, {s.replace - left['replace']} replaced, "
            f"{s.destroy} destroyed"
        )
        if report.not_adopted:
            line = f"{command} incomplete! {counts}; {len(report.not_adopted)} already running, not adopted."
            lines.append(style(line, "yellow", "bold"))
        else:
            lines.append(style(f"{command} complete! {counts}.", "green", "bold"))
    if report.not_adopted and (report.failures or report.interrupted):
        lines.append(style(f"{len(report.not_adopted)} task(s) already running, not adopted.", "yellow"))
    if report.healed:
        lines.append(
            f"Healed {len(report.healed)} task(s) that were not running: " + ", ".join(r.address for r in report.healed)
        )
    return "\n".join(lines) + "\n"
