"""A migrated state is left as a signpost (issue 18.4), end to end: the snapctl command,
the emulator over HTTP and a real PostgreSQL.

After ``state migrate`` the source (a file, or a PostgreSQL workspace) holds only where
the state went and when: every command that would use it is refused in one line naming
the destination (no password), so a forgotten SNAPCTL_STATE cannot act on the old copy.
``--keep-source`` keeps a usable copy.
"""

from __future__ import annotations

import json
from pathlib import Path

from snapctl_testing import run_snapctl, snap, snapctl_env, stats, tasks

APP = "signapp"
TASKS = [f"{APP}/R/T{t}" for t in range(3)]


def manifest(count: int = 3) -> str:
    rows = "".join(f"      T{t}: {{image: {{interval: {t + 5}}}}}\n" for t in range(count))
    return (
        f"app_id: {APP}\n"
        "storage:\n"
        '  archive: {type: tos, account_id: "2100000990", bucket: snaps}\n'
        f"defaults: {{storage: archive}}\nrooms:\n  R:\n    tasks:\n{rows}"
    )


def project(tmp_path: Path, url: str, name: str = "work", **extra: str) -> tuple[Path, dict]:
    work = tmp_path / name
    (work / "manifests").mkdir(parents=True)
    (work / "manifests" / "app.yaml").write_text(manifest())
    return work, snapctl_env(url, work, **extra)


#: Every command that would use a state, with what it needs (a signpost refuses each).
USES = [
    ["plan"],
    ["plan", "--refresh"],
    ["apply", "--auto-approve"],
    ["apply", "--auto-approve", "--adopt"],
    ["destroy", "--auto-approve"],
    ["reconcile"],
    ["reconcile", "--no-refresh"],
    ["status"],
    ["status", "--offline"],
    ["import", TASKS[0]],
    ["state", "list"],
    ["state", "list", "--json"],
    ["state", "show", TASKS[0]],
    ["state", "rm", TASKS[0]],
    ["state", "rebind"],
]


def assert_refused_everywhere(work: Path, env: dict, url: str, *fragments: str, secret: str = "") -> None:
    """Each command that would use the state: exit 1, one line naming the destination, nothing sent."""
    before = stats(url)
    for args in USES:
        run = run_snapctl(args, cwd=work, env=env)
        assert run.code == 1, (args, run.output)
        assert "Traceback" not in run.output, run.output
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: "), (args, run.stderr)
        assert "was migrated to" in lines[0] and "nothing was read or sent" in lines[0], lines[0]
        for fragment in fragments:
            assert fragment in lines[0], (args, lines[0])
        if secret:
            assert secret not in run.output
    assert stats(url) == before  # not even a read
    assert sorted(tasks(url)) == TASKS


def test_a_file_migrated_to_postgresql_is_a_signpost_and_migrating_back_replaces_it(tmp_path, emulator, pg):
    work, env = project(tmp_path, emulator.url)
    snap(work, env, "apply", "--auto-approve")
    lineage = json.loads(snap(work, env, "state", "list", "--json").stdout)["lineage"]
    moved = snap(work, env, "state", "migrate", "--to", pg.state_url)
    assert pg.password not in moved.output
    assert "now holds only a signpost" in moved.stdout and "--keep-source" in moved.stdout, moved.stdout

    path = work / "state" / "snapctl.state.json"
    document = json.loads(path.read_text())
    assert document["format_version"] == 3 and document["lineage"] == lineage
    assert document["signpost"]["version"] == 1 and document["signpost"]["moved_to"].startswith("postgresql://")
    assert pg.password not in path.read_text()
    assert "tasks" not in document and "fingerprint_key" not in document
    assert sorted(p.name for p in path.parent.iterdir()) == ["snapctl.state.json", "snapctl.state.json.lock"]

    # A forgotten SNAPCTL_STATE (here: the default file) cannot act on the old copy.
    assert_refused_everywhere(work, env, emulator.url, "postgresql://", pg.dbname, secret=pg.password)
    from_signpost = snap(work, env, "state", "migrate", "--to", "elsewhere.json", code=1)
    assert "was migrated to postgresql://" in from_signpost.stderr
    assert not (work / "elsewhere.json").exists()

    on_pg = env | {"SNAPCTL_STATE": pg.state_url}
    assert snap(work, on_pg, "plan").stdout.startswith("No changes. 3 task(s)")

    # Back again: the signpost is replaced by the state, and the workspace becomes one.
    back = snap(work, on_pg, "state", "migrate", "--to", "state/snapctl.state.json")
    assert "now holds only a signpost" in back.stdout
    assert snap(work, env, "plan").stdout.startswith("No changes. 3 task(s)")
    assert json.loads(snap(work, env, "state", "list", "--json").stdout)["lineage"] == lineage
    assert_refused_everywhere(work, on_pg, emulator.url, str(path.resolve()), "(workspace default)", secret=pg.password)
    rows = pg.query("SELECT format_version, fingerprint_key FROM snapctl.workspaces WHERE name = 'default'")
    assert rows == [(3, "")]
    assert pg.query("SELECT count(*) FROM snapctl.tasks")[0][0] == 0

    # The state is the one applied first: its destroy stops every task, each once.
    snap(work, env, "destroy", "--auto-approve")
    assert tasks(emulator.url) == {}
    assert stats(emulator.url)["by_action"]["StopSnapshot"]["total"] == 3


