"""A new state never adopts silently (issue 18.3), end to end: the snapctl command, the
emulator over HTTP and a real PostgreSQL.

"Already started" is StartSnapshot's answer for a task that runs, whoever started it.
A state that held no task before the run (a new file, another folder, a new database
or workspace, or one emptied) records such a task only with --adopt; an established
state counts it as converged ("already running, adopted").
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from snapctl_testing import Run, calls, snap, snapctl_env, stats, tasks

APP = "adoptapp"
TASKS = [f"{APP}/R/T{t}" for t in range(3)]


def manifest(count: int = 3, interval: int = 5, max_idle_time: int = 180) -> str:
    rows = "".join(f"      T{t}: {{image: {{interval: {interval + t}}}}}\n" for t in range(count))
    return (
        f"app_id: {APP}\n"
        "storage:\n"
        '  archive: {type: tos, account_id: "2100000990", bucket: snaps}\n'
        f"defaults: {{storage: archive, max_idle_time: {max_idle_time}}}\nrooms:\n  R:\n    tasks:\n{rows}"
    )


def folder(root: Path, name: str, url: str, text: str, **extra: str) -> tuple[Path, dict]:
    """A working directory of its own (manifests/, an empty state/) and its environment."""
    work = root / name
    work.mkdir()
    (work / "manifests").mkdir()
    (work / "state").mkdir()
    (work / "manifests" / "app.yaml").write_text(text)
    return work, snapctl_env(url, work, **extra)


def starts(url: str) -> dict[str, int]:
    return stats(url)["by_action"].get("StartSnapshot", {}).get("outcomes", {})


def listed(work: Path, env: dict, *args: str) -> list[str]:
    return json.loads(snap(work, env, "state", "list", "--json", *args).stdout)["tasks"]


def assert_refused_adoption(run: Run, count: int, state: str) -> None:
    """Exit 1, naming how many tasks already run, the state used, and both ways on."""
    assert run.code == 1, run.output
    assert "Traceback" not in run.output, run.output
    error = [line for line in run.stderr.splitlines() if line.startswith("Error: ")]
    assert len(error) == 1, run.stderr
    line = error[0]
    assert f"{count} declared task(s) already run" in line, line
    assert state in line, line
    assert "--adopt" in line and "--state" in line and "--workspace" in line and "snapctl.toml" in line, line


def test_another_folder_takes_over_nothing_and_its_destroy_stops_nothing(emulator, tmp_path):
    prod, prod_env = folder(tmp_path, "prod", emulator.url, manifest())
    snap(prod, prod_env, "apply", "--auto-approve")
    assert starts(emulator.url) == {"ok": 3}

    other, other_env = folder(tmp_path, "other", emulator.url, manifest())
    run = snap(other, other_env, "apply", "--auto-approve", code=1)
    assert_refused_adoption(run, 3, "state/snapctl.state.json (workspace default)")
    assert "Apply incomplete! Tasks: 0 added, 0 changed, 0 replaced, 0 destroyed; 3 already running, not adopted." in (
        run.stdout
    )
    assert starts(emulator.url) == {"ok": 3, "already_started": 3}
    # Nothing recorded: a run that adopted nothing and created nothing leaves no state at all.
    assert not (other / "state" / "snapctl.state.json").exists()
    assert listed(other, other_env) == []

    destroy = snap(other, other_env, "destroy", "--auto-approve")
    assert "Nothing to destroy" in destroy.stdout, destroy.output
    assert calls(emulator.url, "StopSnapshot") == 0
    assert sorted(tasks(emulator.url)) == TASKS
    assert listed(prod, prod_env) == TASKS


def test_a_new_state_file_keeps_what_it_really_created(emulator, tmp_path):
    """Tasks the run really created stay recorded: the new state's destroy stops only those."""
    work, env = folder(tmp_path, "work", emulator.url, manifest(3))
    snap(work, env, "apply", "--auto-approve")
    (work / "manifests" / "app.yaml").write_text(manifest(4))
    run = snap(work, env, "apply", "--auto-approve", "--state", "elsewhere/new.json", code=1)
    assert_refused_adoption(run, 3, "elsewhere/new.json (workspace default)")
    assert "the 1 task(s) this run did act on are recorded" in run.stderr
    assert "Apply incomplete! Tasks: 1 added, 0 changed, 0 replaced, 0 destroyed; 3 already running" in run.stdout
    assert listed(work, env, "--state", "elsewhere/new.json") == [f"{APP}/R/T3"]

    snap(work, env, "destroy", "--auto-approve", "--state", "elsewhere/new.json")
    assert calls(emulator.url, "StopSnapshot") == 1
    assert sorted(tasks(emulator.url)) == TASKS  # T3 stopped, every task of the first state runs
    assert listed(work, env) == TASKS


