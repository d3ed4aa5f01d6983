"""The fast path: YAML read by ``ryaml``, with the values :mod:`.reader` would build.

Reading through PyYAML's node graph costs more than everything else a plan
does, so :func:`read_documents_fast` first tries ``ryaml`` (serde_yaml, whose
parser is libyaml's, translated to Rust), which returns plain values ten times
faster and without positions. It declines, and the caller falls back to
:func:`~.reader.read_documents`, whenever its values could differ from PyYAML's: tags,
merge keys, an anchor defined twice (PyYAML refuses it, ryaml takes the last), aliases
that could expand past PyYAML's bound (see :func:`_doubtful_text`), ``0o`` octals, any
scalar PyYAML would resolve
to another type than ``ryaml`` (``yes``, ``1_000``, dates...), duplicate keys
(``ryaml`` refuses them), keys that are not strings, values that are neither
strings, integers, nulls, mappings nor lists, deep nesting, empty documents, and
any problem at all. Positions are only needed for messages, which the PyYAML
path produces: the documents it returns compute a location on demand by
reading the same text again through PyYAML (:class:`FastDocument`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .reader import (
    _ENV_NAME,
    _REFERENCE,
    MAX_DEPTH,
    MAX_NODES,
    Diagnostic,
    Document,
    Location,
    _parse_text,
    _read_text,
    _unclosed,
)

try:  # the fast path; without it every file takes the PyYAML path
    import ryaml as _fast
except ImportError:  # pragma: no cover - a declared dependency
    _fast = None  # type: ignore[assignment]

#: Where a tag, anchor (with its name) or alias may start, and ``0o`` octals (an
#: integer for ryaml, a string for PyYAML): see :func:`_doubtful_text`.
_FAST_MARKS = re.compile(r"[!*]|&([^\s,\[\]{}]*)|0[oO]")
_TOKEN_START = frozenset(" \t\r\n[]{},:")

# PyYAML's implicit resolvers by first character, as its Resolver uses them: a plain
# scalar matching one of these is not a string for PyYAML. Copied from yaml/resolver.py
# (the fast path runs without importing PyYAML); tests/test_fast_path.py checks that
# they are PyYAML's own, pattern for pattern.
_BOOL = re.compile(
    r"""^(?:yes|Yes|YES|no|No|NO
                    |true|True|TRUE|false|False|FALSE
                    |on|On|ON|off|Off|OFF)$""",
    re.X,
)
_FLOAT = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?
                    |\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?
                    |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
                    |[-+]?\.(?:inf|Inf|INF)
                    |\.(?:nan|NaN|NAN))$""",
    re.X,
)
_INT_FORMS = re.compile(
    r"""^(?:[-+]?0b[0-1_]+
                    |[-+]?0[0-7_]+
                    |[-+]?(?:0|[1-9][0-9_]*)
                    |[-+]?0x[0-9a-fA-F_]+
                    |[-+]?[1-9][0-9_]*(?::[0-5]?[0-9])+)$""",
    re.X,
)
_MERGE_KEY = re.compile(r"^(?:<<)$")
_NULL_FORMS = re.compile(
    r"""^(?: ~
                    |null|Null|NULL
                    | )$""",
    re.X,
)
_TIMESTAMP = re.compile(
    r"""^(?:[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]
                    |[0-9][0-9][0-9][0-9] -[0-9][0-9]? -[0-9][0-9]?
                     (?:[Tt]|[ \t]+)[0-9][0-9]?
                     :[0-9][0-9] :[0-9][0-9] (?:\.[0-9]*)?
                     (?:[ \t]*(?:Z|[-+][0-9][0-9]?(?::[0-9][0-9])?))?)$""",
    re.X,
)
_VALUE = re.compile(r"^(?:=)$")
_YAML = re.compile(r"^(?:!|&|\*)$")
_RESOLVERS: dict[str, list[re.Pattern]] = {}
for _regexp, _firsts in (
    (_BOOL, "yYnNtTfFoO"),
    (_FLOAT, "-+0123456789."),
    (_INT_FORMS, "-+0123456789"),
    (_MERGE_KEY, "<"),
    (_NULL_FORMS, ["~", "n", "N", ""]),
    (_TIMESTAMP, "0123456789"),
    (_VALUE, "="),
    (_YAML, "!&*"),
):
    for _first in _firsts:
        _RESOLVERS.setdefault(_first, []).append(_regexp)
# Whether a string that PyYAML would resolve when written plain could have been
# written plain for ryaml too (then the two parsers may disagree on it).
_PLAIN_DOUBT: dict[str, bool] = {}


class _Declined(Exception):
    """The fast path cannot vouch for this file: read it through PyYAML."""


