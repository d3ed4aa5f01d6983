"""Pipelines and controllers: saved plans, JSON, exit codes, Markdown, reconcile, watch,
metrics, import, state commands, force-unlock, colour rules."""

from __future__ import annotations

import json
import os
import re
import subprocess

import httpx
import pytest
from snapctl_testing import (
    SNAPCTL,
    Watch,
    new_project,
    run_on_terminal,
    run_snapctl,
    snapctl_env,
    stats,
    tasks,
    wait_for,
)

from reconciler.emulator.config import EmulatorConfig
from reconciler.emulator.server import EmulatorServer

MANIFEST = """\
app_id: app1
storage:
  archive: {type: tos, account_id: "2100000990", bucket: snaps}
  offsite: {type: custom, vendor: oss, bucket: offsite, access_key: "${env:OFF_AK}", secret_key: "${env:OFF_SK}"}
defaults:
  storage: archive
  image: {interval: 3}
rooms:
  RoomA:
    tasks:
      T1: {}
      T2: {storage: offsite}
  RoomB:
    tasks:
      T1: {image: {width: 320}}
"""
ADDRESSES = {"app1/RoomA/T1", "app1/RoomA/T2", "app1/RoomB/T1"}
ANSI = re.compile(r"\x1b\[")


@pytest.fixture(scope="module")
def server():
    with EmulatorServer(EmulatorConfig()) as srv:
        yield srv


@pytest.fixture
def work(tmp_path, server):
    httpx.post(f"{server.url}/_emulator/config", json={"error_rate": 0.0, "drop_rate": 0.0, "slow_rate": 0.0})
    return new_project(tmp_path, server.url, {"app.yaml": MANIFEST})


@pytest.fixture
def env(work, server):
    return snapctl_env(server.url, work, OFF_AK="AK-gitops-secret", OFF_SK="SK-gitops-secret")


def snap(work, env, *args, **kw):
    return run_snapctl(list(args), cwd=work, env=env, **kw)


def test_detailed_exitcode(work, env):
    assert snap(work, env, "plan", "--detailed-exitcode").code == 2
    assert snap(work, env, "apply", "--auto-approve").code == 0
    assert snap(work, env, "plan", "--detailed-exitcode").code == 0
    (work / "manifests" / "app.yaml").write_text(MANIFEST + "bogus: 1\n")
    assert snap(work, env, "plan", "--detailed-exitcode").code == 1


def test_saved_plan_applies_then_is_stale(work, env, server):
    saved = snap(work, env, "plan", "--out", "changes.plan")
    assert saved.code == 0 and "snapctl apply changes.plan" in saved.stdout
    text = (work / "changes.plan").read_text()
    assert "SK-gitops-secret" not in text and "AK-gitops-secret" not in text
    applied = snap(work, env, "apply", "changes.plan")
    assert applied.code == 0, applied.output
    assert set(tasks(server.url)) == ADDRESSES
    again = snap(work, env, "apply", "changes.plan")
    assert again.code == 1 and "stale" in again.stderr
    assert "Traceback" not in again.output


def test_saved_plan_for_another_state_is_refused(work, env, server):
    assert snap(work, env, "apply", "--auto-approve").code == 0
    (work / "manifests" / "app.yaml").write_text(MANIFEST.replace("interval: 3", "interval: 4"))
    assert snap(work, env, "plan", "--out", "p.plan").code == 0
    other = work / "other"
    (other / "state").mkdir(parents=True)
    (other / "manifests").mkdir()
    (other / "manifests" / "app.yaml").write_text(MANIFEST)
    env_other = env | {"HOME": str(other)}
    # Another state over the same running tasks: it takes them over only when told to.
    assert run_snapctl(["apply", "--auto-approve", "--adopt"], cwd=other, env=env_other).code == 0
    refused = run_snapctl(["apply", str(work / "p.plan")], cwd=other, env=env_other)
    assert refused.code == 1 and f"made for the state {work / 'state' / 'snapctl.state.json'}, not " in refused.stderr


