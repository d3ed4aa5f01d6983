"""The state in a file: the embedded default.

On disk a state is a JSON document (``snapctl.state.json``) plus, while an
apply runs, an append-only journal beside it (``…json.journal``): one line per
record (an intent before each API call, a put or delete after it), written and
fsynced before the next step, so a process killed at any moment loses nothing
(the records of concurrent calls share one write and one fsync).
Opening the state for writing folds the journal back into the document (atomic
write: temporary file, fsync, rename; the previous document kept as
``….backup``). Readers replay the journal too, so what they see is always
every completed call.

Every write is complete or raises :class:`~reconciler.errors.WriteError` (a
full disk included): the journal is removed only once the new document is
durably in place, so a failed write leaves the last good document and journal.
A symlinked state path is resolved once: document, backup, journal and lock sit
beside the real file.

Workspaces other than ``default`` live beside the file: ``snapctl.state.W.json``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from pathlib import Path
from typing import Any

import orjson

from ..errors import LockError, StateError, WriteError
from .backend import DEFAULT_WORKSPACE, HOLDER_RECORD_WAIT_S, LockHolder, StateStore, check_workspace
from .model import (
    FORMAT_VERSION,
    SIGNPOST_FORMAT_VERSION,
    Signpost,
    State,
    TaskTable,
    check_fingerprint_params,
    check_records,
)

DEFAULT_STATE_PATH = Path("state/snapctl.state.json")
#: Added to the message of a failed state write.
_KEPT = (
    "nothing more was sent; every completed call is kept in the last good state and its journal. "
    "Free space (or fix the directory) and run the command again"
)


def workspace_path(path: Path | str, workspace: str = DEFAULT_WORKSPACE) -> Path:
    """The file of ``workspace`` for the state path ``path`` (``default`` is ``path`` itself)."""
    path = Path(path)
    if workspace == DEFAULT_WORKSPACE:
        return path
    check_workspace(workspace)
    return path.with_name(f"{path.stem}.{workspace}{path.suffix}")


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


# The document -----------------------------------------------------------------------

_TASKS_MARK = b',\n"tasks":{'
_END_MARK = b"\n}}\n"


def encode_document(state: State) -> bytes:
    """The document as written to disk: JSON with the header on the first
    lines and one task per line (readable, diffable, and read back lazily); a signpost
    is its header alone."""
    header = state.header()
    if state.signpost is not None:
        return orjson.dumps(header, option=orjson.OPT_INDENT_2) + b"\n"
    if state.pending:
        header["pending"] = dict(sorted(state.pending.items()))
    if state.observed:
        header["observed"] = dict(sorted(state.observed.items()))
    head = orjson.dumps(header)[:-1]
    tasks = (
        state.tasks.encoded()
        if isinstance(state.tasks, TaskTable)
        else ((a, orjson.dumps(e)) for a, e in sorted(state.tasks.items()))
    )
    lines = [b'%s,\n"tasks":{' % head]
    lines.extend(b"\n" + orjson.dumps(address) + b":" + raw + b"," for address, raw in tasks)
    if len(lines) > 1:
        lines[-1] = lines[-1][:-1]
    lines.append(b"\n}}\n")
    return b"".join(lines)


def _split_document(raw: bytes) -> tuple[bytes, dict[str, bytes]] | None:
    """The header and each task's raw entry of a document in the layout
    :func:`encode_document` writes; None for any other layout (then it is parsed whole)."""
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
    if version == SIGNPOST_FORMAT_VERSION and "signpost" in doc:
        return _parse_signpost(path, doc)
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
    pending, observed = doc.get("pending", {}), doc.get("observed", {})
    check_records(pending, observed, str(path))
    endpoint, region = doc.get("endpoint"), doc.get("region")
    if not (endpoint is None or isinstance(endpoint, str)) or not (region is None or isinstance(region, str)):
        raise StateError(f"{path}: endpoint or region has the wrong type")
    state = State(
        lineage=lineage,
        serial=serial,
        fingerprint_key=key,
        tasks=tasks,
        exists=True,
        pending=pending,
        observed=observed,
        endpoint=endpoint,
        region=region,
    )
    if "fingerprint" in doc:
        state.fingerprint_params = check_fingerprint_params(doc["fingerprint"], str(path))
    return state


def _parse_signpost(path: Path, doc: dict[str, Any]) -> State:
    lineage, serial = doc.get("lineage"), doc.get("serial")
    if not (isinstance(lineage, str) and isinstance(serial, int)):
        raise StateError(f"{path}: a signpost without its lineage or serial")
    signpost = Signpost.of_record(doc["signpost"], str(path))
    return State(lineage=lineage, serial=serial, exists=True, signpost=signpost)


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


def read_state_file(path: Path | str) -> State:
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
    if state.signpost is None:
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


# The lock ------------------------------------------------------------------------------


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


class FileStore(StateStore):
    """Exclusive, crash-safe write access to one state file.

    The lock is an OS ``flock`` on ``….lock``: the kernel drops it when the
    holder exits or is killed, so a dead run never blocks the next one.

    ``create`` makes the state's directory (mode 0700) when it is missing.
    After a failed write (see :attr:`write_failure`) the store writes nothing
    more that could leave a file cut short, and closing keeps the journal.
    """

    kind = "file"

    def __init__(
        self,
        path: Path | str = DEFAULT_STATE_PATH,
        *,
        workspace: str = DEFAULT_WORKSPACE,
        lock_timeout_s: float = 0.0,
        command: str = "snapctl",
        create: bool = True,
        must_exist: bool = True,
    ):
        super().__init__(workspace=workspace, lock_timeout_s=lock_timeout_s, command=command, must_exist=must_exist)
        self.base_path = Path(path)
        self.given_path = workspace_path(path, workspace)
        self.path = resolve_path(self.given_path)
        self._create = create
        self._lock_fd: int | None = None
        self._journal_fd: int | None = None
        self._journal_torn = False
        # What this run created, to remove on release when it leaves no state (see _leave_nothing).
        self._made_dirs: list[Path] = []
        self._made_lock = False
        self._had_backup = False

    @property
    def location(self) -> str:
        return str(self.given_path)

    @property
    def where(self) -> str:
        return str(self.base_path)

    @property
    def identity(self) -> str:
        return str(self.path)

    @property
    def reference(self) -> str:
        return f"{resolve_path(self.base_path)} (workspace {self.workspace})"

    def read_stored(self) -> State:
        return read_state_file(self.path)

    def workspaces(self) -> list[str]:
        base = resolve_path(self.base_path)
        names = {DEFAULT_WORKSPACE}
        prefix, suffix = f"{base.stem}.", base.suffix
        for candidate in base.parent.glob(f"{prefix}*{suffix}"):
            name = candidate.name[len(prefix) : len(candidate.name) - len(suffix)]
            if name and (suffix or "." not in name):
                with contextlib.suppress(Exception):
                    names.add(check_workspace(name))
        return sorted(names)

    def workspace_exists(self) -> bool:
        return self.workspace == DEFAULT_WORKSPACE or self.path.is_file()

    def _drop(self) -> None:
        """The document, its journal and backup; the lock file goes when the lock is released."""
        for path in (self.path, journal_path(self.path), backup_path(self.path)):
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise write_error(exc, path, "the workspace is only partly deleted; run the command again") from None
        if self._journal_fd is not None:
            os.close(self._journal_fd)
            self._journal_fd = None
        self._made_lock = True  # removed on release, as no state is left beside it
        _fsync_dir(self.path.parent)

    def _after_open(self) -> None:
        # A state this run removes on release (_leave_nothing) takes only its own backup with it.
        self._had_backup = backup_path(self.path).exists()
        if journal_path(self.path).exists():
            self.checkpoint()

    def _after_signpost(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(backup_path(self.path))
        self._had_backup = False
        _fsync_dir(self.path.parent)

    def _before_close(self) -> None:
        if self._journal_fd is not None:
            if self.write_failure is None:
                self.checkpoint()
            else:  # keep the last good document and the journal: readers replay it
                os.close(self._journal_fd)
                self._journal_fd = None

    # Recording ------------------------------------------------------------------------

    def _journal(self, entries: list[dict[str, Any]]) -> None:
        if self._journal_torn:
            assert self.write_failure is not None
            raise self.write_failure
        lines = b"".join(orjson.dumps(entry) + b"\n" for entry in entries)
        if self._journal_fd is None:
            jpath = journal_path(self.path)
            try:
                self._journal_fd = os.open(jpath, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            except OSError as exc:
                raise self._fail(write_error(exc, jpath, _KEPT)) from None
            self._write_journal(orjson.dumps({"lineage": self.state.lineage, "base_serial": self.state.serial}) + b"\n")
        self._write_journal(lines)

    def _write_journal(self, lines: bytes) -> None:
        """Append whole lines, fsynced; lines cut short by a full disk are cut off again."""
        assert self._journal_fd is not None
        fd = self._journal_fd
        try:
            start = os.lseek(fd, 0, os.SEEK_END)
        except OSError as exc:  # pragma: no cover - lseek on a regular file does not fail
            raise self._fail(write_error(exc, journal_path(self.path), _KEPT)) from None
        try:
            write_all(fd, lines)
            os.fdatasync(fd)
        except OSError as exc:
            try:
                os.ftruncate(fd, start)
            except OSError:
                self._journal_torn = True  # its last line may be partial: append nothing after it
            raise self._fail(write_error(exc, journal_path(self.path), _KEPT)) from None

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
            atomic_write(self.path, encode_document(self.state), _KEPT)
        except WriteError as exc:
            raise self._fail(exc) from None
        self.state.exists = True
        if self._journal_fd is not None:
            os.close(self._journal_fd)
            self._journal_fd = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(journal_path(self.path))
        _fsync_dir(self.path.parent)

    # Locking ----------------------------------------------------------------------------

    def lock_holder(self) -> LockHolder | None:
        return read_lock_holder(self.path)

    def lock_is_held(self) -> bool:
        return lock_is_held(self.path)

    def forget_holder(self) -> bool:
        try:
            lock_path(self.path).unlink()
        except FileNotFoundError:
            return False
        return True

    def _lock(self) -> None:
        self._made_dirs, self._made_lock = [], False
        lpath = lock_path(self.path)
        deadline = time.monotonic() + self._lock_timeout_s
        while True:
            self._make_directory()
            try:
                fd, made = self._open_lock_file(lpath)
            except FileNotFoundError:
                continue  # its creator removed the directory on release (it left no state): make it again
            if not self._take_flock(fd, lpath, deadline):
                continue
            if not _names(lpath, fd):
                # Its creator removed it on release (it left no state) after this run opened it:
                # lock the file that now has that name, or create it.
                os.close(fd)
                continue
            break
        self._made_lock = made
        holder = LockHolder.me(self._command)
        record = {"host": holder.host, "pid": holder.pid, "started_at": holder.started_at, "command": holder.command}
        with contextlib.suppress(OSError):  # the record only names the holder; the flock is the lock
            os.ftruncate(fd, 0)
            os.pwrite(fd, orjson.dumps(record), 0)
        self._lock_fd = fd

    def _make_directory(self) -> None:
        """Create the state's directory (and its missing parents) if ``create``; remember which."""
        directory = self.path.parent
        if directory.is_dir():
            return
        if not self._create or directory.exists():
            raise StateError(f"state directory {directory} does not exist")
        missing = [directory]
        while not missing[-1].parent.exists() and missing[-1].parent != missing[-1]:
            missing.append(missing[-1].parent)
        try:
            os.makedirs(directory, mode=0o700)
        except FileExistsError:
            return  # made by a concurrent run just now: not this run's to remove
        except OSError as exc:
            raise write_error(exc, directory, "cannot create the state directory") from None
        self._made_dirs.extend(missing)

    @staticmethod
    def _open_lock_file(lpath: Path) -> tuple[int, bool]:
        """The lock file, opened, and whether this call created it; FileNotFoundError when its directory is gone."""
        while True:
            try:
                return os.open(lpath, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600), True
            except FileExistsError:
                pass
            except FileNotFoundError:
                raise  # no directory
            except OSError as exc:
                raise write_error(exc, lpath, "cannot create the state's lock file") from None
            try:
                return os.open(lpath, os.O_RDWR), False
            except FileNotFoundError:
                continue  # removed between the two opens: create it
            except OSError as exc:
                raise write_error(exc, lpath, "cannot open the state's lock file") from None

    def _take_flock(self, fd: int, lpath: Path, deadline: float) -> bool:
        """Wait for the flock on ``fd`` until ``deadline``; False when the file was removed meanwhile
        (``fd`` then closed, to open the new one), LockError naming the holder when the time is up."""
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    os.close(fd)
                    raise StateError(f"cannot lock {lpath}: {exc.strerror}") from None
            if not _names(lpath, fd):
                os.close(fd)
                return False
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

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._lock_fd, 0)
            self._leave_nothing(self._lock_fd)
            os.close(self._lock_fd)  # closing drops the flock
            self._lock_fd = None
        made, self._made_dirs = self._made_dirs, []
        for directory in made:  # the deepest first
            try:
                os.rmdir(directory)
            except OSError:  # not empty: something else lives there now
                break

    def _left_no_state(self) -> bool:
        return super()._left_no_state() and self._journal_fd is None

    def _leave_nothing(self, fd: int) -> None:
        """Before the flock on ``fd`` is dropped: remove the state this run created if it holds
        nothing (:meth:`_left_no_state`), and then the lock file if this run created it, so a run
        that wrote no state leaves no file. Only while ``fd`` still is the lock file at its path:
        after a ``force-unlock``, another run may hold a new one there and write its state."""
        lpath = lock_path(self.path)
        if not _names(lpath, fd):
            return
        if self._left_no_state():
            removed = [self.path, journal_path(self.path)]
            if not self._had_backup:
                removed.append(backup_path(self.path))
            for path in removed:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            self.state.exists = False
        if self._made_lock and not self.path.exists() and not journal_path(self.path).exists():
            with contextlib.suppress(OSError):
                os.unlink(lpath)
        self._made_lock = False


def _names(path: Path, fd: int) -> bool:
    """Whether ``path`` still names the file open as ``fd``."""
    try:
        named = os.stat(path)
    except OSError:
        return False
    opened = os.fstat(fd)
    return (named.st_ino, named.st_dev) == (opened.st_ino, opened.st_dev)
