"""``snapctl state …`` and ``snapctl force-unlock``: inspect, edit, move, rebind and unlock the state."""

from __future__ import annotations

import click

from ..errors import UsageError
from .options import (
    ApiOptions,
    controller_of,
    endpoint_option,
    lock_option,
    open_store,
    output_options,
    state_option,
)
from .output import err, handle_errors, out, print_json


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
    store = open_store(state_path, workspace, 0.0, "snapctl state list")
    current = store.read()
    leader = controller_of(store)
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
                "controller": None
                if leader is None
                else {"pid": leader.pid, "host": leader.host, "since": leader.started_at},
            }
        )
        return
    err(_describe_state(store, current))
    if leader is not None:
        err(f"Controller: {leader.describe()} leads.\n")
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
    from ..api import printable
    from ..plan import mask_secrets
    from ..render import code_names, field_value, flatten

    current = open_store(state_path, workspace, 0.0, "snapctl state show").read()
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
        out(f"{path} = {field_value(value, path, entry['request'])}\n")
    # What came from the API is shown as api.printable makes it (an older state may hold it otherwise).
    out(f"# applied at {entry.get('applied_at')} (RequestId {printable(entry.get('request_id') or '-')})\n")
    if seen is not None:
        reason = f" ({printable(seen['stop_reason'])})" if seen.get("stop_reason") else ""
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

    addresses = list(dict.fromkeys(addresses))  # an address named twice is removed once
    removing = set(addresses)
    with open_store(state_path, workspace, lock_timeout_s, "snapctl state rm", create=False) as store:
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
@click.option(
    "--to-workspace", metavar="W", help="The destination's workspace, created if need be (default: the same name)."
)
@click.option(
    "--keep-source",
    is_flag=True,
    help="Keep the source as a usable copy (by default it becomes a signpost naming the destination).",
)
@lock_option
@handle_errors
def state_migrate(state_path, workspace, destination, to_workspace, keep_source, lock_timeout_s):
    """Move the state (lineage, serial, tasks, pending calls, endpoint) to another backend or workspace.

    Both states are locked while copying. A destination holding another state
    (another lineage) is refused, unless it holds nothing (no task, never bound
    to an endpoint); one holding an older copy of this state is brought up to
    date, and a signpost this state left there is replaced (migrating back). A
    destination workspace that does not exist is created (migrating is the
    explicit act that makes it). Then the source becomes a signpost: it holds
    only where the state went and when, and every command that would use it is
    refused, naming the destination. --keep-source leaves it a usable copy.
    """
    from ..errors import StateError, WriteError
    from ..state import store_for

    source = open_store(state_path, workspace, lock_timeout_s, "snapctl state migrate")
    target = store_for(
        destination,
        workspace=to_workspace or workspace,
        lock_timeout_s=lock_timeout_s,
        command="snapctl state migrate",
        must_exist=False,
    )
    if (source.kind, source.identity) == (target.kind, target.identity):  # the same file, however named
        raise UsageError("--to names the state being migrated; give another file, database or --to-workspace")
    target.replaces_signpost = True
    with source:
        if not source.state.exists:
            raise UsageError(f"there is no state at {source.location} to migrate")
        copied = source.state
        with target:
            target.copy_from(copied)
        out(
            f"Copied the state (lineage {copied.lineage}, serial {copied.serial}, "
            f"{len(copied.tasks)} task(s), {len(copied.pending)} pending call(s)) "
            f"from {source.location} to {target.location}.\n"
        )
        if keep_source:
            out(f"{source.location} is kept as a usable copy (--keep-source): point --state at one of them only.\n")
            return
        try:
            source.leave_signpost(target.reference)
        except (StateError, WriteError) as exc:
            raise StateError(
                f"{source.location} could not be made a signpost ({exc}); it is still a usable copy of the "
                f"state now at {target.location}: remove it, or run the migration again"
            ) from None
    out(
        f"{source.location} now holds only a signpost naming {target.reference}: every command that would "
        "use it is refused. Point --state/--workspace (SNAPCTL_STATE, snapctl.toml) at the destination "
        "(--keep-source keeps a usable copy instead).\n"
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
    endpoint, region = ApiOptions(endpoint).settings(credentials=False).target()
    with open_store(state_path, workspace, lock_timeout_s, "snapctl state rebind") as store:
        if not store.state.exists:
            raise UsageError(f"there is no state at {store.location} to rebind")
        before, before_region = store.state.endpoint, store.state.region
        store.rebind(endpoint, region)
    was = f"{before} (region {before_region})" if before else "no endpoint"
    out(f"The state {store.location} was bound to {was}; it is now bound to {endpoint} (region {region}).\n")


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

    store = open_store(state_path, workspace, 0.0, "snapctl force-unlock")
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