def test_a_workspace_migrated_to_another_is_a_signpost(tmp_path, emulator, pg):
    work, env = project(tmp_path, emulator.url, SNAPCTL_STATE=pg.state_url)
    snap(work, env, "apply", "--auto-approve")
    snap(work, env, "state", "migrate", "--to", pg.state_url, "--to-workspace", "prod")
    # SNAPCTL_WORKSPACE not switched: the old workspace refuses, naming the new one.
    assert_refused_everywhere(work, env, emulator.url, "(workspace prod)", pg.dbname, secret=pg.password)
    prod = env | {"SNAPCTL_WORKSPACE": "prod"}
    assert snap(work, prod, "plan").stdout.startswith("No changes. 3 task(s)")
    assert pg.query("SELECT count(*) FROM snapctl.tasks WHERE workspace = 'default'")[0][0] == 0


def test_keep_source_keeps_a_usable_copy(tmp_path, emulator, pg):
    work, env = project(tmp_path, emulator.url)
    snap(work, env, "apply", "--auto-approve")
    moved = snap(work, env, "state", "migrate", "--to", pg.state_url, "--keep-source")
    assert "kept as a usable copy" in moved.stdout and "signpost" not in moved.stdout, moved.stdout
    assert snap(work, env, "plan").stdout.startswith("No changes. 3 task(s)")
    assert json.loads(snap(work, env, "state", "list", "--json").stdout)["tasks"] == TASKS
    on_pg = env | {"SNAPCTL_STATE": pg.state_url}
    assert snap(work, on_pg, "plan").stdout.startswith("No changes. 3 task(s)")


def test_another_state_is_not_migrated_onto_a_signpost(tmp_path, emulator, pg):
    work, env = project(tmp_path, emulator.url)
    snap(work, env, "apply", "--auto-approve")
    snap(work, env, "state", "migrate", "--to", pg.state_url)
    other, other_env = project(tmp_path, emulator.url, "other")
    (other / "manifests" / "app.yaml").write_text(manifest().replace(APP, "otherapp"))
    snap(other, other_env, "apply", "--auto-approve")
    signpost = (work / "state" / "snapctl.state.json").read_text()
    refused = snap(other, other_env, "state", "migrate", "--to", str(work / "state" / "snapctl.state.json"), code=1)
    assert "signpost of another state" in refused.stderr, refused.stderr
    assert (work / "state" / "snapctl.state.json").read_text() == signpost


def test_the_signpost_format_is_versioned(tmp_path, emulator, pg):
    """A signpost is state format 3: every snapctl that reads format 2 only refuses it as
    written by a newer snapctl ("Upgrade snapctl"), as this one refuses a format or a
    signpost version it does not know."""
    work, env = project(tmp_path, emulator.url)
    snap(work, env, "apply", "--auto-approve")
    snap(work, env, "state", "migrate", "--to", pg.state_url)
    path = work / "state" / "snapctl.state.json"
    document = json.loads(path.read_text())

    path.write_text(json.dumps(document | {"signpost": document["signpost"] | {"version": 2}}))
    refused = snap(work, env, "plan", code=1)
    assert "Upgrade snapctl" in refused.stderr and "signpost" in refused.stderr, refused.stderr
    path.write_text(json.dumps({k: v for k, v in document.items() if k != "signpost"}))
    refused = snap(work, env, "plan", code=1)
    assert "state format 3" in refused.stderr and "Upgrade snapctl" in refused.stderr, refused.stderr

    on_pg = env | {"SNAPCTL_STATE": pg.state_url}
    snap(work, on_pg, "state", "migrate", "--to", pg.state_url, "--to-workspace", "next")
    pg.query(
        "UPDATE snapctl.workspaces SET fingerprint_params = jsonb_set(fingerprint_params, '{signpost,version}', '2') "
        "WHERE name = 'default'"
    )
    refused = snap(work, on_pg, "plan", code=1)
    assert "Upgrade snapctl" in refused.stderr and "signpost" in refused.stderr, refused.stderr
