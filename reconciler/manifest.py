"""Manifests: YAML files declaring snapshot tasks, resolved into StartSnapshot requests.

A document names one app and declares rooms and their tasks; settings are
inherited document ``defaults`` -> room -> task (``image`` field by field,
``streams`` and ``storage`` as a whole). Loading validates every value with
the constrained types of :mod:`reconciler.api`, collects every problem with
its ``file:line:column``, and either returns the fully resolved requests or
raises :class:`ManifestError` listing all of them.

Validation is piecewise (document shape, defaults, each storage profile, each
room, each task) so that one bad task does not hide the problems of others.
"""

from __future__ import annotations

import datetime
import gc
import os
import re
import stat
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
)
from pydantic.json_schema import SkipJsonSchema

from . import api, regions
from .errors import UsageError
from .yamlsource import DeferredEnviron, Diagnostic, Document, Location, read_documents, read_documents_fast

__all__ = [
    "SECRET_FIELDS",
    "DesiredTask",
    "Diagnostic",
    "Location",
    "ManifestError",
    "ManifestSet",
    "discover",
    "load_manifests",
    "manifest_json_schema",
]

#: API field paths (PascalCase, as in :meth:`api.WireModel.wire`) that hold secrets.
SECRET_FIELDS = ("StorageConfig.CustomConfig.AccessKey", "StorageConfig.CustomConfig.SecretKey")
_SECRET_KEYS = frozenset({"access_key", "secret_key"})

_ID_RULE = "IDs are 1 to 128 characters: letters, digits and _ @ - ."


class ManifestError(UsageError):
    """Manifests that cannot be used; ``diagnostics`` lists every problem found."""

    def __init__(self, diagnostics: Sequence[Diagnostic]):
        self.diagnostics = sorted(dict.fromkeys(diagnostics), key=Diagnostic.sort_key)
        super().__init__(str(self))

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == "error"]

    def __str__(self) -> str:
        return "\n".join(map(str, self.diagnostics))


@dataclass(frozen=True, slots=True)
class DesiredTask:
    """One declared task: its address ``APP/ROOM/TASK`` and the request that starts it."""

    address: str
    request: api.StartSnapshotRequest
    location: Location


@dataclass
class ManifestSet:
    """Everything the manifests declare: tasks by address (sorted), warnings, files read."""

    tasks: dict[str, DesiredTask]
    warnings: list[Diagnostic] = field(default_factory=list)
    files: list[str] = field(default_factory=list)


# --- value types -------------------------------------------------------------


def _describe(value: Any, secret: bool = False) -> str:
    """A value as a message shows it; a secret's value is never shown."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean true" if value else "boolean false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, bytes):
        return "binary data"
    if secret:
        return "a string" if isinstance(value, str) else "a number" if isinstance(value, (int, float)) else "a date"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"number {value}"
    if isinstance(value, (datetime.date, datetime.datetime)):
        return f"date {value.isoformat()}"
    if isinstance(value, str):
        return f"string {_short(value)!r}"
    return type(value).__name__


def _short(value: Any) -> Any:
    return value[:37] + "..." if isinstance(value, str) and len(value) > 40 else value


def _did_you_mean(word: Any, choices) -> str:
    import difflib  # only for a near miss

    matches = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f"; did you mean {matches[0]!r}?" if matches else ""


def _named_enum(enum, code_type: Any, names: tuple[str, ...]):
    """The API's integer enum, also accepting the members' names."""
    codes = {name: enum[name].value for name in names}
    choices = f"{', '.join(names)} (or {', '.join(str(c) for c in codes.values())})"
    valid_codes = set(codes.values())

    def to_code(value: Any) -> Any:
        if type(value) is str and value in codes:
            return codes[value]
        if type(value) is int and value in valid_codes:
            return value
        hint = _did_you_mean(value.lower(), names) if isinstance(value, str) else ""
        raise ValueError(f"must be one of {choices}, got {_describe(value)}{hint}")

    return Annotated[(code_type, BeforeValidator(to_code), WithJsonSchema({"enum": [*codes, *codes.values()]}))]


FormatField = _named_enum(api.Format, api.FormatCode, ("jpeg", "png"))
StreamTypeField = _named_enum(api.StreamType, api.StreamTypeCode, ("main", "screen"))
VendorField = _named_enum(api.Vendor, api.VendorCode, ("s3", "oss", "obs", "cos", "kodo"))

# The storage types snapshots accept, by name and by API code.
_STORAGE_NAMES = ("tos", "custom", "veimagex")
_STORAGE_BY_CODE = {api.StorageType[n].value: n for n in _STORAGE_NAMES}


def _refuse_storage_type(value: Any) -> Any:
    if (type(value) is str and value == "vod") or (type(value) is int and value == api.StorageType.vod):
        raise ValueError("storage type vod (1) is not supported for snapshots; use tos, custom or veimagex (0, 2 or 3)")
    hint = _did_you_mean(value.lower(), _STORAGE_NAMES) if isinstance(value, str) else ""
    if isinstance(value, str) and value.lower() in api.Vendor.__members__:
        vendor = value.lower()
        hint = f"; {vendor.upper()}-compatible storage is `type: custom` with `vendor: {vendor}`"
    raise ValueError(f"must be one of tos, custom, veimagex (or 0, 2, 3), got {_describe(value)}{hint}")


# --- the document format -----------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


def _opt(description: str) -> Any:
    """An optional setting: absent means "inherit"."""
    return Field(None, description=description)


class Image(_Strict):
    """Snapshot image settings; each field merges over the level above, then the API default."""

    format: FormatField = _opt("jpeg | png (API 0 | 1); default jpeg")
    width: api.Dimension = _opt("0..1920; 0 = the stream's own width")
    height: api.Dimension = _opt("0..1920; 0 = the stream's own height")
    interval: api.Interval = _opt(f"seconds between shots, 1..600; default {api.DEFAULT_INTERVAL}")


class Stream(_Strict):
    """One stream to snapshot."""

    user_id: api.NonEmpty = Field(description="the publishing user's ID")
    stream_type: StreamTypeField = Field(0, description="main | screen (API 0 | 1)")
    index: api.StreamIndex = _opt("optional, unique within the list")


def _region_field(storage: str, vendors: tuple[str | None, ...] = (None,)) -> Any:
    """A storage's ``region``: the API's integer code, or (where the vendor's table is known,
    see :mod:`.regions`) a region name, turned into its code by the model's validator."""
    description = (
        "the API's integer code, or a region name (cn-beijing) of the vendor's table"
        if any(regions.table_for(storage, v) for v in vendors)
        else "the API's integer code (the vendor's table of names is not known)"
    )
    schema = {**regions.json_schema(storage, vendors), "title": "Region", "description": description}
    return Annotated[api.Region, WithJsonSchema(schema)]