def test_adopt_recovers_a_deleted_state_without_starting_a_task_twice(emulator, tmp_path):
    work, env = folder(tmp_path, "work", emulator.url, manifest())
    snap(work, env, "apply", "--auto-approve")
    for path in (work / "state").iterdir():
        path.unlink()

    refused = snap(work, env, "apply", "--auto-approve", code=1)
    assert_refused_adoption(refused, 3, "state/snapctl.state.json (workspace default)")
    recovered = snap(work, env, "apply", "--auto-approve", "--adopt")
    assert "Apply complete! Tasks: 0 added, 3 already running, adopted, 0 changed" in recovered.stdout
    assert recovered.stdout.count("already running, adopted (StartSnapshot already started)") == 3
    assert starts(emulator.url) == {"ok": 3, "already_started": 6}  # each task started once, ever
    assert listed(work, env) == TASKS
    assert snap(work, env, "plan", "--detailed-exitcode").code == 0

    # The recovered state is this state: its destroy stops them all.
    snap(work, env, "destroy", "--auto-approve")
    assert calls(emulator.url, "StopSnapshot") == 3 and tasks(emulator.url) == {}


def test_an_established_state_counts_running_tasks_as_adopted(emulator, tmp_path):
    """A state that held a task before the run: "already started" is converged (the API's rule)."""
    work, env = folder(tmp_path, "work", emulator.url, manifest(1))
    snap(work, env, "apply", "--auto-approve")
    other, other_env = folder(tmp_path, "other", emulator.url, manifest(3))
    snap(other, other_env, "apply", "--auto-approve", "--target", f"{APP}/R/T1", "--adopt")
    (work / "manifests" / "app.yaml").write_text(manifest(3))
    run = snap(work, env, "apply", "--auto-approve", "--json")
    document = json.loads(run.stdout)
    assert document["ok"] is True
    assert document["summary"]["already_running"] == 1 and document["summary"]["not_adopted"] == 0
    assert document["adoption"] == {
        "state": "state/snapctl.state.json (workspace default)",
        "held_tasks": True,
        "adopt": False,
        "adopted": [f"{APP}/R/T1"],
        "not_adopted": [],
    }
    assert listed(work, env) == TASKS


def test_an_emptied_state_holds_no_task(emulator, tmp_path):
    """destroy empties a state: what runs afterwards was started by another, so it is not adopted."""
    work, env = folder(tmp_path, "work", emulator.url, manifest())
    snap(work, env, "apply", "--auto-approve")
    snap(work, env, "destroy", "--auto-approve")
    assert tasks(emulator.url) == {}
    other, other_env = folder(tmp_path, "other", emulator.url, manifest())
    snap(other, other_env, "apply", "--auto-approve")
    run = snap(work, env, "apply", "--auto-approve", "--json", code=1)
    document = json.loads(run.stdout)
    assert document["ok"] is False and document["summary"]["not_adopted"] == 3
    assert document["adoption"]["held_tasks"] is False and document["adoption"]["not_adopted"] == TASKS
    assert {r["outcome"] for r in document["results"]} == {"not_adopted"}
    assert_refused_adoption(run, 3, "state/snapctl.state.json (workspace default)")
    assert listed(work, env) == []
    snap(work, env, "destroy", "--auto-approve")
    assert calls(emulator.url, "StopSnapshot") == 3  # the first destroy's; none since
    assert sorted(tasks(emulator.url)) == TASKS


def test_refresh_on_a_new_state_sends_nothing_for_what_runs(emulator, tmp_path):
    """apply --refresh sees the tasks run: no Start that would adopt them, and no Stop of a
    replacement that would take over a task running with another configuration."""
    prod, prod_env = folder(tmp_path, "prod", emulator.url, manifest())
    snap(prod, prod_env, "apply", "--auto-approve")
    # The same tasks with another idle time: a replacement (StopSnapshot, then StartSnapshot) if adopted.
    other, other_env = folder(tmp_path, "other", emulator.url, manifest(max_idle_time=600))
    before = stats(emulator.url)["by_action"]
    run = snap(other, other_env, "apply", "--auto-approve", "--refresh", code=1)
    assert_refused_adoption(run, 3, "state/snapctl.state.json (workspace default)")
    assert "nothing sent" in run.stdout
    after = stats(emulator.url)["by_action"]
    assert after["StartSnapshot"] == before["StartSnapshot"]
    assert "StopSnapshot" not in after and "UpdateSnapshot" not in after
    assert {address: t["Request"]["MaxIdleTime"] for address, t in tasks(emulator.url).items()} == dict.fromkeys(
        TASKS, 180
    )


