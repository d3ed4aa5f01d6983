"""The wire shapes of the snapshot API (version 2023-11-01), as pydantic models.

Every rule of the vendor's StartSnapshot page lives here once: the manifest
layer reuses these constrained types, the client sends these models, and the
emulator validates incoming bodies with them.
"""

from __future__ import annotations

import datetime as _dt
import enum
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StringConstraints,
    ValidationError,
    model_validator,
)
from pydantic.alias_generators import to_pascal

API_VERSION = "2023-11-01"
#: The actions that change tasks (POST, JSON body).
WRITE_ACTIONS = ("StartSnapshot", "UpdateSnapshot", "StopSnapshot")
#: The action that reads one task (GET, parameters in the query).
READ_ACTION = "GetSnapshotTask"
ACTIONS = (*WRITE_ACTIONS, READ_ACTION)
#: The documented per-action limit of the write actions.
DOCUMENTED_QPS = 150
#: The documented limit of GetSnapshotTask.
DOCUMENTED_READ_QPS = 60
#: The documented limit of each action.
ACTION_QPS = {**dict.fromkeys(WRITE_ACTIONS, DOCUMENTED_QPS), READ_ACTION: DOCUMENTED_READ_QPS}
#: Only tasks started within this many seconds can be read.
READ_WINDOW_S = 72 * 3600
MAX_STREAMS = 17
#: A write's Result when it was done (empty when it failed, the API's pages say).
SUCCESS = "ok"
ALREADY_STARTED = "The task has been started. Please do not call the startup task interface repeatedly"

ID_PATTERN = r"^[a-zA-Z0-9_@\-\.]{1,128}$"
Identifier = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
NonEmpty = Annotated[str, StringConstraints(min_length=1)]

#: The vendor's models declare every integer field int32: nothing larger can be sent.
INT32_MAX = 2**31 - 1
MaxIdleTime = Annotated[StrictInt, Field(ge=1, le=86400)]
Dimension = Annotated[StrictInt, Field(ge=0, le=1920)]
Interval = Annotated[StrictInt, Field(ge=1, le=600)]
Region = Annotated[StrictInt, Field(ge=0, le=INT32_MAX)]
StreamIndex = Annotated[StrictInt, Field(ge=0, le=INT32_MAX)]

#: The largest answer snapctl reads (the API's are a few KB): more is refused, not read.
MAX_ANSWER_BYTES = 1 << 20
MAX_ANSWER_TEXT = "1 MiB"
#: How much of one string from outside (an answer, an error) is shown or stored.
MAX_SHOWN = 500


def printable(text: str, limit: int = MAX_SHOWN) -> str:
    """A string from outside (the API's messages, codes, request ids, reasons; an HTTP
    library's error text) as it may be shown and stored: on one line, with no terminal
    escape. Control, format and separator characters are written as Python writes them
    (``\\n``, ``\\x1b``, ``\\u2028``); backslashes are left alone, so that a shown
    string shows the same again. Beyond ``limit`` characters it is cut, saying how much."""
    if len(text) > limit:
        text = f"{text[:limit]}... ({len(text) - limit} more characters)"
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


#: A string of an answer, made :func:`printable` as it is read.
ApiText = Annotated[str, AfterValidator(printable)]

DEFAULT_MAX_IDLE_TIME = 180
DEFAULT_INTERVAL = 2


class Format(IntEnum):
    jpeg = 0
    png = 1


class StreamType(IntEnum):
    main = 0
    screen = 1


class StorageType(IntEnum):
    tos = 0
    vod = 1
    custom = 2
    veimagex = 3


class Vendor(IntEnum):
    s3 = 0
    oss = 1
    obs = 2
    cos = 3
    kodo = 4


def _strict_enum(enum: type[IntEnum]):
    """An enum field that takes the API's integers only (no bools, no strings)."""

    def check(value: int) -> int:
        if value not in enum._value2member_map_:
            allowed = ", ".join(f"{m.value} ({m.name})" for m in enum)
            raise ValueError(f"must be one of {allowed}")
        return value

    return Annotated[StrictInt, AfterValidator(check)]


FormatCode = _strict_enum(Format)
StreamTypeCode = _strict_enum(StreamType)
StorageTypeCode = _strict_enum(StorageType)
VendorCode = _strict_enum(Vendor)


