"""``snapctl status``: the live view of the declared tasks, read with GetSnapshotTask."""

from __future__ import annotations

import sys

import click

from .commands import (
    EXIT_CHANGES,
    EXIT_ERROR,
    api_options,
    colour_enabled,
    handle_errors,
    out,
    output_options,
    paths_argument,
    print_json,
    state_option,
)
from .render import Style

_COLOURS = {"running": "green", "not_started": "green", "ended": "red", "failed": "red", "unknown": "yellow"}


@click.command(short_help="Show what runs: one line per task, read with GetSnapshotTask.")
@paths_argument
@state_option
@click.option(
    "--target", "targets", multiple=True, metavar="ADDR", help="Limit to APP/ROOM/TASK (or APP/ROOM, APP). Repeatable."
)
@api_options
@output_options
@handle_errors
def status(paths, state_path, workspace, targets, endpoint, qps, read_qps, parallelism, timeout_s, as_json, no_color):
    """Read every declared task (and every task in the state) with GetSnapshotTask
    and show its status, stop reason, start and end.

    Exit status: 0 when every declared task runs (or waits for its streams),
    2 when some do not (ended, failed or unknown), 1 on errors.
    """
    from . import engine
    from .commands import _load, _settings, _store

    settings = _settings(endpoint, qps, parallelism, timeout_s, read_qps)
    target = settings.target()
    manifests = _load(paths)
    store = _store(state_path, workspace, 0.0, "snapctl status")
    state = store.read()
    engine.check_binding(state, *target, store.location)
    scope = engine.refresh_scope(manifests, state, targets)
    observations = engine.refresh(settings.client(), scope, state, parallelism=settings.parallelism)
    rows = [observations[address] for address in scope]
    declared = [seen for seen in rows if seen.address in manifests.tasks]
    errors = [seen for seen in rows if seen.read_error]
    not_running = [seen for seen in declared if not seen.healthy]
    if as_json:
        print_json(
            {
                "format_version": 1,
                "type": "status",
                "tasks": [seen.summary() | {"declared": seen.address in manifests.tasks} for seen in rows],
                "declared": len(declared),
                "running": len(declared) - len(not_running),
                "not_running": len(not_running),
                "errors": len(errors),
            }
        )
    else:
        style = Style(colour_enabled(sys.stdout, no_color))
        width = max((len(seen.address) for seen in rows), default=7)
        out(f"{'ADDRESS'.ljust(width)}  {'STATUS':<11}  {'STOP REASON':<17}  {'STARTED':<25}  ENDED\n")
        for seen in rows:
            info = seen.summary()
            status_text = seen.observed.value + ("" if seen.address in manifests.tasks else "*")
            line = (
                f"{seen.address.ljust(width)}  {status_text:<11}  {seen.stop_reason or '-':<17}  "
                f"{info['started'] or '-':<25}  {info['ended'] or '-'}"
            )
            out(style(line, _COLOURS[seen.observed.value]) + "\n")
            if seen.observed.value == "unknown" and seen.detail:
                out(f"{''.ljust(width)}  ({seen.detail})\n")
        summary = f"{len(declared) - len(not_running)} of {len(declared)} declared task(s) running"
        if len(rows) > len(declared):
            summary += f"; * = in the state, not declared ({len(rows) - len(declared)})"
        out(summary + ".\n")
    if errors:
        sys.exit(EXIT_ERROR)
    if not_running:
        sys.exit(EXIT_CHANGES)