def read_documents_fast(path: str | Path, environ: Mapping[str, str] | None = None) -> list[Document] | None:
    """The documents of a well-formed file, as :func:`read_documents` would return
    them, or None when the fast path declines (any doubt, any problem): then the
    caller must use :func:`read_documents`, which also reports the problems.

    The documents' values are equal to the PyYAML path's; their locations are
    computed on first use, by reading the same text through PyYAML.
    """
    if _fast is None:
        return None
    name = str(path)
    environ = os.environ if environ is None else environ
    diagnostics: list[Diagnostic] = []
    text = _read_text(Path(path), name, diagnostics)
    if text is None or diagnostics or _doubtful_text(text) or _too_deep(text):
        return None
    try:
        values = _fast.loads_all(text)
    except BaseException as exc:  # any refusal (pyo3 panics derive from BaseException)
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        return None
    if not values:
        return None
    source = _PositionSource(name, text, environ)
    documents: list[Document] = []
    for index, data in enumerate(values):
        # An empty document, or one that is not a mapping: PyYAML skips or reports it.
        if type(data) is not dict:
            return None
        checker = _FastChecker(environ)
        try:
            checker.mapping(data, 0)
        except (_Declined, RecursionError):
            return None
        documents.append(FastDocument(name, data, 0, 0, {}, set(), source, index, checker.interpolated))
    return documents


_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_INNERMOST = re.compile(r"\[\]|\{\}")
_OPENERS = re.compile(r"[\[{]{%d}" % (MAX_DEPTH + 1))


def _too_deep(text: str) -> bool:
    """Whether flow collections in ``text`` may nest deeper than :data:`MAX_DEPTH`.

    ryaml takes time quadratic in the nesting depth (25,000 levels: a second;
    100,000: 18 s), so such a file goes to PyYAML, which refuses it at once
    with its location. Each pass strips the innermost bracket pairs, so the
    passes count the depth; brackets inside strings or comments can only
    make this decline a file the fast path would have read.
    """
    brackets = _NOT_BRACKET.sub("", text)
    for _ in range(MAX_DEPTH):
        if not brackets:
            return False
        if _OPENERS.search(brackets):  # that many openers in a row: no need to count further
            return True
        stripped = _INNERMOST.sub("", brackets)
        if stripped == brackets:  # unbalanced (brackets in strings): decline if many are left
            return len(brackets) > MAX_DEPTH
        brackets = stripped
    return bool(brackets)


def _doubtful_text(text: str) -> bool:
    """Whether ``text`` may read otherwise through ryaml than through PyYAML: a token
    that starts with a tag or a ``0o`` octal, an anchor name given twice, or more
    aliases than the expansion bound allows (a mark in a comment or a quoted string
    counts too: declining costs only time).

    ryaml expands aliases into copies (equal to the values PyYAML shares) and has no
    bound of its own that matches PyYAML's, which refuses a file whose values, aliases
    expanded, pass ``MAX_NODES``. A file of ``n`` characters holds fewer than ``2n + 1``
    values before expansion (generously: ``[?]`` is four values in three characters),
    and each alias copies a value already built, so at most doubles the count: with
    ``a`` aliases, fewer than ``(2n + 1) * 2**a`` values. Files
    within that bound (a short file may use a dozen aliases) take the fast path; the
    rest go to PyYAML, which counts exactly.
    """
    anchors: set[str] = set()
    aliases = 0
    for match in _FAST_MARKS.finditer(text):
        start = match.start()
        mark = text[start]
        if mark == "0" and start and text[start - 1] in "+-":
            start -= 1  # a signed octal
        if start and text[start - 1] not in _TOKEN_START:
            continue
        if mark == "*":
            aliases += 1
        elif mark == "&":
            name = match.group(1)
            if name in anchors:
                return True
            anchors.add(name)
        else:
            return True
    return aliases > 0 and (2 * len(text) + 1) << aliases > MAX_NODES


def _plain_doubt(value: str) -> bool:
    """Whether PyYAML may have read ``value`` as another type than ryaml did."""
    if "\n" in value:  # a plain scalar never holds a line break
        return False
    doubt = _PLAIN_DOUBT.get(value)
    if doubt is None:
        # PyYAML resolves it when plain. ryaml returned a string: if ryaml would
        # resolve the same text when plain, it was quoted, and is a string for both.
        try:
            probe = _fast.loads("a: " + value)
            doubt = not (type(probe) is dict and type(probe.get("a")) is not str)
        except Exception:
            doubt = True
        if len(_PLAIN_DOUBT) < 4096:
            _PLAIN_DOUBT[value] = doubt
    return doubt


