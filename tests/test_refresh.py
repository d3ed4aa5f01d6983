"""Refresh end to end: `snapctl plan/apply --refresh`, `reconcile` and `status` read the
live tasks (GetSnapshotTask) from the emulator over HTTP and act on what really runs."""

from __future__ import annotations

import json
import re

import pytest
from snapctl_testing import calls, new_project, run_snapctl, snapctl_env, stats

MANIFEST = """\
app_id: app1
storage:
  archive: {type: tos, account_id: "2100000990", bucket: snaps}
  flaky: {type: tos, account_id: "2100000990", bucket: flaky}
  offsite: {type: custom, vendor: oss, bucket: offsite, access_key: "${env:OFF_AK}", secret_key: "${env:OFF_SK}"}
defaults:
  storage: archive
  image: {interval: 3}
rooms:
  Idle:
    tasks:
      T1: {}
  Main:
    tasks:
      Fail: {storage: flaky}
      Stop: {}
      Interval: {}
      Width: {image: {width: 320}}
      Fine: {storage: offsite}
"""
TASKS = ["app1/Idle/T1", "app1/Main/Fail", "app1/Main/Stop", "app1/Main/Interval", "app1/Main/Width", "app1/Main/Fine"]
SECRET = "SK-refresh-secret-value"
WRITES = ("StartSnapshot", "UpdateSnapshot", "StopSnapshot")


@pytest.fixture
def work(tmp_path, emulator):
    return new_project(tmp_path, emulator.url, {"app.yaml": MANIFEST})


@pytest.fixture
def env(work, emulator):
    return snapctl_env(emulator.url, work, OFF_AK="AK-refresh-access", OFF_SK=SECRET)


def snap(work, env, *args):
    return run_snapctl(list(args), cwd=work, env=env)


def counts(url: str) -> dict[str, int]:
    return {action: calls(url, action) for action in (*WRITES, "GetSnapshotTask")}


def delta(before: dict[str, int], url: str) -> dict[str, int]:
    after = counts(url)
    return {action: after[action] - before[action] for action in after if after[action] != before[action]}


def key(address: str) -> dict[str, str]:
    app, room, task = address.split("/")
    return {"AppId": app, "RoomId": room, "TaskId": task}


def converge(work, env, emulator) -> None:
    applied = snap(work, env, "apply", "--auto-approve")
    assert applied.code == 0, applied.output


def drift(emulator) -> None:
    """Idle-out, start failure, out-of-band stop, interval and width changes, one task each."""
    assert emulator.admin("streams-stopped", {"AppId": "app1", "RoomId": "Idle", "Immediate": True}).json()["ended"]
    emulator.configure(unwritable_buckets=["flaky"])
    assert emulator.admin("stop-task", key("app1/Main/Fail")).status_code == 200
    # StartSnapshot answers "ok" but the task fails to start on the unwritable bucket.
    assert (
        emulator.signed_post(
            "StartSnapshot",
            {
                **key("app1/Main/Fail"),
                "StorageConfig": {"Type": 0, "TosConfig": {"AccountId": "2100000990", "Bucket": "flaky"}},
                "ImageConfig": {"Interval": 3},
            },
        ).json()["Result"]
        == "ok"
    )
    emulator.configure(unwritable_buckets=[])
    assert emulator.admin("stop-task", key("app1/Main/Stop")).status_code == 200
    assert (
        emulator.admin("rewrite-task", {**key("app1/Main/Interval"), "ImageConfig": {"Interval": 10}}).status_code
        == 200
    )
    assert (
        emulator.admin(
            "rewrite-task", {**key("app1/Main/Width"), "ImageConfig": {"Interval": 3, "Width": 640}}
        ).status_code
        == 200
    )


def test_converged_plan_refresh_reads_each_task_once_and_writes_nothing(work, env, emulator):
    converge(work, env, emulator)
    before = counts(emulator.url)
    plan = snap(work, env, "plan", "--refresh", "--detailed-exitcode")
    assert plan.code == 0, plan.output
    assert re.search(r"Refreshed 6 task\(s\) with GetSnapshotTask in \d+\.\d s: 6 running\.", plan.stdout)
    assert "No changes. 6 task(s) run as declared." in plan.stdout
    assert delta(before, emulator.url) == {"GetSnapshotTask": len(TASKS)}
    # Without --refresh the plan stays offline.
    assert snap(work, env, "plan", "--detailed-exitcode").code == 0
    assert delta(before, emulator.url) == {"GetSnapshotTask": len(TASKS)}