def test_a_refused_saved_plan_writes_nothing(work, env, server, tmp_path_factory):
    """Applied from a directory whose state is not the plan's: one message, exit 1,
    nothing sent, and no state directory or lock file left behind."""
    assert snap(work, env, "apply", "--auto-approve").code == 0
    (work / "manifests" / "app.yaml").write_text(MANIFEST.replace("interval: 3", "interval: 4"))
    assert snap(work, env, "plan", "--out", "p.plan").code == 0
    bare = tmp_path_factory.mktemp("bare")
    with_dir = tmp_path_factory.mktemp("with_dir")
    (with_dir / "state").mkdir()
    before = stats(server.url)["total"]
    for elsewhere in (bare, with_dir):
        listing = sorted(p.relative_to(elsewhere) for p in elsewhere.rglob("*"))
        refused = run_snapctl(["apply", str(work / "p.plan")], cwd=elsewhere, env=env | {"HOME": str(elsewhere)})
        assert refused.code == 1, refused.output
        assert refused.stdout == "" and refused.stderr.count("\n") == 1, refused.output
        assert f"the saved plan was made for the state {work / 'state' / 'snapctl.state.json'}, not " in refused.stderr
        assert "nothing was sent. Apply it with the --state and --workspace it was planned with" in refused.stderr
        assert sorted(p.relative_to(elsewhere) for p in elsewhere.rglob("*")) == listing
    assert stats(server.url)["total"] == before


def test_saved_plan_is_refused_when_manifests_changed(work, env):
    assert snap(work, env, "plan", "--out", "p.plan").code == 0
    (work / "manifests" / "app.yaml").write_text(MANIFEST.replace("interval: 3", "interval: 9"))
    refused = snap(work, env, "apply", "p.plan")
    assert refused.code == 1 and "manifests changed" in refused.stderr


def test_saved_plan_is_refused_when_a_secret_changed(work, env, server):
    assert snap(work, env, "plan", "--out", "p.plan").code == 0
    refused = snap(work, env | {"OFF_SK": "SK-rotated"}, "apply", "p.plan")
    assert refused.code == 1 and "a secret changed" in refused.stderr
    assert stats(server.url)["total"] == 0


def test_plan_json_shape(work, env):
    result = snap(work, env, "plan", "--json")
    assert result.code == 0
    doc = json.loads(result.stdout)
    assert doc["format_version"] == 1 and doc["type"] == "plan" and doc["has_changes"] is True
    assert doc["summary"] == {"add": 3, "change": 0, "replace": 0, "destroy": 0, "restart": 0, "unchanged": 0}
    assert {a["address"] for a in doc["actions"]} == ADDRESSES
    for action in doc["actions"]:
        assert set(action) == {
            "address",
            "action",
            "symbol",
            "reason",
            "changes",
            "observed",
            "stop_reason",
            "changed_outside",
            "pending",
        }
        assert action["observed"] is None and action["changed_outside"] is False  # no --refresh
        assert action["action"] == "create" and action["symbol"] == "+"
        for change in action["changes"]:
            assert set(change) == {"path", "old", "new", "forces_replacement", "sensitive", "old_name", "new_name"}
    secrets = [c for a in doc["actions"] for c in a["changes"] if c["sensitive"]]
    assert {c["path"] for c in secrets} == {
        "StorageConfig.CustomConfig.AccessKey",
        "StorageConfig.CustomConfig.SecretKey",
    }
    assert all(c["new"] == "(sensitive)" for c in secrets)
    assert "gitops-secret" not in result.output


def test_apply_json_shape_with_a_failure(work, env, server):
    httpx.post(f"{server.url}/_emulator/config", json={"error_rate": 1.0})
    result = snap(work, env, "apply", "--auto-approve", "--json", "--max-attempts", "2")
    assert result.code == 1
    doc = json.loads(result.stdout)
    assert doc["type"] == "apply" and doc["ok"] is False
    assert doc["summary"]["failed"] == 3
    for r in doc["results"]:
        assert r["outcome"] == "failed" and r["code"] == "InternalError" and r["code_n"] == 100014
        assert r["request_id"] and r["message"]
    httpx.post(f"{server.url}/_emulator/config", json={"error_rate": 0.0})
    ok = json.loads(snap(work, env, "apply", "--auto-approve", "--json").stdout)
    assert ok["ok"] is True and {r["outcome"] for r in ok["results"]} == {"started"}
    assert all(r["calls"][0]["action"] == "StartSnapshot" for r in ok["results"])


def test_markdown_plan(work, env):
    result = snap(work, env, "plan", "--format", "markdown")
    assert result.code == 0
    md = result.stdout
    assert md.startswith("### snapctl plan") and "**Plan: 3 to add" in md
    assert "Room `app1/RoomA`" in md and "```diff" in md
    many = MANIFEST + "".join(f"      X{i}: {{}}\n" for i in range(12))
    (work / "manifests" / "app.yaml").write_text(
        many.replace("  RoomB:\n    tasks:\n      T1: {image: {width: 320}}\n", "")
        + "  RoomB:\n    tasks:\n      T1: {image: {width: 320}}\n"
    )
    folded = snap(work, env, "plan", "--format", "markdown").stdout
    assert "<details><summary>Room `app1/RoomA`" in folded


