"""Issue 17, the PostgreSQL state's edge cases, on a real server (tests/pg_server.py):
malformed rows, read-only roles and statement timeouts, lock keys that cannot collide,
a schema whose version rows were deleted. Each is one line, never a traceback.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from snapctl_testing import one_error_line, run_snapctl, snap, snapctl_env

from reconciler.state import PostgresStore

APP = "edgeapp"


def manifest(n: int = 2) -> str:
    rows = "".join(f"      T{t}: {{image: {{interval: {t + 5}}}}}\n" for t in range(n))
    return (
        f"app_id: {APP}\n"
        "storage:\n"
        '  s: {type: tos, account_id: "2100000990", bucket: b}\n'
        f"defaults: {{storage: s}}\nrooms:\n  R:\n    tasks:\n{rows}"
    )


def project(tmp_path: Path, url: str, state: str, **extra: str) -> tuple[Path, dict]:
    work = tmp_path / "work"
    (work / "manifests").mkdir(parents=True, exist_ok=True)
    (work / "manifests" / "app.yaml").write_text(manifest())
    return work, snapctl_env(url, work, SNAPCTL_STATE=state, **extra)


def dump(pg) -> list[tuple]:
    """Everything the state database holds of snapctl's, to compare before and after."""
    return [
        *pg.query("SELECT name, lineage, serial, endpoint FROM snapctl.workspaces ORDER BY name"),
        *pg.query("SELECT workspace, address, entry, pending, observed FROM snapctl.tasks ORDER BY 1, 2"),
        *pg.query("SELECT workspace, pid FROM snapctl.locks ORDER BY 1"),
    ]


#: Every command that reads the PostgreSQL state, given the address of a recorded task.
STATE_COMMANDS = [
    ["plan"],
    ["plan", "--json"],
    ["apply", "--auto-approve"],
    ["destroy", "--auto-approve"],
    ["reconcile"],
    ["import", f"{APP}/R/T0"],
    ["status", "--offline"],
    ["state", "list"],
    ["state", "list", "--json"],
    ["state", "show", f"{APP}/R/T0"],
    ["state", "rm", f"{APP}/R/T0"],
    ["state", "migrate", "--to-workspace", "elsewhere", "--to", "{url}"],
    ["state", "migrate", "--to", "migrated/snapctl.state.json"],
    ["state", "rebind"],
    ["force-unlock"],
    ["workspace", "list"],
    ["workspace", "new", "another"],
]
#: Those that only read (by their first two words): they work with a read-only role.
READERS = {("plan",), ("status",), ("state", "list"), ("state", "show"), ("workspace", "list")}


def only_reads(args: list[str]) -> bool:
    return tuple(args[:1]) in READERS or tuple(args[:2]) in READERS


def command_args(args: list[str], url: str) -> list[str]:
    return [a.replace("{url}", url) for a in args]


# -- malformed rows --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("pending", '"garbage"'),
        ("pending", "[1]"),
        ("pending", '{"action": 5, "request": []}'),
        ("observed", '"garbage"'),
        ("observed", "[1]"),
        ("observed", '{"status": 2}'),
    ],
)
def test_a_malformed_row_is_refused_in_one_line_like_the_file_state(tmp_path, emulator, pg, column, value):
    work, env = project(tmp_path, emulator.url, pg.state_url)
    snap(work, env, "apply", "--auto-approve")
    pg.query(f"UPDATE snapctl.tasks SET {column} = %s::jsonb WHERE address = %s", value, f"{APP}/R/T1")
    before, calls = dump(pg), emulator.stats()["total"]
    what = "pending call" if column == "pending" else "observation"
    for args in (["plan"], ["apply", "--auto-approve"], ["status", "--offline"], ["state", "show", f"{APP}/R/T0"]):
        one_error_line(run_snapctl(args, cwd=work, env=env), f"the {what} of task '{APP}/R/T1'", "(workspace default)")
    assert dump(pg) == before and emulator.stats()["total"] == calls
    if value != '"garbage"':
        return
    # The file state refuses the same content with the same words.
    on_file = env | {"SNAPCTL_STATE": "state/snapctl.state.json"}
    snap(work, on_file, "apply", "--auto-approve", "--adopt")  # the tasks the database's state runs
    document = json.loads((work / "state" / "snapctl.state.json").read_text())
    document[column] = {f"{APP}/R/T1": json.loads(value)}
    (work / "state" / "snapctl.state.json").write_text(json.dumps(document))
    for args in (["plan"], ["status", "--offline"], ["state", "show", f"{APP}/R/T0"]):
        one_error_line(run_snapctl(args, cwd=work, env=on_file), f"the {what} of task '{APP}/R/T1' is not one snapctl")


