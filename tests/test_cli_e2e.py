"""The ``snapctl`` command end to end against the emulator over HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pytest
from snapctl_testing import calls, new_project, run_snapctl, snapctl_env, stats, tasks

from reconciler.emulator.config import EmulatorConfig
from reconciler.emulator.server import EmulatorServer

REPO = Path(__file__).resolve().parents[1]

MANIFEST = """\
app_id: app1
defaults:
  max_idle_time: 180
  image: {format: jpeg, width: 800, height: 800, interval: 2}
  storage: archive
storage:
  archive: {type: tos, account_id: "2100000990", region: 0, bucket: snaps}
  offsite:
    type: custom
    vendor: s3
    region: 0
    bucket: offsite
    access_key: ${env:OFFSITE_ACCESS_KEY}
    secret_key: ${env:OFFSITE_SECRET_KEY}
rooms:
  Room1:
    business_id: B1
    tasks:
      Task1:
        streams: [{user_id: user1}, {user_id: user2, stream_type: screen, index: 1}]
        image: {interval: 5}
      Task2:
        storage: offsite
        max_idle_time: 600
  Room2:
    tasks:
      Task1: {}
"""


@pytest.fixture(scope="module")
def server():
    with EmulatorServer(EmulatorConfig()) as srv:
        yield srv


@pytest.fixture
def workdir(tmp_path, server):
    return new_project(tmp_path, server.url, {"rooms.yaml": MANIFEST})


@pytest.fixture
def env(workdir, server):
    return snapctl_env(server.url, workdir, OFFSITE_ACCESS_KEY="AK-offsite-e2e", OFFSITE_SECRET_KEY="SK-offsite-e2e")


def snap(workdir, env, *args, **kw):
    return run_snapctl(list(args), cwd=workdir, env=env, **kw)


def edit(workdir, old, new):
    path = workdir / "manifests" / "rooms.yaml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def state_doc(workdir):
    return json.loads((workdir / "state" / "snapctl.state.json").read_text())


def test_create_then_noop(workdir, env, server):
    plan = snap(workdir, env, "plan")
    assert plan.code == 0, plan.output
    assert "Plan: 3 to add, 0 to change, 0 to replace, 0 to destroy." in plan.stdout
    assert calls(server.url, "StartSnapshot") == 0  # plan never touches the network

    first = snap(workdir, env, "apply", "--auto-approve")
    assert first.code == 0, first.output
    assert "Apply complete! Tasks: 3 added" in first.stdout
    running = tasks(server.url)
    assert set(running) == {"app1/Room1/Task1", "app1/Room1/Task2", "app1/Room2/Task1"}
    t1 = running["app1/Room1/Task1"]["Request"]
    assert t1["ImageConfig"] == {"Format": 0, "Width": 800, "Height": 800, "Interval": 5}
    assert t1["BusinessId"] == "B1"
    assert t1["TargetStreams"]["StreamList"][1] == {"Index": 1, "UserId": "user2", "StreamType": 1}
    assert running["app1/Room1/Task2"]["Request"]["MaxIdleTime"] == 600
    assert set(state_doc(workdir)["tasks"]) == set(running)

    before = stats(server.url)["total"]
    second = snap(workdir, env, "apply", "--auto-approve")
    assert second.code == 0, second.output
    assert "No changes." in second.stdout
    assert stats(server.url)["total"] == before  # zero API calls


def test_interval_change_is_one_update(workdir, env, server):
    assert snap(workdir, env, "apply", "--auto-approve").code == 0
    edit(workdir, "image: {interval: 5}", "image: {interval: 7}")
    plan = snap(workdir, env, "plan")
    assert "~ app1/Room1/Task1" in plan.stdout and "Plan: 0 to add, 1 to change" in plan.stdout
    before = stats(server.url)["by_action"]
    result = snap(workdir, env, "apply", "--auto-approve")
    assert result.code == 0, result.output
    after = stats(server.url)["by_action"]
    assert after["UpdateSnapshot"]["total"] - before.get("UpdateSnapshot", {}).get("total", 0) == 1
    assert after["StartSnapshot"]["total"] == before["StartSnapshot"]["total"]
    assert after.get("StopSnapshot", {}).get("total", 0) == before.get("StopSnapshot", {}).get("total", 0)
    assert tasks(server.url)["app1/Room1/Task1"]["Request"]["ImageConfig"]["Interval"] == 7


@pytest.mark.parametrize(
    "old, new, check",
    [
        ("width: 800", "width: 640", lambda r: r["ImageConfig"]["Width"] == 640),
        ("format: jpeg", "format: png", lambda r: r["ImageConfig"]["Format"] == 1),
        ("max_idle_time: 180", "max_idle_time: 300", lambda r: r["MaxIdleTime"] == 300),
        ("business_id: B1", "business_id: B2", lambda r: r["BusinessId"] == "B2"),
        ("{user_id: user1}, ", "", lambda r: [s["UserId"] for s in r["TargetStreams"]["StreamList"]] == ["user2"]),
        ("bucket: snaps", "bucket: snaps2", lambda r: r["StorageConfig"]["TosConfig"]["Bucket"] == "snaps2"),
    ],
    ids=["width", "format", "max_idle_time", "business_id", "streams", "storage"],
)
def test_other_changes_replace(workdir, env, server, old, new, check):
    assert snap(workdir, env, "apply", "--auto-approve").code == 0
    edit(workdir, old, new)
    plan = snap(workdir, env, "plan")
    assert "-/+ app1/Room1/Task1" in plan.stdout and "forces replacement" in plan.stdout
    before = stats(server.url)["by_action"]
    result = snap(workdir, env, "apply", "--auto-approve", "--target", "app1/Room1/Task1")
    assert result.code == 0, result.output
    after = stats(server.url)["by_action"]
    assert after["StopSnapshot"]["total"] - before.get("StopSnapshot", {}).get("total", 0) == 1
    assert after["StartSnapshot"]["total"] - before["StartSnapshot"]["total"] == 1
    assert check(tasks(server.url)["app1/Room1/Task1"]["Request"])


def test_storage_secret_change_replaces(workdir, env, server):
    assert snap(workdir, env, "apply", "--auto-approve").code == 0
    env2 = env | {"OFFSITE_SECRET_KEY": "SK-offsite-rotated"}
    plan = snap(workdir, env2, "plan")
    assert "-/+ app1/Room1/Task2" in plan.stdout and "(sensitive)" in plan.stdout
    assert "SK-offsite" not in plan.output
    assert snap(workdir, env2, "apply", "--auto-approve").code == 0
    assert (
        "Plan: 0 to add, 0 to change, 0 to replace" in snap(workdir, env2, "plan").stdout
        or "No changes" in snap(workdir, env2, "plan").stdout
    )


def test_removal_stops_the_task(workdir, env, server):
    assert snap(workdir, env, "apply", "--auto-approve").code == 0
    edit(workdir, "  Room2:\n    tasks:\n      Task1: {}\n", "")
    result = snap(workdir, env, "apply", "--auto-approve")
    assert result.code == 0, result.output
    assert "1 destroyed" in result.stdout
    assert "app1/Room2/Task1" not in tasks(server.url)
    assert "app1/Room2/Task1" not in state_doc(workdir)["tasks"]


def test_lost_state_converges_through_already_started(workdir, env, server):
    """A lost state is recovered with --adopt: "already started" then counts as converged."""
    assert snap(workdir, env, "apply", "--auto-approve").code == 0
    for f in (workdir / "state").iterdir():
        f.unlink()
    result = snap(workdir, env, "apply", "--auto-approve", "--adopt")
    assert result.code == 0, result.output
    assert result.stdout.count("already started") == 3
    assert stats(server.url)["by_action"]["StartSnapshot"]["outcomes"]["already_started"] == 3
    assert len(state_doc(workdir)["tasks"]) == 3


def test_one_failure_never_stops_the_others(workdir, env, server):
    (workdir / "manifests" / "denied.yaml").write_text(
        "app_id: app2\nstorage:\n  s: {type: tos, account_id: '1', bucket: b}\n"
        "defaults: {storage: s}\nrooms:\n  R:\n    tasks:\n      A: {}\n      B: {}\n"
    )
    httpx.post(f"{server.url}/_emulator/config", json={"deny_apps": ["app2"]})
    try:
        failed = snap(workdir, env, "apply", "--auto-approve")
    finally:
        httpx.post(f"{server.url}/_emulator/config", json={"deny_apps": []})
    assert failed.code == 1
    assert "Apply failed for 2 of 5 task(s)" in failed.stdout
    assert "app2/R/A: AccessDenied: " in failed.stdout and "RequestId" in failed.stdout
    assert "Traceback" not in failed.output
    # Permission errors are not retried: one request per denied task.
    assert stats(server.url)["by_action"]["StartSnapshot"]["outcomes"]["AccessDenied"] == 2
    # Every success is in the state; the failures are not.
    assert set(state_doc(workdir)["tasks"]) == {"app1/Room1/Task1", "app1/Room1/Task2", "app1/Room2/Task1"}
    result = snap(workdir, env, "apply", "--auto-approve")
    assert result.code == 0 and "2 added" in result.stdout
    assert len(state_doc(workdir)["tasks"]) == 5


def test_one_invalid_task_among_valid_ones_sends_nothing(workdir, env, server):
    edit(workdir, "max_idle_time: 600", "max_idle_time: 86401")
    result = snap(workdir, env, "apply", "--auto-approve")
    assert result.code == 1
    assert "manifests/rooms.yaml:24:24: error: rooms.Room1.tasks.Task2.max_idle_time" in result.stderr
    assert "Traceback" not in result.output
    assert stats(server.url)["total"] == 0
    assert not (workdir / "state" / "snapctl.state.json").exists()


def test_failure_in_the_middle_keeps_earlier_successes(workdir, env, server):
    many = "".join(f"      T{i:03d}: {{}}\n" for i in range(60))
    (workdir / "manifests" / "many.yaml").write_text(
        "app_id: app3\nstorage:\n  s: {type: tos, account_id: '1', bucket: b}\n"
        f"defaults: {{storage: s}}\nrooms:\n  R:\n    tasks:\n{many}"
    )
    # Faults that outlast the client's retries (two attempts: 36% of the tasks) hit some tasks
    # mid-run; the rest land.
    httpx.post(f"{server.url}/_emulator/config", json={"error_rate": 0.6})
    try:
        failed = snap(workdir, env, "apply", "--auto-approve", "--parallelism", "4", "--max-attempts", "2")
    finally:
        httpx.post(f"{server.url}/_emulator/config", json={"error_rate": 0.0})
    running = set(tasks(server.url))
    recorded = set(state_doc(workdir)["tasks"]) if (workdir / "state" / "snapctl.state.json").exists() else set()
    assert recorded == running  # every started task is in the state, nothing more
    if failed.code == 1:
        assert "InternalError" in failed.stdout
    result = snap(workdir, env, "apply", "--auto-approve")
    assert result.code == 0, result.output
    assert len(state_doc(workdir)["tasks"]) == 63 == len(tasks(server.url))


def test_examples_in_manifests_dir_plan_and_apply(tmp_path, server):
    httpx.post(f"{server.url}/_emulator/reset")
    shutil.copytree(REPO / "manifests", tmp_path / "manifests")
    (tmp_path / "state").mkdir()
    env = snapctl_env(server.url, tmp_path, OFFSITE_ACCESS_KEY="demo-ak", OFFSITE_SECRET_KEY="demo-sk")
    plan = run_snapctl(["plan"], cwd=tmp_path, env=env)
    assert plan.code == 0, plan.output
    applied = run_snapctl(["apply", "--auto-approve"], cwd=tmp_path, env=env)
    assert applied.code == 0, applied.output
    again = run_snapctl(["plan", "--detailed-exitcode"], cwd=tmp_path, env=env)
    assert again.code == 0, again.output


def test_apply_refuses_without_terminal_or_approval(workdir, env, server):
    result = snap(workdir, env, "apply")
    assert result.code == 1
    assert "--auto-approve" in result.stderr
    assert stats(server.url)["total"] == 0
    assert not (workdir / "state" / "snapctl.state.json").exists()


def test_bad_flag_is_exit_1(workdir, env):
    result = snap(workdir, env, "plan", "--no-such-flag")
    assert result.code == 1 and "no-such-flag" in result.stderr


def test_help_and_version(workdir, env):
    for command in (
        [],
        ["validate"],
        ["plan"],
        ["apply"],
        ["destroy"],
        ["reconcile"],
        ["import"],
        ["state"],
        ["force-unlock"],
        ["schema"],
        ["show"],
        ["emulator"],
    ):
        result = snap(workdir, env, *command, "--help")
        assert result.code == 0 and "Usage:" in result.stdout, command
    version = snap(workdir, env, "--version")
    assert version.code == 0 and version.stdout.startswith("snapctl ")


def test_the_contract_example_plans_and_applies(tmp_path, server):
    httpx.post(f"{server.url}/_emulator/reset")
    (tmp_path / "manifests").mkdir()
    (tmp_path / "state").mkdir()
    shutil.copy(REPO / "tests" / "manifest_cases" / "contract_example.yaml", tmp_path / "manifests" / "contract.yaml")
    env = snapctl_env(server.url, tmp_path, OFFSITE_ACCESS_KEY="AK-contract", OFFSITE_SECRET_KEY="SK-contract")
    plan = run_snapctl(["plan"], cwd=tmp_path, env=env)
    assert plan.code == 0, plan.output
    assert "Plan: 2 to add, 0 to change, 0 to replace, 0 to destroy." in plan.stdout
    applied = run_snapctl(["apply", "--auto-approve"], cwd=tmp_path, env=env)
    assert applied.code == 0, applied.output
    running = tasks(server.url)
    assert set(running) == {"661e1234543cf/Room1/Task1", "661e1234543cf/Room1/Task2"}
    task2 = running["661e1234543cf/Room1/Task2"]["Request"]
    assert task2["MaxIdleTime"] == 600 and task2["StorageConfig"]["Type"] == 2
    assert task2["StorageConfig"]["CustomConfig"]["Bucket"] == "snapshots-offsite"
    assert running["661e1234543cf/Room1/Task1"]["Request"]["ImageConfig"] == {
        "Format": 0,
        "Width": 800,
        "Height": 800,
        "Interval": 5,
    }
    assert run_snapctl(["plan", "--detailed-exitcode"], cwd=tmp_path, env=env).code == 0