def test_reconcile_heals_an_idled_out_task(work, env, server):
    assert snap(work, env, "apply", "--auto-approve").code == 0
    httpx.post(f"{server.url}/_emulator/streams-stopped", json={"AppId": "app1", "RoomId": "RoomB", "Immediate": True})
    assert "app1/RoomB/T1" not in tasks(server.url)
    result = snap(work, env, "reconcile")
    assert result.code == 0, result.output
    assert "1 healed" in result.stdout and "Healed: app1/RoomB/T1" in result.stdout
    assert "app1/RoomB/T1" in tasks(server.url)
    again = snap(work, env, "reconcile", "--json")
    doc = json.loads(again.stdout.strip().splitlines()[-1])
    assert doc["ok"] and doc["result"]["summary"]["healed"] == 0
    # The second round read every task and found them running: no write call.
    assert doc["result"]["results"] == [] and doc["observed"] == {"running": len(ADDRESSES)}


def test_watch_survives_faults_serves_metrics_and_stops_on_sigterm(work, env, server):
    watching = ("--interval", "0.3", "--metrics-port", "0", "--json", "--timeout", "1", "--max-attempts", "2")
    with Watch(work, env, *watching) as watch:
        port = watch.port
        first = json.loads(watch.wait_line("", what="the first round"))
        assert first["ok"] and first["result"]["summary"]["add"] == 3
        httpx.post(f"{server.url}/_emulator/config", json={"error_rate": 1.0})
        # The reads fail: the tasks are unknown, and StartSnapshot, which would confirm them, fails too.
        failed_at, failed = wait_for(
            lambda: next(((i, d) for i, d in enumerate(watch.documents()) if i > 0 and not d["ok"]), None),
            what="a failed hold",
        )
        assert failed["result"]["summary"]["failed"] >= 1
        httpx.post(f"{server.url}/_emulator/config", json={"error_rate": 0.0})
        wait_for(
            lambda: (
                'snapctl_tasks_observed{status="running"} 3.0' in httpx.get(f"http://127.0.0.1:{port}/metrics").text
            ),
            what="every task read running again",
        )
        # A task that idles out is seen ended by its next read and started again.
        httpx.post(
            f"{server.url}/_emulator/streams-stopped", json={"AppId": "app1", "RoomId": "RoomB", "Immediate": True}
        )
        healed = wait_for(
            lambda: next(
                (
                    d
                    for d in watch.documents()[failed_at + 1 :]
                    if d.get("result", {}).get("summary", {}).get("healed") == 1
                ),
                None,
            ),
            what="a hold that heals the idled-out task",
        )
        assert healed["ok"] and [r["address"] for r in healed["result"]["results"]] == ["app1/RoomB/T1"]
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        assert re.search(r'snapctl_task_failures_total\{reason="IdleTimeOut"\} 1\.0', metrics)
        assert re.search(r'snapctl_tasks_observed\{status="(running|ended)"\} [1-3]\.0', metrics)
        assert "snapctl_tasks_declared 3.0" in metrics
        assert "snapctl_controller_leader 1.0" in metrics and "snapctl_manifests_valid 1.0" in metrics
        assert re.search(r"snapctl_task_reads_total [1-9]", metrics)
        assert re.search(r'snapctl_api_requests_total\{action="StartSnapshot",outcome="ok"\} [1-9]', metrics)
        assert re.search(r'snapctl_lock_holds_total\{result="ok"\} [1-9]', metrics)
        assert re.search(r"snapctl_tasks_healed_total [1-9]", metrics)
        assert watch.stop(timeout=20) == 0
    assert "Stopped after" in "\n".join(watch.lines["stderr"])
    assert all(line.startswith("{") for line in watch.lines["stdout"]), watch.lines["stdout"]
    state = json.loads((work / "state" / "snapctl.state.json").read_text())
    assert set(state["tasks"]) == ADDRESSES
    assert not (work / "state" / "snapctl.state.json.journal").exists()


