"""What a run did, for people: a line per finished task, the summary of apply, destroy
and reconcile, and the one line that names what stopped a run or what it did not adopt."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..style import Style

if TYPE_CHECKING:  # only annotations: rendering does not load the apply machinery
    from ..apply import ActionResult, ApplyReport
    from ..errors import ApiError
    from ..plan import Plan

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
    return f"{result.address}: {word} ({calls or 'not found: nothing sent'})"


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
    from ..errors import CredentialsError, NotSentError

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