class TosStorage(_Strict):
    """Volcengine TOS."""

    type: Literal["tos", 0]
    account_id: api.NonEmpty
    region: _region_field("tos") = 0
    bucket: api.NonEmpty

    @field_validator("region", mode="before")
    @classmethod
    def _region_code(cls, value: Any) -> Any:
        return regions.region_code(value, "tos")


class CustomStorage(_Strict):
    """An S3-compatible third-party store."""

    type: Literal["custom", 2]
    vendor: VendorField = Field(0, description="s3 | oss | obs | cos | kodo (API 0..4)")
    region: _region_field("custom", ("s3", "oss")) = 0
    bucket: api.NonEmpty
    access_key: api.NonEmpty = Field(description="secret: write ${env:NAME}")
    secret_key: api.NonEmpty = Field(description="secret: write ${env:NAME}")

    @field_validator("region", mode="before")
    @classmethod
    def _region_code(cls, value: Any, info: ValidationInfo) -> Any:
        vendor = info.data.get("vendor")
        if vendor is None:  # the vendor is wrong (reported): a name cannot be judged
            return value if not isinstance(value, str) else 0
        return regions.region_code(value, "custom", api.Vendor(vendor).name)


class VeImageXStorage(_Strict):
    """veImageX."""

    type: Literal["veimagex", 3]
    account_id: api.NonEmpty
    region: _region_field("veimagex") = 0
    service_id: api.NonEmpty

    @field_validator("region", mode="before")
    @classmethod
    def _region_code(cls, value: Any) -> Any:
        return regions.region_code(value, "veimagex")


class _InvalidStorage(BaseModel):
    """A storage block whose type is missing or not one snapshots support: reports just that."""

    model_config = ConfigDict(extra="ignore")
    type: Annotated[Any, AfterValidator(_refuse_storage_type)]


_STORAGE_MODELS: dict[str, type[_Strict]] = {"tos": TosStorage, "custom": CustomStorage, "veimagex": VeImageXStorage}
StorageSpec = TosStorage | CustomStorage | VeImageXStorage

# Tags of the storage unions. pydantic puts them in error locations, where
# they are dropped; the colon keeps them apart from any valid key.
_PROFILE_TAG = "storage:profile"
_INVALID_TAG = "storage:invalid"
_TAG_TYPES: dict[str, Any] = {f"storage:{n}": m for n, m in _STORAGE_MODELS.items()}
_TAG_TYPES[_INVALID_TAG] = _InvalidStorage
_TAG_TYPES[_PROFILE_TAG] = api.Identifier


def _storage_union(with_profile: bool):
    def tag(value: Any) -> str | None:
        if isinstance(value, str):
            return _PROFILE_TAG if with_profile else None
        if not isinstance(value, dict):
            return None
        kind = value.get("type")
        if type(kind) is int:
            kind = _STORAGE_BY_CODE.get(kind)
        return f"storage:{kind}" if type(kind) is str and kind in _STORAGE_MODELS else _INVALID_TAG

    members: list[Any] = [Annotated[m, Tag(f"storage:{n}")] for n, m in _STORAGE_MODELS.items()]
    members.append(SkipJsonSchema[Annotated[_InvalidStorage, Tag(_INVALID_TAG)]])
    if with_profile:
        members.insert(0, Annotated[api.Identifier, Tag(_PROFILE_TAG)])
        expected = "a storage profile's name or a storage block"
    else:
        expected = "a storage block"
    return Annotated[
        Union[tuple(members)],  # noqa: UP007 (a union built at run time)
        Discriminator(
            tag,
            custom_error_type="storage",
            custom_error_message=f"must be {expected} (a mapping with type tos, custom or veimagex)",
        ),
    ]


StorageBlock = _storage_union(with_profile=False)
StorageRef = _storage_union(with_profile=True)


class Settings(_Strict):
    """What a task needs; ``defaults``, rooms and tasks all take these."""

    business_id: api.Identifier | None = _opt("BusinessId; null removes an inherited one")
    max_idle_time: api.MaxIdleTime = _opt(f"seconds, 1..86400; default {api.DEFAULT_MAX_IDLE_TIME}")
    image: Image = _opt("merges field by field over the level above")
    storage: StorageRef = _opt("a storage profile's name or an inline storage block; replaces as a whole")
    streams: Annotated[list[Stream], Field(max_length=api.MAX_STREAMS)] | None = _opt(
        f"at most {api.MAX_STREAMS}; omitted, null or []: every stream in the room; replaces as a whole"
    )


