"""``snapctl reconcile``: observe the declared tasks and fix them, once or as a controller."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import click
import orjson

from ..errors import Interrupted, SnapctlError, UsageError
from ..logs import LINE_FORMATS, stamped_lines
from ..notify import parse_target
from ..style import Style
from .options import (
    MAX_SECONDS,
    Number,
    adopt_option,
    api_options,
    lock_option,
    manifest_paths,
    open_store,
    output_options,
    paths_argument,
    refuse_unless,
    state_option,
)
from .output import EXIT_ERROR, EXIT_INTERRUPTED, colour_enabled, err, half_done, handle_errors, out


@click.command(short_help="Read every declared task, fix what is not as declared (--watch: keep doing it).")
@paths_argument
@state_option
@api_options(qps=True, read_qps=True, parallelism=True)
@lock_option
@output_options
@click.option(
    "--watch",
    is_flag=True,
    help="Run as a controller until SIGTERM/SIGINT: read the tasks continuously at --read-qps, act within seconds.",
)
@click.option(
    "--interval",
    "interval_s",
    type=Number(0.1, MAX_SECONDS),
    default=10.0,
    show_default=True,
    help="With --watch: the shortest time between two reads of one task (fewer tasks than "
    "--read-qps x INTERVAL are read less often than the budget allows).",
)
@click.option(
    "--idle-restart",
    type=click.Choice(["backoff", "always", "never"]),
    default="backoff",
    show_default=True,
    help="Tasks that idled out (IdleTimeOut: nobody published): backoff restarts the first at once and "
    "repeated ones ever later (at most one start per MaxIdleTime, about one an hour for an empty room); "
    "always restarts each at once; never leaves them ended.",
)
@click.option(
    "--metrics-port",
    type=Number(0, 65535, integer=True),
    help="With --watch: serve Prometheus metrics on 127.0.0.1:PORT/metrics, and the probes /healthz and /readyz.",
)
@click.option("--metrics-host", default="127.0.0.1", show_default=True, help="Address for --metrics-port.")
@click.option(
    "--log-format",
    type=click.Choice(LINE_FORMATS),
    default="text",
    show_default=True,
    help="With --watch: every line stamped with its time (RFC 3339 UTC), as text or as one JSON object per line.",
)
@click.option(
    "--stuck-after",
    "stuck_after_s",
    type=Number(1, MAX_SECONDS),
    default=300.0,
    show_default=True,
    help="With --metrics-port: /healthz answers 503 once the loop has not gone round for this many seconds.",
)
@click.option(
    "--notify",
    "notify_urls",
    multiple=True,
    envvar="SNAPCTL_NOTIFY",
    metavar="[FORMAT:]URL",
    help="With --watch: post the controller's events as JSON to this webhook (repeatable; env SNAPCTL_NOTIFY, "
    "space-separated). FORMAT: generic, slack or lark (Feishu); Slack's and Lark's hosts are recognized.",
)
@click.option(
    "--notify-window",
    "notify_window_s",
    type=Number(0.1, 3600),
    default=10.0,
    show_default=True,
    help="With --notify: events within this many seconds of the first one make one message.",
)
@click.option(
    "--no-refresh",
    is_flag=True,
    help="Do not read the tasks: StartSnapshot every declared one instead (the blind re-assert).",
)
@adopt_option
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
    log_format,
    stuck_after_s,
    notify_urls,
    notify_window_s,
    no_refresh,
    adopt,
    idle_restart,
):
    """Observe every declared task, then fix what is not as declared, without asking.

    Once: read every declared task (GetSnapshotTask, at --read-qps), start the
    ones that ended or failed ("healed"), correct tasks changed outside snapctl,
    apply pending manifest changes as `apply` would, and confirm the tasks it
    cannot see with StartSnapshot ("already started" = running). A task that
    fails to run (Status 4, or stopped again right after a start) is reported
    as failing and restarted with a growing backoff; the exit status is then 1.
    --no-refresh instead sends StartSnapshot for every declared task.

    With --watch, as a controller: reads flow steadily at --read-qps, soonest
    due first (a task just started is read again within 15 s); what is found
    is acted on within a second, under short holds of the state's lock, so
    pipelines' applies go on meanwhile. Broken manifests keep the last good set
    in force. On a PostgreSQL state any number of replicas run: one leads, the
    others stand by. A state that held no task before takes over declared tasks
    that already run only with --adopt.
    """
    from .. import controller, render
    from ..runenv import check_metrics_address
    from ..signals import graceful_stop

    watch_only = ("interval_s", "metrics_port", "metrics_host", "log_format", "notify_urls")
    refuse_unless(watch, "applies only with --watch", *watch_only)
    refuse_unless(metrics_port is not None, "applies only with --metrics-port (it is about /healthz)", "stuck_after_s")
    refuse_unless(bool(notify_urls), "applies only with --notify", "notify_window_s")
    refuse_unless(not no_refresh, "does not apply with --no-refresh (it reads nothing)", "read_qps")
    settings = api_opts.settings()
    targets = [parse_target(url) for url in notify_urls] if watch else []
    store = open_store(state_path, workspace, lock_timeout_s, "snapctl reconcile")  # a missing workspace: refused
    if metrics_port is not None:
        check_metrics_address(metrics_host, metrics_port)
    paths = manifest_paths(paths)
    style = Style(colour_enabled(sys.stdout, no_color))

    def on_result(result):
        if not result.ok or result.healed or result.kind != "reassert":
            click.echo(render.result_line(result, style), err=as_json)  # stdout or stderr as they are now

    def report_round(round_):
        if as_json:
            document = render.reconcile_document(
                ok=round_.ok,
                error=round_.error,
                declared=round_.declared,
                duration_s=round_.duration_s,
                refreshed=round_.refreshed,
                reads=round_.reads,
                observed=round_.observed_counts,
                interrupted=round_.interrupted is not None,
                failing=round_.failing,
                deferred=round_.deferred,
                report=round_.report,
                plan=round_.plan,
            )
            click.echo(orjson.dumps(document).decode())
            return
        if round_.interrupted is not None:
            out(
                style(f"Reconcile interrupted during its reads: {round_.interrupted}; nothing was changed.\n", "yellow")
            )
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
        healed = len([r for r in report.healed if r.address not in round_.failing])
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
        failing = f", {len(round_.failing)} failing" if round_.failing else ""
        adopted = len(report.adopted)
        left = len(report.not_adopted)
        line = (
            f"Reconciled {round_.declared} task(s) in {round_.duration_s:.1f}s: {read}"
            f"{changed - adopted - left} change(s) applied, "
            + (f"{adopted} already running, adopted, " if adopted else "")
            + f"{healed} healed, {failed} failed{failing}"
            + (f", {left} already running, not adopted." if left else ".")
        )
        out(style(line + "\n", "red" if failed or left or round_.failing else "green"))
        if healed:
            out("Healed: " + ", ".join(r.address for r in report.healed if r.address not in round_.failing) + "\n")
        if left:
            err(style(f"Error: {render.not_adopted_line(report)}\n", "red"))
        restarted = {r.address for r in report.results}
        for address, reason in sorted(round_.failing.items()):
            if address in round_.deferred:
                due = round_.deferred[address]
                when = f"not restarted before {_iso(due)} (backoff)" if due else "not restarted"
            else:
                when = "restarted" if address in restarted else "not restarted"
            err(style(f"Failing: {address} ({reason}): {when}\n", "red"))
        for address, due in sorted(round_.deferred.items()):
            if address not in round_.failing:
                when = f"restart due at {_iso(due)}" if due else "not restarted (--idle-restart never)"
                out(f"Idle: {address} ended (IdleTimeOut): {when}\n")

    if not watch:
        # Like apply: the first SIGINT/SIGTERM lets calls in flight finish and be recorded.
        with _named_if_stopped_at_once(store), graceful_stop() as stop:
            round_ = controller.reconcile_once(
                paths,
                state_path,
                settings,
                lock_timeout_s=lock_timeout_s,
                on_result=on_result,
                refresh=not no_refresh,
                workspace=workspace,
                stop_event=stop,
                adopt=adopt,
                idle_restart=idle_restart,
            )
        if round_.error is not None and not as_json:
            raise round_.error
        report_round(round_)
        if round_.interrupted is not None or (round_.report is not None and round_.report.interrupted):
            sys.exit(EXIT_INTERRUPTED)
        if not round_.ok:
            sys.exit(EXIT_ERROR)
        return
    with stamped_lines(log_format):
        status = controller.ControllerStatus()
        metrics = server = None
        if metrics_port is not None:
            from ..ops_http import OpsServer

            metrics = controller.Metrics()
            try:
                server = OpsServer(
                    metrics_host, metrics_port, metrics.registry, status.health, stuck_after_s=stuck_after_s
                )
            except OSError as exc:
                raise UsageError(
                    f"cannot serve metrics on {metrics_host}:{metrics_port}: {exc.strerror or exc}"
                ) from None
            err(f"Serving metrics on http://{metrics_host}:{server.port}/metrics (probes: /healthz, /readyz)\n")
        notifier = None
        if targets:
            from ..notify import Notifier

            notifier = Notifier(targets, window_s=notify_window_s, registry=metrics.registry if metrics else None)
            status.subscribe(notifier)

        def on_line(line):
            click.echo(line, err=as_json)  # stdout or stderr as they are now

        repeats = _RepeatedErrors()

        def on_hold(hold):
            if as_json:
                document = render.reconcile_document(
                    ok=hold.ok,
                    error=hold.error,
                    declared=status.health().declared,
                    duration_s=hold.held_s,
                    reads=hold.reads,
                    observed=hold.observed or {},
                    failing=hold.failing,
                    deferred=hold.deferred,
                    report=hold.report,
                    plan=hold.plan,
                    lock_wait_s=round(hold.waited_s, 3),
                    recorded=hold.recorded,
                    acted_after_reads=hold.acted_after_reads,
                    retry_in_s=hold.retry_in_s,
                )
                if hold.report is not None or hold.error is not None or hold.failing or hold.deferred:
                    click.echo(orjson.dumps(document).decode())
                return
            if hold.error is not None:
                from ..errors import LockError

                if not isinstance(hold.error, LockError):
                    line = repeats.failed(str(hold.error))
                    if line is not None:
                        err(style(line, "red"))
                return
            back = repeats.succeeded()
            if back is not None:
                err(style(back, "green"))
            if hold.report is None:
                return
            report = hold.report
            healed = len([r for r in report.healed if r.address not in hold.failing])
            line = (
                f"Acted in {hold.held_s:.2f}s (lock waited {hold.waited_s:.2f}s): "
                f"{hold.plan.summary.total if hold.plan else 0} change(s), {healed} healed, "
                f"{len(report.failures)} failed"
                + (f", {report.skipped} not attempted (stopping)" if report.skipped else "")
                + f"; {hold.reads} read since the last."
            )
            out(style(line + "\n", "red" if report.failures else "green"))

        with _named_if_stopped_at_once(store), graceful_stop() as stop:
            try:
                ctl = controller.watch(
                    paths,
                    state_path,
                    settings,
                    stop=stop,
                    workspace=workspace,
                    interval_s=interval_s,
                    lock_wait_s=max(lock_timeout_s, controller.LOCK_WAIT_S),
                    idle_restart=idle_restart,
                    status=status,
                    metrics=metrics,
                    on_result=on_result,
                    on_hold=on_hold,
                    on_line=on_line,
                    adopt=adopt,
                )
            finally:
                if server is not None:
                    server.close()
                if notifier is not None:
                    notifier.close()
        declared = status.health().declared
        read = len(ctl.latest)
        if declared and read < declared:
            err(
                f"Reconcile interrupted: stopped with {read} of {declared} task(s) read in its first sweep "
                "(recorded in the state).\n"
            )
        stopped = f"Stopped after {ctl.reads} read(s) and {ctl.holds} hold(s) of the state's lock"
        if ctl.unrecorded_at_stop is None:
            err(f"{stopped}; the state is written.\n")
        else:  # observations only: every call was recorded when it was answered
            err(f"{stopped}; the reads since the last hold could not be recorded: {ctl.unrecorded_at_stop}\n")


@contextlib.contextmanager
def _named_if_stopped_at_once(store) -> Iterator[None]:
    """A second SIGINT/SIGTERM stops at once, calls in flight abandoned: say which tasks the
    state holds a call of that is not settled (as apply does), read once the run let go of it."""
    try:
        yield
    except KeyboardInterrupt:
        try:
            pending = store.read().pending
        except SnapctlError:
            raise Interrupted("stopped at once by a second signal") from None
        raise Interrupted(half_done(pending, sorted(pending))) from None


def _iso(at):
    from ..restarts import iso

    return iso(at) if at is not None else None


class _RepeatedErrors:
    """The lines of the controller's failed holds: one per distinct error. An error said within
    ``every_s`` is counted, not printed again (a full disk fails a hold every few seconds: a line
    each would fill the log that could say so), then said once more with its count."""

    def __init__(self, every_s: float = 60.0):
        self.every_s = every_s
        self.said: dict[str, list] = {}  # error → [when it was last printed, failures since]
        self.failed_holds = 0  # since the last hold that succeeded

    def failed(self, text: str) -> str | None:
        """The line to print for a failed hold, or None while it repeats one said lately."""
        import time

        now = time.monotonic()
        self.failed_holds += 1
        said = self.said.get(text)
        if said is not None and now - said[0] < self.every_s:
            said[1] += 1
            return None
        again = f" (and {said[1]} more time(s) since its last line)" if said is not None and said[1] else ""
        self.said[text] = [now, 0]
        return f"Error: {text}{again}\n"

    def succeeded(self) -> str | None:
        """The line saying holds succeed again after failures, once; else None."""
        if not self.failed_holds:
            return None
        line = f"Holds of the state succeed again, after {self.failed_holds} that failed.\n"
        self.said.clear()
        self.failed_holds = 0
        return line
