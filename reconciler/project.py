"""The project a run belongs to: which workspace is selected for it.

``snapctl workspace select NAME`` remembers its choice in ``.snapctl/workspace`` in
the project directory: the working directory. The workspace a run uses is, first
found: ``--workspace``, ``SNAPCTL_WORKSPACE``, that selection, ``default``.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import UsageError

DEFAULT_WORKSPACE = "default"
#: The selection, relative to the project directory.
SELECTION_FILE = Path(".snapctl") / "workspace"


def project_dir() -> Path:
    """The directory whose runs share a selection."""
    return Path.cwd()


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
    variable, else the selection, else ``default``."""
    if flag:
        return flag, "--workspace" if from_flag else "SNAPCTL_WORKSPACE"
    if os.environ.get("SNAPCTL_WORKSPACE"):
        return os.environ["SNAPCTL_WORKSPACE"], "SNAPCTL_WORKSPACE"
    selected = selected_workspace()
    if selected is not None:
        return selected, f"selected in {_shown(selection_path())}"
    return DEFAULT_WORKSPACE, "the default"


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it is under it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
