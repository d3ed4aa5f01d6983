"""The controller as a service (issue 19): its events and health facts, observed end to end
through the library against the emulator."""

from __future__ import annotations

import threading

from snapctl_testing import new_project, wait_for

from reconciler import controller, engine
from reconciler.emulator.config import DEFAULT_ACCESS_KEY, DEFAULT_SECRET_KEY

MANIFEST = """\
app_id: ctlapp
storage:
  archive: {type: tos, account_id: "2100000990", bucket: snaps}
defaults: {storage: archive}
rooms:
  R1:
    tasks:
      T1: {}
      T2: {}
"""


def settings(url: str) -> engine.Settings:
    return engine.Settings(
        endpoint=url,
        environ={"VOLC_ACCESSKEY": DEFAULT_ACCESS_KEY, "VOLC_SECRETKEY": DEFAULT_SECRET_KEY},
    )


def test_events_and_health_of_a_watching_controller(emulator, tmp_path):
    work = new_project(tmp_path, emulator.url, {"app.yaml": MANIFEST})
    events: list[controller.Event] = []
    status = controller.ControllerStatus([events.append])
    assert status.health().ready() == (False, "controller is starting")
    stop = threading.Event()
    runner = threading.Thread(
        target=controller.watch,
        args=([work / "manifests"], work / "state" / "snapctl.state.json", settings(emulator.url)),
        kwargs={"interval_s": 0.1, "stop": stop, "status": status},
    )
    runner.start()
    try:
        wait_for(lambda: len(emulator.tasks()) == 2, what="both tasks started")
        wait_for(lambda: status.health().ready()[0], what="a ready controller")
        health = status.health()
        assert health.alive() and health.declared == 2 and health.last_tick_at is not None
        (work / "manifests" / "app.yaml").write_text(MANIFEST + "  R2: [\n")
        wait_for(lambda: any(e.kind is controller.EventKind.manifests_broken for e in events), what="broken")
        health = status.health()
        assert health.manifests_loaded and "app.yaml" in (health.manifests_error or "")
        ready, reason = health.ready()
        assert ready and "manifests broken, the last good set in force" in reason, reason
        (work / "manifests" / "app.yaml").write_text(MANIFEST)
        wait_for(lambda: any(e.kind is controller.EventKind.manifests_fixed for e in events), what="fixed")
        assert (
            emulator.admin("streams-stopped", {"AppId": "ctlapp", "RoomId": "R1", "Immediate": True}).status_code == 200
        )
        healed = wait_for(lambda: [e for e in events if e.kind is controller.EventKind.healed], what="a healed event")
        assert {e.address for e in healed} <= {"ctlapp/R1/T1", "ctlapp/R1/T2"}
        assert all(e.document()["event"] in {k.value for k in controller.EventKind} for e in events)
    finally:
        stop.set()
        runner.join(30)
    assert status.health().role is controller.Role.stopped and not status.health().alive()


# -- The command, end to end ------------------------------------------------------------------

import datetime  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import signal  # noqa: E402

import httpx  # noqa: E402
from snapctl_testing import Watch, calls, run_snapctl, snapctl_env  # noqa: E402

FAILING = """\
app_id: ctlapp
storage:
  archive: {type: tos, account_id: "2100000990", bucket: snaps}
  broken: {type: tos, account_id: "2100000990", bucket: nowrite}
defaults: {storage: archive}
rooms:
  R1:
    tasks:
      T1: {}
      F1: {storage: broken}
"""


