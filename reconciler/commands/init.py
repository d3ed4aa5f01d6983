"""``snapctl init``: write the project file, snapctl.toml, that pins a project's state."""

from __future__ import annotations

import sys
from pathlib import Path

import click
import orjson

from ..errors import UsageError
from .output import err, handle_errors, out

#: What each key of snapctl.toml is, in the order written, with the value a terminal offers.
_KEYS = (
    ("state", "state/snapctl.state.json", "the state: a file (relative to this file) or a postgresql:// URL"),
    ("workspace", "default", "the workspace (create it with snapctl workspace new NAME)"),
    ("endpoint", "", "the API endpoint (empty: the public API, or the state's for offline commands)"),
    ("region", "", "the region (empty: VOLC_REGION, else cn-north-1)"),
    ("manifests", "manifests/", "the default manifest paths (relative to this file), separated by commas"),
)


def _toml_value(value) -> str:
    """A TOML string or array of strings (JSON's escapes are TOML's basic-string escapes)."""
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return orjson.dumps(value).decode()


def project_text(values: dict) -> str:
    """The text of snapctl.toml holding ``values`` (a key left out is a comment)."""
    lines = [
        "# snapctl project file, written by snapctl init. Every command run in this directory or",
        "# below it uses these settings; relative paths resolve against this file's directory.",
        "# Precedence: flags, then environment variables (SNAPCTL_STATE, SNAPCTL_WORKSPACE,",
        "# SNAPCTL_ENDPOINT, VOLC_REGION), then this file, then the defaults.",
    ]
    for key, default, _ in _KEYS:
        value = values.get(key)
        if value is None:
            lines.append(f"# {key} = {_toml_value(default or _EXAMPLES[key])}")
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


_EXAMPLES = {"endpoint": "https://rtc.volcengineapi.com", "region": "cn-north-1"}


@click.command(short_help="Write snapctl.toml, the project file that pins the state.")
@click.option("--state", "state_path", metavar="FILE|URL", help="The state (default state/snapctl.state.json).")
@click.option("--workspace", metavar="NAME", help="The workspace (default: default).")
@click.option("--endpoint", metavar="URL", help="The API endpoint (default: not set).")
@click.option("--region", metavar="REGION", help="The region (default: not set).")
@click.option(
    "--manifests",
    "manifests",
    multiple=True,
    metavar="PATH",
    help="A default manifest path (repeatable; default manifests/).",
)
@click.option("--force", is_flag=True, help="Overwrite an existing snapctl.toml.")
@handle_errors
def init(state_path, workspace, endpoint, region, manifests, force):
    """Write snapctl.toml in the working directory, which pins the state, workspace,
    endpoint, region and manifest paths of every run in this directory and below it.

    On a terminal it asks for each setting not given as a flag (Enter takes the
    value shown); otherwise it asks nothing and writes the flags given, with
    state/snapctl.state.json, default and manifests/ for state, workspace and
    manifests. An existing snapctl.toml is kept unless --force.
    """
    from pydantic import ValidationError

    from ..project import PROJECT_FILE, ProjectSettings, find_project_file, load_project_file

    target = Path(PROJECT_FILE)
    if target.exists() and not force:
        raise UsageError(f"{PROJECT_FILE} already exists here; pass --force to overwrite it")
    given = {
        "state": state_path,
        "workspace": workspace,
        "endpoint": endpoint,
        "region": region,
        "manifests": list(manifests) or None,
    }
    ask = sys.stdin.isatty() and sys.stdout.isatty()
    values: dict = {}
    for key, default, meaning in _KEYS:
        value = given[key]
        if value is None and ask:
            value = click.prompt(f"{key} ({meaning})", default=default, show_default=bool(default)).strip()
            if key == "manifests":
                value = [p.strip() for p in value.split(",") if p.strip()]
            value = value or None
        elif value is None:
            value = [default] if key == "manifests" else default or None
        values[key] = value
    written = {key: value for key, value in values.items() if value is not None}
    try:
        ProjectSettings.model_validate(written)
    except ValidationError as exc:  # one line, as snapctl.toml's own errors
        first = exc.errors()[0]
        message = first["msg"].removeprefix("Value error, ")
        raise UsageError(f"--{first['loc'][0]}: {message}; nothing was written") from None
    outer = find_project_file(Path.cwd().parent) if not (Path.cwd() / ".git").exists() else None
    text = project_text(values)
    from ..state import atomic_write

    atomic_write(target.absolute(), text.encode(), "nothing was written")
    load_project_file(target.absolute())  # reads back as written
    out(f"Wrote {target.absolute()}:\n")
    for line in text.splitlines():
        if not line.startswith("#"):
            out(f"  {line}\n")
    if values["workspace"] not in (None, "default"):
        out(f"Create the workspace once, if it does not exist yet: snapctl workspace new {values['workspace']}\n")
    if outer is not None:
        err(f"Note: this directory is inside the project of {outer}; here, the new file is used instead.\n")
