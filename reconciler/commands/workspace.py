"""``snapctl workspace …``: list, show, create, select and delete the workspaces of a state."""

from __future__ import annotations

import click

from ..errors import UsageError
from .options import lock_option, output_options, state_path_option
from .output import err, handle_errors, out, print_json


@click.group()
def workspace():
    """Manage workspaces, the independent states kept at one --state: list, show, new, select, delete.

    A workspace must be created (`snapctl workspace new NAME`) before any command
    uses it; `default` always exists. A run uses --workspace, else SNAPCTL_WORKSPACE,
    else the workspace chosen with `snapctl workspace select` (kept in
    .snapctl/workspace beside snapctl.toml, else in the working directory), else
    snapctl.toml's workspace, else default.
    """


def _store(state_path, name: str, command: str, lock_timeout_s: float = 0.0, *, must_exist: bool = True):
    from ..state import store_for

    return store_for(
        state_path,
        workspace=name,
        lock_timeout_s=lock_timeout_s,
        command=f"snapctl workspace {command}",
        must_exist=must_exist,
    )


def _current() -> tuple[str, str]:
    from ..project import current_workspace

    return current_workspace()


@workspace.command(name="list")
@state_path_option
@output_options
@handle_errors
def workspace_list(state_path, as_json, no_color):
    """List the workspaces of the state; the current one is marked with *."""
    current, source = _current()
    store = _store(state_path, "default", "list")
    names = store.workspaces()
    if as_json:
        print_json(
            {
                "format_version": 1,
                "type": "workspaces",
                "backend": store.kind,
                "location": store.where,
                "current": current,
                "current_from": source,
                "workspaces": names,
            }
        )
        return
    for name in names:
        out(f"{'*' if name == current else ' '} {name}\n")
    if current not in names:
        err(f"The current workspace {current} ({source}) does not exist in {store.where}.\n")


@workspace.command(name="show")
@output_options
@handle_errors
def workspace_show(as_json, no_color):
    """Print the name of the current workspace (with --json, also where that choice comes from)."""
    current, source = _current()
    if as_json:
        print_json({"format_version": 1, "type": "workspace", "workspace": current, "from": source})
        return
    out(f"{current}\n")


@workspace.command(name="new")
@click.argument("name")
@state_path_option
@lock_option
@handle_errors
def workspace_new(name, state_path, lock_timeout_s):
    """Create the workspace NAME, holding no task (it is not selected: use --workspace NAME,
    or `snapctl workspace select NAME`)."""
    store = _store(state_path, name, "new", lock_timeout_s, must_exist=False)
    store.create_workspace()
    out(
        f'Created workspace "{name}" in {store.where}.\n'
        f"Use it with --workspace {name}, or select it: snapctl workspace select {name}\n"
    )


@workspace.command(name="select")
@click.argument("name")
@state_path_option
@handle_errors
def workspace_select(name, state_path):
    """Make NAME the workspace of every run in this project (kept in .snapctl/workspace
    beside snapctl.toml, else in the working directory).

    --workspace and SNAPCTL_WORKSPACE still take precedence over it.
    """
    import os

    from ..project import select_workspace

    store = _store(state_path, name, "select")
    store.require_workspace()
    path = select_workspace(name)
    out(f'Switched to workspace "{name}" (kept in {path}).\n')
    if os.environ.get("SNAPCTL_WORKSPACE") and os.environ["SNAPCTL_WORKSPACE"] != name:
        err(f"Note: SNAPCTL_WORKSPACE={os.environ['SNAPCTL_WORKSPACE']} is set and takes precedence.\n")


@workspace.command(name="delete")
@click.argument("name")
@state_path_option
@lock_option
@click.option("--force", is_flag=True, help="Delete it even if it holds tasks (they are forgotten, not stopped).")
@handle_errors
def workspace_delete(name, state_path, lock_timeout_s, force):
    """Delete the workspace NAME and the state it holds.

    Refused for `default`, for the current workspace, and for one that holds
    tasks or pending calls (they are named) unless --force: its tasks are then
    forgotten, not stopped (`snapctl destroy --workspace NAME` stops them first).
    """
    current, source = _current()
    if name == current and name != "default":
        raise UsageError(
            f"workspace {name} is the current one ({source}); switch to another first "
            "(snapctl workspace select default)"
        )
    store = _store(state_path, name, "delete", lock_timeout_s)
    store.require_workspace()
    dropped = store.delete_workspace(force=force)
    held = len(set(dropped.tasks) | set(dropped.pending))
    forgot = f"; {held} task(s) forgotten, not stopped" if held else ""
    out(f'Deleted workspace "{name}" from {store.where}{forgot}.\n')
