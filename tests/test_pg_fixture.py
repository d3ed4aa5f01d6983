"""The suite's PostgreSQL fixture fails loudly, never skips, when no server can start."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).parent

TINY = """\
def test_needs_the_database(pg):
    assert pg.query("SELECT 1") == [(1,)]
"""


def test_pg_fixture_without_postgresql_is_an_error_naming_what_to_install(tmp_path):
    (tmp_path / "test_tiny.py").write_text(TINY)
    empty = tmp_path / "empty-bindir"
    empty.mkdir()
    path = str(Path(sys.executable).parent)
    assert shutil.which("initdb", path=path) is None
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "SNAPCTL_"))}
    env |= {"SNAPCTL_PG_BINDIR": str(empty), "PATH": path, "PYTHONPATH": str(TESTS)}
    # tests/conftest.py (importable through PYTHONPATH) is loaded as a plugin: the fixture itself, not a copy.
    proc = subprocess.run(
        # -rN: no short summary, which repeats the message in full when CI is set.
        [sys.executable, "-m", "pytest", "-q", "-rN", "-p", "conftest", "-p", "no:cacheprovider", "test_tiny.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert "1 error" in output and "skipped" not in output and "passed" not in output, output
    message = (
        f"cannot start the test PostgreSQL server: PostgreSQL's initdb is not in SNAPCTL_PG_BINDIR={empty}; "
        "point SNAPCTL_PG_BINDIR at the directory that holds initdb and pg_ctl, or unset it and "
        "install PostgreSQL (apt-get install -y postgresql), as .ci/run does"
    )
    assert output.count(message) == 1 and "another exception occurred" not in output, output
    assert "Traceback" not in output, output
