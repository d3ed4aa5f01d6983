"""The state: what snapctl last applied successfully, per task address.

One protocol (:class:`StateStore`, in ``backend``), two backends: a file
(``file``, the embedded default) and PostgreSQL (``postgres``, for teams and
ephemeral CI runners; its URL read and shown masked by ``pgurl``). ``--state``
chooses by its form: a path, or a ``postgresql://`` / ``postgres://`` URL;
``--workspace`` one of several states in one place. Callers use
:func:`store_for` and :func:`read_state` and never need to know which backend
they got.
"""

from __future__ import annotations

from pathlib import Path

from .backend import (
    DEFAULT_WORKSPACE,
    LockHolder,
    StateStore,
    check_binding,
    check_workspace,
    missing_workspace,
)
from .file import (
    DEFAULT_STATE_PATH,
    FileStore,
    atomic_write,
    backup_path,
    encode_document,
    journal_path,
    lock_is_held,
    lock_path,
    read_lock_holder,
    resolve_path,
)
from .model import (
    DEFAULT_FINGERPRINT_PARAMS,
    FINGERPRINT_PREFIX,
    FORMAT_VERSION,
    LEGACY_FINGERPRINT_PREFIX,
    SECRET_FIELDS,
    SECRET_PARENTS,
    SIGNPOST_FORMAT_VERSION,
    Signpost,
    State,
    TaskTable,
    has_legacy_fingerprints,
    is_fingerprint,
    secret_holders,
)
from .pgurl import is_database_url, redact
from .postgres import PostgresStore


def state_location(value: str | Path | None) -> Path | str:
    """``--state``'s value as a backend location: a database URL stays a string, anything else is a path."""
    if value is None or value == "":
        return DEFAULT_STATE_PATH
    if isinstance(value, str) and is_database_url(value):
        return value
    if isinstance(value, str) and "://" in value:
        from ..errors import UsageError

        scheme = value.split("://", 1)[0]
        raise UsageError(f"--state: unknown kind of state {scheme}://; give a file path or a postgresql:// URL")
    return Path(value)


def store_for(
    location: str | Path | None = None,
    *,
    workspace: str = DEFAULT_WORKSPACE,
    lock_timeout_s: float = 0.0,
    command: str = "snapctl",
    create: bool = True,
    must_exist: bool = True,
) -> StateStore:
    """The store of ``location``'s backend (not open yet: use it as a context manager).
    ``create``: a file state's missing directory is made (not for ``state rm``);
    ``must_exist``: opening refuses a workspace that does not exist (see StateStore)."""
    where = state_location(location)
    if isinstance(where, str):
        return PostgresStore(
            where, workspace=workspace, lock_timeout_s=lock_timeout_s, command=command, must_exist=must_exist
        )
    return FileStore(
        where, workspace=workspace, lock_timeout_s=lock_timeout_s, command=command, create=create, must_exist=must_exist
    )


#: ``with open_store(location, workspace=..., lock_timeout_s=..., command=...) as store``.
open_store = store_for


def read_state(location: str | Path | None = None, workspace: str = DEFAULT_WORKSPACE) -> State:
    """The state as of every completed call, without taking the lock (a new empty one if there is none)."""
    return store_for(location, workspace=workspace).read()


__all__ = [
    "DEFAULT_FINGERPRINT_PARAMS",
    "DEFAULT_STATE_PATH",
    "DEFAULT_WORKSPACE",
    "FINGERPRINT_PREFIX",
    "FORMAT_VERSION",
    "LEGACY_FINGERPRINT_PREFIX",
    "SECRET_FIELDS",
    "SECRET_PARENTS",
    "SIGNPOST_FORMAT_VERSION",
    "FileStore",
    "LockHolder",
    "PostgresStore",
    "Signpost",
    "State",
    "StateStore",
    "TaskTable",
    "atomic_write",
    "backup_path",
    "check_binding",
    "check_workspace",
    "encode_document",
    "has_legacy_fingerprints",
    "is_database_url",
    "is_fingerprint",
    "journal_path",
    "lock_is_held",
    "lock_path",
    "missing_workspace",
    "open_store",
    "read_lock_holder",
    "read_state",
    "redact",
    "resolve_path",
    "secret_holders",
    "state_location",
    "store_for",
]