class Room(Settings):
    """A room: settings for its tasks, and the tasks."""

    tasks: dict[api.Identifier, Settings | None] = Field(description="task ID -> settings (may be empty)")


class ManifestDocument(_Strict):
    """A snapctl manifest: one app's snapshot tasks."""

    model_config = ConfigDict(title="snapctl manifest")

    app_id: api.Identifier = Field(description="AppId")
    defaults: Settings = _opt("inherited by every task of this document")
    storage: dict[api.Identifier, StorageBlock] = Field(default_factory=dict, description="named storage profiles")
    rooms: dict[api.Identifier, Room] = Field(description="room ID -> room")


# The same format, one level at a time: what lies below is checked piece by piece.
class _DocumentShape(_Strict):
    app_id: api.Identifier
    defaults: Any = None
    storage: dict[api.Identifier, Any] = {}
    rooms: dict[api.Identifier, Any]


class _RoomShape(Settings):
    tasks: dict[api.Identifier, Any]


_BLOCK_ADAPTER = TypeAdapter(StorageBlock)
_EMPTY = Settings()
_DEFAULT_IMAGE = api.ImageConfig.model_construct()
_IMAGE_FIELDS = ("format", "width", "height", "interval")


def _bounds(annotated) -> tuple[Any, Any]:
    low = high = None
    for meta in getattr(annotated, "__metadata__", ()):
        for item in getattr(meta, "metadata", [meta]):
            if isinstance(item, annotated_types.Ge):
                low = item.ge
            elif isinstance(item, annotated_types.Le):
                high = item.le
    return low, high


_RANGES = {
    "max_idle_time": _bounds(api.MaxIdleTime),
    "width": _bounds(api.Dimension),
    "height": _bounds(api.Dimension),
    "interval": _bounds(api.Interval),
    "region": _bounds(api.Region),
    "index": _bounds(api.StreamIndex),
}


def manifest_json_schema() -> dict:
    """The JSON Schema (2020-12) of a manifest document, for ``snapctl schema`` and editors."""
    schema = ManifestDocument.model_json_schema()
    _drop_null_defaults(schema)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


#: The file name ``write_manifest_schema`` gives the schema in a directory.
SCHEMA_FILE_NAME = "snapctl.schema.json"


def manifest_json_schema_bytes() -> bytes:
    """The schema as ``snapctl schema`` prints it (two-space indent, a final newline)."""
    import orjson

    return orjson.dumps(manifest_json_schema(), option=orjson.OPT_INDENT_2) + b"\n"


def write_manifest_schema(path: str | Path) -> Path:
    """Write the JSON Schema to ``path`` (a file, or a directory to hold ``snapctl.schema.json``),
    replacing what was there at once (a temporary file renamed), readable by all like any file
    kept in a repository; the path written. An unwritable place is a :class:`UsageError`."""
    target = Path(path)
    if target.is_dir():
        target = target / SCHEMA_FILE_NAME
    elif str(path).endswith(("/", os.sep)):
        raise UsageError(f"{path}: no such directory; create it first, or name the file to write")
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(manifest_json_schema_bytes())
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise UsageError(f"{target}: cannot write the schema ({exc.strerror or exc})") from None
    return target


def _drop_null_defaults(node: Any) -> None:
    # "absent means inherit" fields default to None, which is not a value a user may write.
    if isinstance(node, dict):
        if "default" in node and node["default"] is None:
            del node["default"]
        for value in node.values():
            _drop_null_defaults(value)
    elif isinstance(node, list):
        for value in node:
            _drop_null_defaults(value)


# --- loading -----------------------------------------------------------------


def discover(paths: Sequence[str | Path]) -> list[Path]:
    """The manifest files under ``paths``: ``*.yaml``/``*.yml`` (any case) under directories
    (recursive, sorted, hidden directories skipped) and files given directly.

    Raises ManifestError naming every path that does not exist.
    """
    found: list[Path] = []
    seen: set[Path] = set()
    missing: list[Diagnostic] = []
    for path in map(Path, paths):
        if path.is_dir():
            files: list[Path] = []
            for root, dirs, names in os.walk(path):
                dirs[:] = [d for d in dirs if not d.startswith(".")]
                files.extend(
                    Path(root, n) for n in names if n.lower().endswith((".yaml", ".yml")) and not n.startswith(".")
                )
            files.sort()
        elif path.exists():
            files = [path]
        else:
            missing.append(Diagnostic(None, f"{path}: no such file or directory"))
            continue
        for file in files:
            if path.is_dir() and _special(file):
                # Reading a FIFO would block for ever; a device is no manifest either.
                missing.append(Diagnostic(Location(str(file), 1, 1), "not a regular file (a FIFO, socket or device)"))
                continue
            key = file.resolve()
            if key not in seen:
                seen.add(key)
                found.append(file)
    if missing:
        raise ManifestError(missing)
    return found


def _special(file: Path) -> bool:
    try:
        mode = file.stat().st_mode
    except OSError:
        return False  # reading it reports the problem
    return not stat.S_ISREG(mode)


