"""``snapctl emulator``: serve the snapshot API on this machine."""

from __future__ import annotations

from pathlib import Path

import click

from ..commands.options import Number
from .config import (
    DEFAULT_ACCESS_KEY,
    DEFAULT_REGION,
    DEFAULT_SECRET_KEY,
    MAX_MS,
    MAX_QPS,
    MAX_READ_WINDOW_S,
    EmulatorConfig,
)


@click.command(
    short_help="Serve the snapshot API locally, as the real one behaves on the wire.",
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    type=Number(0, 65535, integer=True),
    default=8080,
    show_default=True,
    help="Port to listen on (0: any free port).",
)
@click.option(
    "--access-key",
    envvar="SNAPCTL_EMULATOR_ACCESS_KEY",
    show_envvar=True,
    default=DEFAULT_ACCESS_KEY,
    show_default=True,
    help="The one access key accepted.",
)
@click.option(
    "--secret-key",
    envvar="SNAPCTL_EMULATOR_SECRET_KEY",
    show_envvar=True,
    default=DEFAULT_SECRET_KEY,
    help=f"Its secret key (default: the documented {DEFAULT_SECRET_KEY}). Never printed.",
)
@click.option("--region", default=DEFAULT_REGION, show_default=True, help="Region requests must be signed for.")
@click.option(
    "--qps",
    type=Number(0, MAX_QPS, integer=True),
    default=150,
    show_default=True,
    help="Requests per second per action before 429 (0: no limit).",
)
@click.option(
    "--read-qps",
    type=Number(0, MAX_QPS, integer=True),
    default=60,
    show_default=True,
    help="GetSnapshotTask requests per second before 429.",
)
@click.option(
    "--read-window",
    "read_window_s",
    type=Number(0, MAX_READ_WINDOW_S),
    default=72 * 3600,
    show_default=True,
    help="Seconds after its start a task can still be read; later GetSnapshotTask answers not found.",
)
@click.option(
    "--unwritable-bucket",
    "unwritable_buckets",
    multiple=True,
    metavar="NAME",
    help="Storage it cannot write to: tasks storing there fail to start (Status 4, StartTaskFailed). Repeatable.",
)
@click.option(
    "--start-delay-ms",
    type=Number(0, MAX_MS, integer=True),
    default=0,
    show_default=True,
    help="How long a newly started task reads Status 1 (not started yet) before Status 2 (running).",
)
@click.option(
    "--latency-ms",
    type=Number(0, MAX_MS, integer=True),
    default=0,
    show_default=True,
    help="Delay added to every API answer.",
)
@click.option(
    "--jitter-ms",
    type=Number(0, MAX_MS, integer=True),
    default=0,
    show_default=True,
    help="Random extra delay, up to this much.",
)
@click.option(
    "--error-rate",
    type=Number(0, 1),
    default=0.0,
    show_default=True,
    help="Share of requests answered 500 InternalError, not done.",
)
@click.option(
    "--drop-rate",
    type=Number(0, 1),
    default=0.0,
    show_default=True,
    help="Share of requests whose connection is dropped, half before and half after doing the action.",
)
@click.option(
    "--slow-rate",
    type=Number(0, 1),
    default=0.0,
    show_default=True,
    help="Share of requests done, then answered after --slow-ms.",
)
@click.option(
    "--slow-ms",
    type=Number(0, MAX_MS, integer=True),
    default=5000,
    show_default=True,
    help="Delay of the slow answers.",
)
@click.option(
    "--data",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Keep the tasks in this JSON file so they survive restarts.",
)
@click.option(
    "--seed",
    type=Number(-(2**63), 2**63 - 1, integer=True),
    default=None,
    help="Seed of the fault and jitter draws, for repeatable runs.",
)
@click.option(
    "--api-path",
    default="/",
    show_default=True,
    help="Path the API is served at (e.g. /api, to rehearse an endpoint behind a gateway prefix).",
)
@click.option(
    "--deny-app",
    "deny_apps",
    multiple=True,
    metavar="APPID",
    help="Answer AccessDenied for this AppId, as an IAM policy would. Repeatable.",
)
@click.option(
    "--refuse-start",
    "refuse_starts",
    multiple=True,
    metavar="APP/ROOM/TASK",
    help="Refuse StartSnapshot of this task (with --refuse-start-code), doing nothing; '*' for every task. Repeatable.",
)
@click.option(
    "--refuse-start-code",
    default="InvalidParameter",
    show_default=True,
    metavar="CODE",
    help="The error code --refuse-start answers (any code of docs/emulator.md's table).",
)
def emulator(**options) -> None:
    """Serve the RTC snapshot API (StartSnapshot, UpdateSnapshot, StopSnapshot,
    GetSnapshotTask) locally.

    It behaves like the real API on the wire: V4 signatures, the response envelope,
    error codes, the per-action rate limits, and a task lifecycle that GetSnapshotTask
    reports (running, ended by idle timeout or by API, failed to start). The fault rates
    are shares of requests in [0, 1] and together at most 1. GET /_emulator/tasks
    and /_emulator/stats show what it holds; see docs/emulator.md.
    """
    from pydantic import ValidationError

    from ..api import describe_validation_error
    from .server import run_forever
    from .tasks import DataFileError

    try:
        config = EmulatorConfig(
            **{
                **options,
                "deny_apps": list(options["deny_apps"]),
                "unwritable_buckets": list(options["unwritable_buckets"]),
                "refuse_starts": list(options["refuse_starts"]),
            }
        )
    except ValidationError as exc:
        raise click.ClickException(f"invalid settings: {describe_validation_error(exc)}") from None
    source = click.get_current_context().get_parameter_source("secret_key")
    secret_key_source = {
        click.core.ParameterSource.COMMANDLINE: "from --secret-key",
        click.core.ParameterSource.ENVIRONMENT: "from SNAPCTL_EMULATOR_SECRET_KEY",
    }.get(source, "default")  # type: ignore[arg-type]
    try:
        run_forever(config, secret_key_source)
    except DataFileError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}") from None
