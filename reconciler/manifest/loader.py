"""Loading: the manifest files under the paths given, read with positions, validated piece
by piece (document shape, defaults, each storage profile, each room, each task) so that
one bad task does not hide the problems of others, and resolved into a
:class:`ManifestSet`, or a :class:`ManifestError` listing every problem of every file.
"""

from __future__ import annotations

import gc
import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..yamlsource import DeferredEnviron, Diagnostic, Document, Location, read_documents, read_documents_fast
from .diagnostics import ManifestError, _did_you_mean, _join, _message, _short
from .environment import SECRETS_REQUIRED, _judge_unset, _keyed_strings
from .resolve import DesiredTask, _Inherited, _Requests
from .schema import (
    _BLOCK_ADAPTER,
    _EMPTY,
    _SECRET_KEYS,
    _TAG_TYPES,
    CustomStorage,
    Settings,
    StorageBlock,
    StorageSpec,
    _DocumentShape,
    _fields_at,
    _is_id,
    _RoomShape,
    _unknown_key,
)


@dataclass
class ManifestSet:
    """Everything the manifests declare: tasks by address (sorted), warnings, files read."""

    tasks: dict[str, DesiredTask]
    warnings: list[Diagnostic] = field(default_factory=list)
    files: list[str] = field(default_factory=list)


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
        collector.diagnostics = _judge_unset(
            collector.diagnostics, environ.unset, secrets, collector.tasks, collector.unmade
        )
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
        self.requests = _Requests()

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
        # The nearest level that sets it wins (an explicit null counts as set).
        storage = task.storage if "storage" in task.__pydantic_fields_set__ else inherited.storage
        if storage is None:
            self.collector.error(
                location,
                _join(path, f"no storage for this task; set storage on the task, on room {room_id}, or in defaults"),
            )
            return
        # The profile, or the block, was checked usable before the task was added.
        spec = self.profiles[storage] if isinstance(storage, str) else storage
        request = self.requests.request(app_id, room_id, task_id, inherited, task, spec)  # type: ignore[arg-type]
        self.collector.tasks[address] = DesiredTask(address, request, location)
