"""YAML loading that remembers where every value came from.

Values are plain Python values, each mapping key, mapping value and sequence item
with its 1-based line and column; problems are collected as :class:`Diagnostic`
values rather than raised, so a caller can report every problem of a run together.

- :mod:`.reader`: the PyYAML path, which records positions and enforces what PyYAML
  does not (unique keys, safe types, bounded aliases, nesting and size, clean text,
  ``${env:NAME}`` interpolation);
- :mod:`.fast`: the ``ryaml`` path, ten times faster, for well-formed files whose values
  it reads exactly as the PyYAML path would; it declines every other file.
"""

from __future__ import annotations

from .fast import FastDocument, read_documents_fast
from .reader import (
    MAX_DEPTH,
    MAX_FILE_BYTES,
    MAX_NODES,
    DeferredEnviron,
    Diagnostic,
    Document,
    Location,
    read_documents,
)

__all__ = [
    "MAX_DEPTH",
    "MAX_FILE_BYTES",
    "MAX_NODES",
    "DeferredEnviron",
    "Diagnostic",
    "Document",
    "FastDocument",
    "Location",
    "read_documents",
    "read_documents_fast",
]