#: How ``load_manifests`` treats a ``${env:NAME}`` whose variable is not set.
SECRETS_REQUIRED = "required"  # plan, apply: an error where a task uses it
SECRETS_OPTIONAL = "optional"  # validate: a warning (well-formedness is still checked)
SECRETS_UNKNOWN = "unknown"  # plan --no-secrets: fine in secret fields, an error where a task uses it elsewhere
#: The wire paths of secret fields, as in the state.
_SECRET_PATHS = frozenset(
    {("StorageConfig", "CustomConfig", "SecretKey"), ("StorageConfig", "CustomConfig", "AccessKey")}
)


def load_manifests(
    paths: Sequence[str | Path] = ("manifests",),
    environ: Mapping[str, str] | None = None,
    *,
    secrets: str = SECRETS_REQUIRED,
) -> ManifestSet:
    """Load, validate and resolve the manifests under ``paths``.

    ``environ`` (default ``os.environ``) feeds ``${env:NAME}``. A variable that
    is not set is judged by ``secrets`` (see ``SECRETS_*``); in every mode a
    storage profile no task uses needs nothing. Raises ManifestError with every
    error (and warning) of every file, sorted by file and position, if there is
    any error.
    """
    return _load_manifests(paths, DeferredEnviron(os.environ if environ is None else environ), secrets)


def _judge_unset(collector: _Collector, unset: list[tuple[str, Location]], secrets: str) -> None:
    """Diagnostics for the ``${env:NAME}`` references whose variable is not set.

    Where the reference text broke a rule of its field, that error is replaced:
    the value is unknown, not wrong, and without it no task could be made there.
    """
    places = {location for _, location in unset}
    broken = {d.location for d in collector.diagnostics if d.severity == "error" and d.location in places}
    collector.diagnostics = [d for d in collector.diagnostics if d.location not in broken or d.severity != "error"]
    collector.diagnostics.extend(_unset_diagnostics(unset, collector.tasks, secrets, broken, collector.unmade))


def _unset_diagnostics(
    unset: list[tuple[str, Location]],
    tasks: Mapping[str, DesiredTask],
    secrets: str,
    broken: set,
    unmade: Sequence[tuple[Any, str]] = (),
) -> list[Diagnostic]:
    if secrets == SECRETS_OPTIONAL:
        return [
            Diagnostic(
                location,
                f"environment variable {name} is not set (referenced as ${{env:{name}}}); plan and apply need it",
                "warning",
            )
            for name, location in unset
        ]
    names = {name for name, _ in unset}
    needles = {name: f"${{env:{name}}}" for name in names}
    used: set[str] = set()
    for task in tasks.values():
        for path, value in _strings(task.request.wire(), ()):
            if "${env:" not in value:
                continue
            for name in names - used:
                if needles[name] in value and not (secrets == SECRETS_UNKNOWN and path in _SECRET_PATHS):
                    used.add(name)
        if used == names:
            break
    for key, value in unmade:  # tasks another error kept from being made
        if "${env:" in value and not (secrets == SECRETS_UNKNOWN and key in _SECRET_KEYS):
            used.update(name for name in names if needles[name] in value)
    return [
        Diagnostic(location, f"environment variable {name} is not set (referenced as ${{env:{name}}})")
        for name, location in unset
        if name in used or location in broken
    ]


def _keyed_strings(value: Any, key: Any) -> Iterator[tuple[Any, str]]:
    """The strings in a manifest value, each with the key it is under."""
    if isinstance(value, str):
        yield key, value
    elif isinstance(value, dict):
        for name, item in value.items():
            yield from _keyed_strings(item, name)
    elif isinstance(value, list):
        for item in value:
            yield from _keyed_strings(item, key)


def _strings(value: Any, path: tuple) -> Iterator[tuple[tuple, str]]:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(item, (*path, key))
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item, path)


def _load_manifests(paths: Sequence[str | Path], environ: DeferredEnviron, secrets: str) -> ManifestSet:
    files = discover(paths)
    if files and FAST_PATH:
        # Well-formed manifests take the fast path; the first problem (or doubt)
        # anywhere starts over on the PyYAML path, which reports every problem
        # of every file with its position.
        collector = _Collector(environ, fast=True)
        try:
            with _GcPause() as pause:
                for file in files:
                    collector.load_file(file)
                pause.settled = len(collector.tasks)
        except _Fallback:
            pass
        else:
            if not environ.unset:
                tasks = dict(sorted(collector.tasks.items()))
                return ManifestSet(tasks=tasks, warnings=[], files=[str(f) for f in files])
        environ.unset.clear()  # variables not set are judged on the PyYAML path, with their places
    collector = _Collector(environ)
    if not files:
        shown = ", ".join(str(p) for p in paths)
        # An error, not a warning: an empty set of manifests would plan the
        # destruction of every task (a typo in a path must not do that; use destroy).
        collector.diagnostics.append(Diagnostic(None, f"no manifest files (*.yaml, *.yml) under {shown}", "error"))
    with _GcPause() as pause:
        for file in files:
            collector.load_file(file)
        pause.settled = len(collector.tasks)
    if environ.unset:
        _judge_unset(collector, environ.unset, secrets)
    errors = [d for d in collector.diagnostics if d.severity == "error"]
    if errors:
        raise ManifestError(collector.diagnostics)
    tasks = dict(sorted(collector.tasks.items()))
    warnings = sorted(dict.fromkeys(collector.diagnostics), key=Diagnostic.sort_key)
    return ManifestSet(tasks=tasks, warnings=warnings, files=[str(f) for f in files])


