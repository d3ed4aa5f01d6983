"""``snapctl import``: its StartSnapshot is journaled as an intent first, as apply's calls are."""

from __future__ import annotations

import json
import signal
import subprocess

import pytest
from snapctl_testing import SNAPCTL, calls, new_project, run_snapctl, snapctl_env, stats, tasks, wait_for

from reconciler.state import read_state

MANIFEST = """\
app_id: app1
storage:
  archive: {type: tos, account_id: "2100000990", bucket: snaps}
defaults: {storage: archive, image: {interval: 3}}
rooms:
  R:
    tasks:
      T1: {}
"""
ADDRESS = "app1/R/T1"


@pytest.fixture
def work(tmp_path, emulator):
    return new_project(tmp_path, emulator.url, {"app.yaml": MANIFEST})


@pytest.fixture
def env(work, emulator):
    return snapctl_env(emulator.url, work)


def test_an_import_killed_while_its_start_is_in_flight_leaves_the_task_pending(work, env, emulator):
    # The emulator starts the task as soon as the request arrives and answers 1.5 s later:
    # the kill lands between the API's action and snapctl hearing of it.
    emulator.configure(latency_ms=1500)
    proc = subprocess.Popen(
        [SNAPCTL, "import", ADDRESS, "--timeout", "30"],
        cwd=work,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(
            lambda: calls(emulator.url, "StartSnapshot") == 1 or proc.poll() is not None,
            what="the import's StartSnapshot",
        )
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the import finished before it could be killed"
    assert ADDRESS in tasks(emulator.url)  # the API started it; snapctl never heard
    state = read_state(work / "state" / "snapctl.state.json")
    assert ADDRESS not in state.tasks
    assert state.pending[ADDRESS]["action"] == "StartSnapshot"
    listed = run_snapctl(["state", "list"], cwd=work, env=env)
    assert f"{ADDRESS} (pending: StartSnapshot sent by an interrupted run" in listed.stdout
    # Importing again settles it: the task runs, so it is recorded and nothing is left pending.
    emulator.configure(latency_ms=0)
    again = run_snapctl(["import", ADDRESS], cwd=work, env=env)
    assert again.code == 0, again.output
    state = read_state(work / "state" / "snapctl.state.json")
    assert ADDRESS in state.tasks and not state.pending


def test_an_import_that_starts_the_task_leaves_no_pending_intent(work, env, emulator):
    imported = run_snapctl(["import", ADDRESS, "--json"], cwd=work, env=env)
    assert imported.code == 0, imported.output
    assert json.loads(imported.stdout)["outcome"] == "started"
    assert calls(emulator.url, "StartSnapshot") == 1 and ADDRESS in tasks(emulator.url)
    document = json.loads((work / "state" / "snapctl.state.json").read_text())
    assert ADDRESS in document["tasks"] and not document.get("pending")
    assert not (work / "state" / "snapctl.state.json.journal").exists()


def test_an_import_whose_start_is_refused_withdraws_its_intent(work, env, emulator, tmp_path_factory):
    (work / "manifests" / "app.yaml").write_text(MANIFEST + "      T2: {}\n")
    assert run_snapctl(["apply", "--auto-approve", "--target", "app1/R/T2"], cwd=work, env=env).code == 0
    emulator.configure(refuse_starts=[ADDRESS])
    before = {action: calls(emulator.url, action) for action in ("GetSnapshotTask", "StartSnapshot")}
    total = stats(emulator.url)["total"]
    refused = run_snapctl(["import", ADDRESS], cwd=work, env=env)
    assert refused.code == 1 and refused.stdout == "", refused.output
    assert refused.stderr.count("\n") == 1 and refused.stderr.startswith("Error: "), refused.stderr
    assert refused.stderr.startswith(f"Error: InvalidParameter: StartSnapshot of {ADDRESS} refused: injected by")
    assert refused.stderr.endswith("; nothing was started and nothing recorded\n") and "Traceback" not in refused.stderr
    # The read, then the refused start; nothing else.
    assert stats(emulator.url)["total"] - total == 2
    assert {action: calls(emulator.url, action) - n for action, n in before.items()} == {
        "GetSnapshotTask": 1,
        "StartSnapshot": 1,
    }
    assert ADDRESS not in tasks(emulator.url)
    listed = json.loads(run_snapctl(["state", "list", "--json"], cwd=work, env=env).stdout)
    assert listed["tasks"] == ["app1/R/T2"] and not listed["pending"]
    state = read_state(work / "state" / "snapctl.state.json")
    assert not state.pending and not (work / "state" / "snapctl.state.json.journal").exists()
    # In a directory with no state yet, the same refusal leaves no state behind.
    fresh = tmp_path_factory.mktemp("fresh")
    (fresh / "manifests").mkdir()
    (fresh / "manifests" / "app.yaml").write_text(MANIFEST)
    again = run_snapctl(["import", ADDRESS], cwd=fresh, env=snapctl_env(emulator.url, fresh))
    assert again.code == 1 and again.stderr.count("\n") == 1 and "InvalidParameter" in again.stderr, again.output
    assert sorted(p.name for p in fresh.iterdir()) == ["manifests"]
    # Once the API takes it, a later import proceeds and records it.
    emulator.configure(refuse_starts=[])
    imported = run_snapctl(["import", ADDRESS, "--json"], cwd=work, env=env)
    assert imported.code == 0, imported.output
    assert json.loads(imported.stdout)["outcome"] == "started" and ADDRESS in tasks(emulator.url)
    state = read_state(work / "state" / "snapctl.state.json")
    assert set(state.tasks) == {ADDRESS, "app1/R/T2"} and not state.pending
