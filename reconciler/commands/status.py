"""``snapctl status``: the live view of the declared tasks, read with GetSnapshotTask."""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from typing import Any

import click

from ..state.backend import now_iso
from ..style import Style
from .options import (
    api_options,
    controller_of,
    load,
    open_store,
    output_options,
    paths_argument,
    refuse_unless,
    state_option,
)
from .output import EXIT_CHANGES, EXIT_ERROR, colour_enabled, handle_errors, out, print_json

_COLOURS = {
    "running": "green",
    "not_started": "green",
    "ended": "red",
    "started": "green",
    "failed": "red",
    "unknown": "yellow",
    "unobserved": "yellow",
}
_HEALTHY = ("running", "not_started")


@click.command(short_help="Show what runs: one line per task, read with GetSnapshotTask.")
@paths_argument
@state_option
@click.option(
    "--target", "targets", multiple=True, metavar="ADDR", help="Limit to APP/ROOM/TASK (or APP/ROOM, APP). Repeatable."
)
@click.option(
    "--offline",
    is_flag=True,
    help="Show what the state last knows (observations of apply --refresh, reconcile, import; starts "
    "recorded since) without calling the API.",
)
@api_options(qps=False, read_qps=True, parallelism=True)
@output_options
@handle_errors
def status(paths, state_path, workspace, targets, offline, api_opts, as_json, no_color):
    """Read every declared task (and every task in the state) with GetSnapshotTask
    and show its status, stop reason, start and end.

    With --offline, show instead what the state last knows of each task: its
    last observation (and when it was made), or "started" when snapctl started
    it after that observation (or it was never observed), "absent" when it was
    never applied, and a call not settled yet: no credentials needed, nothing sent.

    Exit status: 0 when every declared task runs (or waits for its streams;
    with --offline also "started"), 2 when some do not (ended, failed or
    unknown; with --offline also absent), 1 on errors.
    """
    from .. import engine

    refuse_unless(
        not offline,
        "does not apply with --offline (it calls no API)",
        "endpoint",
        "read_qps",
        "parallelism",
        "timeout_s",
        "max_attempts",
    )
    if offline:
        manifests = load(paths)
        store = open_store(state_path, workspace, 0.0, "snapctl status")
        state = store.read()
        scope = engine.refresh_scope(manifests, state, targets)
        rows = [Row.kept(address, state, address in manifests.tasks) for address in scope]
    else:
        settings = api_opts.settings()
        target = settings.target()
        manifests = load(paths)
        store = open_store(state_path, workspace, 0.0, "snapctl status")
        state = store.read()
        engine.check_binding(state, *target, store.location)
        scope = engine.refresh_scope(manifests, state, targets)
        from ..errors import Interrupted
        from ..signals import graceful_stop

        try:
            with graceful_stop() as stop:
                observations = engine.refresh(
                    settings.client(), scope, state, parallelism=settings.parallelism, stop_event=stop
                )
        except Interrupted as exc:
            raise Interrupted(f"{len(exc.observations)} of {exc.total} task(s) read before the stop") from None
        rows = [Row.read(observations[address], address in manifests.tasks) for address in scope]
    rows = [row.judged(state) for row in rows]
    _show(rows, offline, as_json, no_color, controller_of(store))


@dataclass(frozen=True)
class Row:
    """One task of ``status``: as a read showed it (:meth:`read`), or as the state last knows it
    (:meth:`kept`, with ``--offline``: then also since when, the recorded start and a pending call)."""

    address: str
    #: An ``api.Observed`` value; offline also "started", "absent" and "unobserved".
    status: str
    declared: bool
    api_status: int | None = None
    stop_reason: str | None = None
    started: str | None = None
    ended: str | None = None
    detail: str | None = None
    #: The read itself failed (online).
    read_error: bool = False
    observed_since: str | None = None
    applied_at: str | None = None
    #: The action of a call not settled yet.
    pending: str | None = None
    #: The task fails to run, as the controller last judged it (see reconciler.restarts):
    #: ``{"reason", "count", "retry_at"}``.
    failing: dict[str, Any] | None = None

    def judged(self, state) -> Row:
        """This row with what the state says of its failing (the controller's judgement)."""
        failures = (state.observed.get(self.address) or {}).get("failures")
        if not failures or not failures.get("failing"):
            return self
        failing = {key: failures.get(key) for key in ("reason", "count", "retry_at")}
        return dataclasses.replace(self, failing=failing)

    @classmethod
    def read(cls, seen, declared: bool) -> Row:
        """From a GetSnapshotTask observation (``api.Observation``)."""
        return cls(**seen.summary(), declared=declared, read_error=seen.read_error)

    @classmethod
    def kept(cls, address: str, state, declared: bool) -> Row:
        """From what the state keeps: the last observation, or a start recorded after it."""
        seen = state.observed.get(address) or {}
        entry = state.tasks.get(address)
        applied = entry.get("applied_at") if entry is not None else None
        intent = state.pending.get(address)
        status, detail = seen.get("status", "unobserved"), None if seen else "never observed"
        if applied is not None and (not seen or _newer(entry, seen)):
            status = "started"
            before = f"after it was last observed {_described(seen)}" if seen else "never observed since"
            detail = f"started by snapctl at {applied}, {before}"
        elif entry is None and not seen:
            status, detail = "absent", "not in the state: never applied"
        last = {} if status == "started" else seen
        return cls(
            address=address,
            status=status,
            declared=declared,
            stop_reason=last.get("stop_reason"),
            started=last.get("started"),
            ended=last.get("ended"),
            detail=detail,
            observed_since=seen.get("since"),
            applied_at=applied,
            pending=intent["action"] if intent else None,
        )

    def printable(self) -> Row:
        """The row with what came from the API or the state on one line, with no terminal escape
        (:func:`api.printable`: what snapctl stores is so already; an older state may hold otherwise)."""
        from ..api import printable

        texts = ("status", "stop_reason", "started", "ended", "detail", "observed_since", "applied_at", "pending")
        shown: dict[str, Any] = {name: printable(getattr(self, name)) for name in texts if getattr(self, name)}
        return dataclasses.replace(self, **shown)

    @property
    def running(self) -> bool:
        """Runs, waits for its streams, or (offline) was started by snapctl since it was last seen."""
        return self.status in (*_HEALTHY, "started")

    def summary(self, offline: bool) -> dict[str, Any]:
        """The task in ``status --json``."""
        fields = [
            "address",
            "status",
            "api_status",
            "stop_reason",
            "started",
            "ended",
            "detail",
            "declared",
            "failing",
        ]
        if offline:
            fields += ["observed_since", "applied_at", "pending"]
        return {name: getattr(self, name) for name in fields}