class _GcPause:
    """The cyclic garbage collector paused while loading, and kept off what was loaded.

    Loading allocates millions of long-lived objects without cycles; the
    cyclic collector would rescan them over and over (it more than doubles
    the time of large loads) and could free nothing. Merely switching it back
    on afterwards costs as much again: its next collections walk every object
    allocated meanwhile, three times (once per generation), about a second
    for 100,000 tasks. So a large load (``settled`` tasks, at least
    :attr:`FREEZE_FROM`) ends with ``gc.freeze()``, which moves everything
    alive into the permanent generation that collections skip.

    Frozen objects are still freed when no longer referenced, but a frozen
    cycle is only collected once unfrozen, so the next load unfreezes what
    the last one froze and collects first, unless something froze objects
    since (then they are left alone). What was frozen before the load (the
    ``snapctl`` command freezes what start-up loaded) is frozen again with it.
    """

    #: Loads of fewer tasks end as before (collector switched back on).
    FREEZE_FROM = 1000
    #: ``gc.get_freeze_count()`` right after this class last froze (0: it has not).
    _frozen = 0

    def __init__(self) -> None:
        self.settled = 0
        self._enabled = False

    def __enter__(self) -> _GcPause:
        self._enabled = gc.isenabled()
        if self._enabled and _GcPause._frozen and gc.get_freeze_count() == _GcPause._frozen:
            gc.unfreeze()
            _GcPause._frozen = 0
            gc.collect()
        gc.disable()
        return self

    def __exit__(self, *exc) -> None:
        if not self._enabled:
            return
        if exc[0] is None and self.settled >= self.FREEZE_FROM:
            gc.freeze()
            _GcPause._frozen = gc.get_freeze_count()
        gc.enable()


#: Read well-formed files with the fast YAML path (tests turn it off to compare).
FAST_PATH = True


class _Fallback(Exception):
    """A fast load met a problem: load again on the PyYAML path, which reports it."""


class _Collector:
    """Loads files one by one, gathering tasks and diagnostics across all of them.

    With ``fast``, files are read by the fast YAML path where it accepts them,
    and the first diagnostic of any kind raises :class:`_Fallback` instead.
    """

    def __init__(self, environ: Mapping[str, str], *, fast: bool = False):
        self.environ = environ
        self.fast = fast
        self.diagnostics: list[Diagnostic] = []
        self.tasks: dict[str, DesiredTask] = {}
        #: What the declared tasks that could not be made (another error) would use, as
        #: (key, text) pairs: a variable not set there is reported in the same run.
        self.unmade: list[tuple[Any, str]] = []
        # Locations where YAML itself already reported an error: validation
        # errors at the same place would only repeat it.
        self.reported: set[Location] = set()

    def load_file(self, path: Path) -> None:
        documents = read_documents_fast(path, self.environ) if self.fast else None
        if documents is None:
            documents, diagnostics = read_documents(path, self.environ)
            if diagnostics and self.fast:
                raise _Fallback
            self.diagnostics.extend(diagnostics)
            self.reported.update(d.location for d in diagnostics if d.severity == "error" and d.location)
        for document in documents:
            _DocumentLoader(self, document).load()

    def error(self, location: Location, message: str) -> None:
        if self.fast:
            raise _Fallback
        if location not in self.reported:
            self.diagnostics.append(Diagnostic(location, message))

    def warn(self, location: Location, message: str) -> None:
        if self.fast:
            raise _Fallback
        self.diagnostics.append(Diagnostic(location, message, "warning"))


