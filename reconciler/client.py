"""A typed, rate-limited, retrying client for the snapshot actions.

One :class:`SnapshotClient` is shared by every concurrent call of a run: it
owns the keep-alive connection pool and one rate limiter per action, so the
documented per-action limit holds across all of them (150/s for each write
action, 60/s for the GetSnapshotTask read).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import math
import random
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import ValidationError

from . import api
from .errors import (
    ApiError,
    AuthError,
    CredentialsError,
    EndpointError,
    InvalidParameterError,
    NotSentError,
    RunStoppedError,
    ServerError,
    TaskNotRunningError,
    ThrottledError,
    TransportError,
    UnreadableAnswerError,
)
from .ratelimit import RateLimiter
from .signing import SigningKey, sign_request

#: Turns the secrets of a wire dict into fingerprints (``State.fingerprint``).
Fingerprint = Callable[[dict[str, Any]], dict[str, Any]]

if TYPE_CHECKING:
    import httpx

# httpx (and what it imports) is loaded when a client is made, not when this
# module is: `snapctl plan` and `validate` import the engine but never send.

#: Answers about the credentials or the clock: the same for every call of the account.
CREDENTIAL_CODES = frozenset(
    {
        "MissingAuthenticationToken",
        "MissingRequestInfo",
        "MissingSignature",
        "InvalidTimestamp",
        "InvalidAccessKey",
        "SignatureDoesNotMatch",
    }
)
#: AccessDenied is per app (an IAM policy), so it fails that app's tasks only.
AUTH_CODES = CREDENTIAL_CODES | {"AccessDenied"}


class Outcome(str, enum.Enum):
    """What a successful call did."""

    started = "started"
    already_started = "already_started"
    updated = "updated"
    stopped = "stopped"
    not_running = "not_running"


#: The Result of each write action's success (the API's pages); any other is no proof it was done.
_DONE = {"StartSnapshot": (api.SUCCESS, api.ALREADY_STARTED)}


@dataclass(frozen=True)
class CallResult:
    action: str
    outcome: Outcome
    request_id: str
    attempts: int
    #: An earlier attempt of this call may have acted (its answer was lost): a StartSnapshot
    #: answered "already started" after it may have been started by this very call.
    retried_after_acting: bool = False


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter, bounded by attempts and total time."""

    max_attempts: int = 8
    base_s: float = 0.1
    cap_s: float = 5.0
    total_s: float = 120.0
    #: Refused connections in a row (from any call of the run) before the endpoint counts
    #: as unreachable: a few quick tries for a server restarting, not the full budget.
    connect_attempts: int = 3

    def delay(self, attempt: int, rng: random.Random) -> float:
        return rng.uniform(0, min(self.cap_s, self.base_s * (2 ** (attempt - 1))))


@dataclass
class ClientStats:
    """Counters of what the client sent and what came back (for summaries and metrics)."""

    requests: collections.Counter = field(default_factory=collections.Counter)  # (action, outcome or code)
    throttled: int = 0
    retries: int = 0

    def record(self, action: str, result: str) -> None:
        self.requests[(action, result)] += 1


def outcome_label(exc: ApiError) -> str:
    """A failed call's outcome as a bounded label: a documented error code, ``InvalidParameter.other``
    for an undocumented business error of that class, ``other`` for any other code the answer made
    up, or the exception's class when there was no answer (a label per invented code would grow a
    long-running controller's metrics without end)."""
    code = exc.code
    if not code:
        return type(exc).__name__
    if code in api.ERROR_CODES:
        return code
    return "InvalidParameter.other" if code.startswith("InvalidParameter") else "other"


