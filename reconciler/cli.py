"""The ``snapctl`` command: a thin shell over the library.

Subcommands are imported only when invoked, so every command loads only what it
uses; ``snapctl --version`` loads nothing at all (see :func:`main`).
"""

from __future__ import annotations

import gc
import importlib
import os
import sys

import click

from . import __version__

# name -> "module:attribute" of a click command, imported on first use.
COMMANDS: dict[str, str] = {
    "validate": "reconciler.commands.validate:validate",
    "plan": "reconciler.commands.plan:plan",
    "apply": "reconciler.commands.apply:apply",
    "destroy": "reconciler.commands.apply:destroy",
    "reconcile": "reconciler.commands.reconcile:reconcile",
    "import": "reconciler.commands.import_:import_",
    "state": "reconciler.commands.state:state",
    "workspace": "reconciler.commands.workspace:workspace",
    "force-unlock": "reconciler.commands.state:force_unlock",
    "show": "reconciler.commands.plan:show",
    "status": "reconciler.commands.status:status",
    "schema": "reconciler.commands.schema:schema",
    "completion": "reconciler.commands.completion:completion",
    "init": "reconciler.commands.init:init",
    "emulator": "reconciler.emulator.command:emulator",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str):
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, _, attr = target.partition(":")
        command = getattr(importlib.import_module(module), attr)
        _resume_gc()
        return command

    def resolve_command(self, ctx: click.Context, args: list[str]):
        name = args[0] if args else ""
        if name and not name.startswith("-") and name not in COMMANDS:
            import difflib  # only for a mistyped command

            matches = difflib.get_close_matches(name, list(COMMANDS), n=2, cutoff=0.6)
            hint = f" Did you mean {' or '.join(matches)}?" if matches else " See snapctl --help."
            ctx.fail(f"No such command '{name}'.{hint}")
        return super().resolve_command(ctx, args)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="snapctl", message="%(prog)s %(version)s")
def cli() -> None:
    """Keep Volcengine RTC snapshot tasks exactly as your YAML manifests say.

    \b
    Typical use:
      snapctl validate manifests/        check offline
      snapctl plan manifests/            see what would change
      snapctl apply manifests/           make it so, recorded in state/
      snapctl status manifests/          what really runs (GetSnapshotTask)

    \b
    Exit status: 0 success, 1 error, 2 changes (plan --detailed-exitcode) or tasks not
    running (status), 130 interrupted (Ctrl-C or SIGTERM; calls in flight finish and are
    recorded first; reconcile --watch stops with 0).
    Environment: VOLC_ACCESSKEY, VOLC_SECRETKEY, VOLC_SESSION_TOKEN (or ~/.volc/credentials),
    VOLC_REGION, SNAPCTL_ENDPOINT, SNAPCTL_STATE, SNAPCTL_WORKSPACE, NO_COLOR, HTTPS_PROXY/HTTP_PROXY/ALL_PROXY,
    SNAPCTL_LOG=debug|info|warning (diagnostic log; SNAPCTL_LOG_PATH=FILE to append to a file).
    All of it is checked before anything is printed or sent.
    """


#: Whether the cyclic garbage collector was paused to load the CLI (see ``main``).
_gc_paused = False


def _resume_gc() -> None:
    """A command is loaded: what start-up made is frozen out of the collector's reach
    (it lives as long as the process) and the collector runs again."""
    global _gc_paused
    if _gc_paused:
        _gc_paused = False
        gc.freeze()
        gc.enable()


def _without_pydantic_plugins() -> None:
    """pydantic looks for plugins in every installed distribution's entry points when the
    first model is built, and its plugin loader imports importlib.metadata even when told
    there are none: snapctl's models use no plugin, and the two cost every command about
    15 ms. Say so (PYDANTIC_DISABLE_PLUGINS, unless the user set it) and, when that disables
    them all, give pydantic a loader that answers as its own then does (no plugins)."""
    disabled = os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    if disabled in ("__all__", "1", "true") and "pydantic.plugin._loader" not in sys.modules:
        import types

        loader = types.ModuleType("pydantic.plugin._loader")
        loader.get_plugins = tuple  # type: ignore[attr-defined]  # get_plugins() -> no plugin
        sys.modules["pydantic.plugin._loader"] = loader


def main(argv: list[str] | None = None, *, gc_paused: bool = False) -> int:
    """Run the CLI. Exit 0 success, 1 any error (bad flags included), 2 only for
    ``plan --detailed-exitcode`` with changes, 130 on Ctrl-C. ``gc_paused``: the caller
    paused the cyclic garbage collector to load the CLI (``__main__``); it runs again
    from the moment the command is loaded."""
    global _gc_paused
    _gc_paused = gc_paused
    _without_pydantic_plugins()
    from .errors import SnapctlError, UsageError
    from .logs import configure

    try:
        configure()
    except UsageError as exc:
        click.echo(f"Error: {exc}", err=True)
        return 1
    try:
        cli.main(args=argv, prog_name="snapctl", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.UsageError as exc:  # a bad flag or argument: one line, as every bad input
        message = exc.format_message()
        if exc.ctx is not None and "--help" not in message:
            message = f"{message.rstrip('.')} (see {exc.ctx.command_path} --help)"
        click.echo(f"Error: {message}", err=True)
        return 1
    except click.ClickException as exc:
        exc.show()
        return 1
    except SnapctlError as exc:  # raised while the options are read (snapctl.toml): one line too
        click.echo(f"Error: {exc}", err=True)
        return 1
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("Interrupted.", err=True)
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
