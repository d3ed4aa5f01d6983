"""Field-by-field changes between two wire requests, secrets shown only as markers:
the ``changes`` of an action, and whether they force a replacement.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..state import is_fingerprint
from .model import FieldChange

#: The only field UpdateSnapshot can change in place.
IN_PLACE_FIELDS = frozenset({"ImageConfig.Interval"})


def _path_text(parts: Sequence[Any]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def mask_secrets(value: Any) -> Any:
    """Replace fingerprints, however deep, by a marker: output shows that a secret changed, never what it is."""
    if is_fingerprint(value):
        return "(sensitive)"
    if isinstance(value, dict):
        return {k: mask_secrets(v) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_secrets(v) for v in value]
    return value


def _has_secret(value: Any) -> bool:
    if isinstance(value, dict):
        return any(_has_secret(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_secret(v) for v in value)
    return is_fingerprint(value)


def diff_requests(current: Mapping[str, Any], desired: Mapping[str, Any]) -> list[FieldChange]:
    """Field-by-field changes from ``current`` to ``desired`` (both wire bodies), in a stable order."""
    differences: list[tuple[list, Any, Any]] = []
    if not _leaf_changes(dict(current), dict(desired), [], differences):
        differences = _deepdiff_changes(current, desired)
    changes: list[FieldChange] = []
    for parts, old, new in differences:
        path = _path_text(parts)
        sensitive = _has_secret(old) or _has_secret(new)
        changes.append(
            FieldChange(
                path=path,
                old=mask_secrets(old),
                new=mask_secrets(new),
                forces_replacement=path not in IN_PLACE_FIELDS,
                sensitive=sensitive,
            )
        )
    changes.sort(key=lambda c: c.path)
    return changes


def _deepdiff_changes(current: Mapping[str, Any], desired: Mapping[str, Any]) -> list[tuple[list, Any, Any]]:
    from deepdiff import DeepDiff  # imported only when needed (about 20 ms)

    diff = DeepDiff(dict(current), dict(desired), view="tree", verbose_level=2)
    return [
        (
            level.path(output_format="list"),
            None if _missing(level.t1) else level.t1,
            None if _missing(level.t2) else level.t2,
        )
        for report in diff.values()
        for level in report
    ]


_PLAIN = (str, int, bool, type(None))


def _leaf_changes(old: Any, new: Any, parts: list, out: list) -> bool:
    """The changes DeepDiff reports between two wire bodies, in the common cases,
    appended to ``out`` as ``(path parts, old, new)``; False when a case is left
    to DeepDiff (lists of different lengths, values of other types).

    DeepDiff (tree view) reports a value of another type as one change at its
    path (``type_changes``), a differing value of the same type likewise
    (``values_changed``), a key on one side only as a change from or to
    nothing (``dictionary_item_added``/``removed``), and descends into
    mappings and lists of equal length item by item.
    """
    kind = type(old)
    if kind is not type(new):
        out.append((parts, old, new))
        return True
    if kind is dict:
        for key, value in old.items():
            if key in new:
                if value is not new[key] and not _leaf_changes(value, new[key], [*parts, key], out):
                    return False
            else:
                out.append(([*parts, key], value, None))
        for key, value in new.items():
            if key not in old:
                out.append(([*parts, key], None, value))
        return True
    if kind is list:
        if len(old) != len(new):
            return False
        for index, (a, b) in enumerate(zip(old, new)):
            if a is not b and not _leaf_changes(a, b, [*parts, index], out):
                return False
        return True
    if kind in _PLAIN:
        if old != new:
            out.append((parts, old, new))
        return True
    return False


def _missing(value: Any) -> bool:
    return type(value).__name__ == "NotPresent"