def _show(rows: list[Row], offline: bool, as_json: bool, no_color: bool, leader: Any = None) -> None:
    """The table (or JSON) and totals of ``status``, online and offline alike; exits 1 on a failed
    read, 2 when a declared task does not run."""
    declared = [row for row in rows if row.declared]
    not_running = [row for row in declared if not row.running]
    errors = [row for row in rows if row.read_error]
    unobserved = [row for row in rows if row.observed_since is None]
    started = [row for row in rows if row.status == "started"]
    pending = [row for row in rows if row.pending]
    if as_json:
        document: dict[str, Any] = {
            "format_version": 1,
            "type": "status",
            "offline": offline,
            "tasks": [row.summary(offline) for row in rows],
            "declared": len(declared),
            "running": len(declared) - len(not_running),
            "not_running": len(not_running),
            "errors": len(errors),
            "failing": sum(row.failing is not None for row in declared),
            "controller": None
            if leader is None
            else {"pid": leader.pid, "host": leader.host, "since": leader.started_at},
        }
        if offline:
            document.update(unobserved=len(unobserved), started=len(started), pending=len(pending))
        print_json(document)
    else:
        style = Style(colour_enabled(sys.stdout, no_color))
        width = max([len("ADDRESS"), *(len(row.address) for row in rows)])
        ended = f"{'ENDED':<25}  OBSERVED SINCE" if offline else "ENDED"
        out(f"{'ADDRESS'.ljust(width)}  {'STATUS':<11}  {'STOP REASON':<17}  {'STARTED':<25}  {ended}\n")
        for row in rows:
            row = row.printable()
            status_text = row.status + ("" if row.declared else "*")
            line = (
                f"{row.address.ljust(width)}  {status_text:<11}  {row.stop_reason or '-':<17}  "
                f"{row.started or '-':<25}  "
            )
            line += f"{row.ended or '-':<25}  {row.observed_since or 'never'}" if offline else row.ended or "-"
            out(style(line, _COLOURS.get(row.status, "yellow")) + "\n")
            if row.status in ("unknown", "started") and row.detail:
                out(f"{''.ljust(width)}  ({row.detail})\n")
            if row.pending:
                out(f"{''.ljust(width)}  (pending: a {row.pending} not settled yet)\n")
            if row.failing:
                f = row.failing
                later = f["retry_at"] and f["retry_at"] > now_iso()
                line = f"(failing: {f['reason']}, {f['count']} failure(s) in a row" + (
                    f"; next start no sooner than {f['retry_at']})" if later else ")"
                )
                out(style(f"{''.ljust(width)}  {line}", "red") + "\n")
        running = f"{len(declared) - len(not_running)} of {len(declared)} declared task(s) running"
        if offline:
            summary = f"Offline, from the state: {running} as last known"
            if started:
                summary += f"; {len(started)} started by snapctl since their last observation"
            if unobserved:
                summary += f"; {len(unobserved)} never observed"
            if pending:
                summary += f"; {len(pending)} with a pending call"
        else:
            summary = running
        failing = sum(row.failing is not None for row in declared)
        if failing:
            summary += f"; {failing} failing"
        if len(rows) > len(declared):
            summary += f"; * = in the state, not declared ({len(rows) - len(declared)})"
        out(summary + ".\n")
        if leader is not None:
            out(f"Controller: {leader.describe()} leads.\n")
    if errors:
        sys.exit(EXIT_ERROR)
    if not_running:
        sys.exit(EXIT_CHANGES)


def _newer(entry: dict, seen: dict) -> bool:
    """Whether the task's record (a start) came after its last observation: by the serials
    they were written at, else (a state written before they were kept) by their times,
    a tie going to the start, since a round observes first and starts after."""
    if entry.get("serial") is not None and seen.get("serial") is not None:
        return entry["serial"] > seen["serial"]
    return entry.get("applied_at", "") >= seen.get("since", "")


def _described(seen: dict) -> str:
    """``ended (IdleTimeOut) at TIME`` from an observation the state keeps."""
    reason = f" ({seen['stop_reason']})" if seen.get("stop_reason") else ""
    return f"{seen.get('status', 'unknown').replace('_', ' ')}{reason} at {seen.get('since')}"
