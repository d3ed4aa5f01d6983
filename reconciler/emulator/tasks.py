"""The emulator's running tasks: idle timeouts, and the optional data file they survive restarts in."""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from pydantic import ValidationError

from ..api import StartSnapshotRequest, describe_validation_error
from ..signing import sha256_hex

log = logging.getLogger("snapctl.emulator")

Key = tuple[str, str, str]
Room = tuple[str, str]

#: Changes within this many seconds are written to the data file together.
SAVE_DELAY_S = 0.05
DATA_VERSION = 1


class DataFileError(ValueError):
    """The data file exists but is not a task table this emulator wrote."""


@dataclass(slots=True)
class Task:
    request: dict[str, Any]
    started_at: float
    updated_at: float

    def view(self) -> dict[str, Any]:
        return {
            "AppId": self.request["AppId"],
            "RoomId": self.request["RoomId"],
            "TaskId": self.request["TaskId"],
            "Request": self.request,
            "StartedAt": self.started_at,
            "UpdatedAt": self.updated_at,
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


def atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class TaskTable:
    """Tasks by (AppId, RoomId, TaskId). A task whose room's streams stopped publishing
    expires ``MaxIdleTime`` seconds later; expiry is applied whenever a task is looked at."""

    def __init__(self, path: Path | None = None):
        self.tasks: dict[Key, Task] = {}
        #: When each room's streams stopped publishing (epoch seconds).
        self.streams_stopped: dict[Room, float] = {}
        self._path = path
        self._dirty = False
        self._timer: asyncio.TimerHandle | None = None
        self._writing: asyncio.Future | None = None
        self._closing = False
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._load(path)

    # -- the API's view ----------------------------------------------------

    def get(self, key: Key, now: float) -> Task | None:
        task = self.tasks.get(key)
        if task is None:
            return None
        stopped_at = self.streams_stopped.get((key[0], key[1]))
        if stopped_at is not None and now >= stopped_at + task.request["MaxIdleTime"]:
            del self.tasks[key]
            self._changed()
            return None
        return task

    def start(self, request: StartSnapshotRequest, now: float) -> bool:
        """Start a task; False when it is already running (and then it is left as it is)."""
        key = (request.app_id, request.room_id, request.task_id)
        running = self.get(key, now) is not None
        # A start means the room's streams publish (again).
        if self.streams_stopped.pop(key[:2], None) is not None:
            self._changed()
        if running:
            return False
        self.tasks[key] = Task(masked_wire(request), now, now)
        self._changed()
        return True

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

    def stop(self, key: Key, now: float) -> bool:
        if self.get(key, now) is None:
            return False
        del self.tasks[key]
        self._changed()
        return True

    def mark_streams_stopped(self, room: Room, immediate: bool, now: float) -> int:
        """Record that the room's streams stopped now; with ``immediate`` its tasks end at once.
        Returns how many tasks ended."""
        self.streams_stopped[room] = now
        ended = 0
        if immediate:
            for key in [k for k in self.tasks if k[:2] == room]:
                del self.tasks[key]
                ended += 1
        self._changed()
        return ended

    def running(self, now: float) -> list[Task]:
        if self.streams_stopped:
            for key in list(self.tasks):
                self.get(key, now)
        return list(self.tasks.values())

    def clear(self) -> None:
        self.tasks.clear()
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
                self.tasks[key] = Task(request.wire(), float(item["StartedAt"]), float(item["UpdatedAt"]))
            for item in doc["streams_stopped"]:
                self.streams_stopped[(item["AppId"], item["RoomId"])] = float(item["At"])
        except DataFileError:
            raise
        except ValidationError as exc:
            raise DataFileError(f"{path}: a stored task is not valid: {describe_validation_error(exc)}") from None
        except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError) as exc:
            raise DataFileError(f"{path}: not an emulator data file ({type(exc).__name__}: {exc})") from None

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
        data = self._dump()
        self._dirty = False
        # The fsync happens off the event loop; only one write is in flight at a time.
        self._writing = asyncio.get_running_loop().run_in_executor(None, atomic_write, self._path, data)
        self._writing.add_done_callback(self._saved)

    def _saved(self, future: asyncio.Future) -> None:
        self._writing = None
        if future.exception() is not None:
            log.error("cannot write %s: %s", self._path, future.exception())
            self._dirty = True
        if self._dirty and not self._closing:
            self._timer = asyncio.get_running_loop().call_later(SAVE_DELAY_S, self._save)

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
        if self._dirty:
            atomic_write(self._path, self._dump())
            self._dirty = False