def test_drift_is_planned_with_the_api_reasons_and_fixed_exactly(work, env, emulator):
    converge(work, env, emulator)
    drift(emulator)
    # The offline plan cannot see any of it.
    assert snap(work, env, "plan", "--detailed-exitcode").code == 0

    text = snap(work, env, "plan", "--refresh", "--detailed-exitcode", "--no-color")
    assert text.code == 2, text.output
    # Restarts have their own symbol, headline (the API's StopReason) and count.
    assert "  # app1/Idle/T1 will be restarted (ended: IdleTimeOut)\n   > app1/Idle/T1\n" in text.stdout
    assert "  # app1/Main/Fail will be restarted (failed: StartTaskFailed)" in text.stdout
    assert "  # app1/Main/Stop will be restarted (ended: StopByAPI)" in text.stdout
    assert "will be created" not in text.stdout
    assert text.stdout.count("changed outside snapctl: live -> declared") == 2
    assert "ImageConfig.Interval = 10 -> 3" in text.stdout
    assert "ImageConfig.Width = 640 -> 320  # forces replacement" in text.stdout
    assert "Plan: 0 to add, 3 to restart, 1 to change, 1 to replace, 0 to destroy." in text.stdout

    document = json.loads(snap(work, env, "plan", "--refresh", "--json").stdout)
    assert document["refreshed"] and document["observed"] == {"ended": 2, "failed": 1, "running": 3}
    assert document["refresh_s"] > 0
    actions = {a["address"]: a for a in document["actions"]}
    assert {a: (x["action"], x["observed"], x["stop_reason"], x["changed_outside"]) for a, x in actions.items()} == {
        "app1/Idle/T1": ("restart", "ended", "IdleTimeOut", False),
        "app1/Main/Fail": ("restart", "failed", "StartTaskFailed", False),
        "app1/Main/Stop": ("restart", "ended", "StopByAPI", False),
        "app1/Main/Interval": ("update", "running", None, True),
        "app1/Main/Width": ("replace", "running", None, True),
    }
    assert [(c["path"], c["old"], c["new"]) for c in actions["app1/Main/Interval"]["changes"]] == [
        ("ImageConfig.Interval", 10, 3)
    ]
    assert actions["app1/Idle/T1"]["symbol"] == ">"
    assert document["summary"] == {"add": 0, "restart": 3, "change": 1, "replace": 1, "destroy": 0, "unchanged": 1}
    markdown = snap(work, env, "plan", "--refresh", "--format", "markdown").stdout
    assert "ended (IdleTimeOut): started again" in markdown and "failed (StartTaskFailed)" in markdown
    assert "changed outside snapctl" in markdown

    before = counts(emulator.url)
    applied = snap(work, env, "apply", "--refresh", "--auto-approve", "--json")
    assert applied.code == 0, applied.output
    assert delta(before, emulator.url) == {
        "GetSnapshotTask": len(TASKS),
        "StartSnapshot": 4,
        "UpdateSnapshot": 1,
        "StopSnapshot": 1,
    }
    results = {r["address"]: [c["action"] for c in r["calls"]] for r in json.loads(applied.stdout)["results"]}
    assert results == {
        "app1/Idle/T1": ["StartSnapshot"],
        "app1/Main/Fail": ["StartSnapshot"],
        "app1/Main/Stop": ["StartSnapshot"],
        "app1/Main/Interval": ["UpdateSnapshot"],
        "app1/Main/Width": ["StopSnapshot", "StartSnapshot"],
    }
    for address in TASKS:
        assert emulator.read(*address.split("/"))["Status"] == 2
    assert emulator.read("app1", "Main", "Width")["ImageConfig"]["Width"] == 320
    assert emulator.read("app1", "Main", "Interval")["ImageConfig"]["Interval"] == 3
    assert snap(work, env, "plan", "--refresh", "--detailed-exitcode").code == 0


def test_saved_refresh_plan_applies_and_then_is_stale(work, env, emulator):
    converge(work, env, emulator)
    drift(emulator)
    saved = snap(work, env, "plan", "--refresh", "--out", "fix.plan")
    assert saved.code == 0, saved.output
    assert SECRET not in (work / "fix.plan").read_text()
    applied = snap(work, env, "apply", "fix.plan")
    assert applied.code == 0, applied.output
    stale = snap(work, env, "apply", "fix.plan")
    assert stale.code == 1 and "stale" in stale.stderr
    assert snap(work, env, "apply", "fix.plan", "--refresh").code == 1


