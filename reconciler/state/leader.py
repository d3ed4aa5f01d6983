"""Which ``reconcile --watch`` leads a state (one controller acts; the others stand by).

Separate from the state's write lock, which every writer takes briefly:

- **File state**: an ``flock`` on ``<state>.controller`` held for the controller's
  life, with its holder's record in the file. The kernel drops it when the
  process dies. A second controller on the same file is refused, the holder named.
- **PostgreSQL**: a session advisory lock of its own (``pg_try_advisory_lock``
  in a key space beside the write lock's, keyed by the workspace's own number in
  ``snapctl.lock_keys``, so that no two workspaces share it), on a dedicated connection with TCP
  keepalives on both ends. When the leader dies or its connection is cut the
  server drops the lock and a standby takes it; a leader that cannot reach its
  connection any more stops leading at once. Who leads is the session holding
  the lock, named by its ``application_name``.
"""

from __future__ import annotations

import abc
import contextlib
import fcntl
import os
from pathlib import Path
from typing import Any

import orjson

from ..errors import StateError
from .backend import LockHolder, StateStore
from .file import FileStore, resolve_path
from .postgres import CONNECT_TIMEOUT_S, LOCK_SPACE, PostgresStore, _psycopg

#: The advisory lock key space of leadership (the write lock's is LOCK_SPACE).
LEADER_SPACE = LOCK_SPACE + 1
#: Keepalives of the leader's connection: a cut connection is noticed within about 10 s on both ends.
KEEPALIVE = {"idle": 4, "interval": 2, "count": 3}
_APP_PREFIX = "snapctl-leader"


class Leadership(abc.ABC):
    """One controller's claim to lead a state."""

    command = "snapctl reconcile --watch"

    #: Standbys are possible (PostgreSQL); a file state refuses a second controller instead.
    standby = False

    @abc.abstractmethod
    def try_lead(self) -> bool:
        """Take the lead if nobody holds it; True when this controller leads (now or already)."""

    @abc.abstractmethod
    def still_leading(self) -> bool:
        """Whether the lead is still held (False once its connection is lost; the lead is then dropped)."""

    @abc.abstractmethod
    def release(self) -> None:
        """Give up the lead; never raises."""

    @abc.abstractmethod
    def leader(self) -> LockHolder | None:
        """Who leads now (None: nobody)."""


