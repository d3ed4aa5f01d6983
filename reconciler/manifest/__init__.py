"""Manifests: YAML files declaring snapshot tasks, resolved into StartSnapshot requests.

A document names one app and declares rooms and their tasks; settings are
inherited document ``defaults`` -> room -> task (``image`` field by field,
``streams`` and ``storage`` as a whole). Loading validates every value with
the constrained types of :mod:`reconciler.api`, collects every problem with
its ``file:line:column``, and either returns the fully resolved requests or
raises :class:`ManifestError` listing all of them.

The package, one idea a module, each using only those listed before it:

- :mod:`.diagnostics`: :class:`ManifestError` and how each problem reads;
- :mod:`.schema`: the format as pydantic models, and its JSON Schema;
- :mod:`.resolve`: inheritance, and each task made into its request;
- :mod:`.environment`: what a ``${env:NAME}`` whose variable is not set means;
- :mod:`.loader`: discovery and loading, which ties them together.
"""

from __future__ import annotations

from ..yamlsource import Diagnostic, Location
from .diagnostics import ManifestError
from .environment import SECRETS_OPTIONAL, SECRETS_REQUIRED, SECRETS_UNKNOWN
from .loader import ManifestSet, discover, load_manifests
from .resolve import DesiredTask
from .schema import (
    SCHEMA_FILE_NAME,
    SECRET_FIELDS,
    CustomStorage,
    Image,
    ManifestDocument,
    Room,
    Settings,
    StorageBlock,
    StorageRef,
    StorageSpec,
    Stream,
    TosStorage,
    VeImageXStorage,
    manifest_json_schema,
    manifest_json_schema_bytes,
    write_manifest_schema,
)

__all__ = [
    "SCHEMA_FILE_NAME",
    "SECRETS_OPTIONAL",
    "SECRETS_REQUIRED",
    "SECRETS_UNKNOWN",
    "SECRET_FIELDS",
    "CustomStorage",
    "DesiredTask",
    "Diagnostic",
    "Image",
    "Location",
    "ManifestDocument",
    "ManifestError",
    "ManifestSet",
    "Room",
    "Settings",
    "StorageBlock",
    "StorageRef",
    "StorageSpec",
    "Stream",
    "TosStorage",
    "VeImageXStorage",
    "discover",
    "load_manifests",
    "manifest_json_schema",
    "manifest_json_schema_bytes",
    "write_manifest_schema",
]