class _DocumentLoader:
    def __init__(self, collector: _Collector, document: Document):
        self.collector = collector
        self.doc = document
        self.profiles: dict[str, StorageSpec | None] = {}
        # id(object) -> (object, result): the object is kept so the id stays its own.
        self.storage_cache: dict[int, tuple[Any, api.StorageConfig]] = {}
        self.streams_cache: dict[int, tuple[Any, api.TargetStreams]] = {}
        self.image_cache: dict[tuple, api.ImageConfig] = {}

    # Validation, with pydantic's errors turned into located diagnostics.

    def validate(self, validator, root: Any, raw: Any, path: tuple) -> Any:
        try:
            return validator(raw)
        except ValidationError as exc:
            self.report(exc.errors(include_url=False), root, path)
            return None

    def report(self, errors: Sequence[Any], root: Any, base: tuple) -> None:
        suggested: set[tuple] = set()
        problems = []
        for err in errors:
            steps, on_key = list(base), False
            raw_loc = err["loc"]
            for step in raw_loc:
                if step == "[key]":
                    on_key = True
                elif not (isinstance(step, str) and step in _TAG_TYPES):
                    steps.append(step)
            path = tuple(steps)
            problems.append((err, path, on_key, raw_loc))
            if err["type"] == "extra_forbidden":
                import difflib  # only for a near miss

                for match in difflib.get_close_matches(str(path[-1]), _fields_at(root, raw_loc[:-1]), n=1, cutoff=0.6):
                    suggested.add((*path[:-1], match))
        for err, path, on_key, raw_loc in problems:
            kind = err["type"]
            if kind == "missing":
                if path in suggested:
                    continue  # the misspelt key beside it is the real problem
                where = self.doc.location(path[:-1], key=True)
                self.collector.error(where, _join(path[:-1], f"missing required key {path[-1]!r}"))
            elif kind == "extra_forbidden":
                self.collector.error(
                    self.doc.location(path, key=True), _join(path[:-1], _unknown_key(path[-1], root, raw_loc))
                )
            elif on_key or kind == "invalid_key":
                key = path[-1]
                if isinstance(key, str):
                    text = f"{_short(key)!r} {_message(err, secret=False)}"
                else:
                    # pydantic reports such keys as ints (even true), so the key is not shown.
                    text = "names must be strings; quote this one (YAML reads unquoted numbers, dates, yes/no, on/off and null as other types)"
                self.collector.error(self.doc.location(path, key=True), _join(path[:-1], text))
            else:
                secret = bool(path) and path[-1] in _SECRET_KEYS
                self.collector.error(self.doc.location(path), _join(path, _message(err, secret, path)))

    # The document, piece by piece.

    def load(self) -> None:
        data = self.doc.data
        self.validate(_DocumentShape.model_validate, _DocumentShape, data, ())
        app_id = data.get("app_id")
        app_ok = _is_id(app_id)

        defaults: Settings | None = _EMPTY
        if "defaults" in data:
            defaults = self.validate(Settings.model_validate, Settings, data["defaults"], ("defaults",))
            if defaults is not None:
                self.check_settings(defaults, ("defaults",))

        profiles = data.get("storage")
        if isinstance(profiles, dict):
            for name, block in profiles.items():
                spec = self.validate(_BLOCK_ADAPTER.validate_python, StorageBlock, block, ("storage", name))
                if isinstance(name, str):
                    self.profiles[name] = spec
                if spec is not None:
                    self.check_secrets(spec, ("storage", name))
        defaults_ok = defaults is not None and self.check_storage_ref(defaults, ("defaults",))
        if defaults is None:
            self.check_raw_storage_ref(data.get("defaults"), ("defaults",))

        rooms = data.get("rooms")
        if not isinstance(rooms, dict):
            return
        for room_name, room_raw in rooms.items():
            path = ("rooms", room_name)
            room = self.validate(_RoomShape.model_validate, _RoomShape, room_raw, path)
            room_ok = False
            if room is not None:
                self.check_settings(room, path)
                room_ok = self.check_storage_ref(room, path)
            else:
                self.check_raw_storage_ref(room_raw, path)
            tasks = room_raw.get("tasks") if isinstance(room_raw, dict) else None
            if not isinstance(tasks, dict):
                continue
            usable = app_ok and defaults_ok and room_ok and _is_id(room_name)
            inherited = _Inherited(defaults, room) if usable and defaults is not None else None
            validate = Settings.model_validate
            for task_name, task_raw in tasks.items():
                if task_raw is None:
                    task = _EMPTY
                else:
                    try:
                        task = validate(task_raw)
                    except ValidationError as exc:
                        self.report(exc.errors(include_url=False), Settings, (*path, "tasks", task_name))
                        self.check_raw_storage_ref(task_raw, (*path, "tasks", task_name))
                        self.unmade(task_raw, room_raw)
                        continue
                # The rules check_settings and check_storage_ref apply, when they can apply.
                if task.streams or (task.storage is not None and not isinstance(task.storage, str)):
                    self.check_settings(task, (*path, "tasks", task_name))
                task_ok = type(task.storage) is not str or self.check_storage_ref(task, (*path, "tasks", task_name))
                if inherited is not None and task_ok and _is_id(task_name):
                    self.add_task(app_id, room_name, task_name, inherited, task)  # type: ignore[arg-type]  # usable: app_id is an ID
                else:
                    self.unmade(task_raw, room_raw)

    def unmade(self, task_raw: Any, room_raw: Any) -> None:
        """A declared task that another error keeps from being made: what it would use (its
        own values, its room's and the defaults', the storage block it would take) is kept,
        so that a ``${env:NAME}`` not set there is reported in this run too."""
        data = self.doc.data
        defaults = data.get("defaults")
        levels = [level for level in (task_raw, room_raw, defaults) if isinstance(level, dict)]
        storage = next((level["storage"] for level in levels if "storage" in level), None)
        if isinstance(storage, str):
            profiles = data.get("storage")
            storage = profiles.get(storage) if isinstance(profiles, dict) else None
        used = [{k: v for k, v in level.items() if k not in ("storage", "tasks")} for level in levels]
        for value in (*used, storage):
            self.collector.unmade.extend(_keyed_strings(value, None))

    def check_settings(self, settings: Settings, path: tuple) -> None:
        """Rules that span several values of one level: unique stream index, plain secrets."""
        if settings.streams:
            first: dict[int, int] = {}
            for i, stream in enumerate(settings.streams):
                if stream.index is None:
                    continue
                if stream.index in first:
                    line = self.doc.location((*path, "streams", first[stream.index], "index")).line
                    index_path = (*path, "streams", i, "index")
                    self.collector.error(
                        self.doc.location(index_path),
                        _join(
                            index_path,
                            f"index {stream.index} is repeated (first at line {line}); each index must be unique within streams",
                        ),
                    )
                else:
                    first[stream.index] = i
        if settings.storage is not None and not isinstance(settings.storage, str):
            self.check_secrets(settings.storage, (*path, "storage"))

    def check_secrets(self, spec: StorageSpec, path: tuple) -> None:
        if not isinstance(spec, CustomStorage):
            return
        for key in ("access_key", "secret_key"):
            if not self.doc.interpolated((*path, key)):
                self.collector.warn(
                    self.doc.location((*path, key)),
                    _join(
                        (*path, key), "secret written in plain text; use ${env:NAME} to keep it out of the repository"
                    ),
                )

    def check_raw_storage_ref(self, raw: Any, path: tuple) -> None:
        """A level that failed validation for another reason: the profile it names is still
        checked, so that one run reports every problem (not the unknown profile only once
        the rest is fixed)."""
        if isinstance(raw, dict) and _is_id(raw.get("storage")):
            self.check_ref(raw["storage"], path)

    def check_storage_ref(self, settings: Settings, path: tuple) -> bool:
        """Whether the storage named at this level (if any) is usable; reports unknown profiles."""
        return self.check_ref(settings.storage, path)

    def check_ref(self, ref: Any, path: tuple) -> bool:
        if not isinstance(ref, str):
            return True
        if ref in self.profiles:
            return self.profiles[ref] is not None  # an invalid profile was reported where it is defined
        if self.profiles:
            hint = (
                _did_you_mean(ref, self.profiles)
                or f"; profiles defined in this document: {', '.join(map(str, self.profiles))}"
            )
        else:
            hint = "; this document defines no storage profiles (top-level `storage`)"
        ref_path = (*path, "storage")
        self.collector.error(self.doc.location(ref_path), _join(ref_path, f"unknown storage profile {ref!r}{hint}"))
        return False

    # Resolution: defaults -> room -> task.

    def add_task(self, app_id: str, room_id: str, task_id: str, inherited: _Inherited, task: Settings) -> None:
        path = ("rooms", room_id, "tasks", task_id)
        location = self.doc.location(path, key=True)
        address = f"{app_id}/{room_id}/{task_id}"
        previous = self.collector.tasks.get(address)
        if previous is not None:
            self.collector.error(location, f"task {address} is declared twice; first at {previous.location}")
            return
        # The nearest level that sets a field wins (an explicit null counts as set).
        given = task.__pydantic_fields_set__
        storage = task.storage if "storage" in given else inherited.storage
        if storage is None:
            self.collector.error(
                location,
                _join(path, f"no storage for this task; set storage on the task, on room {room_id}, or in defaults"),
            )
            return
        max_idle_time = task.max_idle_time if "max_idle_time" in given else inherited.max_idle_time
        request = _make_start_request(
            app_id,
            task.business_id if "business_id" in given else inherited.business_id,
            room_id,
            task_id,
            self.target_streams(task.streams if "streams" in given else inherited.streams),
            api.DEFAULT_MAX_IDLE_TIME if max_idle_time is None else max_idle_time,
            self.image_config(inherited.image, task.image),
            # The profile, or the block, was checked usable before the task was added.
            self.storage_config(self.profiles[storage] if isinstance(storage, str) else storage),  # type: ignore[arg-type]
        )
        self.collector.tasks[address] = DesiredTask(address, request, location)

    def image_config(self, inherited: tuple, image: Image | None) -> api.ImageConfig:
        """Each image field from the nearest level that sets it, else the API's default."""
        if image is None:
            values = inherited
        else:
            values = tuple(
                own if own is not None else base
                for own, base in zip((image.format, image.width, image.height, image.interval), inherited)
            )
        config = self.image_cache.get(values)
        if config is None:
            config = self.image_cache[values] = _make_image_config(
                *(
                    getattr(_DEFAULT_IMAGE, name) if value is None else value
                    for name, value in zip(_IMAGE_FIELDS, values)
                )
            )
        return config

    def target_streams(self, streams: list[Stream] | None) -> api.TargetStreams | None:
        if not streams:
            return None
        cached = self.streams_cache.get(id(streams))
        if cached is not None and cached[0] is streams:
            return cached[1]
        result = _make_target_streams([_make_stream(s.index, s.user_id, s.stream_type) for s in streams])
        self.streams_cache[id(streams)] = (streams, result)
        return result

    def storage_config(self, spec: StorageSpec) -> api.StorageConfig:
        cached = self.storage_cache.get(id(spec))
        if cached is not None and cached[0] is spec:
            return cached[1]
        if isinstance(spec, TosStorage):
            tos = api.TosConfig.model_construct(account_id=spec.account_id, region=spec.region, bucket=spec.bucket)
            config = api.StorageConfig.model_construct(type=api.StorageType.tos.value, tos_config=tos)
        elif isinstance(spec, CustomStorage):
            custom = api.CustomConfig.model_construct(
                vendor=spec.vendor,
                region=spec.region,
                bucket=spec.bucket,
                access_key=spec.access_key,
                secret_key=spec.secret_key,
            )
            config = api.StorageConfig.model_construct(type=api.StorageType.custom.value, custom_config=custom)
        else:
            imagex = api.VeImageXConfig.model_construct(
                account_id=spec.account_id, region=spec.region, service_id=spec.service_id
            )
            config = api.StorageConfig.model_construct(type=api.StorageType.veimagex.value, ve_image_x_config=imagex)
        self.storage_cache[id(spec)] = (spec, config)
        return config