def _resolves(value: str) -> bool:
    """Whether PyYAML would read ``value``, written plain, as anything but a string."""
    patterns = _RESOLVERS.get(value[:1])
    if patterns is None:
        return False
    for regexp in patterns:
        if regexp.match(value):
            return True
    return False


class _FastChecker:
    """Walks ryaml's values: interpolates ``${env:...}`` as the PyYAML path does,
    records where, and declines at any doubt."""

    __slots__ = ("environ", "interpolated", "path")

    def __init__(self, environ: Mapping[str, str]):
        self.environ = environ
        self.interpolated: set[tuple] = set()
        self.path: list = []

    def string(self, value: str, step: Any) -> str:
        if "${" in value:
            return self.interpolate(value, step)
        if _resolves(value) and _plain_doubt(value):
            raise _Declined
        return value

    def mapping(self, data: dict, depth: int) -> None:
        if depth >= MAX_DEPTH - 1:
            raise _Declined
        path = self.path
        for key, value in data.items():
            if type(key) is not str or (_resolves(key) and _plain_doubt(key)):
                raise _Declined
            kind = type(value)
            if kind is str:
                if "${" in value or _resolves(value):
                    data[key] = self.string(value, key)
            elif kind is dict:
                path.append(key)
                self.mapping(value, depth + 1)
                path.pop()
            elif kind is list:
                path.append(key)
                self.sequence(value, depth + 1)
                path.pop()
            elif kind is not int and value is not None:
                raise _Declined

    def sequence(self, items: list, depth: int) -> None:
        if depth >= MAX_DEPTH - 1:
            raise _Declined
        path = self.path
        for index, value in enumerate(items):
            kind = type(value)
            if kind is str:
                if "${" in value or _resolves(value):
                    items[index] = self.string(value, index)
            elif kind is dict:
                path.append(index)
                self.mapping(value, depth + 1)
                path.pop()
            elif kind is list:
                path.append(index)
                self.sequence(value, depth + 1)
                path.pop()
            elif kind is not int and value is not None:
                raise _Declined

    def interpolate(self, text: str, step: Any) -> str:
        referenced = False

        def replace(match: re.Match) -> str:
            escaped, body = match.groups()
            if escaped:
                return "${" + body + "}"
            ref = _ENV_NAME.fullmatch(body)
            if ref is None:
                raise _Declined  # reported by the PyYAML path
            nonlocal referenced
            referenced = True
            try:
                return self.environ[ref.group(1)]
            except KeyError:
                raise _Declined from None

        result = _REFERENCE.sub(replace, text)
        if _unclosed(text):
            raise _Declined  # reported by the PyYAML path
        if referenced:
            self.interpolated.add((*self.path, step))
        return result


class _PositionSource:
    """One file's text, read through PyYAML (positions and all) on first need."""

    __slots__ = ("_documents", "environ", "name", "text")

    def __init__(self, name: str, text: str, environ: Mapping[str, str]):
        self.name = name
        self.text = text
        self.environ = environ
        self._documents: list[Document] | None = None

    def document(self, index: int) -> Document:
        if self._documents is None:
            self._documents = _parse_text(self.name, self.text, self.environ, [])
        return self._documents[index]


class FastDocument(Document):
    """A document read by the fast path; its locations are found when first used."""

    def __init__(
        self, file, data, line, column, marks, interpolated, source: _PositionSource, index: int, paths: set[tuple]
    ):
        super().__init__(file, data, line, column, marks, interpolated)
        self._source = source
        self._index = index
        self._paths = paths

    def location(self, path: tuple | list, *, key: bool = False) -> Location:
        return _DeferredLocation(self._source, self._index, tuple(path), key)

    def interpolated(self, path: tuple | list) -> bool:
        return tuple(path) in self._paths


class _DeferredLocation(Location):
    """A :class:`Location` found on first use; equal to (and hashed like) the Location it stands for."""

    __slots__ = ("_found", "_where")
    _found: Location | None
    _where: tuple[Any, int, tuple, bool]

    def __init__(self, source: _PositionSource, index: int, path: tuple, key: bool):
        object.__setattr__(self, "_where", (source, index, path, key))
        object.__setattr__(self, "_found", None)

    def _resolve(self) -> Location:
        found = self._found
        if found is None:
            source, index, path, key = self._where
            found = source.document(index).location(path, key=key)
            object.__setattr__(self, "_found", found)
        return found

    @property
    def file(self) -> str:
        return self._where[0].name

    @property
    def line(self) -> int:
        return self._resolve().line

    @property
    def column(self) -> int:
        return self._resolve().column

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Location):
            return (self.file, self.line, self.column) == (other.file, other.line, other.column)
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self.file, self.line, self.column))

    def __repr__(self) -> str:
        return repr(self._resolve())