def test_converged_reconcile_round_sends_no_start(work, env, emulator):
    converge(work, env, emulator)
    before = counts(emulator.url)
    round_ = snap(work, env, "reconcile", "--json")
    assert round_.code == 0, round_.output
    document = json.loads(round_.stdout)
    assert document["reads"] == len(TASKS) and document["observed"] == {"running": len(TASKS)}
    assert delta(before, emulator.url) == {"GetSnapshotTask": len(TASKS)}
    # The blind re-assert is still there on request.
    before = counts(emulator.url)
    assert snap(work, env, "reconcile", "--no-refresh").code == 0
    assert delta(before, emulator.url) == {"StartSnapshot": len(TASKS)}


def test_tasks_not_started_yet_are_healthy_for_plan_status_and_reconcile(work, env, emulator):
    emulator.configure(start_delay_ms=600_000)
    converge(work, env, emulator)
    assert {task["Status"] for task in emulator.tasks()} == {1}
    before = counts(emulator.url)
    plan = snap(work, env, "plan", "--refresh", "--detailed-exitcode")
    assert plan.code == 0, plan.output
    assert "6 not started" in plan.stdout and "No changes." in plan.stdout
    shown = snap(work, env, "status", "--no-color")
    assert shown.code == 0, shown.output
    assert all("not_started" in line for line in shown.stdout.splitlines() if line.startswith("app1/"))
    document = json.loads(snap(work, env, "status", "--json").stdout)
    assert {(t["status"], t["api_status"]) for t in document["tasks"]} == {("not_started", 1)}
    assert document["not_running"] == 0
    round_ = snap(work, env, "reconcile", "--json")
    assert round_.code == 0, round_.output
    assert json.loads(round_.stdout)["observed"] == {"not_started": len(TASKS)}
    assert delta(before, emulator.url) == {"GetSnapshotTask": 4 * len(TASKS)}


def offline(work, env, emulator, *args):
    """``status --offline`` without API credentials; asserts that no request reached the emulator."""
    before = stats(emulator.url)["total"]
    no_keys = {k: v for k, v in env.items() if k not in ("VOLC_ACCESSKEY", "VOLC_SECRETKEY")}
    shown = run_snapctl(["status", "--offline", "--no-color", *args], cwd=work, env=no_keys)
    assert stats(emulator.url)["total"] == before, shown.output
    assert "Traceback" not in shown.stderr
    return shown


def test_status_offline_shows_the_last_observations_kept_in_the_state(work, env, emulator):
    from reconciler.state import FileStore

    converge(work, env, emulator)
    # Applied, never observed: what the state knows is that snapctl started them.
    never = offline(work, env, emulator)
    assert never.code == 0, never.output
    rows = [line for line in never.stdout.splitlines() if line.startswith("app1/")]
    assert len(rows) == len(TASKS) and all("started" in row and row.endswith("never") for row in rows)
    assert "(started by snapctl at " in never.stdout and ", never observed since)" in never.stdout
    assert "6 of 6 declared task(s) running as last known; 6 started by snapctl since" in never.stdout
    assert snap(work, env, "reconcile").code == 0
    # Stopped since the last observation: the state does not know, and offline means no read.
    emulator.admin("stop-task", key("app1/Main/Stop"))
    seen = offline(work, env, emulator)
    assert seen.code == 0, seen.output
    assert "6 of 6 declared task(s) running as last known." in seen.stdout
    assert snap(work, env, "reconcile").code == 0  # observes it ended, and starts it again
    restarted = offline(work, env, emulator)
    assert restarted.code == 0, restarted.output
    line = restarted.stdout.splitlines()
    at = next(i for i, text in enumerate(line) if text.startswith("app1/Main/Stop"))
    assert "started" in line[at] and "after it was last observed ended (StopByAPI) at " in line[at + 1]
    # An observation newer than the last start is what the state knows: ended.
    from reconciler import api

    with FileStore(work / "state" / "snapctl.state.json") as store:
        store.record_observations(
            [api.Observation(address="app1/Main/Stop", observed=api.Observed.ended, stop_reason="StopByAPI")]
        )
        store.record_intent("app1/Main/Fine", "StartSnapshot", {**key("app1/Main/Fine")})
    ended = offline(work, env, emulator)
    assert ended.code == 2, ended.output
    line = next(line for line in ended.stdout.splitlines() if line.startswith("app1/Main/Stop"))
    assert "ended" in line and "StopByAPI" in line and "never" not in line
    assert "(pending: a StartSnapshot not settled yet)" in ended.stdout and "1 with a pending call" in ended.stdout
    document = json.loads(offline(work, env, emulator, "--json").stdout)
    assert (document["offline"], document["declared"], document["not_running"], document["pending"]) == (
        True,
        len(TASKS),
        1,
        1,
    )
    by_address = {t["address"]: t for t in document["tasks"]}
    assert (by_address["app1/Main/Stop"]["status"], by_address["app1/Main/Stop"]["stop_reason"]) == (
        "ended",
        "StopByAPI",
    )
    assert by_address["app1/Main/Stop"]["observed_since"] and by_address["app1/Main/Fine"]["pending"] == "StartSnapshot"
    assert offline(work, env, emulator, "--target", "app1/Main/Fine").code == 0
    (work / "broken.json").write_text("{bad")
    broken = offline(work, env, emulator, "--state", str(work / "broken.json"))
    assert broken.code == 1 and broken.stderr.startswith("Error: ") and "not valid JSON" in broken.stderr


