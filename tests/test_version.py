"""One version, from one place (issue 18, item 5): ``reconciler.__version__``, which
pyproject.toml reads (dynamic version) and ``snapctl --version`` prints; the latest entry of
CHANGELOG.md and the tag the CI templates pin follow it."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

from snapctl_testing import run_snapctl, snapctl_env

from reconciler import __version__

ROOT = Path(__file__).parent.parent


def test_one_version_everywhere(tmp_path):
    run = run_snapctl(["--version"], cwd=tmp_path, env=snapctl_env(None, tmp_path))
    assert run.code == 0 and run.stdout == f"snapctl {__version__}\n", run.output
    pyproject = (ROOT / "pyproject.toml").read_text()  # (tomllib is 3.11+; snapctl runs on 3.10)
    assert re.search(r'^dynamic = \["version"\]$', pyproject, flags=re.M), "the version must be dynamic"
    project = pyproject.split("\n[project]\n")[1].split("\n[")[0]
    assert not re.search(r"^version = ", project, flags=re.M), "a second, static version"
    hatch_version = pyproject.split("[tool.hatch.version]")[1].split("\n[")[0]
    assert re.search(r'^path = "reconciler/__init__.py"$', hatch_version, flags=re.M), hatch_version
    assert importlib.metadata.version("snapctl-rtc") == __version__, "the installed metadata's version"
    changelog = (ROOT / "CHANGELOG.md").read_text()
    releases = re.findall(r"^## \[(\d+\.\d+\.\d+)\]", changelog, flags=re.M)
    assert releases and releases[0] == __version__, releases
    assert releases == sorted(releases, key=lambda v: tuple(map(int, v.split("."))), reverse=True), releases
    for template in sorted((ROOT / "docs" / "ci").glob("*.yml")):
        pins = re.findall(r"@v(\d+\.\d+\.\d+)", template.read_text())
        assert pins and set(pins) == {__version__}, (template.name, pins)