class SnapshotClient:
    """Async client; use as ``async with SnapshotClient(...) as client``."""

    def __init__(
        self,
        endpoint: str,
        key: SigningKey,
        *,
        region: str = "cn-north-1",
        qps: float = api.DOCUMENTED_QPS,
        read_qps: float = api.DOCUMENTED_READ_QPS,
        timeout_s: float = 10.0,
        max_connections: int = 100,
        retry: RetryPolicy = RetryPolicy(),
        transport: httpx.AsyncBaseTransport | None = None,
        rng: random.Random | None = None,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
    ):
        import httpx

        self.endpoint = endpoint.rstrip("/")
        self.region = region
        self.retry = retry
        self.stats = ClientStats()
        #: The first error that concerns every call (credentials, an unreachable endpoint):
        #: once set, calls in flight stop retrying and the applier starts no new ones.
        self.stopped_by: ApiError | None = None
        self._refused_in_a_row = 0
        self._key = key
        self._rng = rng or random.Random()
        self._on_event = on_event
        self._limiters = {action: RateLimiter(qps) for action in api.WRITE_ACTIONS}
        self._limiters[api.READ_ACTION] = RateLimiter(read_qps)
        from .transport import Transport

        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        # No base_url: the endpoint's own path is where requests go (and what is signed).
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s),
            limits=limits,
            transport=transport or Transport(limits=limits),
            verify=True,
            # Never a compressed answer: a few KB gain nothing, and a small one can inflate to gigabytes.
            headers={"User-Agent": "snapctl", "Accept-Encoding": "identity"},
        )
        self.timeout_s = timeout_s
        url = httpx.URL(self.endpoint)
        self._host = url.netloc.decode("ascii")
        self._path = url.path or "/"
        self._url = url.copy_with(path=self._path)

    async def __aenter__(self) -> SnapshotClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # The actions ---------------------------------------------------------

    async def start(self, request: api.StartSnapshotRequest) -> CallResult:
        """StartSnapshot; ``already_started`` when the task was running (its config unchanged)."""
        result, request_id, attempts, retried_after_acting = await self._call("StartSnapshot", request.wire())
        outcome = Outcome.already_started if result == api.ALREADY_STARTED else Outcome.started
        return CallResult("StartSnapshot", outcome, request_id, attempts, retried_after_acting)

    async def update(self, request: api.UpdateSnapshotRequest) -> CallResult:
        """UpdateSnapshot (only Interval takes effect); ``not_running`` when there is no such task."""
        return await self._call_tolerating_not_running("UpdateSnapshot", request.wire(), Outcome.updated)

    async def stop(self, request: api.StopSnapshotRequest) -> CallResult:
        """StopSnapshot; ``not_running`` when there was nothing to stop."""
        return await self._call_tolerating_not_running("StopSnapshot", request.wire(), Outcome.stopped)

    async def _call_tolerating_not_running(self, action: str, body: dict, success: Outcome) -> CallResult:
        try:
            _, request_id, attempts, retried_after_acting = await self._call(action, body)
            return CallResult(action, success, request_id, attempts, retried_after_acting)
        except TaskNotRunningError as exc:
            return CallResult(action, Outcome.not_running, exc.request_id, getattr(exc, "attempts", 1))

    async def get_task(
        self, app_id: str, room_id: str, task_id: str, *, fingerprint: Fingerprint | None = None
    ) -> api.Observation:
        """GetSnapshotTask: the task's status and live configuration.

        The answer is checked against the documented shape first
        (:func:`api.read_snapshot_task`): one of another shape is an
        :class:`UnreadableAnswerError`, never an observation. The custom storage keys
        of the configuration are then replaced by ``fingerprint`` (the state's, so they
        compare with what it records) before anything else sees them. A "not found"
        answer (any InvalidParameter-class error: the query itself is valid) is the
        observation ``unknown``, never "stopped".
        """
        key = api.TaskKey(app_id=app_id, room_id=room_id, task_id=task_id)
        address = f"{app_id}/{room_id}/{task_id}"
        query = {"Action": api.READ_ACTION, "Version": api.API_VERSION, **key.wire()}
        try:
            result, request_id, _, _ = await self._call(api.READ_ACTION, None, query)
        except (InvalidParameterError, TaskNotRunningError) as exc:
            return api.Observation(address, api.Observed.unknown, detail=f"not found: {exc}", request_id=exc.request_id)
        try:
            task = api.read_snapshot_task(result)
        except api.UnreadableTask as exc:
            raise UnreadableAnswerError(
                f"GetSnapshotTask answered a task of another shape than documented: {exc}",
                request_id=request_id,
                action=api.READ_ACTION,
            ) from None
        return api.Observation.of(address, task, key, request_id, fingerprint=fingerprint or _ephemeral_fingerprint())

    # Transport, retries, errors -----------------------------------------

    async def _call(
        self, action: str, body: dict | None, query: dict[str, str] | None = None
    ) -> tuple[Any, str, int, bool]:
        """The call's result, RequestId, attempts, and whether an earlier attempt may have acted."""
        payload = orjson.dumps(body) if body is not None else None
        deadline = time.monotonic() + self.retry.total_s
        attempt = 0
        may_have_run = False
        while True:
            attempt += 1
            try:
                result, request_id = await self._send_once(action, payload, query)
                self.stats.record(action, "ok" if result != api.ALREADY_STARTED else "already_started")
                return result, request_id, attempt, may_have_run
            except ApiError as exc:
                _hide_secrets(exc, body, self._key)
                exc.action = action
                exc.attempts = attempt  # type: ignore[attr-defined]
                # Whether any attempt of this call may have acted (not only this one).
                may_have_run = may_have_run or exc.may_have_run
                exc.may_have_run = may_have_run
                if isinstance(exc, RunStoppedError):
                    raise
                self.stats.record(action, outcome_label(exc))
                if isinstance(exc, ThrottledError):
                    self.stats.throttled += 1
                if isinstance(exc, NotSentError) and exc.refused:
                    self._refused_in_a_row += 1
                delay = self.retry.delay(attempt, self._rng)
                if (
                    not exc.retryable
                    or attempt >= self.retry.max_attempts
                    or self._refused_in_a_row >= self.retry.connect_attempts
                    or self.stopped_by is not None
                    or time.monotonic() + delay > deadline
                ):
                    if exc.stops_run and self.stopped_by is None:
                        self.stopped_by = exc
                    raise
                self.stats.retries += 1
                self._emit("retry", action=action, attempt=attempt, error=str(exc), delay_s=round(delay, 3))
                await asyncio.sleep(delay)

    async def _send_once(self, action: str, payload: bytes | None, query: dict[str, str] | None) -> tuple[Any, str]:
        """One request: a POST with a JSON body, or (``payload`` None) a GET of ``query``."""
        await self._limiters[action].acquire()
        if self.stopped_by is not None:
            raise RunStoppedError(self.stopped_by)
        import httpx

        # Bytes of the answer's body received: a deadline passed after the first is the answer's
        # fault (it trickles), not retried; before, it is a timeout as any other (a server that
        # stalls or drops the connection mid-answer), retried.
        arrived = 0

        def count(size: int) -> None:
            nonlocal arrived
            arrived += size

        response: httpx.Response | None = None

        async def exchange(request: httpx.Request) -> tuple[int, bytes]:
            nonlocal response
            response = await self._http.send(request, stream=True)
            return response.status_code, await read_answer(response, on_read=count)

        try:
            if payload is None:
                query = query or {"Action": action, "Version": api.API_VERSION}
                headers = read_request_headers(self._key, self._host, self._path, query, self.region)
                request = self._http.build_request("GET", self._url, params=query, headers=headers)
            else:
                query = {"Action": action, "Version": api.API_VERSION}
                headers = sign_request(
                    key=self._key,
                    method="POST",
                    host=self._host,
                    path=self._path,
                    query=query,
                    content_type="application/json",
                    body=payload,
                    region=self.region,
                )
                headers["Content-Type"] = "application/json"
                request = self._http.build_request("POST", self._url, params=query, content=payload, headers=headers)
            # One deadline for the whole exchange (connection, request, the answer in full):
            # httpx's timeouts bound each socket operation, which a trickled answer never hits.
            task = asyncio.ensure_future(exchange(request))
            try:
                done, _ = await asyncio.wait({task}, timeout=self.timeout_s)
                if not done and not (response is not None and arrived >= _declared_length(response)):
                    raise asyncio.TimeoutError
                # Done, or every byte of its body is here (only its end is still to be read
                # off the connection, which waits for nothing: a busy loop must not fail it).
                status, content = await task
            finally:
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(BaseException):
                        await task
                if response is not None:  # back to the pool, or closed mid-answer
                    await response.aclose()
        except asyncio.TimeoutError:
            if arrived:
                raise UnreadableAnswerError(
                    f"the answer did not arrive in full within {self.timeout_s:g} s (--timeout)"
                ) from None
            raise TransportError(f"timed out: no answer within {self.timeout_s:g} s") from None
        except httpx.ConnectTimeout:
            raise NotSentError(
                f"cannot reach the API at {self.endpoint}: no connection within {self._http.timeout.connect}s",
                retryable=True,
                endpoint=self.endpoint,
            ) from None
        except httpx.TimeoutException as exc:
            raise TransportError(f"timed out ({type(exc).__name__})") from None
        except httpx.ConnectError as exc:
            raise self._not_connected(exc) from None
        except (httpx.LocalProtocolError, httpx.UnsupportedProtocol, UnicodeEncodeError) as exc:
            # Never the exception's text: it may quote a header value (a token).
            raise NotSentError(
                f"the request could not be built ({type(exc).__name__})", endpoint=self.endpoint
            ) from None
        except httpx.TransportError as exc:
            raise TransportError(f"connection failed ({type(exc).__name__}: {api.printable(str(exc))})") from None
        self._refused_in_a_row = 0
        result, request_id = self._interpret(status, content)
        if payload is not None and result not in _DONE.get(action, (api.SUCCESS,)):
            # A write is done when it answers Result "ok" (a start: or "already started"); the
            # API's pages say Result is empty when a call fails. Any other answer proves nothing:
            # the call may or may not have been done, so its intent stays open (never "done").
            import json

            raise UnreadableAnswerError(
                f"{action} answered with no error but without its documented Result "
                f'("ok"): Result = {api.printable(json.dumps(result, ensure_ascii=False), 80)}; '
                "it may or may not have been done",
                request_id=request_id,
                status=status,
            )
        return result, request_id

    def _not_connected(self, exc: Exception) -> NotSentError:
        """What stopped a connection, in words, with what to do about it."""
        import socket
        import ssl

        from .runenv import is_loopback

        cause = _cause(exc, (socket.gaierror, ssl.SSLError))
        where = f"cannot reach the API at {self.endpoint}"
        host = self._host.rsplit(":", 1)[0] if not self._host.endswith("]") else self._host
        if isinstance(cause, socket.gaierror):
            return NotSentError(f"{where}: the host name {host} does not resolve", endpoint=self.endpoint)
        if isinstance(cause, ssl.SSLError):
            reason = getattr(cause, "reason", None) or type(cause).__name__
            return NotSentError(
                f"{where}: the TLS handshake failed ({reason}); if the endpoint serves plain HTTP, use http://",
                endpoint=self.endpoint,
            )
        hint = ""
        if is_loopback(self.endpoint):
            from urllib.parse import urlsplit

            port = urlsplit(self.endpoint).port or (443 if self.endpoint.startswith("https") else 80)
            hint = f"; to use the local emulator, start it with: snapctl emulator --port {port}"
        return NotSentError(
            f"{where}: the connection was refused{hint}", retryable=True, endpoint=self.endpoint, refused=True
        )

    def _interpret(self, status: int, content: bytes) -> tuple[Any, str]:
        try:
            envelope = api.Envelope.model_validate_json(content)
        except ValidationError as exc:
            message = f"HTTP {status} with a body that is not the API's envelope"
            if status == 429:
                raise ThrottledError(message, status=status) from None
            if status >= 500:
                raise ServerError(message, status=status) from None
            shape = api.envelope_problem(exc)
            if shape is not None:  # the API's envelope, with a field of another type or range
                raise UnreadableAnswerError(
                    f"HTTP {status} with an envelope of another shape than documented: {shape}", status=status
                ) from None
            raise EndpointError(
                f"the endpoint {self.endpoint} does not serve the snapshot API ({message}); "
                "check --endpoint or SNAPCTL_ENDPOINT",
                status=status,
            ) from None
        meta = envelope.ResponseMetadata
        error = meta.Error
        if error is None and status == 200:
            return envelope.Result, meta.RequestId
        code = error.Code if error else f"HTTP{status}"
        kwargs: dict[str, Any] = dict(
            code=code,
            code_n=error.CodeN if error else 0,
            request_id=meta.RequestId,
            status=status,
        )
        message = error.Message if error else f"HTTP {status}"
        if code == "FlowLimitExceeded" or status == 429:
            raise ThrottledError(message, **kwargs)
        if status >= 500 or code == "InternalError":
            raise ServerError(message, **kwargs)
        if code == api.TASK_NOT_RUNNING:
            raise TaskNotRunningError(message, **kwargs)
        if code == "InvalidActionOrVersion":
            raise EndpointError(
                f"the endpoint {self.endpoint} does not serve the snapshot API here ({message}); "
                "check the path of --endpoint or SNAPCTL_ENDPOINT",
                **kwargs,
            )
        if code in CREDENTIAL_CODES:
            raise CredentialsError(message, **kwargs)
        if code in AUTH_CODES:
            raise AuthError(message, **kwargs)
        if code.startswith("InvalidParameter"):
            raise InvalidParameterError(message, **kwargs)
        raise ApiError(message, **kwargs)

    def _emit(self, event: str, **fields: Any) -> None:
        if self._on_event is not None:
            self._on_event(event, fields)