def test_reconcile_on_a_new_state_adopts_only_with_adopt(emulator, tmp_path):
    prod, prod_env = folder(tmp_path, "prod", emulator.url, manifest())
    snap(prod, prod_env, "apply", "--auto-approve")
    other, other_env = folder(tmp_path, "other", emulator.url, manifest())
    for extra in ((), ("--no-refresh",)):
        run = snap(other, other_env, "reconcile", *extra, code=1)
        assert_refused_adoption(run, 3, "state/snapctl.state.json (workspace default)")
        assert "3 already running, not adopted." in run.stdout
        assert listed(other, other_env) == []
    document = json.loads(snap(other, other_env, "reconcile", "--no-refresh", "--json", code=1).stdout)
    assert document["ok"] is False and document["result"]["adoption"]["not_adopted"] == TASKS
    assert starts(emulator.url) == {"ok": 3, "already_started": 6}  # the two --no-refresh rounds

    run = snap(other, other_env, "reconcile", "--adopt")
    assert "3 already running, adopted" in run.stdout
    assert listed(other, other_env) == TASKS
    assert starts(emulator.url) == {"ok": 3, "already_started": 9}


def test_a_new_postgresql_database_adopts_only_with_adopt(emulator, tmp_path, pg, pg_server):
    """Production in one database; a forgotten or wrong SNAPCTL_STATE names another."""
    prod, prod_env = folder(tmp_path, "prod", emulator.url, manifest(), SNAPCTL_STATE=pg.state_url)
    snap(prod, prod_env, "apply", "--auto-approve")
    other_url = pg_server.url(pg_server.new_database())
    other, other_env = folder(tmp_path, "other", emulator.url, manifest(), SNAPCTL_STATE=other_url)
    run = snap(other, other_env, "apply", "--auto-approve", code=1)
    assert_refused_adoption(run, 3, "(workspace default)")
    assert "postgresql://" in run.stderr and pg.password not in run.output
    assert listed(other, other_env) == []
    snap(other, other_env, "destroy", "--auto-approve")
    assert calls(emulator.url, "StopSnapshot") == 0
    assert sorted(tasks(emulator.url)) == TASKS

    snap(other, other_env, "apply", "--auto-approve", "--adopt")
    assert listed(other, other_env) == TASKS
    assert starts(emulator.url) == {"ok": 3, "already_started": 6}


@pytest.mark.parametrize("backend", ["file", "postgresql"])
def test_a_state_made_established_by_a_refused_run_still_refuses_what_it_did_not_adopt(
    emulator, tmp_path, request, backend
):
    """A run on a new state that started one task and was refused three leaves a state holding
    a task: an established one. Run again (a retried pipeline), it must still refuse the three
    (they are another state's), and its destroy must stop only the task it started."""
    if backend == "file":
        state = "elsewhere/new.json"
    else:
        server = request.getfixturevalue("pg_server")
        state = server.url(server.new_database())
    prod, prod_env = folder(tmp_path, "prod", emulator.url, manifest(3))
    snap(prod, prod_env, "apply", "--auto-approve")
    work, env = folder(tmp_path, "work", emulator.url, manifest(4), SNAPCTL_STATE=state)
    first = snap(work, env, "apply", "--auto-approve", code=1)
    assert "held no task before this run" in first.stderr
    assert listed(work, env) == [f"{APP}/R/T3"]

    for command in (("apply", "--auto-approve"), ("apply", "--auto-approve", "--refresh"), ("reconcile",)):
        again = snap(work, env, *command, code=1)
        assert_refused_adoption(again, 3, "(workspace default)")
        assert "did not adopt in an earlier run" in again.stderr, again.stderr
        assert listed(work, env) == [f"{APP}/R/T3"]
    document = json.loads(snap(work, env, "apply", "--auto-approve", "--json", code=1).stdout)
    assert document["adoption"]["held_tasks"] is True
    assert document["adoption"]["not_adopted"] == TASKS and document["adoption"]["adopted"] == []
    assert starts(emulator.url) == {"ok": 4, "already_started": 9}  # no Start after the --refresh read

    snap(work, env, "destroy", "--auto-approve")
    assert calls(emulator.url, "StopSnapshot") == 1
    assert sorted(tasks(emulator.url)) == TASKS  # every production task still runs

    # --adopt still takes them over (this is their state after all), and then they are its own.
    snap(work, env, "apply", "--auto-approve", "--adopt")
    assert listed(work, env) == [*TASKS, f"{APP}/R/T3"]
    assert snap(work, env, "apply", "--auto-approve").code == 0


