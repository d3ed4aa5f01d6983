"""The emulator's tasks and their lifecycle (running, ended, failed to start), and
the optional data file they survive restarts in.

A task is kept after it ends (Status 3, with its StopReason) or fails to start
(Status 4, ``StartTaskFailed``), as GetSnapshotTask reports it; a new
StartSnapshot of such a task starts it again. The custom storage keys
(GetSnapshotTask returns them, as the real API does) never reach the data file
or the log: the data file holds their fingerprints, and the keys themselves are
kept beside it in ``FILE.keys`` (mode 0600), the emulated service's own
credential store, so a task reads back the same after a restart (see docs/emulator.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from pydantic import ValidationError

from ..api import StartSnapshotRequest, StopReason, describe_validation_error
from ..signing import sha256_hex

log = logging.getLogger("snapctl.emulator")

Key = tuple[str, str, str]
Room = tuple[str, str]

#: Changes within this many seconds are written to the data file together.
SAVE_DELAY_S = 0.05
#: The longest wait between two attempts to write a data file that could not be written.
MAX_RETRY_S = 5.0
DATA_VERSION = 1


class DataFileError(ValueError):
    """The data file exists but is not a task table this emulator wrote."""


NOT_STARTED, RUNNING, ENDED, FAILED = 1, 2, 3, 4


@dataclass(slots=True)
class Task:
    #: The StartSnapshot wire body it runs, custom storage keys fingerprinted.
    request: dict[str, Any]
    started_at: float
    updated_at: float
    status: int = RUNNING
    stop_reason: str = ""
    ended_at: float = 0.0
    #: Until then (epoch seconds) a running task reads Status 1, not started yet.
    running_from: float = 0.0

    @property
    def running(self) -> bool:
        return self.status == RUNNING

    def reported_status(self, now: float) -> int:
        """The Status GetSnapshotTask reports: 1 while a running task has not started yet."""
        return NOT_STARTED if self.running and now < self.running_from else self.status

    def end(self, reason: str, at: float) -> None:
        self.status, self.stop_reason, self.ended_at = ENDED, reason, at

    def view(self) -> dict[str, Any]:
        return {
            "AppId": self.request["AppId"],
            "RoomId": self.request["RoomId"],
            "TaskId": self.request["TaskId"],
            "Request": self.request,
            "StartedAt": self.started_at,
            "UpdatedAt": self.updated_at,
            "Status": self.status,
            "StopReason": self.stop_reason,
            "EndedAt": self.ended_at,
        }


def fingerprint(secret: str) -> str:
    return "sha256:" + sha256_hex(secret.encode("utf-8"))[:16]


def masked_wire(request: StartSnapshotRequest) -> dict[str, Any]:
    """The wire body with the third-party storage credentials replaced by fingerprints."""
    wire = request.wire()
    custom = wire["StorageConfig"].get("CustomConfig")
    if custom is not None:
        custom["AccessKey"] = fingerprint(custom["AccessKey"])
        custom["SecretKey"] = fingerprint(custom["SecretKey"])
    return wire


def bucket_of(request: dict[str, Any]) -> str | None:
    """The bucket a task writes to (TOS or S3-compatible storage), if any."""
    storage = request["StorageConfig"]
    block = storage.get({0: "TosConfig", 2: "CustomConfig"}.get(storage["Type"], "")) or {}
    return block.get("Bucket")


def keys_path(path: Path) -> Path:
    """Where the data file's tasks keep their custom storage keys (mode 0600)."""
    return path.with_name(path.name + ".keys")


def write_files(files: list[tuple[Path, bytes]]) -> None:
    for path, data in files:
        atomic_write(path, data)


def atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class TaskTable:
    """Tasks by (AppId, RoomId, TaskId). A task whose room's streams stopped publishing
    ends (``IdleTimeOut``) ``MaxIdleTime`` seconds later; that is applied whenever a
    task is looked at."""

    def __init__(self, path: Path | None = None):
        self.tasks: dict[Key, Task] = {}
        #: The custom storage (AccessKey, SecretKey) of each task that has them: in memory, and
        #: with a data file in its ``.keys`` file beside it (never in the data file or the log).
        self.secrets: dict[Key, tuple[str, str]] = {}
        #: When each room's streams stopped publishing (epoch seconds).
        self.streams_stopped: dict[Room, float] = {}
        self._path = path
        self._dirty = False
        self._timer: asyncio.TimerHandle | None = None
        self._writing: asyncio.Future | None = None
        self._closing = False
        #: Why the data file could not be written (None once a write succeeds again).
        self.save_error: str | None = None
        self._retry_s = SAVE_DELAY_S
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise DataFileError(
                    f"--data {path}: cannot create its directory {path.parent}: {exc.strerror}"
                ) from None
            if path.is_dir():
                raise DataFileError(f"--data {path} is a directory; name a file in it")
            self._load(path)

    # -- the API's view ----------------------------------------------------

    def look(self, key: Key, now: float) -> Task | None:
        """The task whatever its status (idle timeouts applied), None when there is none."""
        task = self.tasks.get(key)
        if task is None or not task.running:
            return task
        stopped_at = self.streams_stopped.get((key[0], key[1]))
        if stopped_at is not None and now >= stopped_at + task.request["MaxIdleTime"]:
            task.end("IdleTimeOut", stopped_at + task.request["MaxIdleTime"])
            self._changed()
        return task

    def get(self, key: Key, now: float) -> Task | None:
        """The task if it is running."""
        task = self.look(key, now)
        return task if task is not None and task.running else None

    def start(
        self,
        request: StartSnapshotRequest,
        now: float,
        *,
        unwritable: frozenset[str] = frozenset(),
        delay_s: float = 0.0,
    ) -> bool:
        """Start a task; False when it is already running (and then it is left as it is).
        A task whose bucket is in ``unwritable`` fails to start (Status 4, StartTaskFailed);
        another reads Status 1 (not started yet) for ``delay_s`` seconds."""
        key = (request.app_id, request.room_id, request.task_id)
        running = self.get(key, now) is not None
        # A start means the room's streams publish (again).
        if self.streams_stopped.pop(key[:2], None) is not None:
            self._changed()
        if running:
            return False
        task = Task(masked_wire(request), now, now, running_from=now + delay_s)
        if bucket_of(task.request) in unwritable:
            task.status, task.stop_reason, task.ended_at = FAILED, "StartTaskFailed", now
        self.tasks[key] = task
        custom = request.storage_config.custom_config
        if custom is not None:
            self.secrets[key] = (custom.access_key, custom.secret_key)
        else:
            self.secrets.pop(key, None)
        self._changed()
        return True

    def read(self, key: Key, now: float, window_s: float) -> dict[str, Any] | None:
        """GetSnapshotTask's ``SnapshotTask``, the API's defaults filled in; None
        when there is no such task or it started more than ``window_s`` ago."""
        task = self.look(key, now)
        if task is None or now - task.started_at > window_s:
            return None
        request = task.request
        storage = request["StorageConfig"]
        storage = {"Type": storage["Type"], **{k: dict(v) for k, v in storage.items() if k != "Type"}}
        custom = storage.get("CustomConfig")
        if custom is not None and key in self.secrets:
            custom["AccessKey"], custom["SecretKey"] = self.secrets[key]
        streams = (request.get("TargetStreams") or {}).get("StreamList") or []
        return {
            "StartTime": int(task.started_at * 1000),
            "EndTime": int(task.ended_at * 1000) if not task.running else 0,
            "Status": task.reported_status(now),
            "StopReason": task.stop_reason,
            "MaxIdleTime": request["MaxIdleTime"],
            "ImageConfig": dict(request["ImageConfig"]),
            "StorageConfig": storage,
            "TargetStreams": {
                "StreamList": [
                    {"UserId": s["UserId"], "StreamType": s.get("StreamType", 0), "Index": s.get("Index", 0)}
                    for s in streams
                ]
            },
        }

    def rewrite(self, key: Key, changes: dict[str, Any], now: float) -> Task | None:
        """Change a running task's configuration out of band, as another tool would;
        None when it is not running. ``changes`` are top-level StartSnapshot fields."""
        task = self.get(key, now)
        if task is None:
            return None
        secrets = self.secrets.get(key)
        body = {**task.request, **changes}
        custom = body["StorageConfig"].get("CustomConfig")
        if custom is not None and "StorageConfig" not in changes and secrets is not None:
            body["StorageConfig"] = {**body["StorageConfig"], "CustomConfig": {**custom}}
            body["StorageConfig"]["CustomConfig"]["AccessKey"], body["StorageConfig"]["CustomConfig"]["SecretKey"] = (
                secrets
            )
        request = StartSnapshotRequest.model_validate(body)
        task.request = masked_wire(request)
        task.updated_at = now
        new_custom = request.storage_config.custom_config
        if new_custom is not None:
            self.secrets[key] = (new_custom.access_key, new_custom.secret_key)
        else:
            self.secrets.pop(key, None)
        self._changed()
        return task

    def update_interval(self, key: Key, interval: int | None, now: float) -> bool:
        """Apply a new Interval (None: nothing to apply); False when the task is not running."""
        task = self.get(key, now)
        if task is None:
            return False
        if interval is not None:
            task.request["ImageConfig"]["Interval"] = interval
            task.updated_at = now
            self._changed()
        return True

    def age(self, key: Key, seconds: float, now: float) -> Task | None:
        """A running task as if it had started ``seconds`` earlier (its StartTime, and the read
        window it leaves once 72 hours old); None when it is not running."""
        task = self.get(key, now)
        if task is None:
            return None
        task.started_at -= seconds
        self._changed()
        return task

    def stop(self, key: Key, now: float, reason: str = "StopByAPI") -> bool:
        """End a running task (StopSnapshot: ``StopByAPI``); False when it is not running."""
        task = self.get(key, now)
        if task is None:
            return False
        task.end(reason, now)
        self._changed()
        return True

    def mark_streams_stopped(self, room: Room, immediate: bool, now: float) -> int:
        """Record that the room's streams stopped now; with ``immediate`` its tasks end at once.
        Returns how many tasks ended."""
        self.streams_stopped[room] = now
        ended = 0
        if immediate:
            for key in [k for k in self.tasks if k[:2] == room]:
                task = self.tasks[key]
                if task.running:
                    task.end("IdleTimeOut", now)
                    ended += 1
        self._changed()
        return ended

    def all(self, now: float) -> list[Task]:
        """Every task, running or not."""
        for key in list(self.tasks):
            self.look(key, now)
        return list(self.tasks.values())

    def running(self, now: float) -> list[Task]:
        return [task for task in self.all(now) if task.running]

    def clear(self) -> None:
        self.tasks.clear()
        self.secrets.clear()
        self.streams_stopped.clear()
        self._changed()

    # -- the data file -------------------------------------------------------

    def _load(self, path: Path) -> None:
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise DataFileError(f"cannot read {path}: {exc.strerror}") from None
        try:
            doc = orjson.loads(raw)
            if doc.get("version") != DATA_VERSION:
                raise DataFileError(f"{path}: not an emulator data file of version {DATA_VERSION}")
            for item in doc["tasks"]:
                request = StartSnapshotRequest.model_validate(item["Request"])
                key = (request.app_id, request.room_id, request.task_id)
                self.tasks[key] = Task(
                    request.wire(),
                    float(item["StartedAt"]),
                    float(item["UpdatedAt"]),
                    int(item.get("Status", RUNNING)),
                    StopReason(item.get("StopReason", "")).value,  # a documented reason, or ValueError
                    float(item.get("EndedAt", 0.0)),
                )
            for item in doc["streams_stopped"]:
                self.streams_stopped[(item["AppId"], item["RoomId"])] = float(item["At"])
            self._load_keys(keys_path(path))
        except DataFileError:
            raise
        except ValidationError as exc:
            raise DataFileError(f"{path}: a stored task is not valid: {describe_validation_error(exc)}") from None
        except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError) as exc:
            raise DataFileError(f"{path}: not an emulator data file ({type(exc).__name__}: {exc})") from None

    def _load_keys(self, path: Path) -> None:
        """The storage keys of the loaded tasks that still use custom storage."""
        try:
            doc = orjson.loads(path.read_bytes())
        except FileNotFoundError:
            return
        except OSError as exc:
            raise DataFileError(f"cannot read {path}: {exc.strerror}") from None
        for item in doc["keys"]:
            key = (item["AppId"], item["RoomId"], item["TaskId"])
            task = self.tasks.get(key)
            if task is not None and "CustomConfig" in task.request["StorageConfig"]:
                self.secrets[key] = (str(item["AccessKey"]), str(item["SecretKey"]))

    def _files(self) -> list[tuple[Path, bytes]]:
        """What a save writes: the keys first, so the data file never names a task whose keys are lost."""
        assert self._path is not None  # saves are only scheduled for a table with a data file
        keys = [
            {"AppId": a, "RoomId": r, "TaskId": t, "AccessKey": access, "SecretKey": secret}
            for (a, r, t), (access, secret) in self.secrets.items()
        ]
        return [
            (keys_path(self._path), orjson.dumps({"version": DATA_VERSION, "keys": keys})),
            (self._path, self._dump()),
        ]

    def _dump(self) -> bytes:
        doc = {
            "version": DATA_VERSION,
            "tasks": [task.view() for task in self.tasks.values()],
            "streams_stopped": [{"AppId": a, "RoomId": r, "At": at} for (a, r), at in self.streams_stopped.items()],
        }
        return orjson.dumps(doc, option=orjson.OPT_INDENT_2)

    def _changed(self) -> None:
        if self._path is None:
            return
        self._dirty = True
        if self._timer is None and self._writing is None and not self._closing:
            self._timer = asyncio.get_running_loop().call_later(SAVE_DELAY_S, self._save)

    def _save(self) -> None:
        self._timer = None
        files = self._files()
        self._dirty = False
        # The fsync happens off the event loop; only one write is in flight at a time.
        self._writing = asyncio.get_running_loop().run_in_executor(None, write_files, files)
        self._writing.add_done_callback(self._saved)

    def _saved(self, future: asyncio.Future) -> None:
        self._writing = None
        delay = SAVE_DELAY_S
        error = future.exception()
        if error is not None:
            self._dirty = True
            if self.save_error is None:  # said once, not at every retry
                log.error(
                    "cannot write %s (%s); the tasks are kept in memory and written when it works again",
                    self._path,
                    getattr(error, "strerror", None) or error,
                )
            self.save_error = str(getattr(error, "strerror", None) or error)
            self._retry_s = delay = min(self._retry_s * 2, MAX_RETRY_S)
        elif self.save_error is not None:
            log.warning("wrote %s again", self._path)
            self.save_error, self._retry_s = None, SAVE_DELAY_S
        if self._dirty and not self._closing:
            self._timer = asyncio.get_running_loop().call_later(delay, self._save)

    def open(self) -> None:
        self._closing = False

    async def close(self) -> None:
        """Write what is pending, synchronously at the end: nothing is lost on a clean shutdown."""
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._writing is not None:
            await asyncio.wait([self._writing])
        if self._dirty and self._path is not None:
            try:
                write_files(self._files())
            except OSError as exc:
                # Reported by the caller (the emulator command exits non-zero).
                self.save_error = exc.strerror or str(exc)
                return
            self._dirty = False
            self.save_error = None
