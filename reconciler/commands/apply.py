"""``snapctl apply`` and ``snapctl destroy``: carry a plan out and record it in the state."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..errors import Interrupted, UsageError
from ..style import Style
from .options import (
    adopt_option,
    api_options,
    load,
    lock_option,
    no_manifests,
    observe,
    open_store,
    output_options,
    refresh_option,
    refuse_unless,
    scope_options,
    state_option,
)
from .output import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    Progress,
    colour_enabled,
    err,
    half_done,
    handle_errors,
    out,
    print_json,
    print_warnings,
)


def _confirm(the_plan, auto_approve: bool, verb: str, *, confirming: int = 0) -> None:
    if auto_approve or not (the_plan.has_changes or confirming):
        return
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise UsageError(
            f"{verb} needs confirmation but there is no terminal to ask on; pass --auto-approve, or apply a saved plan file"
        )
    out("\nDo you want to perform these actions? Only 'yes' will be accepted.\n")
    answer = click.prompt("  Enter a value", default="", show_default=False)
    if answer.strip() != "yes":
        raise UsageError(f"{verb} cancelled")


def _execute(
    the_plan, manifests, store, settings, *, as_json: bool, no_color: bool, command: str, reassert=(), adopt=False
):
    from .. import engine, render

    style = Style(colour_enabled(sys.stdout, no_color))
    progress = Progress(
        len(the_plan.actions) + len(reassert),
        Style(colour_enabled(sys.stderr, no_color)),
        quiet=False,
        stream=sys.stderr if as_json else sys.stdout,
    )
    from ..signals import graceful_stop

    try:
        with graceful_stop() as stop:
            report = engine.run_apply(
                the_plan,
                manifests,
                store,
                settings.client(),
                parallelism=settings.parallelism,
                reassert=reassert,
                on_result=progress,
                stop_event=stop,
                adopt=adopt,
            )
    except KeyboardInterrupt:  # a second SIGINT/SIGTERM: stopped at once, calls in flight abandoned
        raise Interrupted(half_done(store.state.pending, (a.address for a in the_plan.actions))) from None
    finally:
        progress.close()
    if as_json:
        print_json(render.apply_document(report, the_plan, command=command.lower()))
    elif report.stopped_by is None:
        out("\n" + render.apply_summary(report, the_plan, style, command=command))
    if report.stopped_by is not None:
        err(Style(colour_enabled(sys.stderr, no_color))(f"Error: {render.stopped_line(report)}\n", "red", "bold"))
    elif report.not_adopted:
        err(Style(colour_enabled(sys.stderr, no_color))(f"Error: {render.not_adopted_line(report)}\n", "red", "bold"))
    if report.interrupted and report.stopped_by is None:
        sys.exit(EXIT_INTERRUPTED)  # as for Ctrl-C anywhere else (the README's exit status)
    if not report.ok:
        sys.exit(EXIT_ERROR)
    return report


def _looks_like_plan_file(paths) -> bool:
    return len(paths) == 1 and paths[0].is_file() and paths[0].suffix.lower() not in (".yaml", ".yml")


@click.command(short_help="Make the API match the manifests; record it in the state.")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@state_option
@scope_options
@api_options(qps=True, read_qps=True, parallelism=True)
@lock_option
@output_options
@refresh_option
@adopt_option
@click.option("--auto-approve", is_flag=True, help="Do not ask for confirmation.")
@handle_errors
def apply(
    paths,
    state_path,
    workspace,
    targets,
    replace,
    api_opts,
    lock_timeout_s,
    as_json,
    no_color,
    refresh,
    adopt,
    auto_approve,
):
    """Make the API match the manifests, then record it in the state.

    PATHS are manifest files or directories (default: manifests/), or one plan
    file saved by `snapctl plan --out FILE`, which is applied exactly as saved
    (and refused if the state or the manifests moved on since). With --refresh
    it plans against what runs, as `snapctl plan --refresh` does. A state that
    held no task before this run takes over declared tasks that already run
    only with --adopt (the recovery of a lost state).
    """
    from .. import engine, render

    refuse_unless(refresh, "applies only with --refresh (apply reads nothing without it)", "read_qps")
    settings = api_opts.settings()
    target = settings.target()
    if _looks_like_plan_file(paths):
        if targets or replace or refresh:
            raise UsageError("--target, --replace and --refresh belong to `snapctl plan` when applying a saved plan")
        saved = engine.load_plan(paths[0])
        if saved.secrets_unknown:
            raise UsageError(
                f"{paths[0]} was planned with --no-secrets: its secret fields are unknown, so it cannot be "
                "applied; save a plan with the secrets set (snapctl plan --out FILE), or apply the manifests"
            )
        manifests = load([Path(p) for p in saved.manifest_paths]) if not saved.destroy else no_manifests()
        store = open_store(state_path, workspace, lock_timeout_s, "snapctl apply")
        # Refused on a read without the lock first, so that a refused plan creates nothing
        # (no state directory, no lock file); checked again under the lock.
        unlocked = store.read()
        engine.check_binding(unlocked, *target, store.location)
        engine.verify_saved_plan(saved, store, manifests, target, state=unlocked)
        with store:
            store.bind(*target)
            engine.verify_saved_plan(saved, store, manifests, target)
            if not saved.has_changes:
                return (
                    out("No changes. Nothing to apply.\n")
                    if not as_json
                    else print_json(render.apply_document(_no_report(store, adopt), saved))
                )
            _execute(
                saved, manifests, store, settings, as_json=as_json, no_color=no_color, command="Apply", adopt=adopt
            )
        return
    manifests = load(paths)
    print_warnings(manifests, Style(colour_enabled(sys.stderr, no_color)))
    with open_store(state_path, workspace, lock_timeout_s, "snapctl apply") as store:
        store.bind(*target)
        observations, refresh_s = (
            observe(manifests, store.state, settings, targets, record=store.record_observations)
            if refresh
            else (None, None)
        )
        if observations is not None:
            store.record_observations(observations.values())
        the_plan = engine.plan(
            manifests, store.state, targets=targets, replace=replace, observations=observations, target=target
        )
        the_plan.refresh_s = refresh_s
        # The tasks the refresh could not see (not found, read failed) are settled
        # with StartSnapshot: "already started" proves they run.
        unseen = {
            u.address for u in the_plan.unknown if observations is not None and observations[u.address].confirmable
        }
        reassert = [a for a in engine.unchanged_addresses(the_plan, manifests, store.state) if a in unseen]
        _run_planned(
            the_plan,
            manifests,
            store,
            settings,
            as_json=as_json,
            no_color=no_color,
            auto_approve=auto_approve,
            verb="Apply",
            reassert=reassert,
            adopt=adopt,
        )


def _no_report(store, adopt: bool = False):
    from ..apply import ApplyReport

    return ApplyReport(results=[], elapsed_s=0.0, state=store.described, held_tasks=store.held_tasks, adopt=adopt)


def _run_planned(
    the_plan, manifests, store, settings, *, as_json, no_color, auto_approve, verb, reassert=(), adopt=False
):
    """Show the plan, ask, apply it; ``reassert``: tasks a refresh could not see, confirmed with StartSnapshot."""
    from .. import render

    if not as_json:
        out(render.plan_text(the_plan, Style(colour_enabled(sys.stdout, no_color))))
        if reassert:
            out(f"StartSnapshot will confirm the {len(reassert)} task(s) that could not be seen.\n")
    if not the_plan.has_changes and not reassert:
        if as_json:
            print_json(render.apply_document(_no_report(store, adopt), the_plan, command=verb.lower()))
        return
    _confirm(the_plan, auto_approve, verb, confirming=len(reassert))
    _execute(
        the_plan,
        manifests,
        store,
        settings,
        as_json=as_json,
        no_color=no_color,
        command=verb,
        reassert=reassert,
        adopt=adopt,
    )


@click.command()
@state_option
@click.option(
    "--target",
    "targets",
    multiple=True,
    metavar="ADDR",
    help="Destroy only APP/ROOM/TASK (or APP/ROOM, APP). Repeatable.",
)
@api_options(qps=True, read_qps=False, parallelism=True)
@lock_option
@output_options
@click.option("--auto-approve", is_flag=True, help="Do not ask for confirmation.")
@handle_errors
def destroy(
    state_path,
    workspace,
    targets,
    api_opts,
    lock_timeout_s,
    as_json,
    no_color,
    auto_approve,
):
    """Stop every task in the state (StopSnapshot) and forget it."""
    from .. import engine

    settings = api_opts.settings()
    target = settings.target()
    with open_store(state_path, workspace, lock_timeout_s, "snapctl destroy") as store:
        store.bind(*target)
        the_plan = engine.plan(no_manifests(), store.state, targets=targets, destroy=True, target=target)
        _run_planned(
            the_plan,
            no_manifests(),
            store,
            settings,
            as_json=as_json,
            no_color=no_color,
            auto_approve=auto_approve,
            verb="Destroy",
        )