def many(count: int, rooms: int = 1) -> str:
    lines = [
        "app_id: ctlapp",
        "storage:",
        '  archive: {type: tos, account_id: "2100000990", bucket: snaps}',
        "defaults: {storage: archive}",
        "rooms:",
    ]
    for room in range(rooms):
        lines += [f"  R{room:02d}:", "    tasks:"]
        lines += [f"      T{i:03d}: {{}}" for i in range(count // rooms)]
    return "\n".join(lines) + "\n"


def start_watch(work, env, *args: str) -> Watch:
    """``snapctl reconcile --watch --no-color ARGS``, its stderr merged into its stdout."""
    return Watch(work, env, "--no-color", *args, merged=True)


def running(emulator, address: str) -> bool:
    app, room, task = address.split("/")
    return any((t["AppId"], t["RoomId"], t["TaskId"]) == (app, room, task) for t in emulator.tasks())


def stop_task(emulator, address: str, reason: str = "StopByAPI", *, strict: bool = True) -> None:
    """Stop a running task out of band (``strict``: it must be running)."""
    app, room, task = address.split("/")
    answer = emulator.admin("stop-task", {"AppId": app, "RoomId": room, "TaskId": task, "StopReason": reason})
    assert answer.status_code == 200 or not strict, answer.text


def test_a_failing_task_is_reported_and_backed_off_not_healed(emulator, tmp_path):
    emulator.configure(unwritable_buckets=["nowrite"])
    work = new_project(tmp_path, emulator.url, {"app.yaml": FAILING})
    env = snapctl_env(emulator.url, work)
    watch = start_watch(work, env, "--interval", "0.1", "--json", "--metrics-port", "0")
    try:
        port = watch.port
        watch.wait_line(r"ctlapp/R1/F1: failing \(StartTaskFailed\)", what="the failing line")
        # Read again and again (every 0.1 s); started once more at once, then held back (30 s).
        wait_for(lambda: calls(emulator.url, "GetSnapshotTask") >= 40, what="40 reads")
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        assert 'snapctl_tasks_failing{reason="StartTaskFailed"} 1.0' in metrics, metrics
        # Found failed, it was started again once (a heal); failed again, it is failing, not healed.
        assert re.search(r"snapctl_tasks_healed_total 1\.0", metrics), metrics
        status = run_snapctl(["status"], cwd=work, env=env)
        assert status.code == 2 and "(failing: StartTaskFailed, 2 failure(s) in a row" in status.stdout, status.output
        assert "1 failing" in status.stdout and re.search(r"Controller: pid \d+ on .* leads", status.stdout)
    finally:
        assert watch.stop() == 0
    starts = emulator.stats()["by_action"]["StartSnapshot"]["total"]
    assert starts == 3, f"T1 once, F1 twice (the restart that failed again is backed off): {starts}"
    documents = watch.documents()
    restarts = [
        r for d in documents for r in d.get("result", {}).get("results", []) if r["action"] in ("create", "restart")
    ]
    assert [r["healed"] for r in restarts if r["address"] == "ctlapp/R1/F1"] == [False, True], restarts
    # A hold's line and a round's share one shape: the failing task, and when its backed-off restart is due.
    held_back = [d for d in documents if "ctlapp/R1/F1" in d["deferred"]]
    assert held_back and all(d["failing"] == {"ctlapp/R1/F1": "StartTaskFailed"} for d in held_back), documents
    due = datetime.datetime.fromisoformat(held_back[-1]["deferred"]["ctlapp/R1/F1"])
    assert due.tzinfo is not None and due > datetime.datetime.now(datetime.timezone.utc), due  # the 30 s backoff
    assert {"lock_wait_s", "recorded", "acted_after_reads"} <= set(held_back[-1]), held_back[-1]
    # A one-shot reconcile tells the truth too: exit 1 while a declared task fails to run.
    once = run_snapctl(["reconcile"], cwd=work, env=env)
    assert once.code == 1 and "1 failing" in once.stdout, once.output
    assert "Failing: ctlapp/R1/F1 (StartTaskFailed): not restarted before" in once.stderr, once.output
    (round_,) = [
        json.loads(line) for line in run_snapctl(["reconcile", "--json"], cwd=work, env=env).stdout.splitlines()
    ]
    assert round_["failing"] == {"ctlapp/R1/F1": "StartTaskFailed"} and set(round_["deferred"]) == {"ctlapp/R1/F1"}
    assert round_["deferred"]["ctlapp/R1/F1"] == held_back[-1]["deferred"]["ctlapp/R1/F1"], (round_, held_back[-1])
    assert emulator.stats()["by_action"]["StartSnapshot"]["total"] == 3


def test_broken_manifests_keep_the_last_good_set_healing(emulator, tmp_path):
    work = new_project(tmp_path, emulator.url, {"app.yaml": MANIFEST})
    env = snapctl_env(emulator.url, work)
    watch = start_watch(work, env, "--interval", "0.1", "--metrics-port", "0")
    try:
        port = watch.port
        wait_for(lambda: len(emulator.tasks()) == 2, what="both tasks started")
        (work / "manifests" / "app.yaml").write_text(MANIFEST.replace("T2: {}", "T2: {image: {interval: 0}}"))
        watch.wait_line(
            r"Error: manifests broken \(the last good manifests stay in force\): .*app\.yaml", what="broken"
        )
        assert "snapctl_manifests_valid 0.0" in httpx.get(f"http://127.0.0.1:{port}/metrics").text
        stop_task(emulator, "ctlapp/R1/T2")
        wait_for(lambda: running(emulator, "ctlapp/R1/T2"), what="T2 healed from the last good set")
        assert emulator.read("ctlapp", "R1", "T2")["ImageConfig"]["Interval"] == 2
        (work / "manifests" / "app.yaml").write_text(MANIFEST)
        watch.wait_line("Manifests fixed: 2 task", what="fixed")
        assert "snapctl_manifests_valid 1.0" in httpx.get(f"http://127.0.0.1:{port}/metrics").text
    finally:
        assert watch.stop() == 0


def test_an_ended_task_is_healed_at_once_not_at_the_end_of_a_sweep(emulator, tmp_path):
    tasks = 60
    work = new_project(tmp_path, emulator.url, {"app.yaml": many(tasks)})
    env = snapctl_env(emulator.url, work)
    assert run_snapctl(["apply", "--auto-approve"], cwd=work, env=env).code == 0
    watch = start_watch(work, env, "--read-qps", "20", "--interval", "0.1", "--json")
    try:
        wait_for(lambda: calls(emulator.url, "GetSnapshotTask") >= tasks, what="a first sweep")
        for victim in ("ctlapp/R00/T007", "ctlapp/R00/T042"):
            reads = calls(emulator.url, "GetSnapshotTask")
            stop_task(emulator, victim)
            wait_for(lambda: running(emulator, victim), what=f"{victim} healed")  # noqa: B023
            # Found within one sweep's reads of its end, and started right after it was read.
            assert calls(emulator.url, "GetSnapshotTask") - reads <= tasks + 21
            healed = wait_for(
                lambda: [
                    d
                    for d in watch.documents()
                    if any(r["address"] == victim for r in d.get("result", {}).get("results", []))  # noqa: B023
                ],
                what="its hold",
            )
            assert healed[-1]["ok"] and healed[-1]["acted_after_reads"] < tasks // 3, healed[-1]
    finally:
        assert watch.stop() == 0
    assert calls(emulator.url, "StartSnapshot") == tasks + 2


def test_a_pipeline_apply_proceeds_while_the_controller_works(emulator, tmp_path):
    tasks = 40
    work = new_project(tmp_path, emulator.url, {"app.yaml": many(tasks, rooms=4)})
    env = snapctl_env(emulator.url, work)
    assert run_snapctl(["apply", "--auto-approve"], cwd=work, env=env).code == 0
    emulator.configure(latency_ms=100)
    # 4 reads a second: a sweep is 10 s, which the controller once held the lock for.
    watch = start_watch(work, env, "--read-qps", "4", "--interval", "0.1")
    # Other tasks stopped before each apply: each a first end in a row, healed as soon as read (the
    # same ones stopped again before being read running would be held back by the restart backoff).
    victims = {3: ["R00/T000", "R01/T001", "R02/T002"], 4: ["R03/T003", "R00/T004", "R01/T006"]}
    victims[5] = ["R02/T007", "R03/T008", "R00/T009"]
    try:
        watch.wait_line("Leading", what="leading")
        for interval in (3, 4, 5):
            for victim in victims[interval]:
                stop_task(emulator, f"ctlapp/{victim}")
            (work / "manifests" / "app.yaml").write_text(
                many(tasks, rooms=4).replace("      T005: {}", f"      T005: {{image: {{interval: {interval}}}}}")
            )
            applied = run_snapctl(["apply", "--auto-approve", "--lock-timeout", "10"], cwd=work, env=env)
            assert applied.code == 0, applied.output + "\n".join(watch.lines["stdout"][-20:])
            assert emulator.read("ctlapp", "R00", "T005")["ImageConfig"]["Interval"] == interval
        # Every stopped task healed: the holds after the last apply have planned. None of them set
        # a pipeline's change back with manifests loaded before it (a hold reloads changed files
        # under the lock): the only UpdateSnapshot calls are the pipeline's, one per T005 per apply.
        stopped = [f"ctlapp/{victim}" for group in victims.values() for victim in group]
        wait_for(lambda: all(running(emulator, v) for v in stopped), timeout=60, what="the stopped tasks healed")
        changed = many(tasks, rooms=4).count("      T005: {}")
        assert changed == 4 and calls(emulator.url, "UpdateSnapshot") == 3 * changed, "\n".join(watch.lines["stdout"])
        assert all(emulator.read("ctlapp", f"R0{r}", "T005")["ImageConfig"]["Interval"] == 5 for r in range(4))
    finally:
        assert watch.stop() == 0


def test_a_second_controller_on_a_file_state_is_refused(emulator, tmp_path):
    work = new_project(tmp_path, emulator.url, {"app.yaml": MANIFEST})
    env = snapctl_env(emulator.url, work)
    first = start_watch(work, env)
    try:
        first.wait_line("Leading", what="leading")
        second = run_snapctl(["reconcile", "--watch"], cwd=work, env=env)
        assert second.code == 1, second.output
        assert f"already has a controller: pid {first.proc.pid} on" in second.stderr, second.output
        assert "Traceback" not in second.output
        listing = run_snapctl(["state", "list", "--json"], cwd=work, env=env)
        assert json.loads(listing.stdout)["controller"]["pid"] == first.proc.pid
    finally:
        assert first.stop() == 0
    listing = run_snapctl(["state", "list", "--json"], cwd=work, env=env)
    assert json.loads(listing.stdout)["controller"] is None


def test_a_standby_leads_when_the_leader_is_killed(emulator, tmp_path, pg):
    work = new_project(tmp_path, emulator.url, {"app.yaml": MANIFEST})
    env = snapctl_env(emulator.url, work, SNAPCTL_STATE=pg.state_url)
    state = ["--state", pg.state_url]
    first = start_watch(work, env, *state, "--interval", "0.2")
    second = None
    try:
        first.wait_line("Leading", what="the first leads")
        wait_for(lambda: len(emulator.tasks()) == 2, what="both tasks started")
        second = start_watch(work, env, *state, "--interval", "0.2")
        second.wait_line(rf"Standing by: pid {first.proc.pid} on .* leads", what="the second stands by")
        listing = run_snapctl(["state", "list", "--json", *state], cwd=work, env=env)
        assert json.loads(listing.stdout)["controller"]["pid"] == first.proc.pid, listing.output
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(10)
        second.wait_line("Leading: this controller reads and acts", what="the standby leads")
        status = run_snapctl(["status", "--offline", *state], cwd=work, env=env)
        assert f"Controller: pid {second.proc.pid} on" in status.stdout, status.output
        stop_task(emulator, "ctlapp/R1/T1")
        wait_for(lambda: running(emulator, "ctlapp/R1/T1"), what="T1 healed by the new leader")
    finally:
        first.stop(signal.SIGKILL)
        if second is not None:
            assert second.stop() == 0


def test_drift_is_corrected_by_the_read_that_finds_it(emulator, tmp_path):
    work = new_project(tmp_path, emulator.url, {"app.yaml": MANIFEST})
    env = snapctl_env(emulator.url, work)
    assert run_snapctl(["apply", "--auto-approve"], cwd=work, env=env).code == 0
    watch = start_watch(work, env, "--interval", "0.1")
    try:
        watch.wait_line("Leading", what="leading")
        rewritten = emulator.admin(
            "rewrite-task", {"AppId": "ctlapp", "RoomId": "R1", "TaskId": "T1", "ImageConfig": {"Interval": 9}}
        )
        assert rewritten.status_code == 200, rewritten.text
        watch.wait_line(r"ctlapp/R1/T1: updated", what="the update")
        assert emulator.read("ctlapp", "R1", "T1")["ImageConfig"]["Interval"] == 2
    finally:
        assert watch.stop() == 0
    assert calls(emulator.url, "UpdateSnapshot") == 1 and calls(emulator.url, "StartSnapshot") == 2


def test_controllers_of_two_workspaces_whose_names_hash_alike_both_lead(emulator, tmp_path, pg):
    # w29009 and w116065 shared a 32-bit hash, which keyed leadership at first: a controller
    # of one kept the other's standing by. Each workspace leads by its own number now.
    from test_pg_edges import old_lock_key

    assert old_lock_key("w29009") == old_lock_key("w116065")
    work = new_project(tmp_path, emulator.url, {"app.yaml": MANIFEST})
    env = snapctl_env(emulator.url, work, SNAPCTL_STATE=pg.state_url)
    watches = []
    try:
        for name in ("w29009", "w116065"):
            assert run_snapctl(["workspace", "new", name], cwd=work, env=env).code == 0
        for name in ("w29009", "w116065"):
            watch = start_watch(work, env | {"SNAPCTL_WORKSPACE": name}, "--interval", "0.2", "--adopt")
            watches.append(watch)
            watch.wait_line("Leading: this controller reads and acts", what=f"the controller of {name} leads")
        for name, watch in zip(("w29009", "w116065"), watches):
            listing = run_snapctl(["state", "list", "--json"], cwd=work, env=env | {"SNAPCTL_WORKSPACE": name})
            assert json.loads(listing.stdout)["controller"]["pid"] == watch.proc.pid, listing.output
    finally:
        for watch in watches:
            watch.stop()


def test_the_controller_confirms_tasks_past_the_read_window_by_start(emulator, tmp_path):
    """Tasks the API can no longer read (started before its 72 h window) are unknown; each hold
    confirms the ones it read with a StartSnapshot ("already started" proves they run) and starts
    nothing twice; a task that ended meanwhile is started by that same confirmation."""
    from snapctl_testing import stats

    work = new_project(tmp_path, emulator.url, {"app.yaml": MANIFEST})
    env = snapctl_env(emulator.url, work)
    assert run_snapctl(["apply", "--auto-approve"], cwd=work, env=env).code == 0
    emulator.configure(read_window_s=0)

    def outcomes() -> dict:
        return stats(emulator.url)["by_action"]["StartSnapshot"].get("outcomes", {})

    with start_watch(work, env, "--interval", "0.2") as watch:
        watch.wait_line("Leading", what="leading")
        wait_for(lambda: outcomes().get("already_started", 0) >= 4, what="two confirmations of each task")
        stop_task(emulator, "ctlapp/R1/T2")
        wait_for(lambda: running(emulator, "ctlapp/R1/T2"), what="T2 started by its confirmation")
        assert watch.stop() == 0
    assert outcomes()["ok"] == 3  # the apply's two starts, and T2's after its stop: nothing twice
    assert sorted(t["TaskId"] for t in emulator.tasks()) == ["T1", "T2"]


def test_sigterm_during_a_hold_lets_the_calls_in_flight_finish_and_starts_no_new_one(emulator, tmp_path):
    """As apply does: SIGTERM while a hold's StartSnapshot calls are in flight lets them finish and
    records them, and the hold starts no other call (it started every action it had planned, so a
    hold of 100 slow calls outlived the service manager's stop timeout, then a SIGKILL)."""
    from snapctl_testing import tasks

    from reconciler.state import read_state

    work = new_project(tmp_path, emulator.url, {"app.yaml": many(12)})
    env = snapctl_env(emulator.url, work)
    emulator.configure(latency_ms=1500)
    with start_watch(work, env, "--parallelism", "2") as watch:
        wait_for(lambda: calls(emulator.url, "StartSnapshot") >= 2, what="the first two starts sent")
        assert watch.stop(signal.SIGTERM, timeout=60) == 0, watch.lines["stdout"]
    output = "\n".join(watch.lines["stdout"])
    assert "Traceback" not in output, output
    running = set(tasks(emulator.url))
    assert 0 < len(running) < 12 and calls(emulator.url, "StartSnapshot") == len(running), output
    state = read_state(work / "state" / "snapctl.state.json")
    assert set(state.tasks) == running and not state.pending, output
    assert re.search(r"Acted in .*, \d+ not attempted \(stopping\)", output), output
    emulator.configure(latency_ms=0)
    assert run_snapctl(["apply", "--auto-approve"], cwd=work, env=env).code == 0
    assert len(emulator.tasks()) == 12 and calls(emulator.url, "StartSnapshot") == 12  # nothing started twice


def test_every_task_stays_watched_across_a_new_client(emulator, tmp_path):
    """After an error that concerns every call (here the API's path moves away and back), the
    controller closes its client and makes a new one 5 s later. A read started meanwhile found no
    client, failed with an AttributeError (a traceback on the output) and left its task out of
    the read schedule for good: it was never read again, so never healed."""
    from functools import partial

    work = new_project(tmp_path, emulator.url, {"app.yaml": many(40)})
    env = snapctl_env(emulator.url, work)
    assert run_snapctl(["apply", "--auto-approve"], cwd=work, env=env).code == 0
    emulator.configure(latency_ms=300)  # two reads always in flight: the read loop waits for a slot
    with start_watch(work, env, "--interval", "0.5", "--parallelism", "2") as watch:
        watch.wait_line("Leading: this controller reads and acts")
        # Once is enough: the old code lost a task in each of 3 runs (and in 3 of 3 with three such moves).
        seen = len(watch.lines["stdout"])
        emulator.configure(api_path="/elsewhere")
        watch.wait_line("API error that concerns every call", after=seen)
        emulator.configure(api_path="/")
        wait_for(partial(reads_answered, emulator, reads_answered(emulator) + 10), what="reads again", timeout=60)
        # Slow answers mattered while the client was replaced; the healing of every task need not wait on them.
        emulator.configure(latency_ms=0)
        assert (
            emulator.admin("streams-stopped", {"AppId": "ctlapp", "RoomId": "R00", "Immediate": True}).status_code
            == 200
        )
        wait_for(lambda: len(emulator.tasks()) == 40, what="every task healed", timeout=90)
        assert watch.stop(timeout=60) == 0
    output = "\n".join(watch.lines["stdout"])
    assert "Traceback" not in output and "never retrieved" not in output, output


def reads_answered(emulator, at_least: int = 0) -> int:
    """GetSnapshotTask calls the emulator answered ok (0 while fewer than ``at_least``)."""
    answered = emulator.stats()["by_action"].get("GetSnapshotTask", {}).get("outcomes", {}).get("ok", 0)
    return answered if answered >= at_least else 0