def test_a_refusal_the_killed_run_never_recorded_still_refuses(tmp_path):
    """A new state's StartSnapshot answered "already started", and the run killed before it
    recorded the refusal (the emulator answers 3 s after acting): the calls stay pending, so
    the next run cannot tell the tasks from ones it started itself. Their StartTime can: tasks
    started an hour before the call are another state's. The next apply, destroy, or apply of
    changed manifests (a replace) sends them nothing (no Start that adopts, no Stop), exits 1
    naming them not adopted, and records nothing. Tasks three days old, which a read no longer
    finds, are never stopped either (destroy forgets the calls), nor adopted by a Start; tasks
    the killed run started are adopted."""
    import signal

    from snapctl_testing import signal_when, start_snapctl

    from reconciler.emulator import EmulatorConfig, EmulatorServer

    with EmulatorServer(EmulatorConfig()) as srv:
        late = lambda ms: httpx.post(f"{srv.url}/_emulator/config", json={"latency_ms": ms})  # noqa: E731
        prod, prod_env = folder(tmp_path, "prod", srv.url, manifest(3))
        snap(prod, prod_env, "apply", "--auto-approve")
        for address in TASKS:
            key = dict(zip(("AppId", "RoomId", "TaskId"), address.split("/")))
            assert httpx.post(f"{srv.url}/_emulator/age-task", json={**key, "Seconds": 3600}).status_code == 200

        def killed_after_refusals(name: str) -> tuple[Path, dict]:
            work, env = folder(tmp_path, name, srv.url, manifest(3))
            refused = starts(srv.url).get("already_started", 0) + 3
            late(3000)
            killed = start_snapctl(work, env, "apply", "--auto-approve", quiet=True)
            signal_when(
                killed, lambda: starts(srv.url).get("already_started") == refused, signal.SIGKILL, what="3 refusals"
            )
            late(0)
            pending = json.loads(snap(work, env, "state", "list", "--json").stdout)["pending"]
            assert sorted(pending) == TASKS, pending  # the refusals were never recorded
            return work, env

        cases = [
            ("apply", ("apply", "--auto-approve"), manifest(3)),
            ("destroy", ("destroy", "--auto-approve"), manifest(3)),
            ("replace", ("apply", "--auto-approve"), manifest(3).replace("interval:", "width: 640, interval:")),
        ]
        for name, command, manifests in cases + [(f"{name}-3-days-old", *rest) for name, *rest in cases]:
            if name == "apply-3-days-old":  # older than GetSnapshotTask's 72 hours: not found by a read
                for address in TASKS:
                    key = dict(zip(("AppId", "RoomId", "TaskId"), address.split("/")))
                    httpx.post(f"{srv.url}/_emulator/age-task", json={**key, "Seconds": 72 * 3600})
            work, env = killed_after_refusals(name)
            (work / "manifests" / "app.yaml").write_text(manifests)
            before = starts(srv.url)
            if name == "destroy":  # the plan says what apply will do first
                preview = snap(work, env, "plan", "--destroy").stdout
                assert preview.count("leaves it alone if another state started it)") == 3, preview
            if name == "destroy-3-days-old":  # nothing of this state's is found: forgotten, not stopped
                gone = snap(work, env, *command)
                assert gone.stdout.count("destroyed (not found: nothing sent)") == 3, gone.stdout
            else:
                again = snap(work, env, *command, code=1)
                assert "3 declared task(s) already run" in again.stderr and "--adopt" in again.stderr, again.output
            assert calls(srv.url, "StopSnapshot") == 0, name
            if not name.endswith("-old"):
                assert starts(srv.url) == before, name  # not even a Start: the read said whose they are
            listing = json.loads(snap(work, env, "state", "list", "--json").stdout)
            assert listing["tasks"] == [] and listing["pending"] == {}, (name, listing)
            assert sorted(tasks(srv.url)) == TASKS
        assert calls(srv.url, "StopSnapshot") == 0
        assert {t["Request"]["ImageConfig"]["Width"] for t in tasks(srv.url).values()} == {0}

        # The same kill after the API started the tasks itself: they are this state's, adopted.
        own, own_env = folder(tmp_path, "own", srv.url, manifest(3).replace(f"app_id: {APP}", "app_id: ownapp"))
        late(3000)
        killed = start_snapctl(own, own_env, "apply", "--auto-approve", quiet=True)
        signal_when(killed, lambda: len(tasks(srv.url)) == 6, signal.SIGKILL, what="3 starts")
        late(0)
        snap(own, own_env, "apply", "--auto-approve")
        assert listed(own, own_env) == [t.replace(APP, "ownapp") for t in TASKS]
