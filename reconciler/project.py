"""The project a run belongs to: ``snapctl.toml`` and the selected workspace.

``snapctl.toml`` is looked for in the working directory, then its parents, stopping
at the filesystem root or at a directory holding ``.git`` (a repository's root). It
pins ``state``, ``workspace``, ``endpoint``, ``region`` and the default ``manifests``
paths; relative paths resolve against the file's own directory, so that every
subfolder of the project uses the same state. The project directory is that file's
directory, else the working directory.

``snapctl workspace select NAME`` remembers its choice in ``.snapctl/workspace`` in
the project directory.

Each setting is, first found: the flag, the environment variable, (for the workspace:
the selection), the file, the default.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from .errors import UsageError

DEFAULT_WORKSPACE = "default"
PROJECT_FILE = "snapctl.toml"
#: The selection, relative to the project directory.
SELECTION_FILE = Path(".snapctl") / "workspace"
DEFAULT_STATE = Path("state") / "snapctl.state.json"
DEFAULT_MANIFESTS = "manifests"


class ProjectSettings(BaseModel):
    """What ``snapctl.toml`` may set (every key optional; any other key is refused)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    state: str | None = None
    workspace: str | None = None
    endpoint: str | None = None
    region: str | None = None
    manifests: list[str] | None = None

    @field_validator("state")
    @classmethod
    def _state(cls, value: str | None) -> str | None:
        if value is not None:
            from .state import state_location

            if not value.strip():
                raise ValueError("must name a file or a postgresql:// URL")
            try:
                where = state_location(value)
                if isinstance(where, str):
                    from .state.pgurl import SECRET_PARAMETERS, parse_database_url

                    if any(parse_database_url(where).get(key) for key in SECRET_PARAMETERS):
                        raise ValueError(
                            "the URL holds a password, which would be committed with the project (it is not "
                            "shown): leave it out and give it with PGPASSWORD or ~/.pgpass, or set SNAPCTL_STATE"
                        )
            except UsageError as exc:
                raise ValueError(str(exc).removeprefix("--state: ")) from None
        return value

    @field_validator("workspace")
    @classmethod
    def _workspace(cls, value: str | None) -> str | None:
        if value is not None:
            from .state import check_workspace

            try:
                check_workspace(value)
            except UsageError as exc:
                raise ValueError(str(exc).split(": ", 1)[-1]) from None
        return value

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value is not None:
            from .runenv import parse_endpoint

            try:
                return parse_endpoint(value, "the value")
            except UsageError as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("region")
    @classmethod
    def _region(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", value):
            raise ValueError("write a region name such as cn-north-1 (letters, digits and '-')")
        return value

    @field_validator("manifests")
    @classmethod
    def _manifests(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and (not value or not all(path.strip() for path in value)):
            raise ValueError("list at least one file or directory, none empty")
        return value


@dataclass(frozen=True)
class Project:
    """The project file found for this run (``file`` None when there is none) and its settings."""

    file: Path | None = None
    settings: ProjectSettings = field(default_factory=ProjectSettings)

    @property
    def directory(self) -> Path:
        """Where relative paths of the project resolve: the file's directory, else the working directory."""
        return self.file.parent if self.file is not None else Path.cwd()

    def path(self, value: str | Path) -> Path:
        """``value`` resolved against the project directory (as given without a project file)."""
        if self.file is None or Path(value).is_absolute():
            return Path(value)
        return self.directory / value

    def state(self) -> str | Path:
        """The state the file names (a URL as is, a path resolved), else the default path."""
        from .state import is_database_url

        value = self.settings.state
        if value is not None and is_database_url(value):
            return value
        return self.path(value if value is not None else DEFAULT_STATE)

    def manifests(self) -> list[Path]:
        """The default manifest paths: the file's, else ``manifests/``."""
        return [self.path(p) for p in (self.settings.manifests or [DEFAULT_MANIFESTS])]

    def shown(self) -> str:
        return _shown(self.file) if self.file is not None else ""


def find_project_file(start: Path | None = None) -> Path | None:
    """``snapctl.toml`` in ``start`` (the working directory) or its parents, stopping at the
    filesystem root or at a directory that holds ``.git``."""
    here = (start or Path.cwd()).absolute()
    for directory in (here, *here.parents):
        candidate = directory / PROJECT_FILE
        if candidate.is_file():
            return candidate
        if (directory / ".git").exists():
            return None
    return None


def _toml() -> Any:
    """tomllib (Python 3.11 on), else tomli, its backport (a dependency on 3.10 only)."""
    import importlib

    return importlib.import_module("tomllib" if sys.version_info >= (3, 11) else "tomli")


def load_project_file(path: Path) -> ProjectSettings:
    """The settings of ``path``, or one UsageError line naming the file (and the line where known)."""
    shown = _shown(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{shown}: cannot be read ({getattr(exc, 'strerror', None) or exc})") from None
    tomllib = _toml()
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        reason = str(exc)
        found = re.search(r"\(at line (\d+), column \d+\)", reason)
        line = f":{found[1]}" if found else ""
        reason = re.sub(r"\s*\(at line \d+, column \d+\)", "", reason).replace("\n", " ")
        raise UsageError(f"{shown}{line}: not valid TOML: {reason}") from None
    try:
        return ProjectSettings.model_validate(document)
    except ValidationError as exc:
        error = exc.errors()[0]
        key = ".".join(str(part) for part in error["loc"][:1]) or "?"
        number = _line_of(text, key)
        where = f"{shown}:{number}" if number else shown
        if error["type"] == "extra_forbidden":
            known = ", ".join(ProjectSettings.model_fields)
            raise UsageError(f"{where}: unknown key {key!r} (the keys are {known})") from None
        message = error["msg"].removeprefix("Value error, ")
        if error["type"].endswith("_type"):
            message = f"{message.rstrip('.').lower()}, not {_kind(error.get('input'))}"
        raise UsageError(f"{where}: {key}: {message}") from None


def _kind(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list"}.get(
        type(value), "a table" if isinstance(value, dict) else type(value).__name__
    )


def _line_of(text: str, key: str) -> int | None:
    """The line that sets top-level ``key`` (as TOML writes it: bare or quoted)."""
    pattern = re.compile(rf"""^\s*(?:{re.escape(key)}|"{re.escape(key)}"|'{re.escape(key)}')\s*[=.]""")
    table = re.compile(rf"""^\s*\[\s*(?:{re.escape(key)}|"{re.escape(key)}")\s*[\].]""")
    for number, line in enumerate(text.splitlines(), 1):
        if pattern.match(line) or table.match(line):
            return number
    return None


_LOADED: dict[Path, Project] = {}


def project() -> Project:
    """The project of this run (read once per working directory)."""
    cwd = Path.cwd()
    found = _LOADED.get(cwd)
    if found is None:
        file = find_project_file(cwd)
        found = Project(file, load_project_file(file)) if file is not None else Project()
        _LOADED[cwd] = found
    return found


def project_dir() -> Path:
    """The directory whose runs share a selection: the project file's, else the working directory."""
    return project().directory


def selection_path() -> Path:
    return project_dir() / SELECTION_FILE


def selected_workspace() -> str | None:
    """The workspace ``snapctl workspace select`` chose for this project, if any."""
    path = selection_path()
    try:
        name = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read the selected workspace from {path}: {getattr(exc, 'strerror', exc)}") from None
    return name or None


def select_workspace(name: str) -> Path:
    """Remember ``name`` as this project's workspace; the file that keeps it."""
    from .state import atomic_write

    path = selection_path()
    try:
        path.parent.mkdir(mode=0o700, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create {path.parent}: {exc.strerror or exc}") from None
    atomic_write(path, f"{name}\n".encode(), "the selection is unchanged")
    return path


def current_workspace(flag: str | None = None, *, from_flag: bool = True) -> tuple[str, str]:
    """The workspace a run uses and where that came from (for messages): ``flag`` (the value
    of ``--workspace``, or of ``SNAPCTL_WORKSPACE`` when not ``from_flag``), else the
    variable, else the selection, else the project file's, else ``default``."""
    if flag:
        return flag, "--workspace" if from_flag else "SNAPCTL_WORKSPACE"
    if os.environ.get("SNAPCTL_WORKSPACE"):
        return os.environ["SNAPCTL_WORKSPACE"], "SNAPCTL_WORKSPACE"
    selected = selected_workspace()
    if selected is not None:
        return selected, f"selected in {_shown(selection_path())}"
    current = project()
    if current.settings.workspace is not None:
        return current.settings.workspace, f"set in {current.shown()}"
    return DEFAULT_WORKSPACE, "the default"


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it is under it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
