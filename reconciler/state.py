"""The state: what snapctl last applied successfully, per task address.

On disk a state is a JSON document (``snapctl.state.json``) plus, while an
apply runs, an append-only journal beside it (``…json.journal``): one line per
completed API call, written and fsynced before the next step, so a process
killed at any moment loses nothing. Opening the state for writing folds the
journal back into the document (atomic write: temporary file, fsync, rename;
the previous document kept as ``….backup``). Readers replay the journal too,
so what they see is always every completed call.

Before each mutating call the journal also gets an *intent* (the action and the
request it may leave running). A call in flight when the process dies may or
may not have been done by the API, and there is no read action to ask: its
intent stays in the state (``pending``) until a later call settles the task,
and the plan treats such a task as possibly running (see ``engine.plan``).

Every write is complete or raises :class:`~reconciler.errors.WriteError` (a
full disk included): the journal is removed only once the new document is
durably in place, so a failed write leaves the last good document and journal.
A symlinked state path is resolved once: document, backup, journal and lock sit
beside the real file.

Secrets never reach the disk: the fields of :data:`SECRET_FIELDS` are replaced
by a keyed fingerprint (HMAC-SHA256 under a random per-lineage key), enough to
notice a change and useless for recovering the value.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import errno
import fcntl
import hashlib
import hmac
import os
import secrets as _secrets
import socket
import time
import uuid
from collections.abc import Iterable, Iterator, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from . import __version__
from .errors import LockError, StateError, WriteError

FORMAT_VERSION = 1
DEFAULT_STATE_PATH = Path("state/snapctl.state.json")
#: Wire paths of secret fields inside a StartSnapshot request.
SECRET_FIELDS: tuple[tuple[str, ...], ...] = (
    ("StorageConfig", "CustomConfig", "SecretKey"),
    ("StorageConfig", "CustomConfig", "AccessKey"),
)
FINGERPRINT_PREFIX = "hmac-sha256:"
#: A new holder writes its record just after taking the lock: how long a refused
#: process waits for that record, to name the holder rather than "another process".
HOLDER_RECORD_WAIT_S = 2.0
#: Added to the message of a failed state write.
_KEPT = (
    "nothing more was sent; every completed call is kept in the last good state and its journal. "
    "Free space (or fix the directory) and run the command again"
)


def is_fingerprint(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(FINGERPRINT_PREFIX)


class TaskTable(MutableMapping[str, dict]):
    """The state's tasks by address. Entries read from disk stay as their JSON
    bytes until asked for, so a large state costs its size on disk in memory,
    not several times that in dicts; each read decodes a fresh copy."""

    __slots__ = ("_entries", "_source")

    def __init__(self, entries: dict[str, Any] | None = None, source: str = "state"):
        self._entries: dict[str, Any] = dict(entries or {})
        self._source = source

    def __getitem__(self, address: str) -> dict[str, Any]:
        entry = self._entries[address]
        if isinstance(entry, bytes):
            entry = _decode_entry(address, entry, self._source)
        return entry

    def __setitem__(self, address: str, entry: dict[str, Any]) -> None:
        self._entries[address] = entry

    def __delitem__(self, address: str) -> None:
        del self._entries[address]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, address: object) -> bool:
        return address in self._entries

    def copy(self) -> TaskTable:
        return TaskTable(self._entries, self._source)

    def encoded(self) -> Iterator[tuple[str, bytes]]:
        """(address, compact JSON of the entry) in address order, without decoding stored entries."""
        for address in sorted(self._entries):
            entry = self._entries[address]
            yield address, entry if isinstance(entry, bytes) else orjson.dumps(entry)


def _decode_entry(address: str, raw: bytes, source: str) -> dict[str, Any]:
    try:
        entry = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise StateError(f"{source}: the entry of task {address!r} is not valid JSON") from None
    if not isinstance(entry, dict) or not isinstance(entry.get("request"), dict):
        raise StateError(f"{source}: task {address!r} has no request")
    return entry


@dataclass
class State:
    """A state in memory. ``tasks`` maps an address to its entry:
    ``{"request": <StartSnapshot wire body, secrets fingerprinted>, "request_id": str, "applied_at": str}``."""

    lineage: str
    serial: int = 0
    fingerprint_key: str = ""
    tasks: MutableMapping[str, dict[str, Any]] = field(default_factory=TaskTable)
    exists: bool = False
    #: Calls sent but never settled, by address: ``{"action": <API action>, "request": <StartSnapshot
    #: wire body, secrets fingerprinted, that the task runs if the call was done>}``.
    pending: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: The last GetSnapshotTask observation of each task read by a refresh that held the lock
    #: (apply --refresh, reconcile, import): ``{"status", "stop_reason", "started", "ended", "since"}``,
    #: ``since`` being when snapctl first saw the task in this status and reason.
    observed: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def new(cls) -> State:
        return cls(lineage=str(uuid.uuid4()), fingerprint_key=_secrets.token_hex(32))

    def fingerprint(self, request: dict[str, Any]) -> dict[str, Any]:
        """A copy of a wire request with every secret replaced by its fingerprint."""
        out = request
        copied = False
        for path in SECRET_FIELDS:
            parent = out
            for part in path[:-1]:
                parent = parent.get(part) if isinstance(parent, dict) else None
                if parent is None:
                    break
            if not isinstance(parent, dict) or path[-1] not in parent or is_fingerprint(parent[path[-1]]):
                continue
            if not copied:
                out, copied = copy.deepcopy(request), True
                parent = out
                for part in path[:-1]:
                    parent = parent[part]
            digest = hmac.new(self.fingerprint_key.encode(), str(parent[path[-1]]).encode(), hashlib.sha256).hexdigest()
            parent[path[-1]] = FINGERPRINT_PREFIX + digest[:32]
        return out

    def to_document(self) -> dict[str, Any]:
        document = {
            "format_version": FORMAT_VERSION,
            "snapctl_version": __version__,
            "lineage": self.lineage,
            "serial": self.serial,
            "fingerprint_key": self.fingerprint_key,
            "tasks": dict(sorted(self.tasks.items())),
        }
        if self.pending:
            document["pending"] = dict(sorted(self.pending.items()))
        if self.observed:
            document["observed"] = dict(sorted(self.observed.items()))
        return document

    def encode(self) -> bytes:
        """The document as written to disk: JSON with the header on the first
        lines and one task per line (readable, diffable, and read back lazily)."""
        header = self.to_document() | {"tasks": {}}
        del header["tasks"]
        head = orjson.dumps(header)[:-1]
        tasks = (
            self.tasks.encoded()
            if isinstance(self.tasks, TaskTable)
            else ((a, orjson.dumps(e)) for a, e in sorted(self.tasks.items()))
        )
        lines = [b'%s,\n"tasks":{' % head]
        lines.extend(b"\n" + orjson.dumps(address) + b":" + raw + b"," for address, raw in tasks)
        if len(lines) > 1:
            lines[-1] = lines[-1][:-1]
        lines.append(b"\n}}\n")
        return b"".join(lines)

    def apply_entry(self, entry: dict[str, Any]) -> None:
        op, address = entry["op"], entry["address"]
        if op == "intent":
            if entry.get("intent") is None:
                self.pending.pop(address, None)
            else:
                self.pending[address] = entry["intent"]
        elif op == "put":
            self.tasks[address] = entry["entry"]
            self.pending.pop(address, None)
        elif op == "observe":
            for seen_address, seen in entry["observed"].items():
                if seen is None:
                    self.observed.pop(seen_address, None)
                else:
                    self.observed[seen_address] = seen
        else:
            self.tasks.pop(address, None)
            self.pending.pop(address, None)
            self.observed.pop(address, None)
        self.serial = entry["serial"]


def resolve_path(path: Path | str) -> Path:
    """The real file behind a state path (symlinks resolved), so that every
    process, whichever path it was given, uses the same document, journal and lock."""
    return Path(os.path.realpath(path))


def write_error(exc: OSError, path: Path | str, what: str = "") -> WriteError:
    """One line for a failed write: the disk is full, or why else ``path`` could not be written."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        message = f"the disk is full: cannot write {path} ({exc.strerror})"
    else:
        message = f"cannot write {path}: {exc.strerror or exc}"
    return WriteError(message + (f"; {what}" if what else ""), path=str(path), errno=exc.errno or 0)


