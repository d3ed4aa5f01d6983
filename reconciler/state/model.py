"""The state in memory, whatever stores it: lineage, serial, the endpoint it is
bound to, the tasks by address, the calls pending, and the secret fingerprints.

Secrets are never stored: the fields of :data:`SECRET_FIELDS` are replaced by a
fingerprint, scrypt of the value salted with the state's random per-lineage key
(parameters recorded in the state). A state is readable by whoever can read its
file or database, so the fingerprint must make each guess of a secret costly.
States written before 0.2 hold HMAC-SHA256 fingerprints: they are still
compared correctly, and replaced by scrypt ones when the task is next written.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import hmac
import secrets as _secrets
import uuid
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import orjson
from typing_extensions import NotRequired, Required, TypedDict

from .. import __version__
from ..errors import StateError

#: 2: scrypt fingerprints, endpoint binding. Format 1 (HMAC fingerprints) is still read.
FORMAT_VERSION = 2
#: 3: a signpost, what ``state migrate`` leaves where a state was (where it went, when; no
#: task, no key). States are still written in format 2; a snapctl that reads format 2 only
#: refuses a signpost as a state written by a newer snapctl ("Upgrade snapctl").
SIGNPOST_FORMAT_VERSION = 3
#: The version of the signpost's own record (its ``version``).
SIGNPOST_VERSION = 1
#: Wire paths of secret fields inside a StartSnapshot request.
SECRET_FIELDS: tuple[tuple[str, ...], ...] = (
    ("StorageConfig", "CustomConfig", "SecretKey"),
    ("StorageConfig", "CustomConfig", "AccessKey"),
)
#: The same, grouped by the path of the mapping that holds them: (parent path, field names).
SECRET_PARENTS: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = tuple(
    (parent, tuple(path[-1] for path in SECRET_FIELDS if path[:-1] == parent))
    for parent in dict.fromkeys(path[:-1] for path in SECRET_FIELDS)
)
FINGERPRINT_PREFIX = "scrypt:"
LEGACY_FINGERPRINT_PREFIX = "hmac-sha256:"
#: scrypt cost for new states: 16 MiB and tens of milliseconds per guess.
DEFAULT_FINGERPRINT_PARAMS: dict[str, Any] = {"kdf": "scrypt", "n": 2**14, "r": 8, "p": 1}


def is_fingerprint(value: Any) -> bool:
    return isinstance(value, str) and value.startswith((FINGERPRINT_PREFIX, LEGACY_FINGERPRINT_PREFIX))


def is_legacy_fingerprint(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(LEGACY_FINGERPRINT_PREFIX)


def check_fingerprint_params(params: Any, source: str) -> dict[str, Any]:
    """``params`` if they are scrypt parameters this snapctl can compute, else StateError."""
    ok = (
        isinstance(params, dict)
        and params.get("kdf") == "scrypt"
        and all(isinstance(params.get(k), int) and params[k] > 0 for k in ("n", "r", "p"))
        and params["n"] & (params["n"] - 1) == 0
        and params["n"] * params["r"] <= 2**24
    )
    if not ok:
        raise StateError(f"{source}: unsupported fingerprint parameters {params!r}")
    return params


class TaskTable(MutableMapping[str, dict]):
    """The state's tasks by address. Entries read from storage stay as their JSON
    text (bytes or str) until asked for, so a large state costs its stored size in
    memory, not several times that in dicts; each read decodes a fresh copy."""

    __slots__ = ("_entries", "_source")

    def __init__(self, entries: Mapping[str, Any] | None = None, source: str = "state"):
        self._entries: dict[str, Any] = dict(entries or {})
        self._source = source

    def __getitem__(self, address: str) -> dict[str, Any]:
        entry = self._entries[address]
        if isinstance(entry, (bytes, str)):
            entry = _decode_entry(address, entry, self._source)
        return entry

    def get(self, address: str, default: Any = None) -> Any:  # Mapping.get, without its two extra calls
        try:
            entry = self._entries[address]
        except KeyError:
            return default
        if isinstance(entry, (bytes, str)):
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

    def raw(self, address: str) -> bytes:
        """The compact JSON of one entry, without decoding a stored one."""
        entry = self._entries[address]
        if isinstance(entry, bytes):
            return entry
        if isinstance(entry, str):
            return entry.encode()
        return orjson.dumps(entry)

    def stored_bytes(self, address: str) -> bytes | None:
        """The entry of ``address`` as read from storage in snapctl's own compact JSON
        (orjson's, keys in the order written), or None (absent, decoded, or another text)."""
        entry = self._entries.get(address)
        return entry if type(entry) is bytes else None

    def encoded(self) -> Iterator[tuple[str, bytes]]:
        """(address, compact JSON of the entry) in address order, without decoding stored entries."""
        for address in sorted(self._entries):
            yield address, self.raw(address)


class PendingCall(TypedDict):
    """A call sent and never settled (``State.pending``)."""

    action: str
    request: dict[str, Any]
    #: How far a replace got: "stopped", "starting".
    replace: NotRequired[str]
    #: A first StartSnapshot the state may not adopt the answer of: when it was sent (epoch ms).
    owned_if_started_after: NotRequired[int]


class ObservedRecord(TypedDict, total=False):
    """What a refresh last saw of a task (``State.observed``)."""

    status: Required[str]
    stop_reason: str | None
    started: str | None
    ended: str | None
    since: str | None
    serial: int | None


@functools.cache
def _records_adapter(record: type) -> Any:
    from pydantic import ConfigDict, TypeAdapter

    return TypeAdapter(dict[str, record], config=ConfigDict(strict=True))  # type: ignore[valid-type]


def check_records(pending: Any, observed: Any, source: str) -> None:
    """Refuse pending calls and observations of another shape than snapctl writes, in one
    line naming the task (every backend reads them through this, so each refuses alike)."""
    from pydantic import ValidationError

    for kind, record, records in (("pending call", PendingCall, pending), ("observation", ObservedRecord, observed)):
        if not isinstance(records, dict):
            raise StateError(f"{source}: its {kind}s are not a mapping of task addresses")
        if not records:
            continue
        try:
            _records_adapter(record).validate_python(records)
        except ValidationError as exc:
            error = exc.errors()[0]
            address, *field_path = error["loc"] or ("?",)
            where = ".".join(map(str, field_path))
            problem = f"{where}: {error['msg']}" if where else f"{error['msg']}"
            raise StateError(
                f"{source}: the {kind} of task {str(address)!r} is not one snapctl writes ({problem}); "
                "nothing was changed. Restore the state from a backup"
            ) from None


def _decode_entry(address: str, raw: bytes | str, source: str) -> dict[str, Any]:
    try:
        entry = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise StateError(f"{source}: the entry of task {address!r} is not valid JSON") from None
    if not isinstance(entry, dict) or not isinstance(entry.get("request"), dict):
        raise StateError(f"{source}: task {address!r} has no request")
    return entry


def _parent_of(request: Any, path: tuple[str, ...]) -> Any:
    parent = request
    for part in path[:-1]:
        parent = parent.get(part) if isinstance(parent, dict) else None
        if parent is None:
            return None
    return parent


def secret_holders(request: Any) -> Iterator[tuple[dict[str, Any], tuple[str, ...]]]:
    """Each mapping of a wire request that may hold secrets, with those fields' names
    (each parent looked up once: this runs for every task of a plan)."""
    for parent_path, names in SECRET_PARENTS:
        parent = request
        for part in parent_path:
            parent = parent.get(part) if isinstance(parent, dict) else None
            if parent is None:
                break
        if isinstance(parent, dict):
            yield parent, names


def has_legacy_fingerprints(request: Any) -> bool:
    """Whether a stored request holds a fingerprint of the old HMAC kind."""
    return any(is_legacy_fingerprint(parent.get(name)) for parent, names in secret_holders(request) for name in names)


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


@dataclass(frozen=True)
class Signpost:
    """Where a migrated state went (``moved_to``: its location and workspace, never a
    password) and when (``moved_at``)."""

    moved_to: str
    moved_at: str

    def record(self) -> dict[str, Any]:
        return {"version": SIGNPOST_VERSION, "moved_to": self.moved_to, "moved_at": self.moved_at}

    @classmethod
    def of_record(cls, record: Any, source: str) -> Signpost:
        """The signpost of a stored record, or StateError (a newer version: "Upgrade snapctl")."""
        version = record.get("version") if isinstance(record, dict) else None
        if not isinstance(version, int) or version < 1:
            raise StateError(f"{source}: a signpost without a valid version")
        if version > SIGNPOST_VERSION:
            raise StateError(
                f"{source}: a signpost of version {version}, written by a newer snapctl; this snapctl "
                f"reads signpost version {SIGNPOST_VERSION}. Upgrade snapctl"
            )
        moved_to, moved_at = record.get("moved_to"), record.get("moved_at")
        if not isinstance(moved_to, str) or not isinstance(moved_at, str):
            raise StateError(f"{source}: a signpost without moved_to or moved_at")
        return cls(_printable(moved_to), _printable(moved_at))

    def refusal(self, where: str) -> str:
        """The one line that refuses to use the state at ``where``."""
        return (
            f"state {where} was migrated to {self.moved_to} at {self.moved_at} (snapctl state migrate): "
            "use that state (--state or SNAPCTL_STATE, --workspace, snapctl.toml); nothing was read or sent"
        )


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
    #: The API endpoint and region this state was applied against (None until its first write).
    endpoint: str | None = None
    region: str | None = None
    fingerprint_params: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_FINGERPRINT_PARAMS))
    #: Set when this is no state but the signpost a migration left (no task, no key).
    signpost: Signpost | None = None
    #: Fingerprints computed in this run, by (kind, value, salt and cost): a plan asks for the same secret many times.
    _memo: dict[tuple, str] = field(default_factory=dict, repr=False, compare=False)
    #: scrypt fingerprints being computed in the background (see :meth:`prefetch_fingerprints`).
    _computing: dict[tuple, Future[str]] = field(default_factory=dict, repr=False, compare=False)
    _fingerprinter: ThreadPoolExecutor | None = field(default=None, repr=False, compare=False)

    @classmethod
    def new(cls) -> State:
        return cls(lineage=str(uuid.uuid4()), fingerprint_key=_secrets.token_hex(32))

    @classmethod
    def signpost_of(cls, state: State, signpost: Signpost) -> State:
        """The signpost that takes ``state``'s place (its lineage and serial, nothing else)."""
        return cls(lineage=state.lineage, serial=state.serial, exists=True, signpost=signpost)

    def header(self) -> dict[str, Any]:
        """Everything but the tasks and pending calls, as stored (a signpost: all of it)."""
        if self.signpost is not None:
            return {
                "format_version": SIGNPOST_FORMAT_VERSION,
                "snapctl_version": __version__,
                "lineage": self.lineage,
                "serial": self.serial,
                "signpost": self.signpost.record(),
            }
        header: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "snapctl_version": __version__,
            "lineage": self.lineage,
            "serial": self.serial,
            "fingerprint_key": self.fingerprint_key,
            "fingerprint": self.fingerprint_params,
        }
        if self.endpoint is not None:
            header |= {"endpoint": self.endpoint, "region": self.region}
        return header

    def holds_nothing(self) -> bool:
        """Whether this state never recorded a completed call and holds no task, pending
        call or observation: a run refused at its first call leaves such a state behind."""
        return self.signpost is None and self.endpoint is None and not (self.tasks or self.pending or self.observed)

    def copy_as(self, other: State) -> None:
        """Take ``other``'s content (lineage, serial, key, binding, tasks, pending, observations)."""
        self.lineage, self.serial, self.fingerprint_key = other.lineage, other.serial, other.fingerprint_key
        self.fingerprint_params = dict(other.fingerprint_params)
        self.endpoint, self.region = other.endpoint, other.region
        self.tasks = other.tasks.copy() if isinstance(other.tasks, TaskTable) else TaskTable(other.tasks)
        self.pending = dict(other.pending)
        self.observed = dict(other.observed)
        self.signpost = other.signpost
        self._memo = {}
        self._computing = {}

    # Fingerprints ----------------------------------------------------------------

    def _memo_key(self, kind: str, text: str) -> tuple:
        p = self.fingerprint_params
        return (kind, text, self.fingerprint_key, p.get("n"), p.get("r"), p.get("p"))

    @staticmethod
    def _scrypt(text: str, salt: str, p: Mapping[str, Any]) -> str:
        raw = hashlib.scrypt(
            text.encode(),
            salt=salt.encode(),
            n=p["n"],
            r=p["r"],
            p=p["p"],
            maxmem=256 * p["n"] * p["r"] + 2**20,
            dklen=16,
        )
        return FINGERPRINT_PREFIX + raw.hex()

    def secret_fingerprint(self, value: Any, *, legacy: bool = False) -> str:
        """The fingerprint of one secret value (scrypt, or the old HMAC to compare with an old state)."""
        text = str(value)
        key = self._memo_key("hmac" if legacy else "scrypt", text)
        done = self._memo.get(key)
        if done is None:
            computing = self._computing.pop(key, None)
            if computing is not None:
                done = computing.result()
            elif legacy:
                digest = hmac.new(self.fingerprint_key.encode(), text.encode(), hashlib.sha256).hexdigest()
                done = LEGACY_FINGERPRINT_PREFIX + digest[:32]
            else:
                done = self._scrypt(text, self.fingerprint_key, self.fingerprint_params)
            self._memo[key] = done
        return done

    def prefetch_fingerprints(self, values: Iterable[Any]) -> bool:
        """Whether the scrypt fingerprints of ``values`` are all known; those that are not
        start being computed in a background thread (scrypt leaves the GIL), so that the
        caller can do other work meanwhile. :meth:`secret_fingerprint` takes them over."""
        ready = True
        missing: dict[tuple, str] = {}
        for value in values:
            text = str(value)
            key = self._memo_key("scrypt", text)
            if key in self._memo:
                continue
            computing = self._computing.get(key)
            if computing is None:
                missing[key] = text
            elif computing.done():
                self.secret_fingerprint(text)
            else:
                ready = False
        if missing:
            # Two threads for the whole run: scrypt leaves the GIL, so the usual pair of
            # secrets (a storage's access and secret key) costs one derivation's time, and
            # its memory (16 MiB each at the default cost) stays bounded however many a plan holds.
            if self._fingerprinter is None:
                self._fingerprinter = ThreadPoolExecutor(max_workers=2, thread_name_prefix="fingerprint")
            params = dict(self.fingerprint_params)
            for key, text in missing.items():
                self._computing[key] = self._fingerprinter.submit(self._scrypt, text, self.fingerprint_key, params)
        return ready and not missing

    def fingerprint(self, request: dict[str, Any], *, like: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """A copy of a wire request with every secret replaced by its fingerprint.

        ``like``: a stored request; where it holds an old HMAC fingerprint, the
        secret is fingerprinted that way, so that an unchanged secret compares equal."""
        out = request
        copied = False
        for path in SECRET_FIELDS:
            parent = _parent_of(out, path)
            if not isinstance(parent, dict) or path[-1] not in parent or is_fingerprint(parent[path[-1]]):
                continue
            if not copied:
                out, copied = copy.deepcopy(request), True
                parent = _parent_of(out, path)
            stored = _parent_of(like, path) if like is not None else None
            legacy = isinstance(stored, dict) and is_legacy_fingerprint(stored.get(path[-1]))
            parent[path[-1]] = self.secret_fingerprint(parent[path[-1]], legacy=legacy)
        return out

    # Changes -------------------------------------------------------------------------

    def apply_entry(self, entry: dict[str, Any]) -> None:
        """Apply one journaled record (see :meth:`StateStore.record_put` and the others)."""
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
        elif op == "delete":
            self.tasks.pop(address, None)
            self.pending.pop(address, None)
            self.observed.pop(address, None)
        else:
            raise StateError(f"unknown state record {op!r}: written by a newer snapctl? Upgrade snapctl")
        self.serial = entry["serial"]
