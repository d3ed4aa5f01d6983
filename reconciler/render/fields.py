"""A field's value as plans and ``state show`` print it: JSON with secrets masked, the
manifest's name beside an API code, and the changes of an action field by field."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from typing import Any

from ..api import printable
from ..plan import STARTS, UNKNOWN_SECRET, ActionKind, FieldChange, PlannedAction, mask_secrets


def field_value(value: Any, path: str = "", body: dict[str, Any] | None = None) -> str:
    """A field's value as plans and ``state show`` print it: JSON, secrets masked, and the
    manifest's name beside an API code (``0 (jpeg)``, ``0 (cn-beijing)``). ``body``: the
    request the value is part of (a region's name depends on its storage's vendor)."""
    if value is None:
        return "(none)"
    if value == UNKNOWN_SECRET:
        return UNKNOWN_SECRET
    # JSON escapes the C0 controls; printable the rest (C1 controls, separators), never cut.
    text = printable(json.dumps(mask_secrets(value), ensure_ascii=False, sort_keys=False), limit=sys.maxsize)
    name = code_name(path, value, body)
    return f"{text} ({name})" if name else text


def code_name(path: str, value: Any, body: dict[str, Any] | None = None) -> str | None:
    """The manifest's word for an API code at ``path`` (``ImageConfig.Format`` 1 -> ``png``;
    a storage ``Region`` by the vendor's table, the vendor read from ``body``)."""
    if type(value) is not int:
        return None
    if path.startswith("StorageConfig.") and path.endswith("Config.Region"):
        return _region_name(path, value, body)
    enum = _CODES.get(path.rsplit(".", 1)[-1] if path.endswith(".StreamType") else path)
    if enum is None:
        return None
    try:
        return enum(value).name
    except ValueError:
        return None


def _region_name(path: str, code: int, body: dict[str, Any] | None) -> str | None:
    from .. import api, regions

    if path == "StorageConfig.TosConfig.Region":
        return regions.region_name("tos", None, code)
    if path != "StorageConfig.CustomConfig.Region" or body is None:
        return None
    custom = (body.get("StorageConfig") or {}).get("CustomConfig") or {}
    try:
        vendor = api.Vendor(custom.get("Vendor", 0)).name
    except (ValueError, TypeError):
        return None
    return regions.region_name("custom", vendor, code)


def _code_enums() -> dict[str, Any]:
    from .. import api

    return {
        "ImageConfig.Format": api.Format,
        "StreamType": api.StreamType,
        "StorageConfig.Type": api.StorageType,
        "StorageConfig.CustomConfig.Vendor": api.Vendor,
    }


_CODES = _code_enums()


def code_names(body: dict[str, Any] | None) -> dict[str, str]:
    """The manifest's names of the API codes in ``body``, by flattened path (``{"ImageConfig.Format": "jpeg"}``)."""
    names = {path: code_name(path, value, body) for path, value in flatten(body)}
    return {path: name for path, name in names.items() if name is not None}


def flatten(body: dict[str, Any] | list[Any] | None, prefix: str = "") -> list[tuple[str, Any]]:
    """``{"A": {"B": 1}}`` -> ``[("A.B", 1)]``, lists as ``[i]``; secrets masked."""
    out: list[tuple[str, Any]] = []
    items: Iterable[tuple[Any, Any]] = (body or {}).items() if isinstance(body, dict) else enumerate(body or [])
    for key, value in items:
        path = f"{prefix}[{key}]" if isinstance(key, int) else (f"{prefix}.{key}" if prefix else str(key))
        if isinstance(value, (dict, list)) and value:
            out.extend(flatten(value, path))
        else:
            out.append((path, mask_secrets(value)))
    return out


def action_changes(action: PlannedAction) -> list[FieldChange]:
    """The field changes of an action; creates and deletes list every field."""
    if action.kind in STARTS:
        return [
            FieldChange(
                path=p, old=None, new=v, forces_replacement=False, sensitive=v in ("(sensitive)", UNKNOWN_SECRET)
            )
            for p, v in flatten(action.desired)
        ]
    if action.kind is ActionKind.delete:
        return [
            FieldChange(path=p, old=v, new=None, forces_replacement=False, sensitive=v == "(sensitive)")
            for p, v in flatten(action.current)
        ]
    return action.changes
