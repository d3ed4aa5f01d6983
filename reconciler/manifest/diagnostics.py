"""How a manifest problem reads: :class:`ManifestError`, and the text of each kind of
problem pydantic reports (values described, never a secret's; near misses suggested;
ranges as the API states them). Locations (``file:line:column``) are
:mod:`reconciler.yamlsource`'s; this module knows nothing of the document's models.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Any

import annotated_types

from .. import api
from ..errors import UsageError
from ..yamlsource import Diagnostic

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


def _join(path: Sequence, text: str) -> str:
    dotted = ""
    for step in path:
        dotted += f"[{step}]" if type(step) is int and dotted else (f".{step}" if dotted else str(step))
    return f"{dotted}: {text}" if dotted else text


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
