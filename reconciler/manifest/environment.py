"""``${env:NAME}`` in manifests: what a variable that is not set means, by command.

:mod:`reconciler.yamlsource` substitutes the values (and notes each variable not set,
with its place); here each such place is judged by the ``secrets`` mode of the load:
a warning for ``validate``, an error where a task uses it for ``plan`` and ``apply``,
fine in a secret field for ``plan --no-secrets``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from ..yamlsource import Diagnostic, Location
from .resolve import DesiredTask
from .schema import _SECRET_KEYS

#: How ``load_manifests`` treats a ``${env:NAME}`` whose variable is not set.
SECRETS_REQUIRED = "required"  # plan, apply: an error where a task uses it
SECRETS_OPTIONAL = "optional"  # validate: a warning (well-formedness is still checked)
SECRETS_UNKNOWN = "unknown"  # plan --no-secrets: fine in secret fields, an error where a task uses it elsewhere
#: The wire paths of secret fields, as in the state.
_SECRET_PATHS = frozenset(
    {("StorageConfig", "CustomConfig", "SecretKey"), ("StorageConfig", "CustomConfig", "AccessKey")}
)


def _judge_unset(
    diagnostics: list[Diagnostic],
    unset: list[tuple[str, Location]],
    secrets: str,
    tasks: Mapping[str, DesiredTask],
    unmade: Sequence[tuple[Any, str]],
) -> list[Diagnostic]:
    """``diagnostics`` with those for the ``${env:NAME}`` references whose variable is not set.

    Where the reference text broke a rule of its field, that error is replaced:
    the value is unknown, not wrong, and without it no task could be made there.
    """
    places = {location for _, location in unset}
    broken = {d.location for d in diagnostics if d.severity == "error" and d.location in places}
    judged = [d for d in diagnostics if d.location not in broken or d.severity != "error"]
    judged.extend(_unset_diagnostics(unset, tasks, secrets, broken, unmade))
    return judged


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