# -- read-only roles and statement timeouts ------------------------------------------------


def reader_role(pg, name: str, password: str) -> str:
    """A role that may read snapctl's tables and whose transactions are read-only; its URL."""
    with pg.server.admin(pg.dbname) as conn:
        conn.execute(f"CREATE ROLE {name} LOGIN PASSWORD '{password}'")
        conn.execute(f"ALTER ROLE {name} SET default_transaction_read_only = on")
        conn.execute(f"GRANT USAGE ON SCHEMA snapctl TO {name}")
        conn.execute(f"GRANT ALL ON ALL TABLES IN SCHEMA snapctl TO {name}")
    return f"postgresql://{name}:{password}@127.0.0.1:{pg.server.port}/{pg.dbname}"


def test_read_only_roles_and_statement_timeouts_are_one_line_for_every_command(tmp_path, emulator, pg):
    work, env = project(tmp_path, emulator.url, pg.state_url)
    snap(work, env, "apply", "--auto-approve")
    pg.query(
        "INSERT INTO snapctl.locks (workspace, host, pid, command, started_at) "
        "VALUES ('default', 'gone-host', 1, 'snapctl apply', now())"
    )  # a stale holder record: force-unlock has one to remove
    reader = env | {"SNAPCTL_STATE": reader_role(pg, f"ro_{pg.dbname}", "ro-pass-7731")}
    before, calls = dump(pg), emulator.stats()["total"]
    for args in STATE_COMMANDS:
        run = run_snapctl(command_args(args, reader["SNAPCTL_STATE"]), cwd=work, env=reader)
        if only_reads(args):
            assert run.code in (0, 2) and "Traceback" not in run.output, run.output  # reading is allowed
        else:
            one_error_line(run, "read-only transaction")
        assert "ro-pass-7731" not in run.output
    assert dump(pg) == before and emulator.stats()["total"] == calls
    # A statement timeout: another session holds the tables' locks for longer than it.
    timed = env | {"PGOPTIONS": "-c statement_timeout=300"}
    with pg.server.admin(pg.dbname) as blocker:
        blocker.autocommit = False
        blocker.execute("LOCK TABLE snapctl.workspaces, snapctl.tasks, snapctl.locks IN ACCESS EXCLUSIVE MODE")
        for args in STATE_COMMANDS:
            run = run_snapctl(command_args(args, pg.state_url), cwd=work, env=timed)
            one_error_line(run, "statement timeout")
        blocker.rollback()
    # force-unlock's own statement: the holder record is readable, its row is locked by another session.
    with pg.server.admin(pg.dbname) as blocker:
        blocker.autocommit = False
        blocker.execute("SELECT * FROM snapctl.locks FOR UPDATE")
        one_error_line(run_snapctl(["force-unlock"], cwd=work, env=timed), "statement timeout")
        blocker.rollback()
    assert dump(pg) == before and emulator.stats()["total"] == calls
    assert "removed the stale lock record" in snap(work, env, "force-unlock").stdout


# -- lock keys -------------------------------------------------------------------------------


def old_lock_key(workspace: str) -> int:
    """The key schema version 1 gave a workspace: a 32-bit hash of its name."""
    return int.from_bytes(hashlib.sha256(workspace.encode()).digest()[:4], "big", signed=True)