def test_status_offline_reads_a_postgresql_state(work, env, emulator, pg):
    shared = env | {"SNAPCTL_STATE": pg.state_url}
    absent = offline(work, shared, emulator, "--json")
    assert absent.code == 2 and {t["status"] for t in json.loads(absent.stdout)["tasks"]} == {"absent"}
    converge(work, shared, emulator)
    started = json.loads(offline(work, shared, emulator, "--json").stdout)
    assert {t["status"] for t in started["tasks"]} == {"started"} and started["started"] == len(TASKS)
    assert all(t["applied_at"] and t["observed_since"] is None for t in started["tasks"])
    assert snap(work, shared, "reconcile").code == 0
    document = json.loads(offline(work, shared, emulator, "--json").stdout)
    assert {t["status"] for t in document["tasks"]} == {"running"} and document["running"] == len(TASKS)
    assert all(t["observed_since"] for t in document["tasks"])
    assert offline(work, shared, emulator).code == 0


def test_reconcile_fixes_drift_in_one_round(work, env, emulator):
    converge(work, env, emulator)
    drift(emulator)
    before = counts(emulator.url)
    round_ = snap(work, env, "reconcile")
    assert round_.code == 0, round_.output
    assert f"Reconciled {len(TASKS)} task(s)" in round_.stdout and "3 healed" in round_.stdout
    assert delta(before, emulator.url) == {
        "GetSnapshotTask": len(TASKS),
        "StartSnapshot": 4,
        "UpdateSnapshot": 1,
        "StopSnapshot": 1,
    }
    # The state keeps the last observation of each task: what the round found.
    shown = json.loads(snap(work, env, "state", "show", "app1/Idle/T1", "--json").stdout)["observed"]
    assert (shown["status"], shown["stop_reason"]) == ("ended", "IdleTimeOut") and shown["since"] and shown["ended"]
    assert "# last observed failed (StartTaskFailed) since" in snap(work, env, "state", "show", "app1/Main/Fail").stdout
    before = counts(emulator.url)
    assert snap(work, env, "reconcile").code == 0
    assert delta(before, emulator.url) == {"GetSnapshotTask": len(TASKS)}
    shown = json.loads(snap(work, env, "state", "show", "app1/Idle/T1", "--json").stdout)["observed"]
    assert (shown["status"], shown["stop_reason"], shown["ended"]) == ("running", None, None)
    # A converged round writes nothing to the state: same serial.
    serial = json.loads(snap(work, env, "state", "list", "--json").stdout)["serial"]
    assert snap(work, env, "reconcile").code == 0
    assert json.loads(snap(work, env, "state", "list", "--json").stdout)["serial"] == serial


def test_tasks_past_the_read_window_are_unknown_and_confirmed_by_start(work, env, emulator):
    converge(work, env, emulator)
    emulator.configure(read_window_s=0)
    plan = snap(work, env, "plan", "--refresh", "--detailed-exitcode")
    assert plan.code == 0, plan.output
    assert "6 task(s) could not be seen" in plan.stdout and "? app1/Main/Fine: not found" in plan.stdout
    document = json.loads(snap(work, env, "plan", "--refresh", "--json").stdout)
    assert [u["address"] for u in document["unknown"]] == sorted(TASKS) and not document["actions"]
    before = counts(emulator.url)
    round_ = json.loads(snap(work, env, "reconcile", "--json").stdout)
    assert round_["ok"] and round_["observed"] == {"unknown": len(TASKS)}
    assert delta(before, emulator.url) == {"GetSnapshotTask": len(TASKS), "StartSnapshot": len(TASKS)}
    starts = stats(emulator.url)["by_action"]["StartSnapshot"]["outcomes"]
    assert starts.get("already_started", 0) >= len(TASKS)
    assert round_["result"]["summary"]["healed"] == 0
    # apply --refresh settles them the same way.
    before = counts(emulator.url)
    applied = snap(work, env, "apply", "--refresh", "--auto-approve")
    assert applied.code == 0 and "StartSnapshot will confirm the 6 task(s)" in applied.stdout, applied.output
    assert delta(before, emulator.url) == {"GetSnapshotTask": len(TASKS), "StartSnapshot": len(TASKS)}