def _inherit(name: str, levels: tuple[Settings, ...]) -> Any:
    """The value of the nearest level that sets ``name`` (an explicit null counts as set)."""
    for settings in levels:
        if name in settings.model_fields_set:
            return getattr(settings, name)
    return None


class _Inherited:
    """What a room's tasks inherit from the room and the document defaults, worked out once per room."""

    __slots__ = ("business_id", "image", "max_idle_time", "storage", "streams")

    def __init__(self, defaults: Settings, room: Settings):
        levels = (room, defaults)
        self.storage = _inherit("storage", levels)
        self.max_idle_time = _inherit("max_idle_time", levels)
        self.business_id = _inherit("business_id", levels)
        self.streams = _inherit("streams", levels)
        images = [s.image for s in levels if s.image is not None]
        #: Per image field, the nearest level's value (None: not set above the task).
        self.image = tuple(
            next((v for v in (getattr(i, name) for i in images) if v is not None), None) for name in _IMAGE_FIELDS
        )


def _builder(cls: type[BaseModel]):
    """A faster ``cls.model_construct`` for values of every field, given in field order.

    The result is what ``model_construct(**values)`` builds (same ``__dict__``,
    every field in ``model_fields_set``), except that all the instances of a
    class share one fields-set object: they are frozen, and pydantic copies
    that set before changing it (``model_copy``), so nothing mutates it. It
    saves a set per instance, a good part of the memory of a large load.
    """
    names = tuple(cls.model_fields)
    assert cls.model_config.get("frozen") and cls.model_config.get("extra") != "allow"
    assert not cls.__pydantic_post_init__ and not cls.__pydantic_root_model__
    fields_set = set(names)
    new = cls.__new__
    set_attribute = object.__setattr__

    def build(*values: Any) -> Any:
        model = new(cls)
        set_attribute(model, "__dict__", dict(zip(names, values)))
        set_attribute(model, "__pydantic_fields_set__", fields_set)
        set_attribute(model, "__pydantic_extra__", None)
        set_attribute(model, "__pydantic_private__", None)
        return model

    return build


