"""The manifest format as pydantic models, the single source of truth of what a document
may hold: value types that also accept the API's names (``jpeg``, ``main``, ``s3``),
storage blocks told apart by their ``type``, the settings ``defaults``, rooms and tasks
take, and the JSON Schema ``snapctl schema`` prints and writes. Each field's rules are
:mod:`reconciler.api`'s types.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
)
from pydantic.json_schema import SkipJsonSchema

from .. import api, regions
from ..errors import UsageError
from .diagnostics import _describe, _did_you_mean

#: API field paths (PascalCase, as in :meth:`api.WireModel.wire`) that hold secrets.
SECRET_FIELDS = ("StorageConfig.CustomConfig.AccessKey", "StorageConfig.CustomConfig.SecretKey")
_SECRET_KEYS = frozenset({"access_key", "secret_key"})


# --- value types -------------------------------------------------------------


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

_ID = re.compile(api.ID_PATTERN.removeprefix("^").removesuffix("$"))


def _is_id(value: Any) -> bool:
    """Whether ``value`` is an :data:`api.Identifier` (the pattern's ``$`` ends the text, as in pydantic)."""
    return type(value) is str and _ID.fullmatch(value) is not None


# --- the keys each place holds (for messages) --------------------------------


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


# --- the JSON Schema -----------------------------------------------------------


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