def test_status_exit_codes_and_output(work, env, emulator):
    converge(work, env, emulator)
    ok = snap(work, env, "status")
    assert ok.code == 0, ok.output
    assert "6 of 6 declared task(s) running" in ok.stdout
    emulator.admin("stop-task", key("app1/Main/Stop"))
    stopped = snap(work, env, "status", "--no-color")
    assert stopped.code == 2
    line = next(line for line in stopped.stdout.splitlines() if line.startswith("app1/Main/Stop"))
    assert "ended" in line and "StopByAPI" in line
    document = json.loads(snap(work, env, "status", "--json", "--target", "app1/Main/Stop").stdout)
    assert document["offline"] is False
    assert [(t["address"], t["status"], t["stop_reason"]) for t in document["tasks"]] == [
        ("app1/Main/Stop", "ended", "StopByAPI")
    ]
    assert document["tasks"][0]["started"] and document["tasks"][0]["ended"]
    assert snap(work, env, "status", "--target", "app1/Main/Fine").code == 0
    wrong = snapctl_env(emulator.url, work, OFF_AK="a", OFF_SK="b", VOLC_SECRETKEY="wrong")
    failed = run_snapctl(["status"], cwd=work, env=wrong)
    assert failed.code == 1 and "SignatureDoesNotMatch" in failed.stderr and "Traceback" not in failed.stderr
    assert snap(work, env, "status", "--target", "app9").code == 1


def test_refresh_never_shows_the_storage_secret(work, env, emulator):
    converge(work, env, emulator)
    log = work / "snapctl.log"
    logged = {**env, "SNAPCTL_LOG": "debug", "SNAPCTL_LOG_PATH": str(log)}
    emulator.admin("rewrite-task", {**key("app1/Main/Fine"), "MaxIdleTime": 60})
    outputs = [
        run_snapctl(args, cwd=work, env=logged)
        for args in (
            ["plan", "--refresh", "--json"],
            ["plan", "--refresh", "--format", "markdown"],
            ["plan", "--refresh", "--out", "p.plan"],
            ["status", "--json"],
            ["status"],
            ["apply", "--refresh", "--auto-approve"],
            ["reconcile", "--json"],
        )
    ]
    # The read returned the secret: the emulator gives it back as the real API does.
    assert emulator.read("app1", "Main", "Fine")["StorageConfig"]["CustomConfig"]["SecretKey"] == SECRET
    assert all(o.code == 0 for o in outputs), [o.output for o in outputs]
    for run in outputs:
        assert SECRET not in run.output and "AK-refresh-access" not in run.output
    for path in [log, work / "p.plan", *work.joinpath("state").iterdir()]:
        assert SECRET not in path.read_text(errors="replace"), path


def test_import_reads_the_live_task_and_adopts_what_runs(work, env, emulator):
    converge(work, env, emulator)
    assert snap(work, env, "state", "rm", "app1/Main/Interval", "app1/Main/Stop", "app1/Main/Fine").code == 0
    emulator.admin("rewrite-task", {**key("app1/Main/Interval"), "ImageConfig": {"Interval": 10}})
    before = counts(emulator.url)
    imported = snap(work, env, "import", "app1/Main/Interval")
    assert imported.code == 0, imported.output
    assert "it runs (GetSnapshotTask: running)" in imported.stdout and "ImageConfig.Interval" in imported.stdout
    assert delta(before, emulator.url) == {"GetSnapshotTask": 1}  # read, nothing written
    plan = snap(work, env, "plan", "--no-color")
    assert "ImageConfig.Interval = 10 -> 3" in plan.stdout and "1 to change" in plan.stdout
    # A task that runs as declared (custom storage: secrets compared by fingerprint) is recorded as declared.
    fine = json.loads(snap(work, env, "import", "app1/Main/Fine", "--json").stdout)
    assert (fine["outcome"], fine["adopted"], fine["live_differs"]) == ("read", True, [])
    # One that ended is started again, as declared.
    emulator.admin("stop-task", key("app1/Main/Stop"))
    stopped = snap(work, env, "import", "app1/Main/Stop")
    assert stopped.code == 0 and "was not running (ended (StopByAPI))" in stopped.stdout
    assert emulator.read("app1", "Main", "Stop")["Status"] == 2
    assert "1 to change" in snap(work, env, "plan").stdout