def write_all(fd: int, data: bytes) -> None:
    """Write every byte of ``data`` (``os.write`` may write fewer), or raise OSError."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:  # pragma: no cover - os.write raises rather than return 0 for regular files
            raise OSError(errno.EIO, "short write")
        view = view[written:]


def journal_path(path: Path) -> Path:
    return path.with_name(path.name + ".journal")


def backup_path(path: Path) -> Path:
    return path.with_name(path.name + ".backup")


def lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


_TASKS_MARK = b',\n"tasks":{'
_END_MARK = b"\n}}\n"


def _split_document(raw: bytes) -> tuple[bytes, dict[str, bytes]] | None:
    """The header and each task's raw entry of a document in the layout
    :meth:`State.encode` writes; None for any other layout (then it is parsed whole)."""
    if not raw.startswith(b'{"format_version":') or not raw.endswith(_END_MARK):
        return None
    mark = raw.find(_TASKS_MARK)
    if mark < 0:
        return None
    body = raw[mark + len(_TASKS_MARK) : -len(_END_MARK)]
    entries: dict[str, bytes] = {}
    if body:
        if not body.startswith(b"\n"):
            return None
        lines = body[1:].split(b"\n")
        last = len(lines) - 1
        for number, line in enumerate(lines):
            if number < last:
                if not line.endswith(b","):
                    return None
                line = line[:-1]
            end = line.find(b'":', 1)
            if not line.startswith(b'"') or end < 0 or b"\\" in line[:end]:
                return None
            value = line[end + 2 :]
            if not (value.startswith(b"{") and value.endswith(b"}")):
                return None
            try:
                entries[line[1:end].decode("ascii")] = value
            except UnicodeDecodeError:
                return None
    return raw[:mark] + b"}", entries


def _parse_document(path: Path, raw: bytes) -> State:
    split = _split_document(raw)
    lazy_tasks = None
    if split is not None:
        raw, lazy_tasks = split
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise StateError(
            f"{path}: not valid JSON ({exc}); the file may be truncated. "
            f"The previous version is kept at {backup_path(path)}"
        ) from None
    if not isinstance(doc, dict):
        raise StateError(f"{path}: a state is a JSON object, found {type(doc).__name__}")
    version = doc.get("format_version")
    if not isinstance(version, int):
        raise StateError(f"{path}: no format_version; this is not a snapctl state file")
    if version > FORMAT_VERSION:
        raise StateError(
            f"{path}: written in state format {version} by snapctl {doc.get('snapctl_version', '?')}; "
            f"this snapctl reads format {FORMAT_VERSION}. Upgrade snapctl"
        )
    if version < 1:
        raise StateError(f"{path}: unknown state format version {version}")
    if lazy_tasks is not None:
        doc["tasks"] = {}
    try:
        lineage, serial, key, tasks = doc["lineage"], doc["serial"], doc["fingerprint_key"], doc["tasks"]
    except KeyError as exc:
        raise StateError(f"{path}: missing field {exc.args[0]!r}") from None
    if not (isinstance(lineage, str) and isinstance(serial, int) and isinstance(key, str) and isinstance(tasks, dict)):
        raise StateError(f"{path}: lineage, serial, fingerprint_key or tasks has the wrong type")
    for address, entry in tasks.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("request"), dict):
            raise StateError(f"{path}: task {address!r} has no request")
    # Entries kept as bytes are checked when first read (every plan reads them all
    # before any call is sent).
    tasks = TaskTable(lazy_tasks if lazy_tasks is not None else tasks, source=str(path))
    pending = doc.get("pending", {})
    if not isinstance(pending, dict) or not all(
        isinstance(i, dict) and isinstance(i.get("action"), str) and isinstance(i.get("request"), dict)
        for i in pending.values()
    ):
        raise StateError(f"{path}: pending has the wrong type")
    observed = doc.get("observed", {})
    if not isinstance(observed, dict) or not all(
        isinstance(o, dict) and isinstance(o.get("status"), str) for o in observed.values()
    ):
        raise StateError(f"{path}: observed has the wrong type")
    return State(
        lineage=lineage,
        serial=serial,
        fingerprint_key=key,
        tasks=tasks,
        exists=True,
        pending=pending,
        observed=observed,
    )


def _replay_journal(path: Path, state: State) -> bool:
    """Apply the journal's entries newer than the document. True if a journal was found."""
    jpath = journal_path(path)
    try:
        raw = jpath.read_bytes()
    except FileNotFoundError:
        return False
    lines = raw.split(b"\n")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            if number >= len(lines) - 1:  # a last line cut short by a kill: that call never completed
                break
            raise StateError(f"{jpath}:{number}: corrupt journal line") from None
        if "lineage" in entry and "op" not in entry:
            if entry["lineage"] != state.lineage:
                raise StateError(f"{jpath}: journal belongs to another state (lineage {entry['lineage']})")
            continue
        if entry.get("serial", 0) > state.serial:
            state.apply_entry(entry)
    return True