def test_two_workspaces_whose_names_hashed_alike_have_locks_of_their_own(tmp_path, emulator, pg):
    assert old_lock_key("w29009") == old_lock_key("w116065")  # they shared one lock
    work, env = project(tmp_path, emulator.url, pg.state_url)
    first, second = env | {"SNAPCTL_WORKSPACE": "w29009"}, env | {"SNAPCTL_WORKSPACE": "w116065"}
    for name in ("w29009", "w116065"):
        snap(work, env, "workspace", "new", name)
    snap(work, first, "apply", "--auto-approve")
    with PostgresStore(pg.state_url, workspace="w29009", command="the test's holder") as held:
        assert held.lock_is_held()
        refused = one_error_line(run_snapctl(["apply", "--auto-approve"], cwd=work, env=first), "is locked by")
        assert "the test's holder" in refused
        assert "is locked by a live process" in snap(work, first, "force-unlock", code=1).stderr
        # The other workspace is free: applied, and not locked.
        (work / "manifests" / "app.yaml").write_text(manifest(3))
        applied = snap(work, second, "apply", "--auto-approve", "--adopt")  # T0, T1 run from w29009
        assert "Tasks: 1 added, 2 already running" in applied.stdout, applied.stdout
        assert snap(work, second, "force-unlock").stdout == "The state is not locked.\n"
        with PostgresStore(pg.state_url, workspace="w116065") as other:
            assert other.lock_is_held() and len(other.state.tasks) == 3
    assert not PostgresStore(pg.state_url, workspace="w29009").lock_is_held()
    keys = dict(pg.query("SELECT workspace, key FROM snapctl.lock_keys"))
    assert set(keys) == {"w29009", "w116065"} and len(set(keys.values())) == 2 and 0 not in keys.values()
    assert pg.query("SELECT max(version) FROM snapctl.schema_version")[0][0] == 2


def test_a_version_1_schema_is_upgraded_and_its_hashed_locks_still_respected(tmp_path, emulator, pg):
    work, env = project(tmp_path, emulator.url, pg.state_url)
    snap(work, env, "apply", "--auto-approve")
    pg.query("DROP TABLE snapctl.lock_keys")
    pg.query("DELETE FROM snapctl.schema_version WHERE version = 2")  # as snapctl 0.2 left it
    with pg.server.admin(pg.dbname) as old_client:  # a snapctl 0.2 run holding its hashed key
        old_client.execute("SELECT pg_advisory_lock(%s, %s)", (0x736E6170, old_lock_key("default")))
        assert "is locked by a live process" in snap(work, env, "force-unlock", code=1).stderr
    assert snap(work, env, "plan").stdout.startswith("No changes.")
    snap(work, env, "workspace", "new", "w2")
    assert (
        "Apply complete!" in snap(work, env | {"SNAPCTL_WORKSPACE": "w2"}, "apply", "--auto-approve", "--adopt").stdout
    )
    assert pg.query("SELECT max(version) FROM snapctl.schema_version")[0][0] == 2
    assert pg.query("SELECT workspace FROM snapctl.lock_keys") == [("w2",)]


# -- a damaged schema ------------------------------------------------------------------------


def test_a_schema_version_table_emptied_is_a_damaged_database_for_every_command(tmp_path, emulator, pg):
    work, env = project(tmp_path, emulator.url, pg.state_url)
    snap(work, env, "apply", "--auto-approve")
    pg.query("DELETE FROM snapctl.schema_version")
    before, calls = dump(pg), emulator.stats()["total"]
    for args in STATE_COMMANDS:
        run = run_snapctl(command_args(args, pg.state_url), cwd=work, env=env)
        line = one_error_line(run, "is damaged: snapctl.schema_version holds no row")
        assert "no state yet" not in run.output and pg.password not in line
    assert dump(pg) == before and emulator.stats()["total"] == calls
