"""``snapctl plan`` and ``snapctl show``: what apply would change, now or as saved."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..style import Style
from .options import (
    api_options,
    format_option,
    load,
    manifest_paths,
    no_manifests,
    observe,
    open_store,
    output_options,
    paths_argument,
    refresh_option,
    refuse_unless,
    scope_options,
    state_option,
)
from .output import EXIT_CHANGES, colour_enabled, err, handle_errors, out, print_plan, print_warnings


@click.command()
@paths_argument
@state_option
@scope_options
@api_options(qps=False, read_qps=True, parallelism=True)
@output_options
@format_option
@click.option(
    "--out", "out_file", type=click.Path(path_type=Path), help="Save the plan for a later `snapctl apply FILE`."
)
@click.option("--destroy", is_flag=True, help="Plan the destruction of every task in the state.")
@click.option("--detailed-exitcode", is_flag=True, help="Exit 0 with no changes, 1 on error, 2 with changes.")
@click.option(
    "--no-secrets",
    is_flag=True,
    help="Plan without secret values (pull requests): secret fields are unknown, never a change; "
    "such a plan cannot be applied.",
)
@refresh_option
@handle_errors
def plan(
    paths,
    state_path,
    workspace,
    targets,
    replace,
    api_opts,
    as_json,
    no_color,
    fmt,
    out_file,
    destroy,
    detailed_exitcode,
    no_secrets,
    refresh,
):
    """Show what apply would change. Reads manifests and the state (without its lock); sends nothing.

    With --refresh it first reads every task concerned (GetSnapshotTask, one
    read per task at --read-qps) and plans against what runs: ended and failed
    tasks are started again, tasks changed outside snapctl are corrected.
    """
    from .. import engine
    from ..manifest import SECRETS_REQUIRED, SECRETS_UNKNOWN

    refuse_unless(not (refresh and destroy), "does not apply with --destroy (a destroy plan reads nothing)", "refresh")
    refuse_unless(
        refresh,
        "applies only with --refresh (plan sends nothing without it)",
        "read_qps",
        "parallelism",
        "timeout_s",
        "max_attempts",
    )
    settings = api_opts.settings(credentials=refresh)
    secrets = SECRETS_UNKNOWN if no_secrets else SECRETS_REQUIRED
    manifests = (
        load(paths, as_json=as_json or fmt == "json", command="plan", secrets=secrets)
        if not destroy or paths
        else no_manifests()
    )
    store = open_store(state_path, workspace, 0.0, "snapctl plan")
    state = store.read()
    # Offline, the state's endpoint where nothing sets one; --refresh calls the endpoint given.
    target = settings.target() if refresh else api_opts.offline_target(settings, state)
    engine.check_binding(state, *target, store.location)
    observations, refresh_s = observe(manifests, state, settings, targets) if refresh else (None, None)
    if not state.exists:  # after the refresh: a refresh that fails says one line only
        err(f"no state yet at {store.location}: everything is planned as new\n")
    the_plan = engine.plan(
        manifests,
        state,
        targets=targets,
        replace=replace,
        destroy=destroy,
        manifest_paths=[str(p.absolute()) for p in manifest_paths(paths)],
        secrets_unknown=no_secrets,
        observations=observations,
        target=target,
        fingerprint_creates=bool(out_file),  # shown only: no key derivation for new tasks' secrets
    )
    the_plan.refresh_s = refresh_s
    if out_file:
        the_plan.state_path = store.identity
        engine.save_plan(the_plan, out_file)
    fmt = "json" if as_json else fmt
    if fmt == "text":
        print_warnings(manifests, Style(colour_enabled(sys.stderr, no_color)))
    print_plan(the_plan, fmt, no_color)
    if fmt == "text" and out_file:
        if no_secrets:  # such a plan is for review: apply refuses it
            out(
                f"\nSaved the plan to {out_file}, for review only (snapctl show {out_file}): made with --no-secrets, "
                "it cannot be applied. To apply, plan again with the secrets set: snapctl plan --out FILE\n"
            )
        else:
            out(f"\nSaved the plan to {out_file}. Apply exactly this plan with: snapctl apply {out_file}\n")
    if detailed_exitcode and the_plan.has_changes:
        sys.exit(EXIT_CHANGES)


@click.command(short_help="Print a saved plan as text, Markdown or JSON.")
@click.argument("plan_file", type=click.Path(path_type=Path))
@output_options
@format_option
@handle_errors
def show(plan_file, as_json, no_color, fmt):
    """Print a plan saved by `snapctl plan --out FILE`, without reading the
    manifests or the state: what `snapctl apply FILE` would do."""
    from .. import engine

    print_plan(engine.load_plan(plan_file), "json" if as_json else fmt, no_color)