class FileLeadership(Leadership):
    def __init__(self, store: FileStore):
        self.path = Path(str(resolve_path(store.path)) + ".controller")
        self._fd: int | None = None

    def try_lead(self) -> bool:
        if self._fd is not None:
            return True
        try:
            # A new state's directory, made as its first write makes it (mode 0700): the controller
            # leads before it writes anything, and never would in a fresh project otherwise.
            os.makedirs(self.path.parent, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise StateError(f"cannot create the state directory {self.path.parent}: {exc.strerror}") from None
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StateError(f"cannot open {self.path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        me = LockHolder.me(self.command)
        record = {"host": me.host, "pid": me.pid, "started_at": me.started_at, "command": me.command}
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, orjson.dumps(record), 0)
        self._fd = fd
        return True

    def still_leading(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None

    def leader(self) -> LockHolder | None:
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:  # held: read who holds it
                with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                    info = orjson.loads(os.pread(fd, 4096, 0))
                    return LockHolder(info["host"], int(info["pid"]), info["started_at"], info["command"])
                return LockHolder("?", 0, "?", "another controller")
            return None  # nobody holds it
        finally:
            os.close(fd)


class PostgresLeadership(Leadership):
    standby = True

    def __init__(self, store: PostgresStore):
        self.store = store
        self._conn: Any = None
        self._leading = False
        self._number: int | None = None

    def _key(self, conn: Any) -> tuple[int, int]:
        """The workspace's number in snapctl.lock_keys (given one on first use), as the write
        lock's: a hash of its name would let two workspaces block each other's controllers."""
        if self._number is None:
            self.store._ensure_schema(conn)  # the table of keys is schema version 2's
            self._number = self.store._lock_key(conn, create=True)
        assert self._number is not None
        return LEADER_SPACE, self._number

    def _connect(self) -> Any:
        psycopg = _psycopg()
        me = LockHolder.me(self.command)
        name = f"{_APP_PREFIX} {me.started_at} {me.pid} {me.host}"[:63]
        try:
            conn = psycopg.connect(
                self.store.url,
                autocommit=True,
                connect_timeout=CONNECT_TIMEOUT_S,
                application_name=name,
                keepalives=1,
                keepalives_idle=KEEPALIVE["idle"],
                keepalives_interval=KEEPALIVE["interval"],
                keepalives_count=KEEPALIVE["count"],
                tcp_user_timeout=(KEEPALIVE["idle"] + KEEPALIVE["interval"] * KEEPALIVE["count"]) * 1000,
            )
            # The server's side: a client gone without closing (cut, frozen) releases the lock as soon.
            conn.execute(f"SET tcp_keepalives_idle = {KEEPALIVE['idle']}")
            conn.execute(f"SET tcp_keepalives_interval = {KEEPALIVE['interval']}")
            conn.execute(f"SET tcp_keepalives_count = {KEEPALIVE['count']}")
            conn.execute("SET statement_timeout = '5s'")
        except psycopg.Error as exc:
            raise StateError(
                f"cannot connect to the state database {self.store.masked}: {self.store._reason(exc)}"
            ) from None
        return conn

    def try_lead(self) -> bool:
        if self._leading and self.still_leading():
            return True
        psycopg = _psycopg()
        try:
            if self._conn is None or self._conn.closed:
                self._conn = self._connect()
            key = self._key(self._conn)
            self._leading = bool(self._conn.execute("SELECT pg_try_advisory_lock(%s, %s)", key).fetchone()[0])
        except psycopg.Error as exc:
            self._drop()
            raise StateError(
                f"cannot reach the state database {self.store.masked}: {self.store._reason(exc)}"
            ) from None
        return self._leading

    def still_leading(self) -> bool:
        if not self._leading or self._conn is None:
            return False
        try:
            self._conn.execute("SELECT 1").fetchone()
        except Exception:
            self._drop()
            return False
        return True

    def _drop(self) -> None:
        conn, self._conn, self._leading = self._conn, None, False
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def release(self) -> None:
        if self._conn is not None and self._leading:
            with contextlib.suppress(Exception):
                self._conn.execute("SELECT pg_advisory_unlock(%s, %s)", self._key(self._conn))
        self._drop()

    def leader(self) -> LockHolder | None:
        with self.store._reading("leader", f"cannot read the controller lock of {self.store.location}") as conn:
            keyed = conn.execute("SELECT to_regclass('snapctl.lock_keys')").fetchone()[0] is not None
            number = self.store._lock_key(conn, create=False) if keyed else None
            if number is None:  # never given a key: no controller has led this workspace
                return None
            space, key = LEADER_SPACE, number
            row = conn.execute(
                "SELECT a.application_name, a.client_hostname, host(a.client_addr) FROM pg_locks l "
                "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted "
                "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
                "AND l.classid = %s::oid AND l.objid = %s::oid AND l.objsubid = 2",
                (space, key & 0xFFFFFFFF),
            ).fetchone()
        if row is None:
            return None
        return _holder_of(row[0] or "")


def _holder_of(application_name: str) -> LockHolder:
    parts = application_name.split(" ", 3)
    if len(parts) == 4 and parts[0] == _APP_PREFIX and parts[2].isdigit():
        return LockHolder(parts[3], int(parts[2]), parts[1], Leadership.command)
    return LockHolder("?", 0, "?", application_name or "another controller")


def leadership_for(store: StateStore) -> Leadership:
    if isinstance(store, PostgresStore):
        return PostgresLeadership(store)
    if isinstance(store, FileStore):
        return FileLeadership(store)
    raise TypeError(f"no leadership for a {type(store).__name__}")


def current_leader(store: StateStore) -> LockHolder | None:
    """Who leads ``store``'s controllers now (``status``, ``state list``)."""
    return leadership_for(store).leader()
