"""The options shared by the commands, and the steps they share: loading the manifests,
opening the state, reading the tasks. Commands use this module and :mod:`.output`,
never each other."""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from .. import api
from .output import EXIT_ERROR, print_json


class Number(click.ParamType):
    """The type of every numeric flag (and of an option's environment variable): a finite
    number in ``[low, high]``, an integer with ``integer``. NaN and infinities are refused
    (Python's float() reads "nan", "inf" and "1e999" as numbers that compare false or never
    end: a wait of NaN seconds never waits, one of infinity never stops)."""

    def __init__(self, low: float, high: float, *, integer: bool = False):
        self.low, self.high, self.integer = low, high, integer
        self.name = "integer" if integer else "number"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        import math

        if isinstance(value, bool):
            self.fail(f"{value!r} is not a number.", param, ctx)
        try:
            if self.integer:
                number: float = value if isinstance(value, int) else int(str(value).strip(), 10)
            else:
                number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not {'an integer' if self.integer else 'a number'}.", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        if not self.low <= number <= self.high:
            self.fail(f"{value!r} is not in the range {_plain(self.low)}..{_plain(self.high)}.", param, ctx)
        return number

    def __repr__(self) -> str:
        return f"Number({self.low}, {self.high}, integer={self.integer})"


def _plain(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else f"{number:g}"


#: The longest wait a duration flag takes (seconds): about 11.6 days.
MAX_SECONDS = 1_000_000.0


def paths_argument(f):
    return click.argument("paths", nargs=-1, type=click.Path(path_type=Path))(f)


def _resolve_workspace(ctx: click.Context, param: click.Parameter, value: str | None) -> str:
    """``--workspace``, else SNAPCTL_WORKSPACE, else the selection (``snapctl workspace
    select``), else ``default``; where it came from is kept for the messages of :func:`open_store`."""
    from ..project import current_workspace

    from_flag = ctx.get_parameter_source(param.name or "") is click.core.ParameterSource.COMMANDLINE
    name, source = current_workspace(value, from_flag=from_flag)
    ctx.meta["snapctl.workspace_source"] = source
    return name


def _resolve_state(ctx: click.Context, param: click.Parameter, value: str | None) -> str | Path:
    """``--state``, else SNAPCTL_STATE, else snapctl.toml's ``state`` (resolved against its
    directory), else ``state/snapctl.state.json`` (likewise, when there is a snapctl.toml)."""
    if value:
        return value
    from ..project import project

    return project().state()


def state_path_option(f):
    return click.option(
        "--state",
        "state_path",
        envvar="SNAPCTL_STATE",
        callback=_resolve_state,
        help="State file, or a postgresql:// URL of a shared state (env SNAPCTL_STATE; else snapctl.toml's "
        "state; default state/snapctl.state.json).",
    )(f)


def state_option(f):
    f = click.option(
        "--workspace",
        envvar="SNAPCTL_WORKSPACE",
        callback=_resolve_workspace,
        help="Which of the states kept at --state (env SNAPCTL_WORKSPACE; else the one chosen with "
        "`snapctl workspace select`; else snapctl.toml's workspace; else default). It must exist: "
        "see `snapctl workspace new`.",
    )(f)
    return state_path_option(f)


ENDPOINT_HELP = (
    "API endpoint (env SNAPCTL_ENDPOINT; else snapctl.toml's endpoint; default https://rtc.volcengineapi.com)."
)


def endpoint_option(f):
    return click.option("--endpoint", envvar="SNAPCTL_ENDPOINT", help=ENDPOINT_HELP)(f)


def open_store(state_path, workspace, lock_timeout_s, command, *, create: bool = True):
    """The store of the run's state and workspace; a workspace that does not exist is refused
    here, before anything is sent or written, naming those that do."""
    from ..state import store_for

    store = store_for(state_path, workspace=workspace, lock_timeout_s=lock_timeout_s, command=command, create=create)
    context = click.get_current_context(silent=True)
    store.require_workspace(context.meta.get("snapctl.workspace_source", "") if context is not None else "")
    return store


def output_options(f):
    f = click.option("--no-color", is_flag=True, help="No ANSI colour (also NO_COLOR=1).")(f)
    f = click.option(
        "--json", "as_json", is_flag=True, help="Machine-readable JSON on stdout (see docs/json-output.md)."
    )(f)
    return f


#: Attempts per request (the first and its retries), unless --max-attempts says otherwise:
#: the client's own default (``client.RetryPolicy``), which this module does not import.
DEFAULT_MAX_ATTEMPTS = 8


@dataclass(frozen=True)
class ApiOptions:
    """The API options of a command (see :func:`api_options`), as given."""

    endpoint: str | None
    qps: float = float(api.DOCUMENTED_QPS)
    read_qps: float = float(api.DOCUMENTED_READ_QPS)
    parallelism: int = 64
    timeout_s: float = 10.0
    max_attempts: int = DEFAULT_MAX_ATTEMPTS

    def settings(self, *, credentials: bool = True):
        """The run's settings with its environment checked (credentials, endpoint, region,
        proxies): a bad input is one line before any output and before any request.
        The endpoint and region are the flag's or variable's, else snapctl.toml's, else the defaults."""
        import os

        from ..engine import Settings
        from ..project import project

        pinned = project().settings
        environ = dict(os.environ)
        if not environ.get("VOLC_REGION") and pinned.region:
            environ["VOLC_REGION"] = pinned.region
        settings = Settings(
            endpoint=self.endpoint or (None if os.environ.get("SNAPCTL_ENDPOINT") else pinned.endpoint),
            qps=self.qps,
            read_qps=self.read_qps,
            parallelism=self.parallelism,
            timeout_s=self.timeout_s,
            max_attempts=self.max_attempts,
            environ=environ,
        )
        settings.resolve(credentials=credentials)
        return settings

    def offline_target(self, settings, state) -> tuple[str, str]:
        """The endpoint and region a command that sends nothing checks the state against: the
        state's own, where neither a flag, a variable nor snapctl.toml sets them."""
        import os

        from ..project import project

        endpoint, region = settings.target()
        if state.endpoint is None:
            return endpoint, region
        pinned = project().settings
        if not (self.endpoint or os.environ.get("SNAPCTL_ENDPOINT") or pinned.endpoint):
            endpoint = state.endpoint
        if not (os.environ.get("VOLC_REGION") or pinned.region) and state.region:
            region = state.region
        return endpoint, region


def api_options(*, qps: bool, read_qps: bool, parallelism: bool):
    """The API options of a command that can call the API, only those that have an effect
    there: ``--endpoint``, ``--timeout`` and ``--max-attempts`` always; ``--qps`` where the command sends many
    write calls, ``--read-qps`` where it reads many tasks (GetSnapshotTask), ``--parallelism``
    where many tasks are in flight (a rate or a bound on one call limits nothing). They reach
    the command as one ``api_opts`` argument, an :class:`ApiOptions` (defaults for those it lacks)."""

    def decorate(f):
        run = f

        @functools.wraps(run)
        def command(*args, endpoint, timeout_s, max_attempts, **kwargs):
            given = {name: kwargs.pop(name) for name in ("qps", "read_qps", "parallelism") if name in kwargs}
            options = ApiOptions(
                endpoint,
                given.get("qps", float(api.DOCUMENTED_QPS)),
                given.get("read_qps", float(api.DOCUMENTED_READ_QPS)),
                given.get("parallelism", DEFAULT_PARALLELISM),
                timeout_s,
                max_attempts,
            )
            return run(*args, api_opts=options, **kwargs)

        f = command
        f = click.option("--endpoint", help=ENDPOINT_HELP)(f)
        if qps:
            f = click.option(
                "--qps",
                type=Number(0, 1_000_000),
                default=float(api.DOCUMENTED_QPS),
                show_default=True,
                help="Requests per second per write action (0: no limit).",
            )(f)
        if read_qps:
            f = click.option(
                "--read-qps",
                type=Number(0, 1_000_000),
                default=float(api.DOCUMENTED_READ_QPS),
                show_default=True,
                help="GetSnapshotTask reads per second (0: no limit).",
            )(f)
        if parallelism:
            f = click.option(
                "--parallelism",
                type=Number(1, 100_000, integer=True),
                default=DEFAULT_PARALLELISM,
                show_default=True,
                help="Tasks in flight at once.",
            )(f)
        f = click.option(
            "--max-attempts",
            type=Number(1, 100, integer=True),
            default=DEFAULT_MAX_ATTEMPTS,
            show_default=True,
            help="Attempts per request before giving up: the first and its retries (throttled, 5xx, no answer).",
        )(f)
        return click.option(
            "--timeout",
            "timeout_s",
            type=Number(0.1, MAX_SECONDS),
            default=10.0,
            show_default=True,
            help="Seconds to wait for one answer.",
        )(f)

    return decorate


#: Tasks in flight at once, unless --parallelism says otherwise.
DEFAULT_PARALLELISM = 64


def refuse_unless(applies: bool, why: str, *names: str) -> None:
    """Refuse, in one line, an option of ``names`` (parameter names) given on the command
    line while it cannot apply: ``--metrics-port applies only with --watch``, ``why`` being
    the end of that sentence. (An environment variable, set for every run, is not refused.)"""
    if applies:
        return
    from click.core import ParameterSource

    from ..errors import UsageError

    ctx = click.get_current_context()
    for param in ctx.command.params:
        if param.name in names and ctx.get_parameter_source(param.name) is ParameterSource.COMMANDLINE:
            flag = max(param.opts, key=len)
            raise UsageError(f"{flag} {why}; nothing was sent")


def lock_option(f):
    return click.option(
        "--lock-timeout",
        "lock_timeout_s",
        type=Number(0, MAX_SECONDS),
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


def refresh_option(f):
    return click.option(
        "--refresh",
        is_flag=True,
        help="Read every task concerned with GetSnapshotTask (60/s) and plan against what runs.",
    )(f)


def adopt_option(f):
    return click.option(
        "--adopt",
        is_flag=True,
        help="Take over declared tasks that already run although the state held no task "
        "(the recovery of a lost state).",
    )(f)


def observe(manifests, state, settings, targets=(), *, record=None):
    """Read the tasks in scope (every declared one and every one in the state);
    the observations, and how long the reads took.

    SIGINT/SIGTERM stop the reads at once: what was read is given to ``record`` (a
    command that holds the state's lock records it), and :class:`Interrupted` says so
    (exit 130)."""
    import time

    from .. import engine
    from ..errors import Interrupted
    from ..signals import graceful_stop

    scope = engine.refresh_scope(manifests, state, targets)
    began = time.monotonic()
    try:
        with graceful_stop() as stop:
            observations = engine.refresh(
                settings.client(), scope, state, parallelism=settings.parallelism, stop_event=stop
            )
    except Interrupted as exc:
        read = f"{len(exc.observations)} of {exc.total} task(s) read"
        if record is not None:
            record(exc.observations.values())
            raise Interrupted(f"{read} (recorded in the state) before the stop; nothing was changed") from None
        raise Interrupted(f"{read} before the stop; nothing was planned") from None
    return observations, round(time.monotonic() - began, 3)


def load(paths, *, as_json: bool = False, command: str = "", **options) -> Any:
    """The manifests under ``paths``; with ``as_json``, manifests that cannot be used are
    a JSON document on stdout (``valid: false`` and every diagnostic) and exit 1."""
    from ..manifest import ManifestError, load_manifests

    try:
        return load_manifests(manifest_paths(paths), **options)
    except ManifestError as exc:
        if not as_json:
            raise
        from ..render import invalid_document

        print_json(invalid_document(exc.diagnostics, command))
        sys.exit(EXIT_ERROR)


def manifest_paths(paths) -> list[Path]:
    """The manifest paths given, else snapctl.toml's ``manifests``, else ``manifests/``."""
    from ..project import project

    return [Path(p) for p in paths] or project().manifests()


def no_manifests():
    """An empty manifest set (destroy, and plan --destroy without paths)."""
    from ..manifest import ManifestSet

    return ManifestSet(tasks={}, warnings=[], files=[])


def controller_of(store: Any) -> Any:
    """Who leads the controllers (``reconcile --watch``) of ``store``: a LockHolder, None when none runs."""
    from ..state.leader import current_leader

    try:
        return current_leader(store)
    except Exception:  # who leads is a courtesy: a state that reads but cannot say that is no error
        return None