async def read_answer(
    response: httpx.Response, limit: int = api.MAX_ANSWER_BYTES, on_read: Callable[[int], None] | None = None
) -> bytes:
    """The body of an answer, refused (:class:`UnreadableAnswerError`) once it holds more
    than ``limit`` bytes: counted as read, and after decompression for a gzip or deflate
    one (never asked for, but inflated here in bounded steps), so memory stays bounded
    whatever the server sends. ``on_read`` is told the size of each piece as it arrives."""
    too_large = f"the answer is larger than {api.MAX_ANSWER_TEXT} (the API's are a few KB)"
    encoding = response.headers.get("content-encoding", "").strip().lower()
    if encoding not in ("", "identity", "gzip", "x-gzip", "deflate"):
        raise UnreadableAnswerError(
            f"the answer is compressed ({api.printable(encoding, 40)}), which snapctl does not read"
        )
    inflate = zlib.decompressobj(wbits=47) if encoding not in ("", "identity") else None
    declared = response.headers.get("content-length", "")
    if inflate is None and declared.isdigit() and int(declared) > limit:
        raise UnreadableAnswerError(too_large)
    chunks: list[bytes] = []
    size = 0
    try:
        async for raw in response.aiter_raw():
            if on_read is not None:
                on_read(len(raw))
            while raw:
                if inflate is None:
                    chunk, raw = raw, b""
                else:
                    chunk = inflate.decompress(raw, limit + 1 - size)  # never more than one byte past the limit
                    raw = inflate.unconsumed_tail
                size += len(chunk)
                if size > limit:
                    raise UnreadableAnswerError(too_large)
                chunks.append(chunk)
        if inflate is not None:
            rest = inflate.flush()
            size += len(rest)
            if size > limit:
                raise UnreadableAnswerError(too_large)
            chunks.append(rest)
    except zlib.error:
        raise UnreadableAnswerError(f"the answer is not valid {encoding}") from None
    return b"".join(chunks)


