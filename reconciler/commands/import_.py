"""``snapctl import``: adopt a running task into the state."""

from __future__ import annotations

import click

from ..errors import UsageError
from .options import api_options, load, lock_option, open_store, output_options, paths_argument, state_option
from .output import handle_errors, out, print_json


@click.command(name="import")
@click.argument("address")
@paths_argument
@state_option
@api_options(qps=False, read_qps=False, parallelism=False)
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

    from .. import api as wire
    from .. import engine
    from ..client import Outcome
    from ..errors import ApiError, Interrupted, UnreadableAnswerError
    from ..signals import graceful_stop

    settings = api_opts.settings()
    manifests = load(paths)
    task = manifests.tasks.get(address)
    if task is None:
        raise UsageError(f"{address} is not declared in the manifests; declare it first, then import it")
    target = settings.target()
    with open_store(state_path, workspace, lock_timeout_s, "snapctl import") as store:
        store.bind(*target)
        if address in store.state.tasks:
            raise UsageError(f"{address} is already in the state; nothing to import")
        client = settings.client()
        declared = task.request.wire()

        async def adopt():
            async with client:
                # SIGINT/SIGTERM stop the read at once, and no StartSnapshot follows.
                try:
                    seen = await engine.unless_stopped(
                        client.get_task(
                            task.request.app_id,
                            task.request.room_id,
                            task.request.task_id,
                            fingerprint=store.state.fingerprint,
                        ),
                        stop,
                    )
                except UnreadableAnswerError as exc:  # never settled by a start: the task exists
                    exc.message = f"{exc.message}; nothing was started and nothing recorded for {address}"
                    raise
                if seen.healthy and seen.live is not None:
                    return seen, None
                if stop.is_set():
                    raise Interrupted("stopped")
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

        try:
            with graceful_stop() as stop:
                seen, call = asyncio.run(adopt())
        except Interrupted:
            raise Interrupted(f"nothing was started and nothing recorded for {address}") from None
        if call is None:  # after a StartSnapshot the observation is out of date already
            store.record_observations([seen])
        differs: list[str] = []
        if call is None:
            live = dict(seen.live or {})
            if live == wire.comparable(store.state.fingerprint(declared)):
                recorded = declared  # as declared: recorded in the manifests' own form
            else:
                from ..plan import diff_requests

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
