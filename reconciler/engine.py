"""The library's front door: load → plan → apply → record, as the CLI uses it.

Every function here works without the CLI; tests and other programs call them
directly with their own client and paths.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from . import api
from .errors import ApiError, AuthError, Interrupted, UnreadableAnswerError, UsageError
from .manifest import ManifestSet, load_manifests
from .plan import Plan, Targets, check_plan_current, check_plan_unchanged, make_plan, observations_of
from .runenv import RunEnv, resolve
from .state import DEFAULT_STATE_PATH, State, StateStore, atomic_write, check_binding, read_state, store_for

# The API client and the applier (and asyncio with them) load only for a command that calls
# the API: an offline plan never needs them.
if TYPE_CHECKING:
    from .apply import ActionResult, Applier, ApplyReport
    from .client import SnapshotClient
    from .signing import SigningKey

T = TypeVar("T")


@dataclass
class Settings:
    """How to reach the API and how hard to push it."""

    endpoint: str | None = None
    qps: float = api.DOCUMENTED_QPS
    read_qps: float = api.DOCUMENTED_READ_QPS
    parallelism: int = 64
    timeout_s: float = 10.0
    max_attempts: int = 8
    #: Where credentials and the endpoint come from: never in the repr (it holds the secret key).
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ), repr=False)
    _env: RunEnv | None = field(default=None, init=False, repr=False)

    def resolve(self, *, credentials: bool = True) -> RunEnv:
        """The endpoint, region, proxies and (with ``credentials``) the access key, checked:
        a UsageError names the first bad input. Call it before any output."""
        if self._env is None or (credentials and self._env.key is None):
            self._env = resolve(self.endpoint, self.environ, credentials=credentials)
        return self._env

    def target(self) -> tuple[str, str]:
        """The endpoint and region this run would call (a state is bound to them)."""
        env = self.resolve(credentials=False)
        return env.endpoint, env.region

    def client(self, key: SigningKey | None = None, **kwargs) -> SnapshotClient:
        from .client import RetryPolicy, SnapshotClient
        from .logs import client_event

        env = self.resolve(credentials=key is None)
        kwargs.setdefault("on_event", client_event)
        return SnapshotClient(
            env.endpoint,
            key or env.key,  # type: ignore[arg-type]
            region=env.region,
            qps=self.qps,
            read_qps=self.read_qps,
            timeout_s=self.timeout_s,
            max_connections=max(self.parallelism, 10),
            retry=RetryPolicy(max_attempts=self.max_attempts),
            **kwargs,
        )


class DesiredBodies(Mapping[str, dict]):
    """The wire body of each declared task, made when asked for: a plan looks at
    each once, so a large plan never holds them all at the same time."""

    def __init__(self, manifests: ManifestSet):
        self._tasks = manifests.tasks

    def __getitem__(self, address: str) -> dict:
        return self._tasks[address].request.wire()

    def get(self, address: str, default: Any = None) -> Any:  # Mapping.get, without its two extra calls
        task = self._tasks.get(address)
        return default if task is None else task.request.wire()

    def json_of(self, address: str) -> bytes:
        """The wire body of ``address`` as compact JSON, keys in field order (as orjson
        writes :meth:`__getitem__`'s dict), without making the dict."""
        return self._tasks[address].request.wire_json()

    def __iter__(self):
        return iter(self._tasks)

    def __len__(self) -> int:
        return len(self._tasks)

    def __contains__(self, address: object) -> bool:
        return address in self._tasks


def desired_bodies(manifests: ManifestSet) -> Mapping[str, dict]:
    return DesiredBodies(manifests)


def requests_of(manifests: ManifestSet) -> dict[str, api.StartSnapshotRequest]:
    return {address: task.request for address, task in manifests.tasks.items()}


def plan(
    manifests: ManifestSet,
    state: State,
    *,
    targets: Sequence[str] = (),
    replace: Sequence[str] = (),
    destroy: bool = False,
    manifest_paths: Sequence[str] = (),
    secrets_unknown: bool = False,
    observations: Mapping[str, api.Observation] | None = None,
    target: tuple[str, str] | None = None,
    fingerprint_creates: bool = True,
) -> Plan:
    """The plan that would make ``state`` match ``manifests`` (see :func:`plan.make_plan`);
    with ``observations`` (from :func:`refresh`), against what runs; ``target``: the endpoint
    and region it is made for, recorded in the plan. ``fingerprint_creates=False`` makes a
    plan only to be shown, faster where new tasks hold secrets."""
    made = make_plan(
        desired_bodies(manifests),
        state,
        targets=targets,
        replace=replace,
        destroy=destroy,
        manifest_paths=manifest_paths,
        secrets_unknown=secrets_unknown,
        observations=observations,
        fingerprint_creates=fingerprint_creates,
    )
    if target is not None:
        made.endpoint, made.region = target
    return made


def refresh_scope(manifests: ManifestSet, state: State, targets: Sequence[str] = ()) -> list[str]:
    """The addresses a refresh reads: every declared task and every task in the state, within ``targets``."""
    addresses = set(manifests.tasks) | set(state.tasks)
    scope = Targets(targets)
    scope.check_each_matches(addresses)  # refused before any read, as make_plan would refuse it after
    return sorted(a for a in addresses if not scope or scope.matches(a))


async def refresh_tasks(
    client: SnapshotClient,
    addresses: Sequence[str],
    state: State,
    *,
    parallelism: int = 64,
    on_observation: Callable[[api.Observation], None] | None = None,
    stop_event: StopEvent | None = None,
) -> dict[str, api.Observation]:
    """Read every task of ``addresses`` with GetSnapshotTask (at the client's read
    limit, ``parallelism`` in flight). The storage keys of each answer are
    fingerprinted with the state's key. A read that fails after its retries is
    an ``unknown`` observation saying why; a credentials or permission error
    ends the refresh (every other read would fail the same way).

    ``stop_event`` (anything with ``is_set()``, set by a signal handler): once set,
    the reads stop at once (those in flight are abandoned: a read changes nothing)
    and :class:`Interrupted` is raised carrying the observations made so far."""
    import asyncio

    semaphore = asyncio.Semaphore(max(1, parallelism))
    seen: dict[str, api.Observation] = {}

    async def one(address: str) -> None:
        app, room, task = address.split("/")
        async with semaphore:
            try:
                # Fingerprinted like the state's record, so an unchanged secret compares
                # equal whatever the record's fingerprint scheme.
                entry = state.tasks.get(address)
                stored = entry.get("request") if entry is not None else None
                observation = await client.get_task(
                    app, room, task, fingerprint=lambda raw: state.fingerprint(raw, like=stored)
                )
            except ApiError as exc:
                if isinstance(exc, AuthError) or getattr(exc, "stops_run", False):
                    raise  # every other read would fail the same way
                observation = failed_read(address, exc)
        seen[address] = observation
        if on_observation is not None:
            on_observation(observation)

    try:
        await unless_stopped(asyncio.gather(*(one(address) for address in addresses)), stop_event)
    except Interrupted:
        read = {address: seen[address] for address in addresses if address in seen}
        raise Interrupted(
            f"stopped reading after {len(read)} of {len(addresses)} task(s)", observations=read, total=len(addresses)
        ) from None
    return {address: seen[address] for address in addresses}


def failed_read(address: str, exc: ApiError) -> api.Observation:
    """What a read that failed after its retries says of ``address``: unknown, and for an answer
    of another shape than documented, unreadable (nothing is sent for it, not even a confirming
    StartSnapshot). The refresh and the controller's reads both judge a failed read with it."""
    unreadable = isinstance(exc, UnreadableAnswerError)
    return api.Observation(
        address,
        api.Observed.unknown,
        detail=str(exc) if unreadable else f"read failed: {exc}",
        read_error=True,
        unreadable=unreadable,
    )


class StopEvent(Protocol):
    """What stops a run: a ``threading.Event`` set by a signal handler (see ``signals.graceful_stop``)."""

    def is_set(self) -> bool: ...


#: How often a stoppable wait looks at its stop event (seconds).
STOP_POLL_S = 0.05


async def unless_stopped(work: Awaitable[T], stop_event: StopEvent | None) -> T:
    """``await work``, unless ``stop_event`` is set first (or already): then ``work`` is
    cancelled and :class:`Interrupted` raised. For reads only: a cancelled write
    could leave its outcome unknown, so writes finish instead (see ``Applier``)."""
    import asyncio

    if stop_event is None:
        return await work
    future = asyncio.ensure_future(work)
    try:
        while not stop_event.is_set():
            done, _ = await asyncio.wait({future}, timeout=STOP_POLL_S)
            if done:
                return future.result()
    finally:
        if not future.done():
            future.cancel()
            with contextlib.suppress(BaseException):
                await future
    raise Interrupted("stopped")


def refresh(
    client: SnapshotClient,
    addresses: Sequence[str],
    state: State,
    *,
    parallelism: int = 64,
    on_observation: Callable[[api.Observation], None] | None = None,
    stop_event: StopEvent | None = None,
) -> dict[str, api.Observation]:
    """:func:`refresh_tasks` on its own event loop; the client is closed after."""
    import asyncio

    async def run() -> dict[str, api.Observation]:
        async with client:
            return await refresh_tasks(
                client,
                addresses,
                state,
                parallelism=parallelism,
                on_observation=on_observation,
                stop_event=stop_event,
            )

    return asyncio.run(run())


def save_plan(plan_: Plan, path: Path) -> None:
    """Write a plan for a later ``apply FILE`` (it holds fingerprints, never secrets)."""
    if plan_.display_only:
        raise ValueError("a plan made only to be shown (fingerprint_creates=False) cannot be saved")
    atomic_write(Path(path), plan_.model_dump_json(indent=2).encode() + b"\n")


def load_plan(path: Path) -> Plan:
    """The plan saved at ``path`` (see :meth:`Plan.from_json`), for ``show`` and ``apply``."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the plan file ({exc.strerror})") from None
    return Plan.from_json(raw, str(path))


def verify_saved_plan(
    saved: Plan,
    store: StateStore,
    manifests: ManifestSet,
    target: tuple[str, str] | None = None,
    *,
    state: State | None = None,
) -> None:
    """A saved plan applies only to the state it was made against, with the manifests it was made from,
    against the endpoint it was made for. ``state``: check against this state (one read without
    the lock, to refuse before anything is created) instead of the open store's."""
    state = store.state if state is None else state
    if target is not None and saved.endpoint is not None and (saved.endpoint, saved.region) != target:
        raise UsageError(
            f"the saved plan was made for endpoint {saved.endpoint} (region {saved.region}), not "
            f"{target[0]} (region {target[1]}); nothing was sent. Run snapctl plan against the endpoint to use"
        )
    if saved.state_path != store.identity:
        # Whether that state holds anything yet or not: a plan made for an empty state must not
        # make another state with its lineage (two states of one lineage are taken for copies
        # of one another, and state migrate would overwrite one with the other).
        made_for = saved.state_path or "a state it does not name (saved by an older snapctl)"
        raise UsageError(
            f"the saved plan was made for the state {made_for}, not {store.identity}; nothing was sent. "
            "Apply it with the --state and --workspace it was planned with, or run snapctl plan again"
        )
    check_plan_current(saved, state, store.location)
    if not state.exists and saved.new_state_key:
        state.lineage, state.fingerprint_key = saved.state_lineage, saved.new_state_key
    try:
        fresh = plan(
            manifests,
            state,
            targets=saved.targets,
            replace=saved.replace,
            destroy=saved.destroy,
            observations=observations_of(saved) if saved.refreshed else None,
        )
    except UsageError as exc:  # a target or replacement that no longer exists
        raise UsageError(
            f"the saved plan is stale: the manifests changed since it was saved: {exc}; run snapctl plan again"
        ) from None
    check_plan_unchanged(saved, fresh)


def run_apply(
    plan_: Plan,
    manifests: ManifestSet,
    store: StateStore,
    client: SnapshotClient,
    *,
    parallelism: int = 64,
    reassert: Sequence[str] = (),
    on_result: Callable[[ActionResult], None] | None = None,
    stop_event=None,
    adopt: bool = False,
) -> ApplyReport:
    """Apply ``plan_`` through ``client``, recording every completed call in ``store``.
    ``adopt``: record tasks that already run even if the state held no task before
    (see :mod:`reconciler.apply`).

    Tasks the plan leaves alone whose stored fingerprints are of the old HMAC kind
    get scrypt ones first (a state-only write, no API call)."""
    for address in plan_.legacy_fingerprints:
        task = manifests.tasks.get(address)
        if task is not None:
            store.upgrade_fingerprints(address, task.request.wire())
    import asyncio

    from .apply import Applier

    applier = Applier(
        client,
        store,
        requests_of(manifests),
        parallelism=parallelism,
        on_result=on_result,
        stop_event=stop_event,
        adopt=adopt,
    )
    return asyncio.run(_run_and_close(applier, plan_, reassert))


async def _run_and_close(applier: Applier, plan_: Plan, reassert: Sequence[str]) -> ApplyReport:
    try:
        return await applier.run(plan_, reassert)
    finally:
        await applier.client.aclose()


def unchanged_addresses(
    plan_: Plan, manifests: ManifestSet, state: State, among: Iterable[str] | None = None
) -> list[str]:
    """Declared tasks the plan leaves alone (reconcile re-asserts them); ``among``: of these
    addresses only (the controller's hold, which planned only what it read), in their order."""
    touched = {a.address for a in plan_.actions}
    candidates = manifests.tasks if among is None else among
    return [a for a in candidates if a in manifests.tasks and a in state.tasks and a not in touched]


__all__ = [
    "DEFAULT_STATE_PATH",
    "Settings",
    "StateStore",
    "check_binding",
    "load_manifests",
    "load_plan",
    "plan",
    "read_state",
    "refresh",
    "refresh_scope",
    "run_apply",
    "save_plan",
    "store_for",
    "unchanged_addresses",
    "verify_saved_plan",
]
