"""The subcommands of ``snapctl``. Each parses flags, calls the library, prints."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import orjson

from . import api
from .errors import CredentialsError, SnapctlError, UsageError
from .render import Style

EXIT_OK, EXIT_ERROR, EXIT_CHANGES, EXIT_INTERRUPTED = 0, 1, 2, 130


# Output helpers ------------------------------------------------------------


def colour_enabled(stream, no_color: bool) -> bool:
    """Colour only on a terminal, and never with NO_COLOR, --no-color or TERM=dumb."""
    if no_color or os.environ.get("NO_COLOR", "") != "" or os.environ.get("TERM") == "dumb":
        return False
    return bool(getattr(stream, "isatty", lambda: False)())


def out(text: str) -> None:
    click.echo(text, nl=False)


def err(text: str) -> None:
    click.echo(text, err=True, nl=False)


def print_json(document: Any) -> None:
    click.echo(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode())


def print_warnings(manifests, style: Style) -> None:
    for warning in manifests.warnings:
        err(style(f"{warning}\n", "yellow"))


# Shared options -------------------------------------------------------------


def paths_argument(f):
    return click.argument("paths", nargs=-1, type=click.Path(path_type=Path))(f)


def state_option(f):
    f = click.option(
        "--workspace",
        default="default",
        show_default=True,
        envvar="SNAPCTL_WORKSPACE",
        help="Which of the states kept at --state (env SNAPCTL_WORKSPACE).",
    )(f)
    return click.option(
        "--state",
        "state_path",
        default="state/snapctl.state.json",
        show_default=True,
        envvar="SNAPCTL_STATE",
        help="State file, or a postgresql:// URL of a shared state (env SNAPCTL_STATE).",
    )(f)


def endpoint_option(f):
    return click.option(
        "--endpoint",
        envvar="SNAPCTL_ENDPOINT",
        help="API endpoint (env SNAPCTL_ENDPOINT; default https://rtc.volcengineapi.com).",
    )(f)


def _store(state_path, workspace, lock_timeout_s, command):
    from .state import store_for

    return store_for(state_path, workspace=workspace, lock_timeout_s=lock_timeout_s, command=command)


def output_options(f):
    f = click.option("--no-color", is_flag=True, help="No ANSI colour (also NO_COLOR=1).")(f)
    f = click.option(
        "--json", "as_json", is_flag=True, help="Machine-readable JSON on stdout (see docs/json-output.md)."
    )(f)
    return f


@dataclass(frozen=True)
class ApiOptions:
    """The API options of a command (see :func:`api_options`), as given."""

    endpoint: str | None
    qps: float
    read_qps: float
    parallelism: int
    timeout_s: float

    def settings(self, *, credentials: bool = True):
        """The run's settings with its environment checked (credentials, endpoint, region,
        proxies): a bad input is one line before any output and before any request."""
        from .engine import Settings

        settings = Settings(
            endpoint=self.endpoint,
            qps=self.qps,
            read_qps=self.read_qps,
            parallelism=self.parallelism,
            timeout_s=self.timeout_s,
        )
        settings.resolve(credentials=credentials)
        return settings


def api_options(f):
    """The options of every command that can call the API (the same everywhere), given
    to the command as one ``api_opts`` argument, an :class:`ApiOptions`."""

    run = f

    @functools.wraps(run)
    def command(*args, endpoint, qps, read_qps, parallelism, timeout_s, **kwargs):
        return run(*args, api_opts=ApiOptions(endpoint, qps, read_qps, parallelism, timeout_s), **kwargs)

    f = command
    f = click.option(
        "--endpoint",
        help="API endpoint (env SNAPCTL_ENDPOINT; default https://rtc.volcengineapi.com).",
    )(f)
    f = click.option(
        "--qps",
        type=click.FloatRange(min=0),
        default=float(api.DOCUMENTED_QPS),
        show_default=True,
        help="Requests per second per write action (0: no limit).",
    )(f)
    f = click.option(
        "--read-qps",
        type=click.FloatRange(min=0),
        default=float(api.DOCUMENTED_READ_QPS),
        show_default=True,
        help="GetSnapshotTask reads per second (0: no limit).",
    )(f)
    f = click.option(
        "--parallelism", type=click.IntRange(min=1), default=64, show_default=True, help="Tasks in flight at once."
    )(f)
    f = click.option(
        "--timeout",
        "timeout_s",
        type=click.FloatRange(min=0.1),
        default=10.0,
        show_default=True,
        help="Seconds to wait for one answer.",
    )(f)
    return f


def lock_option(f):
    return click.option(
        "--lock-timeout",
        "lock_timeout_s",
        type=click.FloatRange(min=0),
        default=0.0,
        show_default=True,
        help="Seconds to wait for the state lock.",
    )(f)


def scope_options(f):
    f = click.option(
        "--target",
        "targets",
        multiple=True,
        metavar="ADDR",
        help="Limit to APP/ROOM/TASK (or APP/ROOM, APP). Repeatable.",
    )(f)
    f = click.option(
        "--replace",
        "replace",
        multiple=True,
        metavar="ADDR",
        help="Force the replacement of APP/ROOM/TASK. Repeatable.",
    )(f)
    return f


def format_option(f):
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(["text", "json", "markdown"]),
        default="text",
        show_default=True,
        help="Output format (--json is --format json).",
    )(f)


def print_plan(the_plan, fmt: str, no_color: bool) -> None:
    """A plan on stdout as text, Markdown or JSON."""
    from . import render

    if fmt == "json":
        print_json(render.plan_document(the_plan))
    elif fmt == "markdown":
        out(render.plan_markdown(the_plan))
    else:
        out(render.plan_text(the_plan, Style(colour_enabled(sys.stdout, no_color))))


def handle_errors(f: Callable) -> Callable:
    """Every failure is one clear message on stderr and exit status 1, never a traceback."""

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        try:
            return f(*args, **kwargs)
        except SnapctlError as exc:
            style = Style(colour_enabled(sys.stderr, kwargs.get("no_color", False)))
            from .manifest import ManifestError

            if isinstance(exc, ManifestError):
                for diagnostic in exc.diagnostics:
                    err(style(f"{diagnostic}\n", "red" if diagnostic.severity == "error" else "yellow"))
                errors = sum(d.severity == "error" for d in exc.diagnostics)
                err(
                    style(
                        f"Error: {errors} problem(s) in the manifests; nothing was sent and nothing written.\n",
                        "red",
                        "bold",
                    )
                )
            elif isinstance(exc, CredentialsError):  # as apply names it, with what to check
                from .render import credentials_refused

                err(style(f"Error: {credentials_refused(exc)}\n", "red", "bold"))
            else:
                err(style(f"Error: {exc}\n", "red", "bold"))
            sys.exit(EXIT_ERROR)

    return wrapper


def refresh_option(f):
    return click.option(
        "--refresh",
        is_flag=True,
        help="Read every task concerned with GetSnapshotTask (60/s) and plan against what runs.",
    )(f)


def _observe(manifests, state, settings, targets=()):
    """Read the tasks in scope (every declared one and every one in the state);
    the observations, and how long the reads took."""
    import time

    from . import engine

    scope = engine.refresh_scope(manifests, state, targets)
    began = time.monotonic()
    observations = engine.refresh(settings.client(), scope, state, parallelism=settings.parallelism)
    return observations, round(time.monotonic() - began, 3)


def _load(paths, *, as_json: bool = False, command: str = "", **options) -> Any:
    """The manifests under ``paths``; with ``as_json``, manifests that cannot be used are
    a JSON document on stdout (``valid: false`` and every diagnostic) and exit 1."""
    from .manifest import ManifestError, load_manifests

    try:
        return load_manifests(list(paths) or ["manifests"], **options)
    except ManifestError as exc:
        if not as_json:
            raise
        from .render import invalid_document

        print_json(invalid_document(exc.diagnostics, command))
        sys.exit(EXIT_ERROR)


# validate --------------------------------------------------------------------


@click.command(short_help="Check manifests offline.")
@paths_argument
@output_options
@handle_errors
def validate(paths, as_json, no_color):
    """Check manifests offline: syntax, every API rule, duplicates, environment variables.

    Needs no secret values: a `${env:NAME}` whose variable is not set is a
    warning here (plan and apply need it where a task uses it).

    PATHS are files or directories of *.yaml / *.yml (default: manifests/).
    """
    from .manifest import SECRETS_OPTIONAL
    from .render import diagnostic_document

    style = Style(colour_enabled(sys.stdout, no_color))
    manifests = _load(paths, as_json=as_json, command="validate", secrets=SECRETS_OPTIONAL)
    if as_json:
        print_json(
            {
                "format_version": 1,
                "type": "validate",
                "valid": True,
                "tasks": len(manifests.tasks),
                "files": manifests.files,
                "warnings": [str(w) for w in manifests.warnings],
                "diagnostics": [diagnostic_document(w) for w in manifests.warnings],
            }
        )
        return
    print_warnings(manifests, Style(colour_enabled(sys.stderr, no_color)))
    out(style(f"Success! {len(manifests.tasks)} task(s) in {len(manifests.files)} file(s) are valid.\n", "green"))


# plan ------------------------------------------------------------------------


@click.command()
@paths_argument
@state_option
@scope_options
@api_options
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
    from . import engine
    from .manifest import SECRETS_REQUIRED, SECRETS_UNKNOWN

    refresh = refresh and not destroy
    settings = api_opts.settings(credentials=refresh)
    target = settings.target()
    secrets = SECRETS_UNKNOWN if no_secrets else SECRETS_REQUIRED
    manifests = (
        _load(paths, as_json=as_json or fmt == "json", command="plan", secrets=secrets)
        if not destroy or paths
        else _empty()
    )
    store = _store(state_path, workspace, 0.0, "snapctl plan")
    state = store.read()
    engine.check_binding(state, *target, store.location)
    observations, refresh_s = _observe(manifests, state, settings, targets) if refresh else (None, None)
    if not state.exists:  # after the refresh: a refresh that fails says one line only
        err(f"no state yet at {store.location}: everything is planned as new\n")
    the_plan = engine.plan(
        manifests,
        state,
        targets=targets,
        replace=replace,
        destroy=destroy,
        manifest_paths=[str(p.absolute()) for p in (paths or [Path("manifests")])],
        secrets_unknown=no_secrets,
        observations=observations,
        target=target,
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
        out(f"\nSaved the plan to {out_file}. Apply exactly this plan with: snapctl apply {out_file}\n")
    if detailed_exitcode and the_plan.has_changes:
        sys.exit(EXIT_CHANGES)


# apply / destroy -----------------------------------------------------------------


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


class Progress:
    """A live bar (done/total, rate, ETA) on a terminal, else one line per finished task."""

    def __init__(self, total: int, style: Style, *, quiet: bool, stream=None):
        self.total = total
        self.style = style
        self.stream = stream or sys.stderr
        self._bar = None
        self._quiet = quiet
        if not quiet and total and self.stream.isatty():
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TaskProgressColumn,
                TextColumn,
                TimeRemainingColumn,
            )
            from rich.progress import (
                Progress as Bar,
            )

            console = Console(file=self.stream, no_color=not style.colour)
            self._bar = Bar(
                TextColumn("applying"),
                BarColumn(),
                MofNCompleteColumn(),
                TaskProgressColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeRemainingColumn(),
                console=console,
                transient=True,
            )
            self._task = self._bar.add_task("apply", total=total, rate="")
            self._bar.start()
            import time

            self._t0 = time.monotonic()

    def __call__(self, result) -> None:
        from .render import result_line

        if self._bar is not None:
            import time

            done = self._bar.tasks[0].completed + 1
            rate = done / max(time.monotonic() - self._t0, 1e-6)
            self._bar.update(self._task, advance=1, rate=f"{rate:.0f} tasks/s")
            if not result.ok:
                self._bar.console.print(result_line(result, self.style), markup=False, highlight=False)
        elif not self._quiet:
            click.echo(result_line(result, self.style), file=self.stream)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def _execute(the_plan, manifests, store, settings, *, as_json: bool, no_color: bool, command: str, reassert=()):
    from . import engine, render

    style = Style(colour_enabled(sys.stdout, no_color))
    progress = Progress(
        len(the_plan.actions) + len(reassert),
        Style(colour_enabled(sys.stderr, no_color)),
        quiet=False,
        stream=sys.stderr if as_json else sys.stdout,
    )
    from .controller import graceful_stop

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
            )
    finally:
        progress.close()
    if as_json:
        print_json(render.apply_document(report, the_plan, command=command.lower()))
    elif report.stopped_by is None:
        out("\n" + render.apply_summary(report, the_plan, style, command=command))
    if report.stopped_by is not None:
        err(Style(colour_enabled(sys.stderr, no_color))(f"Error: {render.stopped_line(report)}\n", "red", "bold"))
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
@api_options
@lock_option
@output_options
@refresh_option
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
    auto_approve,
):
    """Make the API match the manifests, then record it in the state.

    PATHS are manifest files or directories (default: manifests/), or one plan
    file saved by `snapctl plan --out FILE`, which is applied exactly as saved
    (and refused if the state or the manifests moved on since). With --refresh
    it plans against what runs, as `snapctl plan --refresh` does.
    """
    from . import engine, render

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
        manifests = _load([Path(p) for p in saved.manifest_paths]) if not saved.destroy else _empty()
        store = _store(state_path, workspace, lock_timeout_s, "snapctl apply")
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
                    else print_json(render.apply_document(_no_report(), saved))
                )
            _execute(saved, manifests, store, settings, as_json=as_json, no_color=no_color, command="Apply")
        return
    manifests = _load(paths)
    print_warnings(manifests, Style(colour_enabled(sys.stderr, no_color)))
    with _store(state_path, workspace, lock_timeout_s, "snapctl apply") as store:
        store.bind(*target)
        observations, refresh_s = _observe(manifests, store.state, settings, targets) if refresh else (None, None)
        if observations is not None:
            store.record_observations(observations.values())
        the_plan = engine.plan(
            manifests, store.state, targets=targets, replace=replace, observations=observations, target=target
        )
        the_plan.refresh_s = refresh_s
        # The tasks the refresh could not see (not found, read failed) are settled
        # with StartSnapshot: "already started" proves they run.
        unseen = {u.address for u in the_plan.unknown}
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
        )


def _empty():
    from .manifest import ManifestSet

    return ManifestSet(tasks={}, warnings=[], files=[])


def _no_report():
    from .apply import ApplyReport

    return ApplyReport(results=[], elapsed_s=0.0)


def _run_planned(the_plan, manifests, store, settings, *, as_json, no_color, auto_approve, verb, reassert=()):
    """Show the plan, ask, apply it; ``reassert``: tasks a refresh could not see, confirmed with StartSnapshot."""
    from . import render

    if not as_json:
        out(render.plan_text(the_plan, Style(colour_enabled(sys.stdout, no_color))))
        if reassert:
            out(f"StartSnapshot will confirm the {len(reassert)} task(s) that could not be seen.\n")
    if not the_plan.has_changes and not reassert:
        if as_json:
            print_json(render.apply_document(_no_report(), the_plan, command=verb.lower()))
        return
    _confirm(the_plan, auto_approve, verb, confirming=len(reassert))
    _execute(the_plan, manifests, store, settings, as_json=as_json, no_color=no_color, command=verb, reassert=reassert)


@click.command()
@state_option
@click.option(
    "--target",
    "targets",
    multiple=True,
    metavar="ADDR",
    help="Destroy only APP/ROOM/TASK (or APP/ROOM, APP). Repeatable.",
)
@api_options
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
    from . import engine

    settings = api_opts.settings()
    target = settings.target()
    with _store(state_path, workspace, lock_timeout_s, "snapctl destroy") as store:
        store.bind(*target)
        the_plan = engine.plan(_empty(), store.state, targets=targets, destroy=True, target=target)
        _run_planned(
            the_plan,
            _empty(),
            store,
            settings,
            as_json=as_json,
            no_color=no_color,
            auto_approve=auto_approve,
            verb="Destroy",
        )


# show --------------------------------------------------------------------------


@click.command(short_help="Print a saved plan as text, Markdown or JSON.")
@click.argument("plan_file", type=click.Path(path_type=Path))
@output_options
@format_option
@handle_errors
def show(plan_file, as_json, no_color, fmt):
    """Print a plan saved by `snapctl plan --out FILE`, without reading the
    manifests or the state: what `snapctl apply FILE` would do."""
    from . import engine

    print_plan(engine.load_plan(plan_file), "json" if as_json else fmt, no_color)


# schema ------------------------------------------------------------------------


@click.command()
def schema():
    """Print the JSON Schema of the manifest format (for editors)."""
    from .manifest import manifest_json_schema

    print_json(manifest_json_schema())


# reconcile -------------------------------------------------------------------------


@click.command(short_help="Read every declared task, fix what is not as declared (--watch: keep doing it).")
@paths_argument
@state_option
@api_options
@lock_option
@output_options
@click.option("--watch", is_flag=True, help="Keep reconciling every --interval seconds until SIGTERM/SIGINT.")
@click.option(
    "--interval",
    "interval_s",
    type=click.FloatRange(min=0.1),
    default=60.0,
    show_default=True,
    help="Seconds between rounds with --watch.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    help="With --watch: serve Prometheus metrics on 127.0.0.1:PORT/metrics.",
)
@click.option("--metrics-host", default="127.0.0.1", show_default=True, help="Address for --metrics-port.")
@click.option(
    "--no-refresh",
    is_flag=True,
    help="Do not read the tasks: StartSnapshot every declared one instead (the blind re-assert).",
)
@handle_errors
def reconcile(
    paths,
    state_path,
    workspace,
    api_opts,
    lock_timeout_s,
    as_json,
    no_color,
    watch,
    interval_s,
    metrics_port,
    metrics_host,
    no_refresh,
):
    """Observe every declared task, then fix what is not as declared, without asking.

    Each round reads every declared task (GetSnapshotTask, at --read-qps), starts
    the ones that ended or failed ("healed"), corrects tasks changed outside
    snapctl, applies pending manifest changes as `apply` would, and confirms the
    tasks it cannot see with StartSnapshot ("already started" = running). A round
    over tasks that all run as declared sends no write call. --no-refresh instead
    sends StartSnapshot for every declared task. With --watch this runs as a
    controller; a failed round is reported and the loop goes on.
    """
    from . import controller, render
    from .runenv import check_metrics_address

    settings = api_opts.settings()
    if metrics_port is not None:
        check_metrics_address(metrics_host, metrics_port)
    paths = list(paths) or [Path("manifests")]
    style = Style(colour_enabled(sys.stdout, no_color))
    stream = sys.stderr if as_json else sys.stdout

    def on_result(result):
        if not result.ok or result.healed or result.kind != "reassert":
            click.echo(render.result_line(result, style), file=stream)

    def report_round(round_):
        if as_json:
            document = {
                "format_version": 1,
                "type": "reconcile",
                "ok": round_.ok,
                "error": str(round_.error) if round_.error else None,
                "declared": round_.declared,
                "duration_s": round(round_.duration_s, 3),
                "refreshed": round_.refreshed,
                "reads": round_.reads,
                "observed": round_.observed_counts,
            }
            if round_.report is not None:
                document |= {"result": render.apply_document(round_.report, round_.plan, command="reconcile")}
            click.echo(orjson.dumps(document).decode())
            return
        if round_.error is not None:
            if hasattr(round_.error, "diagnostics"):
                for diagnostic in round_.error.diagnostics:
                    err(f"{diagnostic}\n")
            err(style(f"Error: reconcile round failed: {round_.error}\n", "red"))
            return
        report = round_.report
        if report.stopped_by is not None:
            err(style(f"Error: reconcile round stopped: {render.stopped_line(report)}\n", "red"))
            return
        healed = len(report.healed)
        changed = round_.plan.summary.total
        failed = len(report.failures)
        read = f"{round_.reads} read, " if round_.refreshed else ""
        if report.interrupted:
            line = (
                f"Reconcile interrupted after {round_.duration_s:.1f}s: {len(report.results) - failed} task(s) done"
                + (f", {failed} failed" if failed else "")
                + f", {report.skipped} not attempted; finished calls are recorded in the state."
            )
            out(style(line + "\n", "yellow"))
            return
        line = (
            f"Reconciled {round_.declared} task(s) in {round_.duration_s:.1f}s: {read}{changed} change(s) applied, "
            f"{healed} healed, {failed} failed."
        )
        out(style(line + "\n", "red" if failed else "green"))
        if healed:
            out("Healed: " + ", ".join(r.address for r in report.healed) + "\n")

    if not watch:
        # Like apply: the first SIGINT/SIGTERM lets calls in flight finish and be recorded.
        with controller.graceful_stop() as stop:
            round_ = controller.reconcile_once(
                paths,
                state_path,
                settings,
                lock_timeout_s=lock_timeout_s,
                on_result=on_result,
                refresh=not no_refresh,
                workspace=workspace,
                stop_event=stop,
            )
        if round_.error is not None and not as_json:
            raise round_.error
        report_round(round_)
        if round_.report is not None and round_.report.interrupted:
            sys.exit(EXIT_INTERRUPTED)
        if not round_.ok:
            sys.exit(EXIT_ERROR)
        return
    try:
        metrics = controller.Metrics(metrics_port, metrics_host) if metrics_port is not None else None
    except OSError as exc:
        raise UsageError(f"cannot serve metrics on {metrics_host}:{metrics_port}: {exc.strerror or exc}") from None
    if metrics is not None:
        err(f"Serving metrics on http://{metrics_host}:{metrics.server.server_port}/metrics\n")
    with controller.graceful_stop() as stop:
        try:
            rounds = controller.watch(
                paths,
                state_path,
                settings,
                workspace=workspace,
                interval_s=interval_s,
                stop=stop,
                lock_timeout_s=lock_timeout_s,
                metrics=metrics,
                on_round=report_round,
                on_result=on_result,
                refresh=not no_refresh,
            )
        finally:
            if metrics is not None:
                metrics.close()
    err(f"Stopped after {rounds} round(s); the state is written.\n")


# import ------------------------------------------------------------------------------


@click.command(name="import")
@click.argument("address")
@paths_argument
@state_option
@api_options
@lock_option
@output_options
@handle_errors
def import_(
    address,
    paths,
    state_path,
    workspace,
    api_opts,
    lock_timeout_s,
    as_json,
    no_color,
):
    """Adopt a running task APP/ROOM/TASK into the state.

    The task must be declared in the manifests. It is read first
    (GetSnapshotTask): when it runs, it is recorded with the configuration it
    really runs, so the next plan shows where that differs from the declared
    one. When the read cannot see it running (ended, failed, not found),
    StartSnapshot settles it: "already started" proves it runs (recorded with its
    declared configuration), "ok" means it has just been started as declared.
    """
    import asyncio

    from . import api as wire
    from .client import Outcome
    from .errors import ApiError

    settings = api_opts.settings()
    manifests = _load(paths)
    task = manifests.tasks.get(address)
    if task is None:
        raise UsageError(f"{address} is not declared in the manifests; declare it first, then import it")
    target = settings.target()
    with _store(state_path, workspace, lock_timeout_s, "snapctl import") as store:
        store.bind(*target)
        if address in store.state.tasks:
            raise UsageError(f"{address} is already in the state; nothing to import")
        client = settings.client()
        declared = task.request.wire()

        async def adopt():
            async with client:
                seen = await client.get_task(
                    task.request.app_id, task.request.room_id, task.request.task_id, fingerprint=store.state.fingerprint
                )
                if seen.healthy and seen.live is not None:
                    return seen, None
                # As apply does: the intent is journaled before the call, so that a run
                # killed before the outcome is recorded leaves the task pending in the state.
                previous = store.record_intent(address, "StartSnapshot", declared)
                try:
                    return seen, await client.start(task.request)
                except ApiError as exc:
                    if not exc.may_have_run:  # refused or never sent: the API did nothing
                        store.record_not_done(address, previous)
                        if not exc.stops_run:  # this task's refusal: say which call, and that nothing changed
                            exc.message = (
                                f"StartSnapshot of {address} refused: {exc.message}; "
                                "nothing was started and nothing recorded"
                            )
                    raise

        seen, call = asyncio.run(adopt())
        if call is None:  # after a StartSnapshot the observation is out of date already
            store.record_observations([seen])
        differs: list[str] = []
        if call is None:
            live = dict(seen.live or {})
            if live == wire.comparable(store.state.fingerprint(declared)):
                recorded = declared  # as declared: recorded in the manifests' own form
            else:
                from .plan import diff_requests

                if task.request.business_id is not None:
                    live["BusinessId"] = task.request.business_id  # the read cannot show it
                differs = [c.path for c in diff_requests(wire.comparable(store.state.fingerprint(declared)), live)]
                recorded = live
            store.record_put(address, recorded, seen.request_id)
        else:
            store.record_put(address, declared, call.request_id)
    adopted = call is None or call.outcome is Outcome.already_started
    if as_json:
        print_json(
            {
                "format_version": 1,
                "type": "import",
                "address": address,
                "observed": seen.observed.value,
                "stop_reason": seen.stop_reason or None,
                "outcome": call.outcome.value if call is not None else "read",
                "adopted": adopted,
                "live_differs": differs,
                "request_id": call.request_id if call is not None else seen.request_id,
            }
        )
        return
    if call is None:
        out(f"Imported {address}: it runs (GetSnapshotTask: {seen.describe()}). Recorded with its live configuration")
        if differs:
            out(f", which differs from the declared one in {', '.join(differs)}: snapctl plan shows the change.\n")
        else:
            out(", which is the declared one.\n")
    elif adopted:
        out(
            f"Imported {address}: it was running (StartSnapshot: already started). Recorded with its declared configuration.\n"
        )
    else:
        out(
            f"{address} was not running ({seen.describe()}): StartSnapshot started it with its declared configuration, and it is now in the state.\n"
        )


# state ---------------------------------------------------------------------------------


@click.group()
def state():
    """Inspect, edit, move or rebind the state: list, show, rm, migrate, rebind."""


def _describe_state(store, current) -> str:
    bound = f", bound to {current.endpoint} (region {current.region})" if current.endpoint else ""
    if not current.exists:
        return f"# state: {store.location}, {store.kind} backend: no state yet\n"
    return f"# state: {store.location}, {store.kind} backend, serial {current.serial}{bound}\n"


@state.command(name="list")
@state_option
@output_options
@handle_errors
def state_list(state_path, workspace, as_json, no_color):
    """List the task addresses in the state (where it is and its workspace on stderr)."""
    store = _store(state_path, workspace, 0.0, "snapctl state list")
    current = store.read()
    if as_json:
        print_json(
            {
                "format_version": 1,
                "type": "state",
                "backend": store.kind,
                "location": store.location,
                "workspace": store.workspace,
                "workspaces": store.workspaces(),
                "endpoint": current.endpoint,
                "region": current.region,
                "lineage": current.lineage,
                "serial": current.serial,
                "tasks": sorted(current.tasks),
                "pending": {a: i["action"] for a, i in sorted(current.pending.items())},
            }
        )
        return
    err(_describe_state(store, current))
    for address in sorted(current.tasks):
        out(address + "\n")
    for address, intent in sorted(current.pending.items()):
        if address not in current.tasks:
            out(f"{address} (pending: {intent['action']} sent by an interrupted run, outcome unknown)\n")


@state.command(name="show")
@click.argument("address")
@state_option
@output_options
@handle_errors
def state_show(address, state_path, workspace, as_json, no_color):
    """Show what the state holds for APP/ROOM/TASK (secrets only as fingerprints)."""
    from .plan import mask_secrets
    from .render import code_names, field_value, flatten

    current = _store(state_path, workspace, 0.0, "snapctl state show").read()
    entry = current.tasks.get(address)
    if entry is None:
        raise UsageError(f"{address} is not in the state (see snapctl state list)")
    seen = current.observed.get(address)
    if as_json:
        print_json(
            {
                "format_version": 1,
                "address": address,
                "request": mask_secrets(entry["request"]),
                "names": code_names(entry["request"]),
                "request_id": entry.get("request_id"),
                "applied_at": entry.get("applied_at"),
                "observed": seen,
            }
        )
        return
    out(f"# {address}\n")
    for path, value in flatten(entry["request"]):
        out(f"{path} = {field_value(value, path)}\n")
    out(f"# applied at {entry.get('applied_at')} (RequestId {entry.get('request_id') or '-'})\n")
    if seen is not None:
        reason = f" ({seen['stop_reason']})" if seen.get("stop_reason") else ""
        times = "".join(f", {k} {seen[k]}" for k in ("started", "ended") if seen.get(k))
        out(f"# last observed {seen['status']}{reason} since {seen['since']}{times}\n")


@state.command(name="rm")
@click.argument("addresses", nargs=-1, required=True)
@state_option
@lock_option
@handle_errors
def state_rm(addresses, state_path, workspace, lock_timeout_s):
    """Forget tasks without stopping them (they keep running, unmanaged)."""
    import copy

    from .state import store_for

    addresses = list(dict.fromkeys(addresses))  # an address named twice is removed once
    removing = set(addresses)
    with store_for(
        state_path, workspace=workspace, lock_timeout_s=lock_timeout_s, command="snapctl state rm", create=False
    ) as store:
        missing = [a for a in addresses if a not in store.state.tasks and a not in store.state.pending]
        if missing:
            raise UsageError(f"not in the state: {', '.join(missing)}")
        updated = copy.copy(store.state)
        updated.tasks = {a: e for a, e in store.state.tasks.items() if a not in removing}
        updated.pending = {a: i for a, i in store.state.pending.items() if a not in removing}
        updated.observed = {a: o for a, o in store.state.observed.items() if a not in removing}
        store.replace_state(updated)
    out(f"Removed {len(addresses)} task(s) from the state; they were not stopped.\n")


@state.command(name="migrate")
@state_option
@click.option(
    "--to", "destination", required=True, metavar="DEST", help="Where to copy the state: a file or a postgresql:// URL."
)
@click.option("--to-workspace", metavar="W", help="The destination's workspace (default: the same name).")
@lock_option
@handle_errors
def state_migrate(state_path, workspace, destination, to_workspace, lock_timeout_s):
    """Copy the state (lineage, serial, tasks, pending calls, endpoint) to another backend or workspace.

    Both states are locked while copying. A destination holding another state
    (another lineage) is refused, unless it holds nothing (no task, never bound
    to an endpoint); one holding an older copy of this state is brought up to
    date. The source is left as it is: point --state at the destination from
    now on, and remove the source when you no longer need it.
    """
    source = _store(state_path, workspace, lock_timeout_s, "snapctl state migrate")
    target = _store(destination, to_workspace or workspace, lock_timeout_s, "snapctl state migrate")
    if (source.kind, source.location) == (target.kind, target.location):
        raise UsageError("--to names the state being migrated; give another file, database or --to-workspace")
    with source:
        if not source.state.exists:
            raise UsageError(f"there is no state at {source.location} to migrate")
        with target:
            target.copy_from(source.state)
    out(
        f"Copied the state (lineage {source.state.lineage}, serial {source.state.serial}, "
        f"{len(source.state.tasks)} task(s), {len(source.state.pending)} pending call(s)) "
        f"from {source.location} to {target.location}.\n"
    )


@state.command(name="rebind")
@state_option
@endpoint_option
@lock_option
@handle_errors
def state_rebind(state_path, workspace, endpoint, lock_timeout_s):
    """Bind the state to the endpoint (--endpoint / SNAPCTL_ENDPOINT) and region (VOLC_REGION) given now.

    A state remembers the API endpoint it was applied against and refuses any
    other, since its tasks exist there only. Rebind only when the same tasks
    are now reached through another endpoint (a proxy, a new address).
    """
    from .engine import Settings

    endpoint, region = Settings(endpoint=endpoint).target()
    with _store(state_path, workspace, lock_timeout_s, "snapctl state rebind") as store:
        if not store.state.exists:
            raise UsageError(f"there is no state at {store.location} to rebind")
        before = store.state.endpoint
        store.rebind(endpoint, region)
    was = f"{before} (region {store.state.region})" if before else "no endpoint"
    out(f"The state {store.location} was bound to {was}; it is now bound to {endpoint} (region {region}).\n")


# force-unlock ------------------------------------------------------------------------------


@click.command(name="force-unlock")
@state_option
@handle_errors
def force_unlock(state_path, workspace):
    """Clear a state lock left behind.

    The lock is an operating-system lock (in PostgreSQL, an advisory lock of the
    holder's connection) that is released when its holder exits, so a killed
    run never leaves one behind. A lock that is still held belongs to a live
    process: this command names it and refuses, rather than letting two
    writers corrupt the state.
    """
    import socket

    store = _store(state_path, workspace, 0.0, "snapctl force-unlock")
    holder = store.lock_holder()
    if store.lock_is_held():
        who = holder.describe() if holder else "another process"
        hint = f"; stop it (kill {holder.pid}) or wait" if holder and holder.host == socket.gethostname() else ""
        raise UsageError(f"state {store.location} is locked by a live process: {who}{hint}")
    if store.forget_holder():
        out(
            f"The state is not locked; removed the stale lock record of {store.location}"
            + (f" ({holder.describe()})" if holder else "")
            + ".\n"
        )
    else:
        out("The state is not locked.\n")