class WireModel(BaseModel):
    """PascalCase on the wire, snake_case in Python; unknown fields ignored as the API does.

    Each model's validator and serializer are built on its first use (``defer_build``):
    a command uses a few of them (validate none), and building them all took a fifth of
    this module's import."""

    model_config = ConfigDict(
        alias_generator=to_pascal, populate_by_name=True, extra="ignore", frozen=True, defer_build=True
    )

    def wire(self) -> dict[str, Any]:
        """The JSON-ready body, with the API's field names and no unset optionals."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")

    def wire_json(self) -> bytes:
        """:meth:`wire` as compact JSON."""
        return self.__pydantic_serializer__.to_json(self, by_alias=True, exclude_none=True)


class Stream(WireModel):
    index: StreamIndex | None = None
    user_id: NonEmpty
    stream_type: StreamTypeCode = 0


class TargetStreams(WireModel):
    stream_list: list[Stream] | None = None

    @model_validator(mode="after")
    def _limits(self) -> TargetStreams:
        streams = self.stream_list or []
        if len(streams) > MAX_STREAMS:
            raise ValueError(f"at most {MAX_STREAMS} streams are allowed, got {len(streams)}")
        seen: set[int] = set()
        for stream in streams:
            if stream.index is not None:
                if stream.index in seen:
                    raise ValueError(f"Stream.Index {stream.index} is repeated; each Index must be unique")
                seen.add(stream.index)
        return self


class ImageConfig(WireModel):
    format: FormatCode = 0
    width: Dimension = 0
    height: Dimension = 0
    interval: Interval = DEFAULT_INTERVAL


class TosConfig(WireModel):
    account_id: NonEmpty
    region: Region = 0
    bucket: NonEmpty


class VodConfig(WireModel):
    account_id: NonEmpty
    region: Region = 0
    space: NonEmpty
    storage_class: Annotated[StrictInt, Field(ge=1, le=3)] = 1
    auto_set_file_extension: StrictBool = False


class CustomConfig(WireModel):
    vendor: VendorCode = 0
    region: Region = 0
    bucket: NonEmpty
    access_key: NonEmpty
    secret_key: NonEmpty


class VeImageXConfig(WireModel):
    account_id: NonEmpty
    region: Region = 0
    service_id: NonEmpty


_STORAGE_BLOCK = {0: "tos_config", 2: "custom_config", 3: "ve_image_x_config"}


class StorageConfig(WireModel):
    type: StorageTypeCode = 0
    tos_config: TosConfig | None = None
    vod_config: VodConfig | None = None
    custom_config: CustomConfig | None = None
    ve_image_x_config: VeImageXConfig | None = None

    @model_validator(mode="after")
    def _block_for_type(self) -> StorageConfig:
        if self.type == StorageType.vod:
            raise ValueError(
                "Type 1 (VOD) is not supported for snapshots; use 0 (TOS), 2 (S3-compatible) or 3 (veImageX)"
            )
        block = _STORAGE_BLOCK[self.type]
        if getattr(self, block) is None:
            raise ValueError(f"Type {self.type} requires {to_pascal(block)}")
        return self

    def for_type(self) -> StorageConfig:
        """Only the block the type uses: the API ignores the others."""
        block = _STORAGE_BLOCK[self.type]
        return StorageConfig(type=self.type, **{block: getattr(self, block)})


class TaskKey(WireModel):
    """What identifies a task: AppId + RoomId + TaskId."""

    app_id: Identifier
    room_id: Identifier
    task_id: Identifier


class StartSnapshotRequest(WireModel):
    app_id: Identifier
    business_id: Identifier | None = None
    room_id: Identifier
    task_id: Identifier
    target_streams: TargetStreams | None = None
    max_idle_time: MaxIdleTime = DEFAULT_MAX_IDLE_TIME
    image_config: ImageConfig = ImageConfig.model_construct()  # the defaults, unbuilt
    storage_config: StorageConfig


class UpdateSnapshotRequest(WireModel):
    app_id: Identifier
    business_id: Identifier | None = None
    room_id: Identifier
    task_id: Identifier
    image_config: ImageConfig | None = None


class StopSnapshotRequest(WireModel):
    app_id: Identifier
    business_id: Identifier | None = None
    room_id: Identifier
    task_id: Identifier


REQUEST_MODELS: dict[str, type[WireModel]] = {
    "StartSnapshot": StartSnapshotRequest,
    "UpdateSnapshot": UpdateSnapshotRequest,
    "StopSnapshot": StopSnapshotRequest,
    # GetSnapshotTask has no body: these are its query parameters besides Action and Version.
    "GetSnapshotTask": TaskKey,
}


# The read action ---------------------------------------------------------


class TaskStatus(IntEnum):
    """``SnapshotTask.Status`` of GetSnapshotTask."""

    unknown_error = 0
    not_started = 1
    running = 2
    ended = 3
    failed = 4


class StopReason(str, enum.Enum):
    """``SnapshotTask.StopReason``: empty while the task has not ended."""

    none = ""
    unknown = "UnknownStopReason"
    stop_by_api = "StopByAPI"
    start_task_failed = "StartTaskFailed"
    idle_timeout = "IdleTimeOut"
    user_disconnect = "UserDisconnect"


_BLOCK_DEFAULTS = {
    "TosConfig": {"Region": 0},
    "CustomConfig": {"Vendor": 0, "Region": 0},
    "VeImageXConfig": {"Region": 0},
    "VodConfig": {"Region": 0, "StorageClass": 1, "AutoSetFileExtension": False},
}
_BLOCK_OF_TYPE = {0: "TosConfig", 1: "VodConfig", 2: "CustomConfig", 3: "VeImageXConfig"}


def comparable(body: Mapping[str, Any]) -> dict[str, Any]:
    """A StartSnapshot wire body (declared, recorded or read back) in the one shape
    they are compared in: the API's defaults filled in, only the storage block its
    Type uses, an empty stream list as none, and no BusinessId (the read action
    does not return it, so it can never be compared)."""
    out: dict[str, Any] = {k: body[k] for k in ("AppId", "RoomId", "TaskId") if k in body}
    streams = (body.get("TargetStreams") or {}).get("StreamList") or []
    if streams:
        out["TargetStreams"] = {
            "StreamList": [
                {"Index": s.get("Index") or 0, "UserId": s.get("UserId"), "StreamType": s.get("StreamType") or 0}
                for s in streams
            ]
        }
    out["MaxIdleTime"] = body.get("MaxIdleTime") or DEFAULT_MAX_IDLE_TIME
    image = body.get("ImageConfig") or {}
    out["ImageConfig"] = {
        "Format": image.get("Format") or 0,
        "Width": image.get("Width") or 0,
        "Height": image.get("Height") or 0,
        "Interval": image.get("Interval") or DEFAULT_INTERVAL,
    }
    storage = body.get("StorageConfig") or {}
    kind = storage.get("Type") or 0
    block_name = _BLOCK_OF_TYPE.get(kind)
    out["StorageConfig"] = {"Type": kind}
    if block_name is not None and isinstance(storage.get(block_name), dict):
        out["StorageConfig"][block_name] = {**_BLOCK_DEFAULTS[block_name], **storage[block_name]}
    return out


#: The largest time an answer may hold (ms since the epoch): the last millisecond of
#: year 9999, the last one a date can show. Later, or negative, is not a time.
MAX_TIME_MS = 253_402_300_799_999
TimeMs = Annotated[StrictInt, Field(ge=0, le=MAX_TIME_MS)]
#: The statuses GetSnapshotTask documents (0 unknown error state ... 4 failed).
Status = Annotated[StrictInt, Field(ge=0, le=4)]
#: What a StopReason may hold: a name such as ``IdleTimeOut`` (the API may add names).
STOP_REASON_PATTERN = re.compile(r"[A-Za-z0-9_.\-]{0,64}")


def _stop_reason(value: str) -> str:
    if not STOP_REASON_PATTERN.fullmatch(value):
        raise ValueError("not a reason name (at most 64 letters, digits, '_', '.', '-')")
    return value


def _used_block_only(value: Any) -> Any:
    """A read StorageConfig with only its Type and the block that Type uses: the API may
    fill the others (with empty values), and they mean nothing for the task."""
    if not isinstance(value, dict):
        return value
    kind = value.get("Type", 0)
    block = _BLOCK_OF_TYPE.get(kind) if type(kind) is int else None
    return {name: item for name, item in value.items() if name in ("Type", block)}


class SnapshotTask(WireModel):
    """``Result.SnapshotTask`` of GetSnapshotTask, checked against the documented shape:
    the configuration blocks are the request's own models (types and ranges as
    StartSnapshot takes them), times are milliseconds a date can show, Status is one
    of 0-4 and StopReason a reason name. Fields the API adds are ignored. Build it with
    :func:`read_snapshot_task`; it holds the answer's secrets until
    :meth:`live_request` fingerprints them."""

    status: Status
    stop_reason: Annotated[str, AfterValidator(_stop_reason)] = ""
    start_time: TimeMs = 0
    end_time: TimeMs = 0
    max_idle_time: MaxIdleTime = DEFAULT_MAX_IDLE_TIME
    image_config: ImageConfig = ImageConfig.model_construct()  # the defaults, unbuilt
    storage_config: Annotated[StorageConfig, BeforeValidator(_used_block_only)]
    target_streams: TargetStreams | None = None

    def live_request(self, key: TaskKey, fingerprint: Callable[[dict[str, Any]], dict[str, Any]]) -> dict[str, Any]:
        """The configuration the task runs, as a comparable StartSnapshot body, its secrets
        replaced by ``fingerprint`` (the state's)."""
        body = self.model_dump(
            by_alias=True,
            exclude_none=True,
            mode="json",
            include={"max_idle_time", "image_config", "storage_config", "target_streams"},
        )
        return comparable({**key.wire(), **fingerprint(body)})


class UnreadableTask(ValueError):
    """A SnapshotTask that does not have the documented shape; the message says where, in one line."""


def read_snapshot_task(result: Any) -> SnapshotTask:
    """The one check of a GetSnapshotTask answer's ``Result``: its SnapshotTask, or
    :class:`UnreadableTask` naming the first field of another type or range."""
    raw = result.get("SnapshotTask") if isinstance(result, dict) else None
    if not isinstance(raw, dict):
        raise UnreadableTask("it holds no SnapshotTask object")
    try:
        return SnapshotTask.model_validate(raw)
    except ValidationError as exc:
        problems = describe_validation_error(exc).split("; ")
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise UnreadableTask(printable(problems[0]) + more) from None


class Observed(str, enum.Enum):
    """What a read tells snapctl about a task."""

    running = "running"
    #: Status 1: the task exists and waits for its streams. Healthy.
    not_started = "not_started"
    ended = "ended"
    failed = "failed"
    #: Not found (never started, or started before the read window), or Status 0.
    unknown = "unknown"


_OBSERVED_OF_STATUS = {
    TaskStatus.not_started: Observed.not_started,
    TaskStatus.running: Observed.running,
    TaskStatus.ended: Observed.ended,
    TaskStatus.failed: Observed.failed,
}


@dataclass(frozen=True)
class Observation:
    """One task as GetSnapshotTask showed it. ``live`` is its configuration
    (:func:`comparable`, secrets fingerprinted), None when it was not seen."""

    address: str
    observed: Observed
    status: int | None = None
    stop_reason: str = ""
    start_time_ms: int = 0
    end_time_ms: int = 0
    live: dict[str, Any] | None = None
    #: Why the task is unknown: the API's answer.
    detail: str = ""
    request_id: str = ""
    #: The read itself failed (after its retries), as opposed to "not found".
    read_error: bool = False
    #: The answer was not of the documented shape: the task exists, but nothing can be
    #: said of it, so nothing is sent for it (not even a confirming StartSnapshot).
    unreadable: bool = False

    @classmethod
    def of(
        cls,
        address: str,
        task: SnapshotTask,
        key: TaskKey,
        request_id: str = "",
        fingerprint: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> Observation:
        """From a checked answer. Status 0 is unknown: no configuration, so nothing is planned from it."""
        observed = _OBSERVED_OF_STATUS.get(task.status, Observed.unknown)  # type: ignore[call-overload]
        known = observed is not Observed.unknown
        return cls(
            address=address,
            observed=observed,
            status=task.status,
            stop_reason=task.stop_reason,
            start_time_ms=task.start_time,
            end_time_ms=task.end_time,
            live=task.live_request(key, fingerprint or (lambda body: body)) if known else None,
            detail="" if known else "the API reports Status 0 (unknown error state)",
            request_id=request_id,
        )

    @property
    def healthy(self) -> bool:
        """Running, or waiting for its streams: nothing to do."""
        return self.observed in (Observed.running, Observed.not_started)

    @property
    def confirmable(self) -> bool:
        """Not seen (not found, a failed read, Status 0): StartSnapshot may confirm it
        ("already started" proves it runs). Never an answer of another shape."""
        return self.live is None and not self.unreadable

    @property
    def stopped(self) -> bool:
        """Ended or failed: the task must be started again."""
        return self.observed in (Observed.ended, Observed.failed)

    def describe(self) -> str:
        """``ended (IdleTimeOut)``, ``failed (StartTaskFailed)``, ``running``, ``unknown (...)``."""
        if self.observed is Observed.unknown:
            return f"unknown ({self.detail})" if self.detail else "unknown"
        if self.stop_reason:
            return f"{self.observed.value} ({self.stop_reason})"
        return self.observed.value.replace("_", " ")

    def summary(self) -> dict[str, Any]:
        """The JSON of an observation (no configuration: that is in plans and diffs)."""
        return {
            "address": self.address,
            "status": self.observed.value,
            "api_status": self.status,
            "stop_reason": self.stop_reason or None,
            "started": _iso_ms(self.start_time_ms),
            "ended": _iso_ms(self.end_time_ms),
            "detail": self.detail or None,
        }


_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)


def _iso_ms(ms: int) -> str | None:
    """A time of an answer as ISO 8601 (exact: no float on the way); None for 0 (not set)
    and for what no date can show (a checked answer holds none)."""
    if not ms:
        return None
    try:
        return (_EPOCH + _dt.timedelta(milliseconds=ms)).isoformat(timespec="seconds")
    except OverflowError:
        return None


class ErrorInfo(BaseModel):
    model_config = ConfigDict(defer_build=True)

    CodeN: Annotated[StrictInt, Field(ge=-(2**63), le=2**63 - 1)] = 0
    Code: ApiText
    Message: ApiText = ""


class ResponseMetadata(BaseModel):
    """The metadata of every answer; its strings are made :func:`printable` as they are read,
    so that they are shown and stored on one line, with no terminal escape."""

    model_config = ConfigDict(defer_build=True)

    RequestId: ApiText = ""
    Action: ApiText = ""
    Version: ApiText = ""
    Service: ApiText = ""
    Region: ApiText = ""
    Error: ErrorInfo | None = None


class Envelope(BaseModel):
    """The response of every action: metadata, and ``Result`` on success."""

    model_config = ConfigDict(defer_build=True)

    ResponseMetadata: ResponseMetadata
    Result: Any = None


def envelope_problem(exc: ValidationError) -> str | None:
    """Where an answer that is the API's envelope (a JSON object with ResponseMetadata)
    differs from its documented shape, in one line; None for a body that is no envelope."""
    for error in exc.errors(include_url=False):
        loc = error["loc"]
        if loc and loc[0] == "ResponseMetadata" and not (len(loc) == 1 and error["type"] == "missing"):
            return printable(".".join(str(part) for part in loc) + ": " + error["msg"])
    return None


# The error codes of the gateway (../shared/api/README.md) and of the
# emulator's business errors. name -> (CodeN, HTTP status)
ERROR_CODES: dict[str, tuple[int, int]] = {
    "MissingParameter": (100002, 400),
    "MissingAuthenticationToken": (100003, 401),
    "MissingRequestInfo": (100004, 400),
    "MissingSignature": (100005, 401),
    "InvalidTimestamp": (100006, 403),
    "InvalidActionOrVersion": (100008, 404),
    "InvalidAccessKey": (100009, 401),
    "SignatureDoesNotMatch": (100010, 401),
    "AccessDenied": (100013, 403),
    "InternalError": (100014, 500),
    "FlowLimitExceeded": (100018, 429),
    # Business errors. The vendor does not document the "not running" code;
    # this is the emulator's choice, and the client matches it by name.
    "InvalidParameter": (10001, 400),
    "InvalidParameter.TaskNotRunning": (10002, 400),
    # The vendor does not document GetSnapshotTask's code for a task it cannot
    # find either; the client treats any InvalidParameter-class answer to a
    # valid query as "not found", never this exact name.
    "InvalidParameter.TaskNotFound": (10003, 400),
}
TASK_NOT_RUNNING = "InvalidParameter.TaskNotRunning"
TASK_NOT_FOUND = "InvalidParameter.TaskNotFound"


def describe_validation_error(exc) -> str:
    """One line per problem of a pydantic ValidationError, located by API field path."""
    lines = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        lines.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(lines)
