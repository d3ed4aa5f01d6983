"""The state in PostgreSQL: shared by a team and by ephemeral CI runners.

Schema ``snapctl`` (created on first write, versioned in ``snapctl.schema_version``):

- ``workspaces``: one row per state: lineage, serial, fingerprint key and
  parameters, the endpoint and region it is bound to;
- ``tasks``: one row per task address: its recorded ``entry``, the ``pending``
  intent of a call not settled yet, and what a refresh last ``observed`` (each
  may be NULL), so a call rewrites one row, never the whole state;
- ``locks``: who holds each workspace's lock (host, pid, command, start time),
  readable by every client;
- ``lock_keys``: each workspace's lock key, a number of its own (version 2).

Every record is a statement that also moves the workspace's serial on (and
checks it), committed before the API call (intent) and after it (put/delete):
a process killed at any moment loses nothing. Records that concurrent calls
make at the same moment share one transaction (group commit), so durability
costs one commit per group, not one per record. The lock is a
session-level advisory lock (snapctl's ``LOCK_SPACE`` and the workspace's
number: no two workspaces share one) on the same connection as the writes: the server
releases it when the holder's connection ends (a killed runner never blocks
the next), and no write can happen without it. A connection lost during an
apply makes every later record fail: the apply stops starting calls.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import orjson

from ..errors import LockError, StateError, WriteError
from .backend import DEFAULT_WORKSPACE, HOLDER_RECORD_WAIT_S, LockHolder, StateStore
from .model import (
    FORMAT_VERSION,
    SIGNPOST_FORMAT_VERSION,
    Signpost,
    State,
    TaskTable,
    check_fingerprint_params,
    check_records,
)
from .pgurl import SECRET_PARAMETERS, _quoted, masked_url, parse_database_url
from .pgurl import is_database_url as is_database_url  # re-exported: imported from here
from .pgurl import redact as redact  # re-exported: imported from here

SCHEMA_VERSION = 2
#: First key of the two-key advisory locks: the space of snapctl's locks ("snap"). The second
#: is a workspace's number in ``snapctl.lock_keys`` (0: the lock that creates and migrates the schema).
LOCK_SPACE = 0x736E6170
CONNECT_TIMEOUT_S = 10
#: What a failed write adds: what the next run does with what was recorded.
_KEPT = (
    "nothing more was sent; every call recorded before stays in the state (a call in flight "
    "stays pending). Run the command again when the database is back"
)

_MIGRATIONS: dict[int, list[str]] = {
    1: [
        """CREATE TABLE snapctl.workspaces (
            name text PRIMARY KEY,
            lineage text NOT NULL,
            serial bigint NOT NULL,
            format_version int NOT NULL,
            fingerprint_key text NOT NULL,
            fingerprint_params jsonb NOT NULL,
            endpoint text,
            region text,
            snapctl_version text NOT NULL,
            updated_at timestamptz NOT NULL DEFAULT now()
        )""",
        """CREATE TABLE snapctl.tasks (
            workspace text NOT NULL REFERENCES snapctl.workspaces (name) ON DELETE CASCADE,
            address text NOT NULL,
            entry jsonb,
            pending jsonb,
            observed jsonb,
            PRIMARY KEY (workspace, address)
        )""",
        """CREATE TABLE snapctl.locks (
            workspace text PRIMARY KEY,
            host text NOT NULL,
            pid int NOT NULL,
            command text NOT NULL,
            started_at timestamptz NOT NULL
        )""",
    ],
    # Each workspace's lock key: a number of its own, kept for good (a workspace deleted and
    # made again keeps it), so that no two workspaces share a lock (a 32-bit hash of the
    # name did: w29009 and w116065). Identity values start at 1; 0 is the schema's lock.
    2: [
        """CREATE TABLE snapctl.lock_keys (
            workspace text PRIMARY KEY,
            key integer GENERATED ALWAYS AS IDENTITY (START WITH 1) UNIQUE
        )""",
    ],
}


def legacy_lock_key(workspace: str) -> int:
    """The second key of a workspace's advisory lock in schema version 1 (a 32-bit hash of its
    name, which two names can share): only to see whether a snapctl before 0.3 holds it."""
    return int.from_bytes(hashlib.sha256(workspace.encode()).digest()[:4], "big", signed=True)


def _psycopg():
    try:
        import psycopg
    except ImportError as exc:  # pragma: no cover - a dependency; only a broken install lacks it
        raise StateError(f"a postgresql:// state needs psycopg ({exc}); reinstall snapctl-rtc") from None
    return psycopg


class _Rollback(Exception):
    """Leaves a transaction without committing it."""


class PostgresStore(StateStore):
    """One workspace of a state database (``postgresql://`` URL, libpq syntax)."""

    kind = "postgresql"

    def __init__(
        self,
        url: str,
        *,
        workspace: str = DEFAULT_WORKSPACE,
        lock_timeout_s: float = 0.0,
        command: str = "snapctl",
        must_exist: bool = True,
    ):
        super().__init__(workspace=workspace, lock_timeout_s=lock_timeout_s, command=command, must_exist=must_exist)
        #: The URL as given: only ever handed to libpq, never shown (see :attr:`masked`).
        self.url = url
        self._params = parse_database_url(url)
        #: The URL with its secrets masked, rebuilt from what libpq reads.
        self.masked = masked_url(self._params)
        self._conn: Any = None
        self._holder: LockHolder | None = None
        #: The lock key this store holds (see _lock_key).
        self._key: int | None = None
        #: (host, port, database) as libpq reached them (see :attr:`identity`).
        self._server: tuple[str, str, str] | None = None
        given = [self._params.get(key, "") for key in SECRET_PARAMETERS] + [os.environ.get("PGPASSWORD", "")]
        # Each secret as libpq reads it and as it may be written in the URL (percent-encoded), longest first.
        self._secrets = sorted(
            {form for secret in given if secret for form in (secret, quote(secret, safe=""), quote(secret))},
            key=len,
            reverse=True,
        )

    @property
    def location(self) -> str:
        return f"{self.masked} (workspace {self.workspace})"

    @property
    def where(self) -> str:
        return self.masked

    @property
    def described(self) -> str:
        return self.location  # names its workspace already

    @property
    def identity(self) -> str:
        """The database as libpq reached it (host, port and database name, whatever supplied them:
        the URL, PGHOST and the like, a service file) and the workspace; never a user or password.
        Connects once if this store has not yet."""
        if self._server is None:
            with self._reading("identity", f"cannot read {self.location}"):
                pass
        assert self._server is not None
        host, port, dbname = self._server
        shown = f"[{host}]" if ":" in host else _quoted(host, "/")
        return f"postgresql://{shown}:{_quoted(port)}/{_quoted(dbname)} (workspace {self.workspace})"

    # Connections and errors -------------------------------------------------------------

    def _reason(self, exc: BaseException) -> str:
        """One line from a driver error, with no password in it and no control character."""
        text = str(exc).replace(self.url, self.masked)
        for secret in self._secrets:
            text = text.replace(secret, "***")
        text = " ".join(text.split()) or type(exc).__name__
        return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)

    def _connect(self, purpose: str):
        psycopg = _psycopg()
        try:
            conn = psycopg.connect(
                self.url,
                autocommit=True,
                connect_timeout=CONNECT_TIMEOUT_S,
                application_name=f"{self._command} ({purpose})"[:63],
            )
        except psycopg.Error as exc:
            raise StateError(f"cannot connect to the state database {self.masked}: {self._reason(exc)}") from None
        self._server = (conn.info.host, str(conn.info.port), conn.info.dbname)
        return conn

    def _lost(self, exc: BaseException) -> WriteError:
        return self._fail(
            WriteError(f"lost the state database {self.location}: {self._reason(exc)}; {_KEPT}", path=self.masked)
        )

    # Schema ----------------------------------------------------------------------------------

    def _schema_version(self, conn) -> int:
        """0 when there is no snapctl schema yet; StateError when its version was deleted."""
        if conn.execute("SELECT to_regclass('snapctl.schema_version')").fetchone()[0] is None:
            return 0
        version = conn.execute("SELECT max(version) FROM snapctl.schema_version").fetchone()[0]
        if version is None:  # the table is made and filled in one transaction: never seen empty
            raise StateError(
                f"the state database {self.masked} is damaged: snapctl.schema_version holds no row, "
                "though the snapctl schema is there; nothing was read or changed. Restore the database "
                "from a backup (or put back the row of its version)"
            )
        return version

    def _check_version(self, version: int) -> None:
        if version > SCHEMA_VERSION:
            raise StateError(
                f"the state database {self.masked} has snapctl schema version {version}; this snapctl "
                f"knows version {SCHEMA_VERSION}. Upgrade snapctl"
            )

    def _ensure_schema(self, conn) -> None:
        """Create or migrate the schema, one client at a time."""
        from .. import __version__

        version = self._schema_version(conn)
        self._check_version(version)
        if version == SCHEMA_VERSION:
            return
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s, 0)", (LOCK_SPACE,))
            conn.execute("CREATE SCHEMA IF NOT EXISTS snapctl")
            made = conn.execute("SELECT to_regclass('snapctl.schema_version')").fetchone()[0] is None
            conn.execute(
                "CREATE TABLE IF NOT EXISTS snapctl.schema_version (version int PRIMARY KEY, "
                "snapctl_version text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            version = 0 if made else self._schema_version(conn)
            self._check_version(version)
            for step in range(version + 1, SCHEMA_VERSION + 1):
                for statement in _MIGRATIONS[step]:
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO snapctl.schema_version (version, snapctl_version) VALUES (%s, %s)",
                    (step, __version__),
                )

    # Reading ------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _reading(self, purpose: str, failure: str) -> Iterator[Any]:
        """The held connection, else one opened for ``purpose`` and closed after;
        a database error becomes one StateError line starting with ``failure``."""
        psycopg = _psycopg()
        conn = self._conn or self._connect(purpose)
        try:
            yield conn
        except psycopg.Error as exc:
            raise StateError(f"{failure}: {self._reason(exc)}") from None
        finally:
            if conn is not self._conn:
                conn.close()

    def read_stored(self) -> State:
        with self._reading("read", f"cannot read the state {self.location}") as conn:
            return self._read(conn)

    def _read(self, conn) -> State:
        version = self._schema_version(conn)
        self._check_version(version)
        if version == 0:
            return State.new()
        # One snapshot for the header and the tasks, whatever a writer commits meanwhile.
        conn.isolation_level = _psycopg().IsolationLevel.REPEATABLE_READ
        try:
            with conn.transaction():
                row = conn.execute(
                    "SELECT lineage, serial, format_version, fingerprint_key, fingerprint_params, endpoint, region "
                    "FROM snapctl.workspaces WHERE name = %s",
                    (self.workspace,),
                ).fetchone()
                if row is None:
                    return State.new()
                lineage, serial, format_version, key, params, endpoint, region = row
                if format_version == SIGNPOST_FORMAT_VERSION and isinstance(params, dict) and "signpost" in params:
                    # A signpost keeps its record in the header's one free-form column: a schema
                    # change would lock every earlier snapctl out of every workspace.
                    signpost = Signpost.of_record(params["signpost"], self.location)
                    return State(lineage=lineage, serial=serial, exists=True, signpost=signpost)
                if format_version > FORMAT_VERSION:
                    raise StateError(
                        f"{self.location}: written in state format {format_version}; this snapctl reads "
                        f"format {FORMAT_VERSION}. Upgrade snapctl"
                    )
                entries: dict[str, str] = {}
                pending: dict[str, dict[str, Any]] = {}
                observed: dict[str, dict[str, Any]] = {}
                with conn.cursor(name="snapctl_tasks") as cur:
                    cur.itersize = 2000
                    cur.execute(
                        "SELECT address, entry::text, pending::text, observed::text FROM snapctl.tasks "
                        "WHERE workspace = %s",
                        (self.workspace,),
                    )
                    for address, entry, intent, seen in cur:
                        if entry is not None:
                            entries[address] = entry
                        if intent is not None:
                            pending[address] = self._decode(address, intent, "pending call")
                        if seen is not None:
                            observed[address] = self._decode(address, seen, "observation")
        finally:
            conn.isolation_level = None
        check_records(pending, observed, self.location)
        return State(
            lineage=lineage,
            serial=serial,
            fingerprint_key=key,
            fingerprint_params=check_fingerprint_params(params, self.location),
            tasks=TaskTable(entries, source=self.location),
            exists=True,
            pending=pending,
            observed=observed,
            endpoint=endpoint,
            region=region,
        )

    def _decode(self, address: str, text: str, kind: str) -> Any:
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:  # jsonb is valid JSON: a number orjson cannot hold (over 64 bits)
            raise StateError(
                f"{self.location}: the {kind} of task {address!r} is not one snapctl writes (a number out of "
                "range); nothing was changed. Restore the state from a backup"
            ) from None

    def workspaces(self) -> list[str]:
        with self._reading("list", f"cannot read {self.masked}") as conn:
            if self._schema_version(conn) == 0:
                return [DEFAULT_WORKSPACE]
            names = {r[0] for r in conn.execute("SELECT name FROM snapctl.workspaces")}
            return sorted(names | {DEFAULT_WORKSPACE})

    def workspace_exists(self) -> bool:
        if self.workspace == DEFAULT_WORKSPACE:
            return True
        with self._reading("workspace", f"cannot read {self.masked}") as conn:
            if self._schema_version(conn) == 0:
                return False
            query = "SELECT count(*) FROM snapctl.workspaces WHERE name = %s"
            return bool(conn.execute(query, (self.workspace,)).fetchone()[0])

    def _drop(self) -> None:
        """The workspace's row (its tasks go with it: ON DELETE CASCADE); the lock's row on release."""
        self._execute_write(
            lambda conn: conn.execute("DELETE FROM snapctl.workspaces WHERE name = %s", (self.workspace,))
        )

    # Locking ---------------------------------------------------------------------------------------

    def lock_holder(self) -> LockHolder | None:
        with self._reading("lock holder", f"cannot read the lock of {self.location}") as conn:
            return self._holder_record(conn)

    def _holder_record(self, conn) -> LockHolder | None:
        if conn.execute("SELECT to_regclass('snapctl.locks')").fetchone()[0] is None:
            return None
        row = conn.execute(
            "SELECT host, pid, command, started_at FROM snapctl.locks WHERE workspace = %s", (self.workspace,)
        ).fetchone()
        if row is None:
            return None
        return LockHolder(row[0], row[1], row[3].isoformat(timespec="seconds"), row[2])

    def _lock_key(self, conn, *, create: bool) -> int | None:
        """The workspace's lock key (its number in snapctl.lock_keys), given one on first use
        with ``create``; None when it has none yet."""
        row = conn.execute("SELECT key FROM snapctl.lock_keys WHERE workspace = %s", (self.workspace,)).fetchone()
        if row is None and create:
            row = conn.execute(
                "INSERT INTO snapctl.lock_keys (workspace) VALUES (%s) ON CONFLICT (workspace) "
                "DO UPDATE SET workspace = EXCLUDED.workspace RETURNING key",
                (self.workspace,),
            ).fetchone()
        return None if row is None else row[0]

    def lock_is_held(self) -> bool:
        """True while some session holds the workspace's advisory lock."""
        with self._reading("lock check", f"cannot read the lock of {self.location}") as conn:
            version = self._schema_version(conn)
            if version == 0:
                return False
            # A snapctl of schema version 1 holds the hashed key: one may still run during an upgrade.
            keys = [legacy_lock_key(self.workspace)]
            if version >= 2:
                keys.append(self._lock_key(conn, create=False) or 0)
            return bool(
                conn.execute(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
                    "AND classid = %s::oid AND objid = ANY(%s::oid[]) AND objsubid = 2",
                    (LOCK_SPACE, [key & 0xFFFFFFFF for key in keys if key]),
                ).fetchone()[0]
            )

    def forget_holder(self) -> bool:
        with self._reading("force-unlock", f"cannot remove the lock record of {self.location}") as conn:
            if conn.execute("SELECT to_regclass('snapctl.locks')").fetchone()[0] is None:
                return False
            return conn.execute("DELETE FROM snapctl.locks WHERE workspace = %s", (self.workspace,)).rowcount > 0

    def _lock(self) -> None:
        psycopg = _psycopg()
        conn = self._connect("lock")
        try:
            self._ensure_schema(conn)
            key = self._lock_key(conn, create=True)
            deadline = time.monotonic() + self._lock_timeout_s
            while not conn.execute("SELECT pg_try_advisory_lock(%s, %s)", (LOCK_SPACE, key)).fetchone()[0]:
                now = time.monotonic()
                if now >= deadline:
                    holder = self._holder_record(conn)
                    if (holder is None or not holder.may_be_alive()) and now < deadline + HOLDER_RECORD_WAIT_S:
                        time.sleep(0.02)  # the holder took the lock and has not written its record yet
                        continue
                    who = holder.describe() if holder else "another client"
                    waited = f" after waiting {self._lock_timeout_s:g}s" if self._lock_timeout_s else ""
                    raise LockError(
                        f"state {self.location} is locked by {who}{waited}. Wait for it to finish, "
                        "or pass --lock-timeout SECONDS to wait"
                    )
                time.sleep(0.05)
            holder = LockHolder.me(self._command)
            conn.execute(
                "INSERT INTO snapctl.locks (workspace, host, pid, command, started_at) VALUES (%s, %s, %s, %s, %s) "
                "ON CONFLICT (workspace) DO UPDATE SET host = EXCLUDED.host, pid = EXCLUDED.pid, "
                "command = EXCLUDED.command, started_at = EXCLUDED.started_at",
                (self.workspace, holder.host, holder.pid, holder.command, holder.started_at),
            )
        except psycopg.Error as exc:
            conn.close()
            raise StateError(f"cannot lock the state {self.location}: {self._reason(exc)}") from None
        except BaseException:
            conn.close()
            raise
        self._conn, self._holder, self._key = conn, holder, key

    def _unlock(self) -> None:
        conn, holder, self._conn, self._holder = self._conn, self._holder, None, None
        if conn is None:
            return
        try:
            if not conn.closed and holder is not None:
                if self._left_no_state():
                    # Still under the lock: no other writer can have made this workspace meanwhile.
                    # (Its rows of tasks, withdrawn intents at most, go with it: ON DELETE CASCADE.)
                    conn.execute(
                        "DELETE FROM snapctl.workspaces WHERE name = %s AND lineage = %s",
                        (self.workspace, self.state.lineage),
                    )
                    self.state.exists = False
                conn.execute(
                    "DELETE FROM snapctl.locks WHERE workspace = %s AND host = %s AND pid = %s",
                    (self.workspace, holder.host, holder.pid),
                )
                conn.execute("SELECT pg_advisory_unlock(%s, %s)", (LOCK_SPACE, self._key))
        except Exception:  # the connection is gone: the server released the lock with it
            pass
        finally:
            conn.close()

    # Writing ------------------------------------------------------------------------------------------

    def _journal(self, entries: list[dict[str, Any]]) -> None:
        """One transaction for the group: each statement checks and moves the serial on."""
        psycopg = _psycopg()
        if self._conn is None:
            raise RuntimeError("state store is not open")
        statements = [self._statement(entry) for entry in entries]
        stale: int | None = None
        try:
            # Pipelined: the statements go out together and their answers come back together,
            # so a group costs about two round trips to the server whatever its size.
            with self._conn.pipeline(), self._conn.transaction():
                cursors = [self._conn.execute(sql, params) for sql, params in statements]
                for cursor, entry in zip(cursors, entries):
                    if cursor.fetchone()[0] != 1:
                        stale = entry["serial"] - 1
                        raise _Rollback
        except _Rollback:
            pass
        except psycopg.Error as exc:
            raise self._lost(exc) from None
        if stale is not None:
            raise self._fail(
                WriteError(
                    f"the state {self.location} is no longer at serial {stale}: another writer changed it "
                    f"while this run held the lock. {_KEPT}",
                    path=self.masked,
                )
            )

    def _statement(self, entry: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """The statement that records ``entry`` if the workspace is still at the serial before it."""
        op, address, serial = entry["op"], entry["address"], entry["serial"]
        # The workspace's serial moves on only from the one this store read: the same
        # statement checks it, so a write can never land on a state that moved.
        moved = (
            "WITH ws AS (UPDATE snapctl.workspaces SET serial = %(serial)s, updated_at = now() "
            "WHERE name = %(ws)s AND serial = %(serial)s - 1 RETURNING name)"
        )
        params: dict[str, Any] = {"serial": serial, "ws": self.workspace, "address": address}

        def upsert(entry_sql: str, pending_sql: str, updated: str) -> str:
            """Write the task's row (``entry`` and ``pending`` as given), setting ``updated`` on a conflict."""
            return (
                f"{moved}, t AS (INSERT INTO snapctl.tasks (workspace, address, entry, pending) "
                f"SELECT name, %(address)s, {entry_sql}, {pending_sql} FROM ws ON CONFLICT (workspace, address) "
                f"DO UPDATE SET {updated}) SELECT count(*) FROM ws"
            )

        if op == "put":
            params["entry"] = orjson.dumps(entry["entry"]).decode()
            sql = upsert("%(entry)s::jsonb", "NULL", "entry = EXCLUDED.entry, pending = NULL")
        elif op == "delete":
            sql = (
                f"{moved}, t AS (DELETE FROM snapctl.tasks USING ws WHERE workspace = ws.name "
                "AND address = %(address)s) SELECT count(*) FROM ws"
            )
        elif op == "intent" and entry.get("intent") is not None:
            params["pending"] = orjson.dumps(entry["intent"]).decode()
            sql = upsert("NULL", "%(pending)s::jsonb", "pending = EXCLUDED.pending")
        elif op == "intent":
            sql = (
                f"{moved}, gone AS (DELETE FROM snapctl.tasks USING ws WHERE workspace = ws.name "
                "AND address = %(address)s AND entry IS NULL AND observed IS NULL), "
                "kept AS (UPDATE snapctl.tasks SET pending = NULL FROM ws WHERE workspace = ws.name "
                "AND address = %(address)s AND (entry IS NOT NULL OR observed IS NOT NULL)) SELECT count(*) FROM ws"
            )
        elif op == "observe":
            params["observed"] = orjson.dumps(entry["observed"]).decode()
            sql = (
                f"{moved}, t AS (INSERT INTO snapctl.tasks (workspace, address, entry, pending, observed) "
                "SELECT ws.name, o.key, NULL, NULL, nullif(o.value, 'null'::jsonb) "
                "FROM ws, jsonb_each(%(observed)s::jsonb) AS o ON CONFLICT (workspace, address) "
                "DO UPDATE SET observed = EXCLUDED.observed) SELECT count(*) FROM ws"
            )
        else:
            raise StateError(f"unknown state record {op!r}")
        return sql, params

    def _header_params(self) -> dict[str, Any]:
        from .. import __version__

        s = self.state
        # A signpost (format 3): its record in fingerprint_params, no key (see _read).
        signpost = s.signpost
        return {
            "ws": self.workspace,
            "lineage": s.lineage,
            "serial": s.serial,
            "format": FORMAT_VERSION if signpost is None else SIGNPOST_FORMAT_VERSION,
            "key": s.fingerprint_key if signpost is None else "",
            "params": orjson.dumps(
                s.fingerprint_params if signpost is None else {"signpost": signpost.record()}
            ).decode(),
            "endpoint": s.endpoint,
            "region": s.region,
            "version": __version__,
        }

    def write_header(self) -> None:
        """Write the workspace row only (the tasks are already recorded row by row)."""
        if not self.state.exists:
            self.checkpoint()
            return
        self._execute_write(
            lambda conn: conn.execute(
                "UPDATE snapctl.workspaces SET serial = %(serial)s, fingerprint_params = %(params)s::jsonb, "
                "endpoint = %(endpoint)s, region = %(region)s, format_version = %(format)s, "
                "snapctl_version = %(version)s, updated_at = now() WHERE name = %(ws)s",
                self._header_params(),
            )
        )

    def checkpoint(self) -> None:
        """Write the whole state in one transaction (new workspace, ``state rm``, migrate, rebind)."""

        def write(conn) -> None:
            with conn.transaction():
                conn.execute(
                    "INSERT INTO snapctl.workspaces (name, lineage, serial, format_version, fingerprint_key, "
                    "fingerprint_params, endpoint, region, snapctl_version) VALUES (%(ws)s, %(lineage)s, "
                    "%(serial)s, %(format)s, %(key)s, %(params)s::jsonb, %(endpoint)s, %(region)s, %(version)s) "
                    "ON CONFLICT (name) DO UPDATE SET lineage = EXCLUDED.lineage, serial = EXCLUDED.serial, "
                    "format_version = EXCLUDED.format_version, fingerprint_key = EXCLUDED.fingerprint_key, "
                    "fingerprint_params = EXCLUDED.fingerprint_params, endpoint = EXCLUDED.endpoint, "
                    "region = EXCLUDED.region, snapctl_version = EXCLUDED.snapctl_version, updated_at = now()",
                    self._header_params(),
                )
                conn.execute("DELETE FROM snapctl.tasks WHERE workspace = %s", (self.workspace,))
                tasks, pending, observed = self.state.tasks, self.state.pending, self.state.observed
                raw = tasks.raw if isinstance(tasks, TaskTable) else (lambda a: orjson.dumps(tasks[a]))

                def text(value: Any) -> str | None:
                    return None if value is None else orjson.dumps(value).decode()

                columns = "workspace, address, entry, pending, observed"
                with conn.cursor().copy(f"COPY snapctl.tasks ({columns}) FROM STDIN") as copy:
                    row: tuple[str | None, str | None, str | None]
                    for address in tasks:
                        row = (raw(address).decode(), text(pending.get(address)), text(observed.get(address)))
                        copy.write_row((self.workspace, address, *row))
                    for address in (pending.keys() | observed.keys()) - set(tasks):
                        row = (None, text(pending.get(address)), text(observed.get(address)))
                        copy.write_row((self.workspace, address, *row))

        self._execute_write(write)
        self.state.exists = True

    def _execute_write(self, write) -> None:
        psycopg = _psycopg()
        if self._conn is None:
            raise RuntimeError("state store is not open")
        if self.write_failure is not None:
            raise self.write_failure
        try:
            write(self._conn)
        except psycopg.Error as exc:
            raise self._lost(exc) from None