_make_start_request = _builder(api.StartSnapshotRequest)
_make_image_config = _builder(api.ImageConfig)
_make_target_streams = _builder(api.TargetStreams)
_make_stream = _builder(api.Stream)

_ID = re.compile(api.ID_PATTERN.removeprefix("^").removesuffix("$"))


def _is_id(value: Any) -> bool:
    """Whether ``value`` is an :data:`api.Identifier` (the pattern's ``$`` ends the text, as in pydantic)."""
    return type(value) is str and _ID.fullmatch(value) is not None


# --- messages ----------------------------------------------------------------


def _join(path: Sequence, text: str) -> str:
    dotted = ""
    for step in path:
        dotted += f"[{step}]" if type(step) is int and dotted else (f".{step}" if dotted else str(step))
    return f"{dotted}: {text}" if dotted else text


def _unwrap(tp: Any) -> Any:
    while True:
        origin = get_origin(tp)
        if origin is Annotated:
            tp = get_args(tp)[0]
        elif origin is Union and type(None) in get_args(tp):
            tp = next(a for a in get_args(tp) if a is not type(None))
        else:
            return tp


def _fields_at(root: Any, loc: Sequence) -> list[str]:
    """The keys a mapping at pydantic location ``loc`` (relative to ``root``) may hold."""
    tp = root
    for step in loc:
        tp = _unwrap(tp)
        if isinstance(step, str) and step in _TAG_TYPES:
            tp = _TAG_TYPES[step]
        elif isinstance(tp, type) and issubclass(tp, BaseModel):
            info = tp.model_fields.get(step)
            if info is None:
                return []
            tp = info.annotation
        elif get_origin(tp) in (dict, list):
            tp = get_args(tp)[-1]
        else:
            return []
    tp = _unwrap(tp)
    return list(tp.model_fields) if isinstance(tp, type) and issubclass(tp, BaseModel) else []


def _unknown_key(key: Any, root: Any, loc: Sequence) -> str:
    allowed = _fields_at(root, loc[:-1])
    text = f"unknown key {key!r}"
    hint = _did_you_mean(key, allowed)
    if hint:
        return text + hint
    owners = [n for n, m in _STORAGE_MODELS.items() if key in m.model_fields]
    if owners and any(isinstance(s, str) and s in _TAG_TYPES for s in loc):
        return f"{text}: it belongs to storage type {' or '.join(owners)}; allowed here: {', '.join(allowed)}"
    return f"{text}; allowed: {', '.join(allowed)}" if allowed else text


def _id_message(value: Any) -> str:
    if not isinstance(value, str):
        return f"must be a string, got {_describe(value)}"
    if not value:
        return f"is empty; {_ID_RULE}"
    if len(value) > 128:
        return f"is {len(value)} characters long; {_ID_RULE}"
    bad = dict.fromkeys(c for c in value if not (c.isascii() and (c.isalnum() or c in "_@-.")))
    shown = ", ".join(repr(c) for c in bad)
    return f"contains {shown}, not allowed; {_ID_RULE}"


def _message(err: dict, secret: bool, path: Sequence = ()) -> str:
    kind = err["type"]
    value = err.get("input")
    ctx = err.get("ctx") or {}
    got = _describe(value, secret)
    if kind == "string_type":
        if secret or not isinstance(value, (int, float, datetime.date)):
            return f"must be a string, got {got}"
        quoted = f': "{value}"' if type(value) is int else ""
        return f"must be a string, got {got}; quote it{quoted}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"must be an integer, got {got}"
    if kind == "string_pattern_mismatch":
        return _id_message(value)
    if kind == "string_too_short":
        return "must not be empty"
    if kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        name = next((p for p in reversed(path) if isinstance(p, str)), "")
        low, high = _RANGES.get(name, (ctx.get("ge"), ctx.get("le")))
        if low is not None and high is not None:
            return f"must be between {low} and {high}, got {got}"
        return f"must be at least {low}, got {got}" if low is not None else f"must be at most {high}, got {got}"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return f"must be a mapping, got {got}"
    if kind == "list_type":
        return f"must be a list, got {got}"
    if kind == "too_long":
        noun = "streams" if path and path[-1] == "streams" else "items"
        return f"at most {ctx.get('max_length')} {noun} are allowed, got {ctx.get('actual_length')}"
    if kind == "invalid_key":
        return f"keys must be strings, got {got}"
    if kind == "value_error":
        return str(ctx.get("error", err["msg"]))
    if kind == "storage":
        return f"{err['msg']}, got {got}"
    return err["msg"]
