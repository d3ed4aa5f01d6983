"""Hardening of the state layer (issue 17): the database password never shows, a
saved plan applies only to the state it was made for, malformed states and
databases are refused in one line, and every workspace has a lock of its own.

End to end: the ``snapctl`` command against the emulator and a real PostgreSQL
server (tests/pg_server.py), never a mock.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from snapctl_testing import Run, one_error_line, run_snapctl, snap, snapctl_env

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


# -- the database password ----------------------------------------------------------------


def login_role(pg, name: str, password: str) -> None:
    """A role of its own (roles are per server) owning the test's database."""
    with pg.server.admin() as conn:
        conn.execute(f"CREATE ROLE {name} LOGIN PASSWORD '{password}'")
        conn.execute(f"ALTER DATABASE {pg.dbname} OWNER TO {name}")


def test_the_database_password_never_shows_however_the_url_writes_it(tmp_path, emulator, pg):
    # libpq reads '#' and '?' in the user part raw, and a password given as a (percent-encoded)
    # query parameter: whatever libpq takes as the password must never be shown or saved.
    role, password = f"leaky_{pg.dbname}", "Hash#Sec?ret42"
    login_role(pg, role, password)
    host = f"127.0.0.1:{pg.server.port}/{pg.dbname}"
    forms = {
        "raw": f"postgresql://{role}:{password}@{host}",
        "query": f"postgresql://{role}@{host}?password=Hash%23Sec%3Fret42",
        "encoded key": f"postgresql://{role}@{host}?p%61ssword=Hash%23Sec%3Fret42&sslmode=disable",
    }
    work, env = project(tmp_path, emulator.url, forms["raw"])
    runs: list[Run] = [snap(work, env, "apply", "--auto-approve")]
    for name, url in forms.items():
        with_url = env | {"SNAPCTL_STATE": url}
        runs += [
            snap(work, with_url, "state", "list"),
            snap(work, with_url, "state", "list", "--json"),
            snap(work, with_url, "plan", "--out", f"{name}.plan"),
            snap(work, with_url, "show", f"{name}.plan"),
            snap(work, with_url, "state", "show", f"{APP}/R/T0"),
            snap(work, with_url, "status", "--offline"),
            snap(work, with_url, "force-unlock"),
        ]
        listed = runs[-6].stdout
        assert f'"location": "postgresql://{role}:***@{host}' in listed, listed
        saved = (work / f"{name}.plan").read_text()  # names the database, never the URL given
        assert f'"state_path": "postgresql://{host} (workspace default)"' in saved, saved
        assert role not in saved and "***" not in saved, saved
    # A wrong password in each form, a bad percent-escape in it: one line each, none of it shown.
    wrong = {
        "raw": f"postgresql://{role}:Hash#Sec?ret43@{host}",
        "query": f"postgresql://{role}@{host}?password=Hash%23Sec%3Fret43",
        "escape": f"postgresql://{role}@{host}?password=Hash%zzSec%3Fret42",
        "slash": f"postgresql://{role}:Hash/Sec?ret42@{host}",
    }
    for name, url in wrong.items():
        for args in (["plan"], ["state", "list"], ["apply", "--auto-approve"]):
            runs.append(run_snapctl(args, cwd=work, env=env | {"SNAPCTL_STATE": url}))
            line = one_error_line(runs[-1])
            assert ("password authentication failed" in line) == (name in ("raw", "query")), line
    # The password from PGPASSWORD (libpq's variable): not shown either.
    from_env = env | {"SNAPCTL_STATE": f"postgresql://{role}@{host}", "PGPASSWORD": password}
    runs.append(snap(work, from_env, "state", "list"))
    for run in runs:
        for fragment in ("Sec?ret4", "Sec%3Fret4", "Sec%zzSec", "Hash#", "Hash%23", "Hash/"):
            assert fragment not in run.output, run.output
    for path in work.rglob("*"):
        if path.is_file():
            assert "ret42" not in path.read_text(errors="replace"), path


def test_an_unreadable_state_url_is_one_line_showing_none_of_it(tmp_path, emulator):
    work, env = project(tmp_path, emulator.url, "state/snapctl.state.json")
    snap(work, env, "apply", "--auto-approve")
    for url in (
        "postgresql://u:pw-Secret42@[::1:5432/db",
        "postgresql://u:pw-Secret42@[::1]x/db",
        "postgresql://u@h/db?password=pw-Secret42=x",
        "postgresql://u@h/db?password=pw-Secret42%00",
    ):
        for args in (
            ["plan"],
            ["plan", "--out", "p.plan"],
            ["apply", "--auto-approve"],
            ["destroy", "--auto-approve"],
            ["import", f"{APP}/R/T0"],
            ["state", "list", "--json"],
            ["state", "show", f"{APP}/R/T0"],
            ["state", "rm", f"{APP}/R/T0"],
            ["state", "rebind"],
            ["state", "migrate", "--to", "moved/snapctl.state.json"],
            ["status"],
            ["status", "--offline"],
            ["force-unlock"],
            ["reconcile"],
            ["workspace", "list"],
            ["workspace", "new", "w2"],
            ["workspace", "delete", "w2"],
        ):
            refused = run_snapctl(args, cwd=work, env=env | {"SNAPCTL_STATE": url})
            line = one_error_line(refused, "postgresql:// URL cannot be read (libpq: ")
            assert "Secret42" not in refused.output and "::1" not in line, line
        moved = run_snapctl(["state", "migrate", "--to", url], cwd=work, env=env)
        line = one_error_line(moved, "URL cannot be read")
        assert "Secret42" not in moved.output, line
    assert not (work / "p.plan").exists() and not (work / "moved").exists()
    assert emulator.stats()["by_action"].keys() == {"StartSnapshot"}  # the first apply's only


def test_a_state_record_naming_another_task_stops_nothing(tmp_path, emulator):
    """A task's record in the state names the task a Stop goes to: edited by hand to name
    another task, deleting the first must not stop the second. The delete fails in one
    line naming both, nothing is sent, and the other task still runs."""
    import json

    from snapctl_testing import calls, tasks

    work, env = project(tmp_path, emulator.url, "state/s.json")
    snap(work, env, "apply", "--auto-approve")
    path = work / "state" / "s.json"
    document = json.loads(path.read_text())
    document["tasks"][f"{APP}/R/T0"]["request"]["TaskId"] = "T1"
    path.write_text(json.dumps(document))
    (work / "manifests" / "app.yaml").write_text(manifest().replace("      T0: {image: {interval: 5}}\n", ""))
    run = snap(work, env, "apply", "--auto-approve", code=1)
    assert f"the state's record of {APP}/R/T0 names another task, {APP}/R/T1" in run.output, run.output
    assert calls(emulator.url, "StopSnapshot") == 0
    assert sorted(tasks(emulator.url)) == [f"{APP}/R/T0", f"{APP}/R/T1"]
