"""One reconcile round (``snapctl reconcile`` without ``--watch``): load, read every declared
task, judge what the reads found, plan against what runs and apply, under the state's lock."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .. import api, engine
from ..apply import ActionResult
from ..errors import Interrupted, SnapctlError
from ..state import DEFAULT_WORKSPACE, store_for
from .reports import Round

log = logging.getLogger("snapctl.controller")


def reconcile_once(
    paths: Sequence[Path],
    state_path: Path | str,
    settings: engine.Settings,
    *,
    lock_timeout_s: float = 0.0,
    on_result: Callable[[ActionResult], None] | None = None,
    stop_event: threading.Event | None = None,
    refresh: bool = True,
    workspace: str = DEFAULT_WORKSPACE,
    adopt: bool = False,
    idle_restart: Any = None,
) -> Round:
    """One round: load, read every declared task (``refresh``), plan against what
    runs and apply; StartSnapshot only the tasks the read could not see. Without
    ``refresh``, StartSnapshot every unchanged task (the blind re-assert).
    ``adopt``: as for apply (see :mod:`reconciler.apply`)."""
    started, t0 = time.time(), time.monotonic()
    client = reader = None
    observations = None
    interrupted: str | None = None
    failing: dict[str, str] = {}
    deferred: dict[str, float | None] = {}
    try:
        manifests = engine.load_manifests(list(paths))
        target = settings.target()
        with store_for(
            state_path, workspace=workspace, lock_timeout_s=lock_timeout_s, command="snapctl reconcile"
        ) as store:
            store.bind(*target)
            if refresh:
                reader = settings.client()
                try:
                    observations = engine.refresh(
                        reader,
                        sorted(manifests.tasks),
                        store.state,
                        parallelism=settings.parallelism,
                        stop_event=stop_event,
                    )
                except Interrupted as exc:  # SIGINT/SIGTERM: stop reading at once, keep what was read
                    observations = exc.observations
                    store.record_observations(observations.values())
                    raise
                failing, deferred, facts = judge_round(observations, store.state, manifests, idle_restart)
                store.record_observations(observations.values(), facts)
            # A stopped task whose restart is not due yet is left as it is (planned against the state).
            acting = {a: o for a, o in observations.items() if a not in deferred} if observations is not None else None
            client = settings.client()
            plan = engine.plan(manifests, store.state, observations=acting, target=target)
            reassert = engine.unchanged_addresses(plan, manifests, store.state)
            if acting is not None:
                # Only what could not be seen needs StartSnapshot to confirm it.
                reassert = [a for a in reassert if a in acting and acting[a].confirmable]
            report = engine.run_apply(
                plan,
                manifests,
                store,
                client,
                parallelism=settings.parallelism,
                reassert=reassert,
                on_result=_judged(failing, on_result),
                stop_event=stop_event,
                adopt=adopt,
            )
        error, declared = None, len(manifests.tasks)
    except Interrupted as exc:
        plan, report, error, declared = None, None, None, len(manifests.tasks)
        interrupted = f"{len(exc.observations)} of {exc.total} task(s) read (recorded in the state)"
    except SnapctlError as exc:
        plan, report, error, declared = None, None, exc, 0
    except BrokenPipeError:
        raise  # stdout was closed: the command says so (commands.output.output_closed)
    except Exception as exc:  # a round must never end the controller: report it and go on
        log.error("reconcile round failed unexpectedly", exc_info=True)
        plan, report, declared = None, None, 0
        error = SnapctlError(f"unexpected {type(exc).__name__}: {exc}")
    requests: dict[tuple[str, str], int] = {}
    throttled = 0
    for used in (reader, client):
        if used is not None:
            for key, count in used.stats.requests.items():
                requests[key] = requests.get(key, 0) + count
            throttled += used.stats.throttled
    return Round(
        plan,
        report,
        error,
        declared,
        started,
        time.monotonic() - t0,
        requests,
        throttled,
        refreshed=refresh,
        observations=observations,
        interrupted=interrupted,
        failing=failing,
        deferred=deferred,
    )


def _judged(
    failing: dict[str, str], on_result: Callable[[ActionResult], None] | None
) -> Callable[[ActionResult], None]:
    """``on_result``, after marking the results of failing tasks: restarted, not healed."""

    def judged(result: ActionResult) -> None:
        if result.address in failing:
            result.healed, result.failing = False, failing[result.address]
        if on_result is not None:
            on_result(result)

    return judged


def judge_round(
    observations: dict[str, api.Observation], state: Any, manifests: Any, idle_restart: Any = None
) -> tuple[dict[str, str], dict[str, float | None], dict[str, dict[str, Any]]]:
    """Judge a round's observations (see ``reconciler.restarts``): the failing tasks (address →
    StopReason), the stopped ones whose restart is not due (address → when it is), and the facts
    to record."""
    from ..restarts import IdleRestart, judge

    now = time.time()
    policy = IdleRestart(idle_restart or IdleRestart.backoff)
    failing: dict[str, str] = {}
    deferred: dict[str, float | None] = {}
    facts: dict[str, dict[str, Any]] = {}
    for address, seen in observations.items():
        task = manifests.tasks.get(address)
        if task is None:
            continue
        verdict = judge(
            seen,
            state.observed.get(address),
            max_idle_s=task.request.max_idle_time,
            idle_restart=policy,
            now=now,
        )
        facts[address] = verdict.facts
        if verdict.failing:
            failing[address] = verdict.reason
        if seen.stopped and not verdict.restart:
            deferred[address] = verdict.retry_at
    return failing, deferred, facts