def _declared_length(response: httpx.Response) -> float:
    """The Content-Length of an answer; infinity when it declares none (chunked)."""
    declared = response.headers.get("content-length", "")
    return int(declared) if declared.isdigit() else math.inf


def read_request_headers(
    key: SigningKey, host: str, path: str, query: dict[str, str], region: str, x_date: str | None = None
) -> dict[str, str]:
    """The signed headers of a GET: no body (the empty body's hash) and no Content-Type."""
    return sign_request(
        key=key,
        method="GET",
        host=host,
        path=path,
        query=query,
        content_type=None,
        body=b"",
        region=region,
        x_date=x_date,
    )


_EPHEMERAL: list[Fingerprint] = []


def _hide_secrets(exc: ApiError, body: dict | None, key: Any) -> None:
    """An answer's message that quotes a secret of the call (the storage keys it sent, the
    credentials it was signed with) says ``***`` instead: the documented messages name fields,
    not values, but what an answer says is printed, logged and kept in JSON documents."""
    storage = (body or {}).get("StorageConfig") or {}
    custom = storage.get("CustomConfig") if isinstance(storage, dict) else None
    secrets = [custom.get("AccessKey"), custom.get("SecretKey")] if isinstance(custom, dict) else []
    secrets += [getattr(key, "secret_key", None), getattr(key, "session_token", None)]
    message = exc.message
    for secret in secrets:
        if isinstance(secret, str) and len(secret) >= 4 and secret in message:
            message = message.replace(secret, "***")
    if message != exc.message:
        exc.message = message
        exc.args = (message, *exc.args[1:])


def _ephemeral_fingerprint() -> Fingerprint:
    """Fingerprints under a key that lives as long as the process: for reads that
    are shown, never compared with a state."""
    if not _EPHEMERAL:
        from .state import State

        _EPHEMERAL.append(State.new().fingerprint)
    return _EPHEMERAL[0]


def _cause(exc: BaseException, types: tuple[type[BaseException], ...]) -> BaseException | None:
    """The first exception of ``types`` in the chain of causes of ``exc``."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, types):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None
