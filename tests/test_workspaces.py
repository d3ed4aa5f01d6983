"""Workspaces are created, not conjured (issue 18): ``snapctl workspace list | show | new |
select | delete`` on both backends, and a workspace that does not exist refused before
anything is sent or written, naming those that do.

End to end: the ``snapctl`` command against the emulator and a real PostgreSQL server.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from snapctl_testing import one_error_line, run_snapctl, snap, snapctl_env, tasks

APP = "wsapp"


def manifest(n: int = 3, app: str = APP) -> str:
    rows = "".join(f"      T{t}: {{image: {{interval: {t + 5}}}}}\n" for t in range(n))
    return (
        f"app_id: {app}\n"
        "storage:\n"
        '  s: {type: tos, account_id: "2100000990", bucket: b}\n'
        f"defaults: {{storage: s}}\nrooms:\n  R:\n    tasks:\n{rows}"
    )


@pytest.fixture(params=["file", "postgresql"])
def state(request, tmp_path) -> str:
    if request.param == "file":
        return "state/snapctl.state.json"
    server = request.getfixturevalue("pg_server")
    return server.url(server.new_database())


@pytest.fixture
def work(tmp_path, emulator, state) -> tuple[Path, dict]:
    emulator.reset()
    work = tmp_path / "work"
    (work / "manifests").mkdir(parents=True)
    (work / "manifests" / "app.yaml").write_text(manifest())
    return work, snapctl_env(emulator.url, work, SNAPCTL_STATE=state)


def files(work: Path) -> set[str]:
    return {str(p.relative_to(work)) for p in work.rglob("*")}


def test_a_mistyped_workspace_is_refused_before_any_call_and_destroys_nothing(work, emulator):
    work, env = work
    snap(work, env, "workspace", "new", "production")
    applied = snap(work, env, "apply", "--workspace", "production", "--auto-approve")
    assert "3 added" in applied.stdout
    running = set(tasks(emulator.url))
    assert len(running) == 3
    calls, before = emulator.stats()["total"], files(work)
    for args, extra in (
        (["apply", "--workspace", "prodution", "--auto-approve"], {}),
        (["destroy", "--workspace", "prodution", "--auto-approve"], {}),
        (["destroy", "--auto-approve"], {"SNAPCTL_WORKSPACE": "prodution"}),
        (["reconcile", "--workspace", "prodution"], {}),
        (["import", f"{APP}/R/T0", "--workspace", "prodution"], {}),
        (["plan", "--workspace", "prodution"], {}),
        (["status", "--workspace", "prodution"], {}),
        (["state", "list", "--workspace", "prodution"], {}),
        (["state", "rm", f"{APP}/R/T0", "--workspace", "prodution"], {}),
    ):
        line = one_error_line(run_snapctl(args, cwd=work, env=env | extra), "workspace prodution", "does not exist")
        assert "did you mean production?" in line and "(workspaces there: default, production)" in line
        assert ("SNAPCTL_WORKSPACE" if extra else "--workspace") in line
    assert emulator.stats()["total"] == calls  # nothing sent
    assert files(work) == before  # nothing written
    assert set(tasks(emulator.url)) == running  # every production task still runs
    # Far from any workspace: no guess, the list only.
    line = one_error_line(run_snapctl(["plan", "--workspace", "qa"], cwd=work, env=env), "workspace qa (--workspace)")
    assert "did you mean" not in line and "snapctl workspace new qa" in line
    assert snap(work, env, "plan", "--workspace", "production").stdout.startswith("No changes.")


def test_workspace_verbs(work, emulator):
    work, env = work
    assert snap(work, env, "workspace", "list").stdout == "* default\n"
    assert snap(work, env, "workspace", "show").stdout == "default\n"
    created = snap(work, env, "workspace", "new", "staging").stdout
    assert created.startswith('Created workspace "staging" in ') and "workspace select staging" in created
    one_error_line(snap(work, env, "workspace", "new", "staging", code=1), "workspace staging already exists")
    one_error_line(snap(work, env, "workspace", "new", "default", code=1), "workspace default already exists")
    one_error_line(snap(work, env, "workspace", "new", "bad/name", code=1), "use letters, digits")
    snap(work, env, "workspace", "new", "production")
    assert snap(work, env, "workspace", "list").stdout == "* default\n  production\n  staging\n"
    # select: remembered for this directory; the flag and the variable still win.
    one_error_line(snap(work, env, "workspace", "select", "stagin", code=1), "did you mean staging?")
    selected = snap(work, env, "workspace", "select", "staging").stdout
    assert selected.startswith('Switched to workspace "staging"')
    assert (work / ".snapctl" / "workspace").read_text() == "staging\n"
    assert snap(work, env, "workspace", "list").stdout == "  default\n  production\n* staging\n"
    assert snap(work, env, "workspace", "show").stdout == "staging\n"
    shown = json.loads(snap(work, env, "workspace", "show", "--json").stdout)
    assert shown["workspace"] == "staging" and shown["from"] == "selected in .snapctl/workspace"
    assert "3 added" in snap(work, env, "apply", "--auto-approve").stdout  # into staging
    assert snap(work, env, "state", "list", "--workspace", "staging").stdout.count(f"{APP}/R/") == 3
    assert snap(work, env, "state", "list", "--workspace", "default").stdout == ""
    on_prod = env | {"SNAPCTL_WORKSPACE": "production"}
    assert snap(work, on_prod, "workspace", "show").stdout == "production\n"
    assert "3 to add" in snap(work, on_prod, "plan").stdout
    listed = json.loads(snap(work, env, "workspace", "list", "--json").stdout)
    assert listed["workspaces"] == ["default", "production", "staging"] and listed["current"] == "staging"
    # delete: never default, nor the current one, nor one holding tasks without --force.
    one_error_line(snap(work, env, "workspace", "delete", "default", code=1), "default workspace cannot be deleted")
    one_error_line(snap(work, env, "workspace", "delete", "staging", code=1), "staging is the current one")
    one_error_line(snap(work, on_prod, "workspace", "delete", "production", code=1), "(SNAPCTL_WORKSPACE)")
    one_error_line(snap(work, env, "workspace", "delete", "qa", code=1), "workspace qa does not exist")
    snap(work, env, "workspace", "select", "default")
    refused = one_error_line(snap(work, env, "workspace", "delete", "staging", code=1), "holds 3 task(s)")
    assert f"{APP}/R/T0, {APP}/R/T1, {APP}/R/T2" in refused and "--force" in refused
    assert snap(work, env, "workspace", "delete", "production").stdout.startswith('Deleted workspace "production"')
    forced = snap(work, env, "workspace", "delete", "staging", "--force").stdout
    assert "3 task(s) forgotten, not stopped" in forced
    assert len(tasks(emulator.url)) == 3  # forgotten, still running
    assert snap(work, env, "workspace", "list").stdout == "* default\n"
    one_error_line(snap(work, on_prod, "plan", code=1), "workspace production (SNAPCTL_WORKSPACE) does not exist")
    # A deleted workspace can be made again, empty.
    snap(work, env, "workspace", "new", "staging")
    assert "3 to add" in snap(work, env, "plan", "--workspace", "staging").stdout


def test_a_selection_of_a_workspace_deleted_since_is_refused(work, emulator):
    work, env = work
    snap(work, env, "workspace", "new", "qa")
    snap(work, env, "workspace", "select", "qa")
    (work / ".snapctl" / "workspace").write_text("qaa\n")  # edited by hand
    line = one_error_line(
        snap(work, env, "apply", "--auto-approve", code=1), "workspace qaa (selected in .snapctl/workspace)"
    )
    assert "did you mean qa?" in line and emulator.stats()["total"] == 0


def test_the_default_workspace_always_exists_and_migrate_creates_its_destination(work, emulator):
    work, env = work
    assert "3 added" in snap(work, env, "apply", "--auto-approve").stdout  # a brand-new default
    moved = snap(work, env, "state", "migrate", "--to", env["SNAPCTL_STATE"], "--to-workspace", "archive").stdout
    assert "3 task(s)" in moved
    assert snap(work, env, "workspace", "list").stdout == "  archive\n* default\n"
    assert snap(work, env, "plan", "--workspace", "archive").stdout.startswith("No changes. 3 task(s)")