def test_import_state_commands_and_force_unlock(work, env, server):
    assert snap(work, env, "apply", "--auto-approve").code == 0
    listed = snap(work, env, "state", "list")
    assert listed.stdout.split() == sorted(ADDRESSES)
    shown = snap(work, env, "state", "show", "app1/RoomA/T2")
    assert "StorageConfig.CustomConfig.Vendor = 1" in shown.stdout and "(sensitive)" in shown.stdout
    assert "gitops-secret" not in shown.stdout
    removed = snap(work, env, "state", "rm", "app1/RoomA/T2")
    assert removed.code == 0 and "app1/RoomA/T2" in tasks(server.url)  # forgotten, not stopped
    assert "app1/RoomA/T2" not in snap(work, env, "state", "list").stdout
    imported = snap(work, env, "import", "app1/RoomA/T2")
    assert imported.code == 0 and "Imported app1/RoomA/T2" in imported.stdout
    assert snap(work, env, "plan", "--detailed-exitcode").code == 0
    assert snap(work, env, "import", "app1/RoomA/T2").code == 1
    assert snap(work, env, "import", "app1/Nope/T1").code == 1
    assert snap(work, env, "state", "show", "app1/Nope/T1").code == 1
    unlocked = snap(work, env, "force-unlock")
    assert unlocked.code == 0 and "not locked" in unlocked.stdout


def test_state_show_names_codes_as_the_plan_does(work, env):
    planned = snap(work, env, "plan", "--no-color").stdout
    assert snap(work, env, "apply", "--auto-approve").code == 0
    block = planned.split("# app1/RoomA/T2 will be created\n", 1)[1].split("\n\n", 1)[0]
    plan_fields = dict(re.fullmatch(r"\s+\+ (\S+)\s+= (.*)", line).groups() for line in block.splitlines()[1:])
    assert plan_fields["StorageConfig.CustomConfig.Vendor"] == "1 (oss)"
    shown = snap(work, env, "state", "show", "app1/RoomA/T2")
    assert shown.code == 0, shown.output
    shown_fields = dict(line.split(" = ", 1) for line in shown.stdout.splitlines() if not line.startswith("#"))
    assert shown_fields == plan_fields  # every field, codes named beside them, secrets masked alike
    assert shown_fields["ImageConfig.Format"] == "0 (jpeg)" and shown_fields["StorageConfig.Type"] == "2 (custom)"
    document = json.loads(snap(work, env, "state", "show", "app1/RoomA/T2", "--json").stdout)
    assert document["request"]["StorageConfig"]["CustomConfig"]["Vendor"] == 1  # codes stay codes
    assert document["names"] == {
        "ImageConfig.Format": "jpeg",
        "StorageConfig.Type": "custom",
        "StorageConfig.CustomConfig.Vendor": "oss",
        "StorageConfig.CustomConfig.Region": "oss-cn-hangzhou",  # OSS region 0, by the vendor's table
    }


