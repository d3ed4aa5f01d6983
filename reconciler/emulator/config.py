"""The emulator's settings, validated once for the command line and for ``POST /_emulator/config``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..api import DOCUMENTED_QPS, DOCUMENTED_READ_QPS, ERROR_CODES, READ_WINDOW_S

DEFAULT_ACCESS_KEY = "AKLTsnapctlemulator"
DEFAULT_SECRET_KEY = "snapctl-emulator-secret"
DEFAULT_REGION = "cn-north-1"

#: The settings ``POST /_emulator/config`` may change while the emulator runs.
RUNTIME_FIELDS = (
    "error_rate",
    "drop_rate",
    "slow_rate",
    "slow_ms",
    "latency_ms",
    "jitter_ms",
    "qps",
    "read_qps",
    "read_window_s",
    "deny_apps",
    "unwritable_buckets",
    "api_path",
    "start_delay_ms",
    "refuse_starts",
    "refuse_start_code",
)

Rate = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
#: The bounds of the numeric settings (flags and POST /_emulator/config alike): a delay of at
#: most an hour, a rate limit of at most a million per second, a read window of ten years.
MAX_MS = 3_600_000
MAX_QPS = 1_000_000
MAX_READ_WINDOW_S = 10 * 365 * 86400.0


class EmulatorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(0, ge=0, le=65535)
    access_key: str = Field(DEFAULT_ACCESS_KEY, min_length=1)
    secret_key: str = Field(DEFAULT_SECRET_KEY, min_length=1, repr=False)
    region: str = Field(DEFAULT_REGION, min_length=1)
    qps: int = Field(DOCUMENTED_QPS, ge=0, le=MAX_QPS)
    #: GetSnapshotTask's own limit.
    read_qps: int = Field(DOCUMENTED_READ_QPS, ge=0, le=MAX_QPS)
    #: GetSnapshotTask answers "not found" for a task started longer ago than this.
    read_window_s: float = Field(READ_WINDOW_S, ge=0, le=MAX_READ_WINDOW_S, allow_inf_nan=False)
    latency_ms: int = Field(0, ge=0, le=MAX_MS)
    jitter_ms: int = Field(0, ge=0, le=MAX_MS)
    error_rate: Rate = 0.0
    drop_rate: Rate = 0.0
    slow_rate: Rate = 0.0
    slow_ms: int = Field(5000, ge=0, le=MAX_MS)
    max_body: int = Field(65536, ge=1)
    data: Path | None = None
    seed: int | None = None
    max_skew_s: int = Field(900, ge=0)
    #: AppIds the access key may not use: their requests are answered AccessDenied,
    #: as an IAM policy would (for rehearsing permission failures).
    deny_apps: list[str] = Field(default_factory=list)
    #: Buckets the emulator cannot write to: a task storing there fails to start
    #: (GetSnapshotTask: Status 4, StartTaskFailed) although StartSnapshot answered "ok".
    unwritable_buckets: list[str] = Field(default_factory=list)
    #: Where the API is served: "/" as the real one, or a prefix such as "/api"
    #: to rehearse an endpoint behind a gateway that adds one.
    api_path: str = Field("/", pattern=r"^/[A-Za-z0-9._~/-]*$")
    #: How long a newly started task reads Status 1 (not started yet) before Status 2 (running).
    start_delay_ms: int = Field(0, ge=0, le=MAX_MS)
    #: StartSnapshot calls refused with ``refuse_start_code`` after every check passed, the API doing
    #: nothing: of these tasks (``AppId/RoomId/TaskId``), or of every task with ``*``.
    refuse_starts: list[str] = Field(default_factory=list)
    refuse_start_code: str = "InvalidParameter"

    @model_validator(mode="after")
    def _api_path_apart(self) -> EmulatorConfig:
        if self.api_path.startswith("/_emulator"):
            raise ValueError("api_path must not be under /_emulator")
        return self

    @model_validator(mode="after")
    def _refusals_known(self) -> EmulatorConfig:
        for address in self.refuse_starts:
            if address != "*" and (address.count("/") != 2 or "" in address.split("/")):
                raise ValueError(f"refuse_starts: {address!r} is not APP/ROOM/TASK or *")
        if self.refuse_start_code not in ERROR_CODES:
            raise ValueError(f"refuse_start_code must be one of {', '.join(ERROR_CODES)}")
        return self

    @model_validator(mode="after")
    def _rates_share_one_draw(self) -> EmulatorConfig:
        # One random draw per request picks at most one fault, so the rates are shares of one whole.
        total = self.error_rate + self.drop_rate + self.slow_rate
        if total > 1.0 + 1e-9:
            raise ValueError(f"error_rate + drop_rate + slow_rate must not exceed 1, got {total:g}")
        return self

    def runtime(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in RUNTIME_FIELDS}
