"""YAML loading that remembers where every value came from, through PyYAML.

PyYAML composes node trees (with libyaml when available); this module builds
plain Python values from them while recording the 1-based line and column of
every mapping key, mapping value and sequence item, so that later layers can
report a problem at the place the user must edit. It also enforces what
PyYAML does not: unique keys, YAML 1.1 safe types only, bounded alias
expansion, bounded nesting and file size, clean UTF-8 text, and
``${env:NAME}`` interpolation of string values.

Problems are collected as :class:`Diagnostic` values rather than raised, so a
caller can report every problem of a run together.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # imported on first use: see _import_pyyaml
    import yaml
    from yaml.nodes import MappingNode, ScalarNode, SequenceNode

#: Files larger than this are refused before they are read.
MAX_FILE_BYTES = 16 * 1024 * 1024
#: Values built per file, counting every alias expansion (an "alias bomb" guard).
#: A value takes at least two bytes, so no alias-free file within
#: MAX_FILE_BYTES gets near it: only expanding aliases can (100,000 tasks
#: are about 2 million values).
MAX_NODES = 10_000_000
#: Nesting of mappings and sequences; a manifest needs fewer than ten levels.
MAX_DEPTH = 64

_STR = "tag:yaml.org,2002:str"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
_NULL = "tag:yaml.org,2002:null"
_MERGE = "tag:yaml.org,2002:merge"

#: PyYAML's loader (libyaml's when available) and scalar constructors, set by _import_pyyaml.
_Loader: Any = None
_SCALARS: dict[str, Any] = {}


def _import_pyyaml() -> None:
    """Import PyYAML, the path with positions, on first use: files the fast path reads
    (no anchor, tag or doubtful scalar) need none of it, and its import takes about 10 ms."""
    if _Loader is not None:
        return
    import yaml
    from yaml.constructor import SafeConstructor
    from yaml.nodes import MappingNode, ScalarNode, SequenceNode

    constructor = SafeConstructor()
    globals().update(
        yaml=yaml,
        MappingNode=MappingNode,
        ScalarNode=ScalarNode,
        SequenceNode=SequenceNode,
        _SCALARS={
            "tag:yaml.org,2002:int": constructor.construct_yaml_int,
            "tag:yaml.org,2002:float": constructor.construct_yaml_float,
            "tag:yaml.org,2002:bool": constructor.construct_yaml_bool,
            _NULL: constructor.construct_yaml_null,
            "tag:yaml.org,2002:timestamp": constructor.construct_yaml_timestamp,
            "tag:yaml.org,2002:binary": constructor.construct_yaml_binary,
        },
        _Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader),  # last: another thread may test it
    )


# The characters YAML does not allow in a stream: those outside the set PyYAML's reader
# allows (tab, line feed, carriage return, U+0020-U+007E, U+0085, U+00A0-U+D7FF,
# U+E000-U+FFFD, U+10000 and up), written as that set's complement, which compiles in a
# fraction of the time (tests/test_fast_path.py compares the two on every code point).
_NON_PRINTABLE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x84\x86-\x9f\ud800-\udfff\ufffe\uffff]")
# `$${` escapes a literal `${`; anything else in `${...}` must be `env:NAME`.
_REFERENCE = re.compile(r"\$(\$?)\{([^}]*)\}")
_ENV_NAME = re.compile(r"env:([A-Za-z_][A-Za-z0-9_]*)")


_INT = "tag:yaml.org,2002:int"
#: Integers every YAML reader reads alike: decimal without leading zeros, 0x hex, 0b binary.
_PLAIN_INT = re.compile(r"[-+]?(?:0|[1-9][0-9]*|0x[0-9a-fA-F]+|0b[01]+)")


def _unclosed(text: str) -> bool:
    """Whether ``text`` holds a ``${`` that no ``}`` closes (kept as literal text, it would
    name a bucket ``${env:BUCKET``)."""
    return "${" in _REFERENCE.sub("", text)


_ALIAS = re.compile(r"\*([^\s,\[\]{}]+)")


@dataclass(frozen=True, slots=True)
class Location:
    """A place in a file; line and column are 1-based."""

    file: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


class DeferredEnviron(Mapping[str, str]):
    """An environment in which a variable that is not set is not an error at once:
    ``${env:NAME}`` then stays as written and ``(NAME, location)`` is recorded in
    ``unset``, for the caller to judge (an unused storage profile needs nothing)."""

    def __init__(self, base: Mapping[str, str]):
        self.base = base
        self.unset: list[tuple[str, Location]] = []

    def __getitem__(self, name: str) -> str:
        return self.base[name]

    def __iter__(self):
        return iter(self.base)

    def __len__(self) -> int:
        return len(self.base)


@dataclass(frozen=True)
class Diagnostic:
    """One problem (or warning) found in the manifests."""

    location: Location | None
    message: str
    severity: Literal["error", "warning"] = "error"

    def __str__(self) -> str:
        where = f"{self.location}: " if self.location else ""
        return f"{where}{self.severity}: {self.message}"

    def sort_key(self) -> tuple:
        loc = self.location
        return (loc.file, loc.line, loc.column) if loc else ("", 0, 0), self.severity, self.message


@dataclass
class Document:
    """One YAML document whose top is a mapping, with the positions of its values.

    ``data`` holds plain Python values (dict, list, str, int, float, bool,
    None, date/datetime, bytes). Values reached through an alias are shared
    objects: treat ``data`` as read-only.
    """

    file: str
    data: dict
    line: int
    column: int
    # id(container) -> {key: (key line, key column, value line, value column)}
    # for a dict, [(line, column), ...] for a list.
    _marks: dict[int, Any] = field(repr=False)
    # (line, column) of every string value that refers to `${env:...}`.
    _interpolated: set[tuple[int, int]] = field(repr=False)

    def location(self, path: tuple | list, *, key: bool = False) -> Location:
        """Where the value at ``path`` starts, or its key with ``key=True``.

        A path that leaves the data ends at the deepest value it reaches.
        The empty path is the document itself.
        """
        line, column = key_line, key_column = self.line, self.column
        value: Any = self.data
        for step in path:
            entries: Any = self._marks.get(id(value))
            if isinstance(value, dict):
                try:
                    key_line, key_column, line, column = entries[step]
                except (KeyError, TypeError):
                    break
            elif isinstance(value, list) and type(step) is int and 0 <= step < len(value):
                key_line, key_column = line, column = entries[step]
            else:
                break
            value = value[step]
        return Location(self.file, key_line, key_column) if key else Location(self.file, line, column)

    def interpolated(self, path: tuple | list) -> bool:
        """Whether the string at ``path`` is (or embeds) an ``${env:...}`` reference."""
        loc = self.location(path)
        return (loc.line, loc.column) in self._interpolated


def read_documents(
    path: str | Path, environ: Mapping[str, str] | None = None
) -> tuple[list[Document], list[Diagnostic]]:
    """The mapping documents of one YAML file, and the problems found in it.

    Empty documents are skipped; a file with no document at all is an error. A problem that stops parsing (size, encoding, syntax) ends the
    file, keeping the documents before it; others are reported and loading
    continues so that every problem is seen in one run.
    """
    name = str(path)
    environ = os.environ if environ is None else environ
    diagnostics: list[Diagnostic] = []
    text = _read_text(Path(path), name, diagnostics)
    if text is None:
        return [], diagnostics
    return _parse_text(name, text, environ, diagnostics), diagnostics


def _parse_text(name: str, text: str, environ: Mapping[str, str], diagnostics: list[Diagnostic]) -> list[Document]:
    _import_pyyaml()
    documents: list[Document] = []
    loader = _Loader(text)
    try:
        builder = _Builder(name, environ, diagnostics)
        while loader.check_node():
            node = loader.get_node()
            if isinstance(node, ScalarNode) and node.tag == _NULL and node.value == "":
                continue
            if isinstance(node, MappingNode) and node.tag == _MAP:
                documents.append(builder.document(node))
            else:
                diagnostics.append(
                    Diagnostic(
                        Location(name, *_position(node)),
                        f"a manifest document must be a mapping (app_id, defaults, storage, rooms), got {_node_kind(node)}",
                    )
                )
    except yaml.MarkedYAMLError as exc:
        diagnostics.append(_syntax_error(exc, name, text))
    except _Refused as exc:
        diagnostics.append(exc.diagnostic)
    except RecursionError:  # only the pure-Python parser recurses; libyaml caps nesting itself
        diagnostics.append(Diagnostic(Location(name, 1, 1), f"nesting deeper than {MAX_DEPTH} levels"))
    except yaml.YAMLError as exc:
        diagnostics.append(Diagnostic(Location(name, 1, 1), f"YAML error: {exc}"))
    finally:
        loader.dispose()
    if not documents and not diagnostics:
        # An error, not a warning: a manifest emptied by mistake (or caught half
        # written by a generator) would otherwise stop every task it declared.
        diagnostics.append(
            Diagnostic(
                Location(name, 1, 1),
                "the file holds no YAML document (it is empty or only comments); "
                "delete the file to remove the tasks it declared",
            )
        )
    return documents


class _Refused(Exception):
    """A document that cannot be built at all (bomb, recursion, nesting)."""

    def __init__(self, diagnostic: Diagnostic):
        super().__init__(diagnostic.message)
        self.diagnostic = diagnostic


class _Builder:
    """Builds values from nodes, counting them across the whole file."""

    def __init__(self, file: str, environ: Mapping[str, str], diagnostics: list[Diagnostic]):
        self.file = file
        self.environ = environ
        self.diagnostics = diagnostics
        self.count = 0
        # id(node) -> (value, expanded size) of collections built, for aliases.
        self.built: dict[int, tuple[Any, int]] = {}
        self.active: set[int] = set()
        self.marks: dict[int, Any] = {}
        self.interpolated: set[tuple[int, int]] = set()

    def document(self, node: MappingNode) -> Document:
        # Anchors are scoped to one document, and so are the built values.
        self.built, self.active, self.marks, self.interpolated = {}, set(), {}, set()
        data = self.build(node, 0)
        return Document(self.file, data, *_position(node), self.marks, self.interpolated)

    def error(self, node, message: str) -> None:
        self.diagnostics.append(Diagnostic(Location(self.file, *_position(node)), message))

    def refuse(self, node, message: str) -> _Refused:
        return _Refused(Diagnostic(Location(self.file, *_position(node)), message))

    def build(self, node, depth: int) -> Any:
        if isinstance(node, ScalarNode):
            self.count += 1
            if self.count > MAX_NODES:
                raise self.refuse(node, _bomb_message())
            return self.scalar(node)
        key = id(node)
        done = self.built.get(key)
        if done is not None:
            # An alias: shared, not rebuilt, but its expanded size still counts.
            value, size = done
            self.count += size
            if self.count > MAX_NODES:
                raise self.refuse(node, _bomb_message())
            return value
        if key in self.active:
            raise self.refuse(node, "recursive alias: an anchored value contains an alias to itself")
        if depth >= MAX_DEPTH:
            raise self.refuse(node, f"nesting deeper than {MAX_DEPTH} levels")
        self.active.add(key)
        before = self.count
        self.count += 1
        if isinstance(node, MappingNode) and node.tag == _MAP:
            value = self.mapping(node, depth + 1)
        elif isinstance(node, SequenceNode) and node.tag == _SEQ:
            value = self.sequence(node, depth + 1)
        else:
            self.error(node, _unsupported_tag(node.tag))
            value = None
        self.active.discard(key)
        self.built[key] = (value, self.count - before)
        return value

    def scalar(self, node: ScalarNode) -> Any:
        tag = node.tag
        if tag == _STR:
            value = node.value
            if "${" in value:
                value = self.interpolate(node, value)
            return value
        construct = _SCALARS.get(tag)
        if construct is None:
            self.error(node, _unsupported_tag(tag))
            return None
        try:
            value = construct(node)
        except (ValueError, yaml.YAMLError) as exc:
            self.error(node, f"invalid {tag.rsplit(':', 1)[-1]} value: {exc}")
            return None
        if tag == _INT and not _PLAIN_INT.fullmatch(node.value):
            # YAML 1.1 reads 0012 as 10 (octal), 1:30 as 90 (base 60), 1_0 as 10;
            # YAML 1.2 tools read them otherwise: refuse rather than guess.
            self.error(
                node,
                f"ambiguous integer {node.value!r} (YAML 1.1 reads it as {value}, other YAML readers differently): "
                "write the number in plain decimal, or quote it for a string",
            )
            return None
        return value

    def interpolate(self, node: ScalarNode, text: str) -> str:
        problems: list[str] = []
        referenced = False

        def replace(match: re.Match) -> str:
            escaped, body = match.groups()
            if escaped:
                return "${" + body + "}"
            ref = _ENV_NAME.fullmatch(body)
            if ref is None:
                problems.append(f"unsupported reference ${{{body}}}: write ${{env:NAME}}, or $${{ for a literal ${{")
                return match.group(0)
            nonlocal referenced
            referenced = True
            try:
                return self.environ[ref.group(1)]
            except KeyError:
                unset = getattr(self.environ, "unset", None)
                if unset is not None:
                    # The caller decides: the reference stands for the unknown value.
                    unset.append((ref.group(1), Location(self.file, *_position(node))))
                    return match.group(0)
                problems.append(
                    f"environment variable {ref.group(1)} is not set (referenced as ${{env:{ref.group(1)}}})"
                )
                return match.group(0)

        result = _REFERENCE.sub(replace, text)
        if _unclosed(text):
            problems.append(
                "unclosed ${ (no closing brace): write ${env:NAME}, or $${ for a literal ${ followed by a closing }"
            )
        for problem in problems:
            self.error(node, problem)
        if referenced:
            self.interpolated.add(_position(node))
        return result

    def key(self, node) -> tuple[bool, Any]:
        if not isinstance(node, ScalarNode):
            self.error(node, f"a mapping key must be a plain scalar, got {_node_kind(node)}")
            return False, None
        self.count += 1
        if node.tag == _STR:
            return True, node.value
        construct = _SCALARS.get(node.tag)
        if construct is None:
            self.error(node, _unsupported_tag(node.tag))
            return False, None
        try:
            return True, construct(node)
        except (ValueError, yaml.YAMLError) as exc:
            self.error(node, f"invalid key: {exc}")
            return False, None

    def mapping(self, node: MappingNode, depth: int) -> dict:
        result: dict = {}
        entries: dict = {}
        merges = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:
                merges.append(value_node)
                continue
            ok, key = self.key(key_node)
            if not ok:
                continue
            if key in entries:
                first = entries[key][0]
                self.error(
                    key_node, f"duplicate key {key!r} in this mapping (first at line {first}); YAML keys must be unique"
                )
                continue
            value = self.build(value_node, depth)
            result[key] = value
            kl, kc = _position(key_node)
            vl, vc = _position(value_node)
            entries[key] = (kl, kc, vl, vc)
        if merges:
            self.merge(merges, result, entries, depth)
        self.marks[id(result)] = entries
        return result

    def merge(self, merges: list, result: dict, entries: dict, depth: int) -> None:
        """YAML 1.1 merge keys: keys written here win, then earlier sources."""
        for value_node in merges:
            sources = value_node.value if isinstance(value_node, SequenceNode) else [value_node]
            for source_node in sources:
                source = self.build(source_node, depth)
                if not isinstance(source, dict):
                    self.error(
                        source_node,
                        f"a merge key (<<) takes a mapping or a list of mappings, got {_node_kind(source_node)}",
                    )
                    continue
                source_entries = self.marks[id(source)]
                for key, value in source.items():
                    if key not in result:
                        result[key] = value
                        entries[key] = source_entries[key]

    def sequence(self, node: SequenceNode, depth: int) -> list:
        result = []
        positions = []
        for item in node.value:
            result.append(self.build(item, depth))
            positions.append(_position(item))
        self.marks[id(result)] = positions
        return result


def _position(node) -> tuple[int, int]:
    mark = node.start_mark
    return mark.line + 1, mark.column + 1


_SCALAR_NOUNS = {
    _STR: "a string",
    _NULL: "null",
    "tag:yaml.org,2002:int": "an integer",
    "tag:yaml.org,2002:float": "a number",
    "tag:yaml.org,2002:bool": "a boolean",
    "tag:yaml.org,2002:timestamp": "a date",
    "tag:yaml.org,2002:binary": "binary data",
}


def _node_kind(node) -> str:
    if isinstance(node, (MappingNode, SequenceNode)):
        kind = "a mapping" if isinstance(node, MappingNode) else "a list"
        return kind if node.tag in (_MAP, _SEQ) else f"{kind} tagged {_shown_tag(node.tag)}"
    noun = _SCALAR_NOUNS.get(node.tag)
    return noun if noun else f"a value tagged {_shown_tag(node.tag)}"


def _shown_tag(tag: str) -> str:
    return "!!" + tag[len("tag:yaml.org,2002:") :] if tag.startswith("tag:yaml.org,2002:") else tag


def _unsupported_tag(tag: str) -> str:
    return f"unsupported YAML tag {_shown_tag(tag)}: only plain mappings, lists, strings, numbers, booleans and null are allowed"


def _bomb_message() -> str:
    return f"more than {MAX_NODES:,} values after expanding aliases; refusing what looks like an alias bomb"


def _read_text(path: Path, name: str, diagnostics: list[Diagnostic]) -> str | None:
    """The file as text, or None after reporting why it cannot be YAML."""
    start = Location(name, 1, 1)
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            diagnostics.append(
                Diagnostic(start, f"file is {size:,} bytes; manifests are limited to {MAX_FILE_BYTES:,} bytes")
            )
            return None
        data = path.read_bytes()
    except OSError as exc:
        diagnostics.append(Diagnostic(start, f"cannot read the file: {exc.strerror or exc}"))
        return None
    nul = data.find(b"\0")
    if nul >= 0:
        diagnostics.append(
            Diagnostic(
                _byte_location(name, data, nul), f"NUL byte at byte offset {nul}: this is binary data, not YAML text"
            )
        )
        return None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        diagnostics.append(
            Diagnostic(
                _byte_location(name, data, exc.start),
                f"invalid UTF-8 (byte 0x{data[exc.start]:02x}) at byte offset {exc.start}: manifests must be UTF-8 text",
            )
        )
        return None
    bad = _NON_PRINTABLE.search(text)
    if bad is not None:
        offset = len(text[: bad.start()].encode("utf-8")) + (3 if data.startswith(b"\xef\xbb\xbf") else 0)
        diagnostics.append(
            Diagnostic(
                _byte_location(name, data, offset),
                f"control character U+{ord(bad.group()):04X} at byte offset {offset} is not allowed in YAML (binary data?)",
            )
        )
        return None
    return text


def _byte_location(name: str, data: bytes, offset: int) -> Location:
    line_start = data.rfind(b"\n", 0, offset) + 1
    column = len(data[line_start:offset].decode("utf-8", errors="replace")) + 1
    return Location(name, data.count(b"\n", 0, offset) + 1, column)


def _syntax_error(exc: yaml.MarkedYAMLError, file: str, text: str) -> Diagnostic:
    mark = exc.problem_mark or exc.context_mark
    line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
    lines = text.split("\n", line)
    current = lines[line - 1] if len(lines) >= line else ""
    indent = current[: len(current) - len(current.lstrip(" \t"))]
    if "\t" in indent or current[column - 1 : column] == "\t":
        column = indent.index("\t") + 1 if "\t" in indent else column
        return Diagnostic(
            Location(file, line, column), "YAML syntax error: tab character; YAML indents with spaces only"
        )
    if (exc.problem or "").startswith("found undefined alias"):
        alias = _ALIAS.match(current, column - 1)
        name = alias.group(1) if alias else "NAME"
        return Diagnostic(
            Location(file, line, column), f"undefined alias *{name}: no anchor &{name} before it in this document"
        )
    message = f"YAML syntax error: {exc.problem or 'invalid YAML'}"
    if exc.context:
        message += f" ({exc.context}"
        if exc.context_mark is not None and exc.context_mark.line + 1 != line:
            message += f" started at line {exc.context_mark.line + 1}"
        message += ")"
    return Diagnostic(Location(file, line, column), message)