def test_force_unlock_refuses_a_live_holder(work, env):
    holder = subprocess.Popen(
        [
            "python3" if False else os.path.join(os.path.dirname(SNAPCTL), "python"),
            "-c",
            "import time; from reconciler.state import FileStore\n"
            "s = FileStore('state/snapctl.state.json', command='snapctl apply'); s.open(); print('locked', flush=True); time.sleep(30)",
        ],
        cwd=work,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        refused = snap(work, env, "force-unlock")
        assert refused.code == 1 and f"pid {holder.pid}" in refused.stderr and "kill" in refused.stderr
        blocked = snap(work, env, "apply", "--auto-approve")
        assert blocked.code == 1 and f"pid {holder.pid}" in blocked.stderr and "snapctl apply" in blocked.stderr
    finally:
        holder.kill()
        holder.wait()


def test_destroy(work, env, server):
    assert snap(work, env, "apply", "--auto-approve").code == 0
    refused = snap(work, env, "destroy")
    assert refused.code == 1 and "--auto-approve" in refused.stderr
    result = snap(work, env, "destroy", "--auto-approve")
    assert result.code == 0 and "3 destroyed" in result.stdout
    assert tasks(server.url) == {}
    assert snap(work, env, "state", "list").stdout == ""


def test_no_escape_codes_off_terminal_or_with_no_color(work, env):
    for extra_env in ({}, {"NO_COLOR": "1"}):
        result = snap(work, env | extra_env, "plan")
        assert not ANSI.search(result.output)
    assert not ANSI.search(snap(work, env, "plan", "--no-color").output)


def test_colour_on_a_terminal_unless_no_color(work, env):
    code, output = run_on_terminal(["plan"], work, env | {"TERM": "xterm"})
    assert code == 0 and ANSI.search(output)
    code, output = run_on_terminal(["plan"], work, env | {"TERM": "xterm", "NO_COLOR": "1"})
    assert code == 0 and not ANSI.search(output)


def test_interactive_confirmation(work, env, server):
    code, output = run_on_terminal(["apply"], work, env | {"TERM": "xterm"}, answer="no")
    assert code == 1 and "cancelled" in output
    assert stats(server.url)["total"] == 0
    code, output = run_on_terminal(["apply"], work, env | {"TERM": "xterm"}, answer="yes")
    assert code == 0, output
    assert set(tasks(server.url)) == ADDRESSES


def test_progress_bar_on_a_terminal_and_lines_otherwise(tmp_path):
    many = "".join(f"      T{i:02d}: {{}}\n" for i in range(40))
    (tmp_path / "manifests").mkdir()
    (tmp_path / "state").mkdir()
    (tmp_path / "manifests" / "m.yaml").write_text(
        "app_id: app9\nstorage:\n  s: {type: tos, account_id: '1', bucket: b}\n"
        f"defaults: {{storage: s}}\nrooms:\n  R:\n    tasks:\n{many}"
    )
    with EmulatorServer(EmulatorConfig(latency_ms=150)) as slow:
        env = snapctl_env(slow.url, tmp_path)
        code, output = run_on_terminal(
            ["apply", "--auto-approve", "--parallelism", "4"], tmp_path, env | {"TERM": "xterm", "COLUMNS": "120"}
        )
        assert code == 0, output
        assert re.search(r"\d+/40", output) and "tasks/s" in output  # done/total and rate, redrawn live
        # a line per task above the bar, kept once it clears (tests/test_rough_edges.py)
        assert all(output.count(f"app9/R/T{i:02d}: created") == 1 for i in range(40)), output
        httpx.post(f"{slow.url}/_emulator/reset")
        for f in (tmp_path / "state").iterdir():
            f.unlink()
        plain = run_snapctl(["apply", "--auto-approve"], cwd=tmp_path, env=env)
        assert plain.code == 0
        assert sum(line.startswith("app9/R/T") for line in plain.stdout.splitlines()) == 40
        assert not ANSI.search(plain.output)


def test_state_list_shows_calls_left_pending(work, env):
    from reconciler.state import FileStore

    with FileStore(work / "state" / "snapctl.state.json") as store:
        store.record_intent("app1/RoomA/T1", "StartSnapshot", {"AppId": "app1", "RoomId": "RoomA", "TaskId": "T1"})
    listed = snap(work, env, "state", "list")
    assert listed.stdout == "app1/RoomA/T1 (pending: StartSnapshot sent by an interrupted run, outcome unknown)\n"
    doc = json.loads(snap(work, env, "state", "list", "--json").stdout)
    assert doc["tasks"] == [] and doc["pending"] == {"app1/RoomA/T1": "StartSnapshot"}
    assert snap(work, env, "state", "rm", "app1/RoomA/T1").code == 0
    assert snap(work, env, "state", "list").stdout == ""


def test_plan_says_why_it_starts_a_task_left_pending(work, env):
    from reconciler.manifest import load_manifests
    from reconciler.state import FileStore

    declared = load_manifests([work / "manifests"], environ=env).tasks["app1/RoomA/T1"].request.wire()
    with FileStore(work / "state" / "snapctl.state.json") as store:
        store.record_intent("app1/RoomA/T1", "StartSnapshot", declared)
    plan = snap(work, env, "plan")
    assert "# (an interrupted apply sent StartSnapshot and never learned its outcome: started again)" in plan.stdout
    assert "# (not in the state)" not in plan.stdout


def test_show_renders_a_saved_plan_as_plan_does(work, env):
    assert snap(work, env, "apply", "--auto-approve").code == 0
    (work / "manifests" / "app.yaml").write_text(
        MANIFEST.replace("interval: 3", "interval: 4").replace("width: 320", "width: 640")
    )
    assert snap(work, env, "plan", "--out", "p.plan").code == 0
    for args in ([], ["--json"], ["--format", "markdown"]):
        shown = snap(work, env, "show", "p.plan", *args)
        planned = snap(work, env, "plan", *args)
        assert shown.code == 0 and planned.code == 0
        if args == ["--json"]:
            drop = lambda d: {k: v for k, v in json.loads(d).items() if k != "created_at"}  # noqa: E731
            assert drop(shown.stdout) == drop(planned.stdout)
        else:
            assert shown.stdout == planned.stdout
    assert "gitops-secret" not in snap(work, env, "show", "p.plan", "--json").stdout
    missing = snap(work, env, "show", "nope.plan")
    assert missing.code == 1 and "cannot read the plan file" in missing.stderr