def read_state(path: Path) -> State:
    """The state as of every completed call (document plus journal); a new empty
    state if there is no file. Takes no lock: writers replace files atomically."""
    path = resolve_path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        if journal_path(path).exists():
            raise StateError(
                f"{journal_path(path)} exists without {path}; restore {path} from {backup_path(path)}"
            ) from None
        return State.new()
    except IsADirectoryError:
        raise StateError(f"{path} is a directory, not a state file") from None
    state = _parse_document(path, raw)
    _replay_journal(path, state)
    return state


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: Path, data: bytes, what: str = "") -> None:
    """Write ``data`` to ``path`` via a temporary file, fsync and rename (mode 0600).

    Either ``path`` then holds all of ``data`` or it is unchanged, no temporary
    file is left, and :class:`WriteError` says why (``what`` is added to its message).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise write_error(exc, path, what) from None
    _fsync_dir(path.parent)


@dataclass(frozen=True)
class LockHolder:
    host: str
    pid: int
    started_at: str
    command: str

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host} ({self.command}), since {self.started_at}"

    def may_be_alive(self) -> bool:
        """False only for a holder on this host whose process is gone (a record left by a killed run)."""
        if self.host != socket.gethostname():
            return True
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except OSError:
            return True
        return True


def read_lock_holder(path: Path) -> LockHolder | None:
    path = resolve_path(path)
    try:
        info = orjson.loads(lock_path(path).read_bytes())
        return LockHolder(info["host"], int(info["pid"]), info["started_at"], info.get("command", "?"))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def lock_is_held(path: Path) -> bool:
    """True while some process holds the state's lock."""
    try:
        fd = os.open(lock_path(resolve_path(path)), os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


class StateStore:
    """Exclusive, crash-safe write access to one state file.

    The lock is an OS ``flock`` on ``….lock``: the kernel drops it when the
    holder exits or is killed, so a dead run never blocks the next one.

    ``create`` makes the state's directory (mode 0700) when it is missing.
    After a failed write (see :attr:`write_failure`) the store writes nothing
    more that could leave a file cut short, and closing keeps the journal.
    """

    def __init__(self, path: Path, *, lock_timeout_s: float = 0.0, command: str = "snapctl", create: bool = True):
        self.given_path = Path(path)
        self.path = resolve_path(path)
        self._lock_timeout_s = lock_timeout_s
        self._command = command
        self._create = create
        self._lock_fd: int | None = None
        self._journal_fd: int | None = None
        #: The first write that failed; the last good document and journal are then kept as they are.
        self.write_failure: WriteError | None = None
        self._journal_torn = False
        self.state: State = State.new()

    def __enter__(self) -> StateStore:
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def open(self) -> None:
        """Take the lock, then read the state and fold in any journal left by a killed run."""
        if not self.path.parent.is_dir():
            if not self._create or self.path.parent.exists():
                raise StateError(f"state directory {self.path.parent} does not exist")
            try:
                os.makedirs(self.path.parent, mode=0o700, exist_ok=True)
            except OSError as exc:
                raise write_error(exc, self.path.parent, "cannot create the state directory") from None
        self._acquire_lock()
        try:
            self.state = read_state(self.path)
            if journal_path(self.path).exists():
                self.checkpoint()
        except BaseException:
            self._release_lock()
            raise

    def close(self) -> None:
        try:
            if self._journal_fd is not None:
                if self.write_failure is None:
                    self.checkpoint()
                else:  # keep the last good document and the journal: readers replay it
                    os.close(self._journal_fd)
                    self._journal_fd = None
        finally:
            self._release_lock()

    # Recording ---------------------------------------------------------

    def record_put(self, address: str, request_wire: dict[str, Any], request_id: str = "") -> None:
        """Remember that ``address`` now runs ``request_wire`` (secrets are fingerprinted here)."""
        entry = {
            "request": self.state.fingerprint(request_wire),
            "request_id": request_id,
            "applied_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        self._append({"op": "put", "address": address, "entry": entry})

    def record_observations(self, observations: Iterable[Any]) -> int:
        """Remember what a refresh saw (``api.Observation`` values): one journal entry
        for every task whose status or stop reason changed since the last one, none
        when nothing did (a converged controller round writes nothing). Returns how
        many changed."""
        now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        changed: dict[str, dict[str, Any]] = {}
        for seen in observations:
            summary = seen.summary()
            record = {
                "status": summary["status"],
                "stop_reason": summary["stop_reason"],
                "started": summary["started"],
                "ended": summary["ended"],
            }
            last = self.state.observed.get(seen.address)
            if last is not None and {k: last.get(k) for k in record} == record:
                continue
            changed[seen.address] = record | {"since": now}
        if changed:
            self._append({"op": "observe", "address": "", "observed": changed})
        return len(changed)

    def record_delete(self, address: str) -> None:
        self._append({"op": "delete", "address": address})

    def record_intent(self, address: str, action: str, request_wire: dict[str, Any]) -> dict[str, Any] | None:
        """Before sending ``action``: remember that ``address`` may run ``request_wire`` (or, for a
        Stop, may have stopped) until the outcome is recorded. Returns the intent it replaced."""
        previous = self.state.pending.get(address)
        intent = {"action": action, "request": self.state.fingerprint(request_wire)}
        self._append({"op": "intent", "address": address, "intent": intent})
        return previous

    def record_not_done(self, address: str, previous: dict[str, Any] | None) -> None:
        """The call of the last intent was certainly not done (refused on its only attempt)."""
        self._append({"op": "intent", "address": address, "intent": previous})

    def _append(self, entry: dict[str, Any]) -> None:
        """Journal ``entry`` durably, then apply it in memory; on a failed write
        neither happens and :class:`WriteError` is raised."""
        if self._lock_fd is None:
            raise RuntimeError("state store is not open")
        if self._journal_torn:
            assert self.write_failure is not None
            raise self.write_failure
        if self._journal_fd is None:
            if not self.state.exists:
                self.checkpoint()
            jpath = journal_path(self.path)
            try:
                self._journal_fd = os.open(jpath, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            except OSError as exc:
                raise self._failed(write_error(exc, jpath, _KEPT)) from None
            self._write_journal({"lineage": self.state.lineage, "base_serial": self.state.serial})
        entry["serial"] = self.state.serial + 1
        self._write_journal(entry)
        self.state.apply_entry(entry)

    def _write_journal(self, entry: dict[str, Any]) -> None:
        """Append one line, whole and fsynced; a line cut short by a full disk is cut off again."""
        assert self._journal_fd is not None
        fd = self._journal_fd
        try:
            start = os.lseek(fd, 0, os.SEEK_END)
        except OSError as exc:  # pragma: no cover - lseek on a regular file does not fail
            raise self._failed(write_error(exc, journal_path(self.path), _KEPT)) from None
        try:
            write_all(fd, orjson.dumps(entry) + b"\n")
            os.fdatasync(fd)
        except OSError as exc:
            try:
                os.ftruncate(fd, start)
            except OSError:
                self._journal_torn = True  # its last line may be partial: append nothing after it
            raise self._failed(write_error(exc, journal_path(self.path), _KEPT)) from None

    def _failed(self, error: WriteError) -> WriteError:
        if self.write_failure is None:
            self.write_failure = error
        return error

    def checkpoint(self) -> None:
        """Write the whole state atomically, keep the previous document as the backup, drop the journal.

        The journal is removed only after the new document is durably in place:
        if any write fails, the previous document, backup and journal stay as they were.
        """
        try:
            previous = self.path.read_bytes()
        except FileNotFoundError:
            previous = None
        except OSError as exc:
            raise StateError(f"cannot read {self.path}: {exc.strerror}") from None
        try:
            if previous is not None:
                atomic_write(backup_path(self.path), previous, _KEPT)
            atomic_write(self.path, self.state.encode(), _KEPT)
        except WriteError as exc:
            raise self._failed(exc) from None
        self.state.exists = True
        if self._journal_fd is not None:
            os.close(self._journal_fd)
            self._journal_fd = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(journal_path(self.path))
        _fsync_dir(self.path.parent)

    def replace_state(self, state: State) -> None:
        """Write ``state`` as the new document (used by ``state rm``)."""
        state.serial = max(state.serial, self.state.serial) + 1
        self.state = state
        self.checkpoint()

    # Locking -------------------------------------------------------------

    def _acquire_lock(self) -> None:
        lpath = lock_path(self.path)
        try:
            fd = os.open(lpath, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise write_error(exc, lpath, "cannot create the state's lock file") from None
        deadline = time.monotonic() + self._lock_timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    os.close(fd)
                    raise StateError(f"cannot lock {lpath}: {exc.strerror}") from None
                now = time.monotonic()
                if now >= deadline:
                    holder = read_lock_holder(self.path)
                    if (holder is None or not holder.may_be_alive()) and now < deadline + HOLDER_RECORD_WAIT_S:
                        time.sleep(0.01)  # the holder took the lock and has not written its record yet
                        continue
                    os.close(fd)
                    who = holder.describe() if holder else "another process"
                    waited = f" after waiting {self._lock_timeout_s:g}s" if self._lock_timeout_s else ""
                    raise LockError(
                        f"state {self.path} is locked by {who}{waited}. Wait for it to finish, "
                        "or pass --lock-timeout SECONDS to wait"
                    ) from None
                time.sleep(0.05)
        holder = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "command": self._command,
        }
        with contextlib.suppress(OSError):  # the record only names the holder; the flock is the lock
            os.ftruncate(fd, 0)
            os.pwrite(fd, orjson.dumps(holder), 0)
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._lock_fd, 0)
            os.close(self._lock_fd)  # closing drops the flock
            self._lock_fd = None


@contextlib.contextmanager
def open_store(path: Path, *, lock_timeout_s: float = 0.0, command: str = "snapctl") -> Iterator[StateStore]:
    store = StateStore(path, lock_timeout_s=lock_timeout_s, command=command)
    with store:
        yield store
