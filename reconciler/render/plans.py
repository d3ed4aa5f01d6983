"""A plan for people: as text in a terminal (coloured or not), and as Markdown for a
pull-request comment or a job summary."""

from __future__ import annotations

import itertools

from ..api import printable
from ..plan import CREATE_REASON, DELETE_REASON, STARTS, ActionKind, Plan, PlannedAction
from ..style import Style
from .fields import action_changes, field_value

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
