"""Hardening of the state layer (issue 17): the database password never shows, a
saved plan applies only to the state it was made for, malformed states and
databases are refused in one line, and every workspace has a lock of its own.

End to end: the ``snapctl`` command against the emulator and a real PostgreSQL
server (tests/pg_server.py), never a mock.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from snapctl_testing import Run, run_snapctl, snapctl_env

APP = "hardapp"


def manifest(n: int = 2, app: str = APP) -> str:
    rows = "".join(f"      T{t}: {{image: {{interval: {t + 5}}}}}\n" for t in range(n))
    return (
        f"app_id: {app}\n"
        "storage:\n"
        '  s: {type: tos, account_id: "2100000990", bucket: b}\n'
        f"defaults: {{storage: s}}\nrooms:\n  R:\n    tasks:\n{rows}"
    )


def project(tmp_path: Path, url: str, state: str, text: str | None = None, **extra: str) -> tuple[Path, dict]:
    """A working directory with one manifest and its own HOME, using ``state``."""
    work = tmp_path / "work"
    (work / "manifests").mkdir(parents=True)
    (work / "manifests" / "app.yaml").write_text(manifest() if text is None else text)
    return work, snapctl_env(url, work, SNAPCTL_STATE=state, **extra)


def snap(work: Path, env: dict, *args: str, code: int = 0) -> Run:
    run = run_snapctl(list(args), cwd=work, env=env)
    assert run.code == code, run.output
    assert "Traceback" not in run.output and 'File "' not in run.output, run.output
    return run


def one_error_line(run: Run, *fragments: str) -> str:
    """Exit 1, no traceback, exactly one line on stderr (``Error: …``) holding every fragment."""
    assert run.code == 1, run.output
    assert "Traceback" not in run.output and 'File "' not in run.output, run.output
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), run.stderr
    for fragment in fragments:
        assert fragment in lines[0], run.stderr
    return lines[0]


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if "manifests" not in p.parts}


# -- names ------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["file", "postgresql"])
def test_a_workspace_name_with_a_trailing_newline_is_refused(tmp_path, emulator, pg_server, backend):
    state = "state/snapctl.state.json" if backend == "file" else pg_server.url(pg_server.new_database())
    work, env = project(tmp_path, emulator.url, state)
    before = files_under(work)
    for name in ("prod\n", "prod\r\n", "\nprod"):
        for args in (["plan"], ["apply", "--auto-approve"], ["state", "list"], ["force-unlock"]):
            refused = run_snapctl([*args, "--workspace", name], cwd=work, env=env)
            one_error_line(refused, f"workspace {name!r}", "use letters, digits")
        refused = run_snapctl(["state", "list"], cwd=work, env=env | {"SNAPCTL_WORKSPACE": name})
        one_error_line(refused, "use letters, digits")
    assert files_under(work) == before  # no state file, no lock file, no directory
    assert emulator.stats()["total"] == 0
    if backend == "postgresql":
        dbname = state.rsplit("/", 1)[1]
        with pg_server.admin(dbname) as conn:  # nothing created: not even the schema
            assert conn.execute("SELECT to_regclass('snapctl.workspaces')").fetchone()[0] is None


def test_identifiers_with_a_trailing_newline_are_refused_by_manifests_and_the_emulator(tmp_path, emulator):
    # snapctl's own check (fullmatch) and the API models' (pydantic's pattern, a Rust regex,
    # where $ matches only at the end): both refuse a name that ends in a newline.
    text = manifest().replace("  R:\n", '  "R\\n":\n')
    work, env = project(tmp_path, emulator.url, "state/snapctl.state.json", text)
    refused = run_snapctl(["validate"], cwd=work, env=env)
    assert refused.code == 1 and "contains '\\n', not allowed" in refused.stderr, refused.output
    for query in ({"AppId": APP, "RoomId": "R\n", "TaskId": "T0"}, {"AppId": APP, "RoomId": "R", "TaskId": "T0\n"}):
        answer = emulator.signed_get(query)
        assert answer.json()["ResponseMetadata"]["Error"]["Code"].startswith("InvalidParameter"), answer.text
    body = {"AppId": APP, "RoomId": "R", "TaskId": "T0\n", "ImageConfig": {"Interval": 5}}
    answer = emulator.signed_post("StartSnapshot", body)
    assert answer.json()["ResponseMetadata"]["Error"]["Code"].startswith("InvalidParameter"), answer.text
    assert emulator.tasks() == []
