"""The emulator as a plain ASGI application.

``POST /?Action=...&Version=2023-11-01`` serves the three write actions and
``GET /?Action=GetSnapshotTask&Version=2023-11-01&AppId=..`` the read, with the
gateway's order of checks (action, authentication, rate limit, parameters), the
API's envelope and error codes; ``/_emulator/...`` shows and steers the emulator.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError

from .. import api as wire
from .. import signing
from ..api import (
    ACTIONS,
    ALREADY_STARTED,
    API_VERSION,
    ERROR_CODES,
    READ_ACTION,
    REQUEST_MODELS,
    TASK_NOT_FOUND,
    TASK_NOT_RUNNING,
    Identifier,
    describe_validation_error,
)
from .config import RUNTIME_FIELDS, EmulatorConfig
from .tasks import TaskTable

#: The ``by_action`` entry of requests whose Action or Version is missing or unknown.
OTHER_ACTION = "other"

SIGNATURE_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. "
    "Check your Secret Access Key and signing method."
)

_JSON_HEADER = (b"content-type", b"application/json; charset=utf-8")


class Refusal(Exception):
    """An error answer: a code of ``ERROR_CODES`` and a message."""

    def __init__(self, code: str, message: str):
        self.code = code
        self.message = message


class DroppedConnection(Exception):
    """Raised after the response started: the server then closes the socket mid-answer."""


class ClientGone(Exception):
    """The client disconnected before its body arrived."""


class _HideDrops(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], DroppedConnection))


_HIDE_DROPS = _HideDrops()


def hide_drop_tracebacks() -> None:
    """Keep uvicorn from logging the deliberate drops as application errors (idempotent)."""
    logging.getLogger("uvicorn.error").addFilter(_HIDE_DROPS)


@lru_cache(maxsize=256)  # a client's X-Date changes once a second; strptime is slow
def x_date_epoch(value: str) -> float | None:
    """Epoch seconds of an ``X-Date`` (``YYYYMMDDTHHMMSSZ``); None when malformed."""
    try:
        moment = datetime.strptime(value, signing.X_DATE_FORMAT)
    except ValueError:
        return None
    return moment.replace(tzinfo=timezone.utc).timestamp() if len(value) == 16 else None


def validated(model: type[BaseModel], data: Any) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise Refusal("InvalidParameter", describe_validation_error(exc)) from None


class StreamsStopped(BaseModel):
    model_config = ConfigDict(extra="forbid")

    AppId: Identifier
    RoomId: Identifier
    Immediate: StrictBool = False


class TaskAddress(BaseModel):
    model_config = ConfigDict(extra="forbid")

    AppId: Identifier
    RoomId: Identifier
    TaskId: Identifier

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.AppId, self.RoomId, self.TaskId)


class RewriteTask(TaskAddress):
    """``POST /_emulator/rewrite-task``: what another tool changed in a running task."""

    MaxIdleTime: wire.MaxIdleTime | None = None
    ImageConfig: wire.ImageConfig | None = None
    StorageConfig: wire.StorageConfig | None = None
    TargetStreams: wire.TargetStreams | None = None


class StopTask(TaskAddress):
    """``POST /_emulator/stop-task``: end a running task out of band, for a documented reason."""

    StopReason: wire.StopReason = wire.StopReason.stop_by_api


class AgeTask(TaskAddress):
    """``POST /_emulator/age-task``: a running task as if it had started this much earlier."""

    Seconds: float = Field(gt=0, le=10 * 365 * 86400)


class Stats:
    __slots__ = ("by_action", "faults", "peers", "throttled", "total")

    def __init__(self) -> None:
        self.total = 0
        #: Client (address, port) pairs seen: one per TCP connection, to show keep-alive reuse.
        self.peers: set = set()
        self.by_action: dict[str, dict[str, Any]] = {}
        self.throttled = 0
        self.faults = {"error": 0, "drop": 0, "slow": 0}

    def record(self, action: str, outcome: str) -> None:
        entry = self.by_action.get(action)
        if entry is None:
            entry = self.by_action[action] = {"total": 0, "outcomes": {}}
        entry["total"] += 1
        outcomes = entry["outcomes"]
        outcomes[outcome] = outcomes.get(outcome, 0) + 1


class EmulatorApp:
    """ASGI callable. All state lives on one event loop, so nothing needs a lock.

    ``clock``: the monotonic seconds the rate limits' sliding windows are measured in
    (a test passes one it moves by hand, so what it asserts does not depend on how fast
    the machine sends)."""

    def __init__(self, config: EmulatorConfig, *, clock: Callable[[], float] = time.monotonic):
        self.config = config
        self.clock = clock
        self.table = TaskTable(config.data)
        self.stats = Stats()
        self.rng = random.Random(config.seed)
        self._windows: dict[str, deque[float]] = {action: deque() for action in ACTIONS}
        self._admin = {
            ("GET", "/_emulator/tasks"): self._tasks,
            ("GET", "/_emulator/stats"): self._stats,
            ("POST", "/_emulator/reset"): self._reset,
            ("POST", "/_emulator/config"): self._set_config,
            ("POST", "/_emulator/streams-stopped"): self._streams_stopped,
            ("POST", "/_emulator/rewrite-task"): self._rewrite_task,
            ("POST", "/_emulator/stop-task"): self._stop_task,
            ("POST", "/_emulator/age-task"): self._age_task,
        }

    async def __call__(self, scope, receive, send) -> None:
        kind = scope["type"]
        if kind == "http":
            try:
                if scope["path"] == self.config.api_path and scope["method"] in ("POST", "GET"):
                    await self._api(scope, receive, send)
                else:
                    await self._introspect(scope, receive, send)
            except ClientGone:
                return
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                hide_drop_tracebacks()
                self.table.open()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.table.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # -- plumbing ------------------------------------------------------------

    async def _read_body(self, receive) -> tuple[bytes, str, bool]:
        """The body (empty when over the limit), the SHA-256 of all of it, and whether it was over."""
        limit = self.config.max_body
        hasher = hashlib.sha256()
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk = message.get("body", b"")
            hasher.update(chunk)
            size += len(chunk)
            if size <= limit:
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        oversized = size > limit
        return (b"" if oversized else b"".join(chunks)), hasher.hexdigest(), oversized

    @staticmethod
    async def _send_json(send, status: int, payload: bytes) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [_JSON_HEADER, (b"content-length", str(len(payload)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": payload})

    def _metadata(self, now: float, action: str, version: str) -> dict[str, Any]:
        request_id = time.strftime("%Y%m%d%H%M%S", time.gmtime(now)) + f"{random.getrandbits(72):018X}"
        return {
            "RequestId": request_id,
            "Action": action,
            "Version": version,
            "Service": signing.SERVICE,
            "Region": self.config.region,
        }

    def _error(self, now: float, action: str, version: str, refusal: Refusal) -> tuple[int, bytes]:
        code_n, status = ERROR_CODES[refusal.code]
        metadata = self._metadata(now, action, version)
        metadata["Error"] = {"CodeN": code_n, "Code": refusal.code, "Message": refusal.message}
        return status, orjson.dumps({"ResponseMetadata": metadata})

    def _ok(self, now: float, action: str, result: Any) -> tuple[int, bytes]:
        return 200, orjson.dumps({"ResponseMetadata": self._metadata(now, action, API_VERSION), "Result": result})

    # -- the API ---------------------------------------------------------------

    async def _api(self, scope, receive, send) -> None:
        now = time.time()
        config = self.config
        stats = self.stats
        stats.total += 1
        stats.peers.add(scope.get("client"))
        body, body_hash, oversized = await self._read_body(receive)
        query = dict(parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True))
        action = query.get("Action", "")
        version = query.get("Version", "")
        bucket = action if action in ACTIONS and version == API_VERSION else OTHER_ACTION
        try:
            if not action or not version:
                raise Refusal("MissingParameter", "the query must carry Action and Version")
            if bucket == OTHER_ACTION:
                raise Refusal("InvalidActionOrVersion", f"unknown Action {action!r} or Version {version!r}")
            method = "GET" if action == READ_ACTION else "POST"
            if scope["method"] != method:
                raise Refusal("InvalidActionOrVersion", f"{action} is served on {method}, not {scope['method']}")
            self._authenticate(scope, query, body_hash, now)
            self._throttle(action)
            if action == READ_ACTION:
                parameters = {k: v for k, v in query.items() if k not in ("Action", "Version")}
                request = validated(REQUEST_MODELS[action], parameters)
            else:
                request = validated(REQUEST_MODELS[action], self._json_object(body, oversized))
            if request.app_id in config.deny_apps:
                raise Refusal("AccessDenied", f"the access key is not allowed to {action} in app {request.app_id}")
            if action == "StartSnapshot" and config.refuse_starts:
                self._refuse_start(request)
        except Refusal as refusal:
            stats.record(bucket, refusal.code)
            await self._answer(send, *self._error(now, action, version, refusal))
            return

        fault = self._roll_fault()
        if fault == "drop":
            stats.faults["drop"] += 1
            after = self.rng.random() < 0.5
            if after:
                self._act(now, action, version, request)
            stats.record(action, "dropped_after" if after else "dropped_before")
            await self._delay(0)
            await send(
                {"type": "http.response.start", "status": 200, "headers": [_JSON_HEADER, (b"content-length", b"128")]}
            )
            raise DroppedConnection(f"{action} dropped {'after' if after else 'before'} the action")
        if fault == "error":
            stats.faults["error"] += 1
            outcome = "InternalError"
            status, payload = self._error(
                now, action, version, Refusal(outcome, "internal error (injected by the emulator)")
            )
        else:
            outcome, status, payload = self._act(now, action, version, request)
        stats.record(action, outcome)
        if fault == "slow":
            stats.faults["slow"] += 1
            await self._answer(send, status, payload, config.slow_ms)
        else:
            await self._answer(send, status, payload)

    def _authenticate(self, scope, query: dict[str, str], body_hash: str, now: float) -> None:
        config = self.config
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
        authorization = headers.get("authorization")
        if authorization is None:
            raise Refusal("MissingAuthenticationToken", "the request carries no Authorization header")
        parsed = signing.parse_authorization(authorization)
        if parsed is None:
            raise Refusal(
                "MissingSignature",
                "the Authorization header is not 'HMAC-SHA256 Credential=AK/date/region/rtc/request, SignedHeaders=..., Signature=...'",
            )
        x_date = headers.get("x-date")
        if x_date is None:
            raise Refusal("MissingRequestInfo", "the request carries no X-Date header")
        moment = x_date_epoch(x_date)
        if moment is None:
            raise Refusal("InvalidTimestamp", f"X-Date {x_date!r} is not of the form YYYYMMDDTHHMMSSZ")
        if abs(now - moment) > config.max_skew_s:
            raise Refusal(
                "InvalidTimestamp",
                f"X-Date {x_date} is {abs(now - moment):.0f} s from the server's time; at most {config.max_skew_s} s is accepted",
            )
        if parsed.access_key != config.access_key:
            raise Refusal("InvalidAccessKey", f"the access key {parsed.access_key!r} is not known")
        if (parsed.date, parsed.region, parsed.service) != (x_date[:8], config.region, signing.SERVICE):
            raise Refusal(
                "SignatureDoesNotMatch",
                f"the credential scope {parsed.date}/{parsed.region}/{parsed.service} must be "
                f"{x_date[:8]}/{config.region}/{signing.SERVICE}",
            )
        signed: dict[str, str] = {}
        for name in parsed.signed_headers:
            value = headers.get(name)
            if value is None:
                raise Refusal("SignatureDoesNotMatch", f"the signed header {name!r} is not in the request")
            signed[name] = signing.canonical_host(value) if name == "host" else value
        expected = signing.signature(
            secret_key=config.secret_key,
            method=scope["method"],
            path=scope["path"],
            query=query,
            headers=signed,
            signed_headers=parsed.signed_headers,
            body_sha256=body_hash,
            x_date=x_date,
            region=config.region,
        )
        # As bytes: compare_digest refuses str with non-ASCII characters, and header values are latin-1.
        if not hmac.compare_digest(expected.encode("ascii"), parsed.signature.encode("latin-1")):
            raise Refusal("SignatureDoesNotMatch", SIGNATURE_MISMATCH)

    def _refuse_start(self, request) -> None:
        """The injected refusal of a StartSnapshot (``refuse_starts``): nothing is done."""
        address = f"{request.app_id}/{request.room_id}/{request.task_id}"
        if "*" in self.config.refuse_starts or address in self.config.refuse_starts:
            raise Refusal(self.config.refuse_start_code, "injected by the emulator (refuse_starts)")

    def _throttle(self, action: str) -> None:
        qps = self.config.read_qps if action == READ_ACTION else self.config.qps
        if not qps:
            return
        window = self._windows[action]
        now = self.clock()
        while window and window[0] <= now - 1.0:
            window.popleft()
        if len(window) >= qps:
            self.stats.throttled += 1
            raise Refusal("FlowLimitExceeded", f"{action} is limited to {qps} requests per second")
        window.append(now)

    def _json_object(self, body: bytes, oversized: bool) -> dict[str, Any]:
        if oversized:
            raise Refusal("InvalidParameter", f"the body is larger than {self.config.max_body} bytes")
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise Refusal("InvalidParameter", f"the body is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise Refusal("InvalidParameter", "the body must be a JSON object")
        return data

    def _roll_fault(self) -> str | None:
        config = self.config
        if not (config.error_rate or config.drop_rate or config.slow_rate):
            return None
        draw = self.rng.random()
        if draw < config.error_rate:
            return "error"
        if draw < config.error_rate + config.drop_rate:
            return "drop"
        if draw < config.error_rate + config.drop_rate + config.slow_rate:
            return "slow"
        return None

    async def _answer(self, send, status: int, payload: bytes, extra_ms: int = 0) -> None:
        await self._delay(extra_ms)
        await self._send_json(send, status, payload)

    async def _delay(self, extra_ms: int) -> None:
        config = self.config
        delay_ms: float = config.latency_ms + extra_ms
        if config.jitter_ms:
            delay_ms += self.rng.uniform(0, config.jitter_ms)
        if delay_ms:
            await asyncio.sleep(delay_ms / 1000)

    def _act(self, now: float, action: str, version: str, request) -> tuple[str, int, bytes]:
        """Do the action: its outcome for the stats, and the answer's status and body."""
        try:
            result = self._execute(action, request, now)
        except Refusal as refusal:
            return (refusal.code, *self._error(now, action, version, refusal))
        return ("already_started" if result == ALREADY_STARTED else "ok", *self._ok(now, action, result))

    def _execute(self, action: str, request, now: float) -> Any:
        """Do the action; the ``Result``, or Refusal for a task that is not running (or not found)."""
        if action == "StartSnapshot":
            unwritable = frozenset(self.config.unwritable_buckets)
            started = self.table.start(request, now, unwritable=unwritable, delay_s=self.config.start_delay_ms / 1000)
            return "ok" if started else ALREADY_STARTED
        key = (request.app_id, request.room_id, request.task_id)
        if action == READ_ACTION:
            task = self.table.read(key, now, self.config.read_window_s)
            if task is None:
                raise Refusal(
                    TASK_NOT_FOUND,
                    f"task {'/'.join(key)} (AppId/RoomId/TaskId) was not found: never started, "
                    f"or started more than {self.config.read_window_s} s ago",
                )
            return {"SnapshotTask": task}
        if action == "UpdateSnapshot":
            image = request.image_config
            interval = image.interval if image is not None and "interval" in image.model_fields_set else None
            done = self.table.update_interval(key, interval, now)
        else:
            done = self.table.stop(key, now)
        if not done:
            raise Refusal(TASK_NOT_RUNNING, f"task {'/'.join(key)} (AppId/RoomId/TaskId) is not running")
        return "ok"

    # -- /_emulator/ -------------------------------------------------------------

    async def _introspect(self, scope, receive, send) -> None:
        now = time.time()
        body, _, oversized = await self._read_body(receive)
        handler = self._admin.get((scope["method"], scope["path"]))
        try:
            if handler is None:
                raise Refusal("InvalidActionOrVersion", f"no such endpoint: {scope['method']} {scope['path']}")
            # An empty body is an empty object here: ``POST /_emulator/reset`` needs none.
            request = self._json_object(body or b"{}", oversized) if scope["method"] == "POST" else None
            payload = handler(request, now)  # type: ignore[arg-type]  # GET handlers take no body
        except Refusal as refusal:
            status, answer = self._error(now, "", "", refusal)
        else:
            status, answer = 200, orjson.dumps(payload)
        await self._send_json(send, status, answer)

    def _tasks(self, _body, now: float) -> dict[str, Any]:
        every = self.table.all(now)
        return {
            "tasks": [task.view() | {"Status": task.reported_status(now)} for task in every if task.running],
            "stopped": [task.view() for task in every if not task.running],
        }

    def _stats(self, _body, now: float) -> dict[str, Any]:
        stats = self.stats
        return {
            "total": stats.total,
            "by_action": stats.by_action,
            "throttled": stats.throttled,
            "faults": stats.faults,
            "connections": len(stats.peers),
            "tasks_running": len(self.table.running(now)),
        }

    def _reset(self, _body, now: float) -> dict[str, Any]:
        self.table.clear()
        self.stats = Stats()
        for window in self._windows.values():
            window.clear()
        return {"reset": True}

    def _set_config(self, body: dict[str, Any], now: float) -> dict[str, Any]:
        unknown = sorted(set(body) - set(RUNTIME_FIELDS))
        if unknown:
            raise Refusal("InvalidParameter", f"unknown settings {unknown}; settable: {', '.join(RUNTIME_FIELDS)}")
        self.config = validated(EmulatorConfig, {**self.config.model_dump(), **body})
        return self.config.runtime()

    def _streams_stopped(self, body: dict[str, Any], now: float) -> dict[str, Any]:
        mark = validated(StreamsStopped, body)
        ended = self.table.mark_streams_stopped((mark.AppId, mark.RoomId), mark.Immediate, now)
        return {"AppId": mark.AppId, "RoomId": mark.RoomId, "Immediate": mark.Immediate, "ended": ended}

    def _rewrite_task(self, body: dict[str, Any], now: float) -> dict[str, Any]:
        change = validated(RewriteTask, body)
        fields = change.model_dump(exclude_none=True, exclude={"AppId", "RoomId", "TaskId"}, mode="json")
        for name, value in list(fields.items()):
            if isinstance(value, dict):  # the nested models' wire form (PascalCase, no unset optionals)
                fields[name] = getattr(change, name).wire()
        try:
            task = self.table.rewrite(change.key, fields, now)
        except ValidationError as exc:
            raise Refusal("InvalidParameter", describe_validation_error(exc)) from None
        if task is None:
            raise Refusal(TASK_NOT_RUNNING, f"task {'/'.join(change.key)} (AppId/RoomId/TaskId) is not running")
        return task.view()

    def _age_task(self, body: dict[str, Any], now: float) -> dict[str, Any]:
        age = validated(AgeTask, body)
        task = self.table.age(age.key, age.Seconds, now)
        if task is None:
            raise Refusal(TASK_NOT_RUNNING, f"task {'/'.join(age.key)} (AppId/RoomId/TaskId) is not running")
        return task.view()

    def _stop_task(self, body: dict[str, Any], now: float) -> dict[str, Any]:
        stop = validated(StopTask, body)
        if not self.table.stop(stop.key, now, stop.StopReason.value):
            raise Refusal(TASK_NOT_RUNNING, f"task {'/'.join(stop.key)} (AppId/RoomId/TaskId) is not running")
        return self.table.tasks[stop.key].view()
