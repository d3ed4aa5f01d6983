"""Hardening (issue 9): a full disk, odd inputs and hostile environments never
lose data, never send a wrong call and never crash.

Every test drives the ``snapctl`` command against the emulator and checks what
the Guarantees section promises: the exit status, one clear line, no traceback,
nothing sent that should not be, and the state and its journal intact.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest
from snapctl_testing import (
    SNAPCTL,
    Run,
    calls,
    new_project,
    run_snapctl,
    signal_when,
    snapctl_env,
    start_snapctl,
    stats,
    tasks,
    wait_for,
)

APP = "diskapp"


def many_tasks(rooms: int, per_room: int, app: str = APP) -> str:
    lines = [
        f"app_id: {app}",
        "storage:",
        '  archive: {type: tos, account_id: "2100000990", bucket: snaps}',
        "defaults: {storage: archive}",
        "rooms:",
    ]
    for room in range(rooms):
        lines += [f"  R{room}:", "    tasks:"]
        lines += [f"      T{task}: {{image: {{interval: {task + 1}}}}}" for task in range(per_room)]
    return "\n".join(lines) + "\n"


def project(tmp_path: Path, url: str, manifests: dict[str, str]) -> Path:
    """A working directory ``tmp_path/work`` (see ``new_project``)."""
    (tmp_path / "work").mkdir()
    return new_project(tmp_path / "work", url, manifests)


def assert_one_error_line(run: Run, fragment: str) -> str:
    """Exit 1, no traceback, and exactly one line on stderr: ``Error: …fragment…``."""
    assert run.code == 1, run.output
    assert "Traceback" not in run.output and 'File "' not in run.output, run.output
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), run.stderr
    assert fragment in lines[0], run.stderr
    return lines[0]


def state_listing(work: Path, env: dict, state: str) -> dict:
    run = run_snapctl(["state", "list", "--json", "--state", state], cwd=work, env=env)
    assert run.code == 0, run.output
    return json.loads(run.stdout)


# -- a full disk ---------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A real 128 KiB tmpfs, unmounted after the test."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not allowed here (needs root): {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def test_full_disk_stops_the_apply_and_loses_nothing(small_disk, emulator, tmp_path):
    """On a full disk apply stops starting calls, keeps the last good document and
    journal (every task the API started is in one of them), exits 1 with one line
    naming the file; once there is space again, apply converges, starting no task twice."""
    work = project(tmp_path, emulator.url, {"app.yaml": many_tasks(6, 10)})
    env = snapctl_env(emulator.url, work)
    state = str(small_disk / "state" / "s.json")
    # Leave about 24 KiB: room for the first few dozen journal lines, not for 60 tasks.
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (free_bytes(small_disk) - 24 * 1024))

    run = run_snapctl(["apply", "--auto-approve", "--parallelism", "4", "--state", state], cwd=work, env=env)
    line = assert_one_error_line(run, "the disk is full")
    assert str(small_disk / "state" / "s.json") in line
    assert "Apply complete" not in run.output
    started = set(tasks(emulator.url))
    assert 0 < len(started) < 60, "the disk must fill mid-run for this test to mean anything"
    assert calls(emulator.url, "StartSnapshot") < 60  # no new call once the disk was full
    # No temporary file left; the document parses; every started task is recorded.
    leftovers = sorted(p.name for p in (small_disk / "state").iterdir())
    assert not [name for name in leftovers if name.endswith(".tmp")], leftovers
    json.loads((small_disk / "state" / "s.json").read_bytes())
    listing = state_listing(work, env, state)
    assert started <= set(listing["tasks"]) | set(listing["pending"]), started - set(listing["tasks"])

    filler.unlink()
    run = run_snapctl(["apply", "--auto-approve", "--state", state], cwd=work, env=env)
    assert run.code == 0, run.output
    assert len(tasks(emulator.url)) == 60
    starts = stats(emulator.url)["by_action"]["StartSnapshot"]["outcomes"]
    assert starts.get("ok") == 60, starts  # each task started exactly once over both runs
    assert run_snapctl(["plan", "--detailed-exitcode", "--state", state], cwd=work, env=env).code == 0
    assert not (small_disk / "state" / "s.json.journal").exists()


def watch_three_tasks(emulator, tmp_path: Path, *args: str, small_disk: Path | None = None):
    """``reconcile --watch`` (a Watch) of three tasks read every 0.2 s; with ``small_disk``, its
    state is there."""
    from snapctl_testing import Watch

    work = project(tmp_path, emulator.url, {"app.yaml": many_tasks(1, 3)})
    env = snapctl_env(emulator.url, work)
    if small_disk is not None:
        (small_disk / "state").mkdir()
        args = ("--state", str(small_disk / "state" / "s.json"), *args)
    return Watch(work, env, "--interval", "0.2", *args)


def fill(disk: Path) -> Path:
    """The file that leaves ``disk`` no free byte (unlink it to make room again)."""
    filler = disk / "filler"
    filler.write_bytes(b"\0" * free_bytes(disk))
    return filler


def stop_t1(emulator) -> None:
    """T1 of room R0 stopped out of band, for the controller to heal."""
    emulator.admin("stop-task", {"AppId": APP, "RoomId": "R0", "TaskId": "T1"})


def lock_holds(port: int, result: str) -> int:
    """The controller's ``snapctl_lock_holds_total{result=...}``, from its metrics port."""
    import httpx

    text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    found = re.search(r'snapctl_lock_holds_total\{result="%s"\} (\d+)' % result, text)
    return int(found.group(1)) if found else 0


def test_the_controller_says_a_full_disk_once_and_when_it_is_over(small_disk, emulator, tmp_path):
    """A full disk fails each hold of reconcile --watch: it says so in one line, not one per
    hold, and once more when holds succeed again; the task is healed then."""
    with watch_three_tasks(emulator, tmp_path, "--metrics-port", "0", small_disk=small_disk) as watch:
        port = watch.port
        wait_for(lambda: len(tasks(emulator.url)) == 3, what="the tasks started")
        watch.wait_line("Acted in", what="the creates recorded")
        filler = fill(small_disk)
        stop_t1(emulator)

        def failed_holds() -> int:
            return lock_holds(port, "failed")

        # Four holds (at most three distinct errors): a line per hold would repeat one.
        wait_for(lambda: failed_holds() >= 4, what="four failed holds", timeout=60)
        errors = [line.split(" ", 1)[1] for line in watch.lines["stderr"] if " Error: " in line]
        # One line per distinct error (which file the hold could not write), not one per hold.
        assert 1 <= len(errors) == len(set(errors)) <= 3, "\n".join(watch.lines["stderr"])
        assert all("the disk is full" in line and "s.json" in line for line in errors), errors
        filler.unlink()
        watch.wait_line(r"Holds of the state succeed again, after \d+ that failed\.", "stderr", what="recovery")
        wait_for(lambda: f"{APP}/R0/T1" in tasks(emulator.url), what="T1 healed")
        assert watch.stop() == 0
    assert len([line for line in watch.lines["stderr"] if " Error: " in line]) == len(errors), watch.lines["stderr"]


def test_the_controller_waits_longer_after_each_failed_hold(small_disk, emulator, tmp_path):
    """After a hold that fails (a full disk) the next waits 0.3 s, then twice as long at each
    failure in a row (up to 5 s), as each failed hold's --json line says; once the disk has
    room, a hold succeeds (its line has no pause) and heals the task."""
    with watch_three_tasks(emulator, tmp_path, "--json", small_disk=small_disk) as watch:
        wait_for(lambda: any(d.get("result") for d in watch.documents()), what="the creates recorded")
        filler = fill(small_disk)
        stop_t1(emulator)

        def failed() -> list[dict]:
            return [d for d in watch.documents() if d.get("error")]

        wait_for(lambda: len(failed()) >= 4, what="four failed holds", timeout=60)
        assert [d["retry_in_s"] for d in failed()[:4]] == [0.3, 0.6, 1.2, 2.4], failed()
        assert all("the disk is full" in d["error"] and not d["ok"] for d in failed()), failed()
        seen = len(watch.documents())
        filler.unlink()
        wait_for(lambda: f"{APP}/R0/T1" in tasks(emulator.url), what="T1 healed")
        healed = wait_for(
            lambda: next((d for d in watch.documents()[seen:] if d["ok"] and d.get("result")), None),
            what="the hold that healed T1",
        )
        assert healed["retry_in_s"] is None and healed["error"] is None
        assert watch.stop() == 0


def test_the_controller_stopped_on_a_full_disk_does_not_claim_the_state_written(small_disk, emulator, tmp_path):
    """Stopped while its state's disk is full, reconcile --watch says the reads since its last hold
    could not be recorded (and why), not "the state is written"; the next run reads them again."""
    with watch_three_tasks(emulator, tmp_path, "--metrics-port", "0", small_disk=small_disk) as watch:
        port = watch.port
        watch.wait_line("Acted in", what="the creates recorded")
        fill(small_disk)
        stop_t1(emulator)
        wait_for(lambda: lock_holds(port, "failed") >= 1, what="a failed hold")
        assert watch.stop() == 0
    last = watch.lines["stderr"][-1]
    assert "Stopped after" in last and "could not be recorded" in last and "the disk is full" in last, last
    assert "the state is written" not in "\n".join(watch.lines["stderr"])


def test_a_lock_held_by_someone_else_is_no_failed_hold(emulator, tmp_path):
    """While a pipeline holds the state's lock, the controller's holds wait and count as
    locked (snapctl_lock_holds_total{result="locked"}), not failed (what the alert
    SnapctlHoldsFailing watches); once the lock is free it heals the task it found stopped."""
    with watch_three_tasks(emulator, tmp_path, "--metrics-port", "0") as watch:
        port = watch.port
        wait_for(lambda: len(tasks(emulator.url)) == 3, what="the tasks started")
        watch.wait_line("Acted in", what="the creates recorded")

        def holds(result: str) -> int:
            return lock_holds(port, result)

        lock = watch.work / "state" / "snapctl.state.json.lock"
        holder = subprocess.Popen(
            [
                "python3",
                "-c",
                "import fcntl,os,sys,time;fd=os.open(sys.argv[1],os.O_RDWR);fcntl.flock(fd,fcntl.LOCK_EX);"
                "print('locked',flush=True);time.sleep(60)",
                str(lock),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert holder.stdout.readline().strip() == "locked"
            stop_t1(emulator)
            wait_for(lambda: holds("locked") >= 1, what="a hold that found the lock taken")
            assert f"{APP}/R0/T1" not in tasks(emulator.url)
        finally:
            holder.kill()
            holder.wait()
        wait_for(lambda: f"{APP}/R0/T1" in tasks(emulator.url), what="T1 healed")
        assert holds("failed") == 0 and holds("ok") >= 2
        assert watch.stop() == 0
    assert not [line for line in watch.lines["stderr"] if " Error: " in line], watch.lines["stderr"]


def test_full_disk_before_the_first_call_sends_nothing(small_disk, emulator, tmp_path):
    """A disk too full for the first state document: one line, nothing sent, no file left."""
    work = project(tmp_path, emulator.url, {"app.yaml": many_tasks(1, 3)})
    env = snapctl_env(emulator.url, work)
    (small_disk / "state").mkdir()
    filler = small_disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    state = small_disk / "state" / "s.json"
    run = run_snapctl(["apply", "--auto-approve", "--state", str(state)], cwd=work, env=env)
    assert_one_error_line(run, "the disk is full")
    assert stats(emulator.url)["total"] == 0
    assert sorted(p.name for p in state.parent.iterdir()) in ([], ["s.json.lock"])


# -- a symlinked state -------------------------------------------------------------------


def test_symlinked_state_writes_the_real_file_and_shares_its_lock(emulator, tmp_path):
    """Through a symlink, apply updates the real file (the link stays a link) and the
    journal, backup and lock sit beside the real file, so both paths take one lock."""
    work = project(tmp_path, emulator.url, {"app.yaml": many_tasks(1, 2)})
    env = snapctl_env(emulator.url, work)
    real = work / "real"
    real.mkdir()
    link = work / "state" / "snapctl.state.json"
    link.symlink_to("../real/snapctl.state.json")

    assert run_snapctl(["apply", "--auto-approve"], cwd=work, env=env).code == 0
    assert link.is_symlink()
    assert set(json.loads((real / "snapctl.state.json").read_bytes())["tasks"]) == {
        f"{APP}/R0/T0",
        f"{APP}/R0/T1",
    }
    (work / "manifests" / "app.yaml").write_text(many_tasks(1, 1))
    assert run_snapctl(["apply", "--auto-approve"], cwd=work, env=env).code == 0
    assert link.is_symlink()
    assert (real / "snapctl.state.json.backup").exists() and (real / "snapctl.state.json.lock").exists()
    assert sorted(p.name for p in link.parent.iterdir()) == ["snapctl.state.json"]
    assert set(tasks(emulator.url)) == {f"{APP}/R0/T0"}
    # A run holding the lock through the real path refuses a run through the link.
    holder = subprocess.Popen(
        [
            "python3",
            "-c",
            "import fcntl,os,sys,time;fd=os.open(sys.argv[1],os.O_RDWR);fcntl.flock(fd,fcntl.LOCK_EX);"
            "print('locked',flush=True);time.sleep(60)",
            str(real / "snapctl.state.json.lock"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        run = run_snapctl(["apply", "--auto-approve"], cwd=work, env=env)
        assert_one_error_line(run, "is locked by")
    finally:
        holder.kill()
        holder.wait()


# -- a new project directory (issue 11.1) ---------------------------------------------------


def test_state_directory_is_created_0700_and_plan_says_there_is_no_state(emulator, tmp_path):
    work = project(tmp_path, emulator.url, {"app.yaml": many_tasks(1, 2)})
    env = snapctl_env(emulator.url, work)
    run = run_snapctl(["plan", "--state", "new/dir/s.json"], cwd=work, env=env)
    assert run.code == 0, run.output
    assert run.stderr.strip().splitlines() == ["no state yet at new/dir/s.json: everything is planned as new"]
    assert "2 to add" in run.stdout
    assert not (work / "new").exists()  # plan writes nothing
    run = run_snapctl(["apply", "--auto-approve", "--state", "new/dir/s.json"], cwd=work, env=env)
    assert run.code == 0, run.output
    assert (work / "new" / "dir").stat().st_mode & 0o777 == 0o700
    assert set(json.loads((work / "new" / "dir" / "s.json").read_bytes())["tasks"]) == set(tasks(emulator.url))
    run = run_snapctl(["plan", "--state", "new/dir/s.json"], cwd=work, env=env)
    assert "no state yet" not in run.output


# -- values the API cannot take ----------------------------------------------------------

OUT_OF_RANGE = """\
app_id: app1
storage:
  archive: {type: tos, account_id: "2100000990", bucket: snaps, region: 99999999999999999999}
defaults: {storage: archive}
rooms:
  Room1:
    tasks:
      T1:
        streams:
          - {user_id: u, index: 18446744073709551616}
      T2: {}
"""


def test_integers_the_api_cannot_take_are_refused_offline(emulator, tmp_path):
    """Every integer field has the API's int32 range: anything larger is a located
    error of validate, plan and apply, and nothing is sent or written."""
    work = project(tmp_path, emulator.url, {"app.yaml": OUT_OF_RANGE})
    env = snapctl_env(emulator.url, work)
    for args in (["validate"], ["plan"], ["apply", "--auto-approve"]):
        run = run_snapctl(args, cwd=work, env=env)
        assert run.code == 1 and run.stdout == "" and "Traceback" not in run.stderr, run.output
        assert "manifests/app.yaml:3:73: error: storage.archive.region: must be between 0 and 2147483647" in run.stderr
        assert "manifests/app.yaml:10:33: error: rooms.Room1.tasks.T1.streams[0].index: must be between 0" in run.stderr
    assert stats(emulator.url)["total"] == 0
    assert list((work / "state").iterdir()) == []
    at_limit = OUT_OF_RANGE.replace("99999999999999999999", "2147483647").replace("18446744073709551616", "2147483647")
    (work / "manifests" / "app.yaml").write_text(at_limit)
    assert run_snapctl(["validate"], cwd=work, env=env).code == 0


def make_unsendable(manifests, address: str) -> None:
    """Give the task at ``address`` a request that got past validation (as a library caller can
    build one) and cannot be sent: its storage region 2**70 fits no integer the API has."""
    good = manifests.tasks[address]
    storage = good.request.storage_config
    bad_tos = storage.tos_config.model_construct(**{**dict(storage.tos_config), "region": 2**70})
    bad = good.request.model_copy(update={"storage_config": storage.model_copy(update={"tos_config": bad_tos})})
    manifests.tasks[address] = type(good)(address=address, request=bad, location=good.location)


def test_a_request_that_cannot_be_sent_never_stops_its_task(emulator, tmp_path):
    """Apply builds and serialises every request of an action before its first call:
    a replace whose StartSnapshot cannot be sent fails without sending the Stop."""
    from reconciler import engine

    work = project(tmp_path, emulator.url, {"app.yaml": many_tasks(1, 2)})
    env = snapctl_env(emulator.url, work)
    assert run_snapctl(["apply", "--auto-approve"], cwd=work, env=env).code == 0
    state_file = work / "state" / "snapctl.state.json"
    before = state_file.read_bytes()
    manifests = engine.load_manifests([work / "manifests"])
    address = f"{APP}/R0/T0"
    make_unsendable(manifests, address)
    settings = engine.Settings(endpoint=emulator.url, environ=env)
    with engine.store_for(state_file) as store:
        the_plan = engine.plan(manifests, store.state, replace=[address])
        report = engine.run_apply(the_plan, manifests, store, settings.client())
    (result,) = report.results
    assert not result.ok and "cannot be sent" in str(result.error) and result.calls == []
    assert calls(emulator.url, "StopSnapshot") == 0 and calls(emulator.url, "StartSnapshot") == 2
    assert set(tasks(emulator.url)) == {f"{APP}/R0/T0", f"{APP}/R0/T1"}
    assert state_file.read_bytes() == before  # no intent, no change: nothing was sent


def test_an_unforeseen_error_fails_the_run_only_after_the_calls_in_flight_are_recorded(emulator, tmp_path):
    """A result callback that raises fails the apply, but not before the StartSnapshot calls already
    sent are answered and recorded: raised at once, it left them as open intents (a task running
    that the state does not hold), and the calls not yet started are never sent."""
    from reconciler import engine

    work = project(tmp_path, emulator.url, {"app.yaml": many_tasks(1, 5)})
    env = snapctl_env(emulator.url, work)
    manifests = engine.load_manifests([work / "manifests"])
    # T3 fails at once, without a call (its request cannot be built), while T0 to T2 are under way.
    address = f"{APP}/R0/T3"
    make_unsendable(manifests, address)
    emulator.configure(latency_ms=300)
    seen: list[str] = []

    def on_result(result):
        seen.append(result.address)
        raise RuntimeError("a result printer broke")

    state_file = work / "state" / "snapctl.state.json"
    settings = engine.Settings(endpoint=emulator.url, environ=env)
    with engine.store_for(state_file) as store:
        the_plan = engine.plan(manifests, store.state)
        with pytest.raises(RuntimeError, match="a result printer broke"):
            engine.run_apply(the_plan, manifests, store, settings.client(), parallelism=4, on_result=on_result)
    assert seen[0] == address  # the others are still reported as they are answered
    running = {f"{APP}/R0/T0", f"{APP}/R0/T1", f"{APP}/R0/T2"}
    assert set(tasks(emulator.url)) == running and calls(emulator.url, "StartSnapshot") == 3  # T4 was never sent
    listing = state_listing(work, env, "state/snapctl.state.json")
    assert set(listing["tasks"]) == running and not listing.get("pending"), listing


def test_watch_survives_an_unexpected_error_in_a_round(emulator, tmp_path):
    """A hold that fails with an error snapctl did not foresee is reported, and the controller goes on."""
    import threading

    from reconciler import controller, engine

    work = project(tmp_path, emulator.url, {"app.yaml": many_tasks(1, 2)})
    env = snapctl_env(emulator.url, work)
    seen: list[str] = []
    holds: list = []
    lines: list[str] = []
    stop = threading.Event()

    def on_result(result):
        seen.append(result.address)
        if len(seen) == 1:
            raise RuntimeError("a result printer broke")

    def on_hold(hold):
        holds.append(hold)
        if hold.error is None and set(tasks(emulator.url)) == {f"{APP}/R0/T0", f"{APP}/R0/T1"}:
            stop.set()

    runner = threading.Thread(
        target=controller.watch,
        args=(
            [work / "manifests"],
            work / "state" / "snapctl.state.json",
            engine.Settings(endpoint=emulator.url, environ=env),
        ),
        kwargs={"interval_s": 0.05, "stop": stop, "on_hold": on_hold, "on_result": on_result, "on_line": lines.append},
    )
    runner.start()
    runner.join(120)
    stop.set()
    assert not runner.is_alive()
    assert any("unexpected RuntimeError: a result printer broke" in str(h.error) for h in holds), holds
    assert any("a result printer broke" in line for line in lines), lines
    assert set(tasks(emulator.url)) == {f"{APP}/R0/T0", f"{APP}/R0/T1"}
    assert set(state_listing(work, env, "state/snapctl.state.json")["tasks"]) == set(tasks(emulator.url))


# -- saved plans ---------------------------------------------------------------------------

SECRET_APP = """\
app_id: app2
storage:
  offsite: {type: custom, vendor: oss, bucket: offsite, access_key: "${env:H_AK}", secret_key: "${env:H_SK}"}
defaults: {storage: offsite}
rooms:
  Room9:
    tasks:
      S1: {}
"""


def test_saved_plan_is_refused_when_anything_in_scope_changed(emulator, tmp_path):
    """A saved plan applies only if planning again would give the same plan: a task
    declared again, a task edited outside the plan and a secret rotated outside the
    plan are each refused with one line naming the cause, and nothing is sent."""
    work = project(tmp_path, emulator.url, {"app.yaml": many_tasks(1, 2), "secret.yaml": SECRET_APP})
    env = snapctl_env(emulator.url, work, H_AK="AK-hardening-1", H_SK="SK-hardening-1")
    manifest = work / "manifests" / "app.yaml"
    assert run_snapctl(["apply", "--auto-approve"], cwd=work, env=env).code == 0
    started = set(tasks(emulator.url))
    state_before = (work / "state" / "snapctl.state.json").read_bytes()
    sent = stats(emulator.url)["total"]

    manifest.write_text(many_tasks(1, 1))
    assert run_snapctl(["plan", "--out", "del.plan"], cwd=work, env=env).code == 0
    manifest.write_text(many_tasks(1, 2))  # T1 declared again
    run = run_snapctl(["apply", "del.plan"], cwd=work, env=env)
    assert_one_error_line(run, f"the manifests changed since it was saved: {APP}/R0/T1")

    manifest.write_text(many_tasks(1, 2).replace("T0: {image: {interval: 1}}", "T0: {image: {interval: 7}}"))
    assert run_snapctl(["plan", "--out", "upd.plan"], cwd=work, env=env).code == 0
    edited = many_tasks(1, 2).replace("T0: {image: {interval: 1}}", "T0: {image: {interval: 7}}")
    manifest.write_text(edited.replace("T1: {image: {interval: 2}}", "T1: {image: {interval: 2, width: 320}}"))
    run = run_snapctl(["apply", "upd.plan"], cwd=work, env=env)
    assert_one_error_line(run, f"the manifests changed since it was saved: {APP}/R0/T1")

    manifest.write_text(edited)
    rotated = env | {"H_SK": "SK-hardening-2"}
    run = run_snapctl(["apply", "upd.plan"], cwd=work, env=rotated)
    line = assert_one_error_line(run, "a secret changed since it was saved: the storage credentials of app2/Room9/S1")
    assert "SK-hardening" not in run.output and "SK-hardening" not in line

    assert stats(emulator.url)["total"] == sent and set(tasks(emulator.url)) == started
    assert (work / "state" / "snapctl.state.json").read_bytes() == state_before
    # Unchanged since: it applies, and a second time the state has moved on.
    assert run_snapctl(["apply", "upd.plan"], cwd=work, env=env).code == 0
    run = run_snapctl(["apply", "upd.plan"], cwd=work, env=env)
    assert_one_error_line(run, "the state moved on since it was saved")


def test_saved_plan_applies_from_another_directory(emulator, tmp_path):
    """A plan saved with relative manifest paths applies from anywhere; given another
    state, the refusal names the state the plan was made against."""
    work = project(tmp_path, emulator.url, {"app.yaml": many_tasks(1, 1)})
    env = snapctl_env(emulator.url, work)
    assert run_snapctl(["apply", "--auto-approve"], cwd=work, env=env).code == 0
    (work / "manifests" / "app.yaml").write_text(many_tasks(1, 2))
    assert run_snapctl(["plan", "--out", "p.plan", "manifests"], cwd=work, env=env).code == 0
    sent = stats(emulator.url)["total"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run = run_snapctl(["apply", str(work / "p.plan")], cwd=elsewhere, env=env)
    assert_one_error_line(run, f"made for the state {work / 'state' / 'snapctl.state.json'}, not ")
    assert not (elsewhere / "state" / "snapctl.state.json").exists() and stats(emulator.url)["total"] == sent
    state = str(work / "state" / "snapctl.state.json")
    run = run_snapctl(["apply", str(work / "p.plan"), "--state", state], cwd=elsewhere, env=env)
    assert run.code == 0, run.output
    assert set(tasks(emulator.url)) == {f"{APP}/R0/T0", f"{APP}/R0/T1"}
    assert set(json.loads((work / "state" / "snapctl.state.json").read_bytes())["tasks"]) == set(tasks(emulator.url))


# -- manifests that hold nothing ----------------------------------------------------------


@pytest.mark.parametrize("emptied", ["", "# regenerated below\n", "---\n...\n"])
def test_an_emptied_manifest_file_is_an_error_not_a_destroy(emulator, tmp_path, emptied):
    """A manifest file truncated to nothing, only comments or empty documents is a
    located error: apply stops nothing, and the state is left as it was."""
    work = project(tmp_path, emulator.url, {"a.yaml": many_tasks(1, 2), "b.yaml": many_tasks(1, 2, app="other")})
    env = snapctl_env(emulator.url, work)
    assert run_snapctl(["apply", "--auto-approve"], cwd=work, env=env).code == 0
    before = (work / "state" / "snapctl.state.json").read_bytes()
    sent = stats(emulator.url)["total"]
    (work / "manifests" / "b.yaml").write_text(emptied)
    for args in (["validate"], ["plan"], ["apply", "--auto-approve"], ["reconcile"]):
        run = run_snapctl(args, cwd=work, env=env)
        assert run.code == 1 and run.stdout == "" and "Traceback" not in run.stderr, run.output
        assert "manifests/b.yaml:1:1: error: the file holds no YAML document" in run.stderr
    assert stats(emulator.url)["total"] == sent and len(tasks(emulator.url)) == 4
    assert (work / "state" / "snapctl.state.json").read_bytes() == before


def test_a_fifo_among_the_manifests_is_an_error_not_a_hang(emulator, tmp_path):
    work = project(tmp_path, emulator.url, {"a.yaml": many_tasks(1, 1)})
    os.mkfifo(work / "manifests" / "pipe.yaml")
    run = run_snapctl(["validate"], cwd=work, env=snapctl_env(emulator.url, work), timeout=30)
    assert run.code == 1 and "manifests/pipe.yaml:1:1: error: not a regular file" in run.stderr, run.output


# -- hostile YAML ---------------------------------------------------------------------------


def test_an_unclosed_env_reference_is_a_located_error(emulator, tmp_path):
    text = many_tasks(1, 1).replace("bucket: snaps", 'bucket: "${env:BUCKET"')
    text += "  R9:\n    tasks:\n      T9:\n        storage:\n          type: tos\n          account_id: '1'\n"
    text += "          bucket: x-${env:HOME}-${env:HOME\n"
    work = project(tmp_path, emulator.url, {"app.yaml": text})
    env = snapctl_env(emulator.url, work, BUCKET="snaps")
    for args in (["validate"], ["plan"], ["apply", "--auto-approve"]):
        run = run_snapctl(args, cwd=work, env=env)
        assert run.code == 1 and run.stdout == "" and "Traceback" not in run.stderr, run.output
        assert "manifests/app.yaml:3:58: error: unclosed ${" in run.stderr
        assert "manifests/app.yaml:15:19: error: unclosed ${" in run.stderr and run.stderr.count("unclosed ${") == 2
    assert stats(emulator.url)["total"] == 0


@pytest.mark.parametrize(
    "nesting",
    [
        "[" * 200_000 + "]" * 200_000,
        "[[], " * 100_000 + "]" * 100_000,
        "{a: " * 100_000 + "1" + "}" * 100_000,
    ],
    ids=["brackets", "interleaved", "mappings"],
)
def test_deep_nesting_is_refused_at_once_with_its_location(emulator, tmp_path, nesting):
    """Nesting far past the limit never reaches the fast parser (quadratic in the
    depth): it is a located error of validate, as PyYAML reports it."""
    work = project(tmp_path, emulator.url, {"app.yaml": f"app_id: app1\nrooms: {nesting}\n"})
    run = run_snapctl(["validate"], cwd=work, env=snapctl_env(emulator.url, work), timeout=60)
    assert run.code == 1 and "Traceback" not in run.stderr, run.output
    assert run.stderr.startswith("manifests/app.yaml:2:") and "nesting" in run.stderr.splitlines()[0], run.stderr


# -- interruptions ----------------------------------------------------------------------------


INTERRUPTIONS = [
    (["apply", "--auto-approve"], signal.SIGINT),
    (["reconcile"], signal.SIGINT),
    (["apply", "--auto-approve"], signal.SIGHUP),  # the terminal or the SSH session went away
]


@pytest.mark.parametrize(("command", "signum"), INTERRUPTIONS, ids=[f"{c[0]}-{s.name}" for c, s in INTERRUPTIONS])
def test_sigint_finishes_calls_in_flight_records_them_and_exits_130(emulator, tmp_path, command, signum):
    """Ctrl-C (or a hang-up) during apply or a one-shot reconcile: the calls in flight
    finish and are recorded, nothing more is started, the summary says how many were
    not attempted (not "0 failed"), and the exit status is 130."""
    work = project(tmp_path, emulator.url, {"app.yaml": many_tasks(2, 10)})
    env = snapctl_env(emulator.url, work)
    emulator.configure(latency_ms=300)
    proc = start_snapctl(work, env, *command, "--parallelism", "2")
    stdout, stderr = signal_when(proc, lambda: calls(emulator.url, "StartSnapshot") >= 1, signum, what="a first call")
    assert proc.returncode == 130, stdout + stderr
    assert "Traceback" not in stderr and "0 failed" not in stdout
    assert "interrupted" in stdout and "not attempted" in stdout, stdout
    running = set(tasks(emulator.url))
    assert 0 < len(running) < 20
    listing = state_listing(work, env, "state/snapctl.state.json")
    assert set(listing["tasks"]) == running and listing["pending"] == {}


def test_a_hang_up_that_nohup_ignores_does_not_stop_the_run(emulator, tmp_path):
    """Under ``nohup`` (SIGHUP ignored) a hang-up leaves apply running to the end."""
    work = project(tmp_path, emulator.url, {"app.yaml": many_tasks(1, 6)})
    env = snapctl_env(emulator.url, work)
    emulator.configure(latency_ms=200)
    proc = start_snapctl(work, env, "apply", "--auto-approve", "--parallelism", "2", hangup_ignored=True)
    stdout, stderr = signal_when(
        proc, lambda: calls(emulator.url, "StartSnapshot") >= 1, signal.SIGHUP, what="a first call"
    )
    assert proc.returncode == 0, stdout + stderr
    assert len(tasks(emulator.url)) == 6 and "6 added" in stdout, stdout


# -- smaller ones ------------------------------------------------------------------------------


def test_manifest_suffix_in_any_case_is_a_manifest_not_a_plan_file(emulator, tmp_path):
    work = project(tmp_path, emulator.url, {})
    (work / "manifests" / "Upper.YAML").write_text(many_tasks(1, 1))
    (work / "manifests" / "Mixed.Yml").write_text(many_tasks(1, 1, app="other"))
    env = snapctl_env(emulator.url, work)
    run = run_snapctl(["apply", "--auto-approve", "manifests/Upper.YAML"], cwd=work, env=env)
    assert run.code == 0, run.output
    assert set(tasks(emulator.url)) == {f"{APP}/R0/T0"}
    run = run_snapctl(["validate"], cwd=work, env=env)
    assert run.code == 0 and "2 task(s) in 2 file(s)" in run.stdout, run.output


def test_no_log_lines_on_stderr_without_snapctl_log(emulator, tmp_path):
    """With SNAPCTL_LOG unset, a failing apply prints its summary and error lines,
    and no diagnostic log record (Python's last-resort handler stays silent), with --json too."""
    work = project(tmp_path, emulator.url, {"app.yaml": many_tasks(1, 2), "b.yaml": many_tasks(1, 1, app="denied")})
    env = snapctl_env(emulator.url, work)
    emulator.configure(deny_apps=["denied"])
    for extra in ([], ["--json"]):
        run = run_snapctl(["apply", "--auto-approve", *extra], cwd=work, env=env)
        assert run.code == 1, run.output
        assert "AccessDenied" in run.output
        assert " failed code=" not in run.stderr and "snapctl.apply" not in run.stderr, run.stderr
        if extra:
            json.loads(run.stdout)
            assert run.stderr.strip().splitlines() == [
                line for line in run.stderr.strip().splitlines() if line.startswith("denied/")
            ], run.stderr


def test_replace_outside_the_target_is_refused(emulator, tmp_path):
    work = project(tmp_path, emulator.url, {"app.yaml": many_tasks(2, 1)})
    env = snapctl_env(emulator.url, work)
    assert run_snapctl(["apply", "--auto-approve"], cwd=work, env=env).code == 0
    sent = stats(emulator.url)["total"]
    for command in (["plan"], ["apply", "--auto-approve"]):
        run = run_snapctl([*command, "--replace", f"{APP}/R0/T0", "--target", f"{APP}/R1"], cwd=work, env=env)
        assert_one_error_line(run, f"--replace {APP}/R0/T0 is outside --target {APP}/R1")
    assert stats(emulator.url)["total"] == sent
    run = run_snapctl(["plan", "--replace", f"{APP}/R0/T0", "--target", f"{APP}/R0"], cwd=work, env=env)
    assert run.code == 0 and "1 to replace" in run.stdout, run.output


def test_state_rm_of_the_same_address_twice_counts_once(emulator, tmp_path):
    work = project(tmp_path, emulator.url, {"app.yaml": many_tasks(1, 2)})
    env = snapctl_env(emulator.url, work)
    assert run_snapctl(["apply", "--auto-approve"], cwd=work, env=env).code == 0
    run = run_snapctl(["state", "rm", f"{APP}/R0/T0", f"{APP}/R0/T0"], cwd=work, env=env)
    assert run.code == 0 and "Removed 1 task(s)" in run.stdout, run.output
    assert state_listing(work, env, "state/snapctl.state.json")["tasks"] == [f"{APP}/R0/T1"]


def test_apply_counts_tasks_already_running_apart(emulator, tmp_path):
    """With the state lost, apply says the tasks were already running, not added (issue 11.8)."""
    work = project(tmp_path, emulator.url, {"app.yaml": many_tasks(1, 3)})
    env = snapctl_env(emulator.url, work)
    assert run_snapctl(["apply", "--auto-approve"], cwd=work, env=env).code == 0
    (work / "manifests" / "app.yaml").write_text(many_tasks(1, 4))
    for name in os.listdir(work / "state"):
        os.unlink(work / "state" / name)
    run = run_snapctl(["apply", "--auto-approve", "--adopt"], cwd=work, env=env)
    assert run.code == 0, run.output
    assert "Apply complete! Tasks: 1 added, 3 already running, adopted, 0 changed" in run.stdout, run.output
    (work / "state" / "snapctl.state.json").unlink()
    run = run_snapctl(["apply", "--auto-approve", "--json", "--adopt"], cwd=work, env=env)
    assert json.loads(run.stdout)["summary"]["already_running"] == 4


def test_an_error_without_code_or_message_still_says_something():
    from reconciler.apply import ActionResult
    from reconciler.errors import ApiError
    from reconciler.render import Style, result_line

    line = result_line(
        ActionResult(address="a/r/t", kind="create", error=ApiError("", request_id="RID", status=400)), Style(False)
    )
    assert (
        line == "a/r/t: create failed: the API answered an error without a code or a message (HTTP 400) [RequestId RID]"
    )


# -- the emulator's data file ---------------------------------------------------------------------


def test_emulator_data_under_a_regular_file_is_a_clear_error(tmp_path):
    (tmp_path / "regular").write_text("not a directory")
    run = run_snapctl(["emulator", "--port", "0", "--data", "regular/tasks.json"], cwd=tmp_path, env=dict(os.environ))
    assert run.code == 1 and "Traceback" not in run.stderr, run.output
    assert run.stderr.strip() == "Error: --data regular/tasks.json: cannot create its directory regular: File exists"


@pytest.fixture
def read_only_dir(tmp_path):
    """A real read-only filesystem (a tmpfs remounted read-only), unmounted after the test."""
    mount = tmp_path / "ro"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not allowed here (needs root): {done.stderr.decode().strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True, capture_output=True)
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_emulator_on_a_read_only_filesystem_reports_once_and_exits_non_zero(read_only_dir, tmp_path):
    """It serves from memory, says once that it cannot write its data file (not at
    every retry), and on SIGTERM exits non-zero saying the changes are lost."""
    proc = subprocess.Popen(
        [SNAPCTL, "emulator", "--port", "0", "--data", str(read_only_dir / "tasks.json")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )
    try:
        url = proc.stdout.readline().split()[4]
        work = project(tmp_path, url, {"app.yaml": many_tasks(1, 2)})
        env = snapctl_env(url, work)
        assert run_snapctl(["apply", "--auto-approve"], cwd=work, env=env).code == 0
        first = wait_for(proc.stderr.readline, what="the first write error")
        assert "cannot write" in first and "Read-only file system" in first, first
        (work / "manifests" / "app.yaml").write_text(many_tasks(1, 4))
        assert run_snapctl(["apply", "--auto-approve"], cwd=work, env=env).code == 0
        assert len(tasks(url)) == 4
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=30)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1, rest
    assert "cannot write" not in rest, rest  # reported once
    assert "Error: could not save the tasks to" in rest and "Read-only file system" in rest, rest


@pytest.mark.parametrize(
    "args", [["apply", "--auto-approve"], ["reconcile"], ["reconcile", "--watch"]], ids=["apply", "reconcile", "watch"]
)
def test_a_closed_stdout_stops_the_run_in_one_line_and_loses_nothing(args, emulator, tmp_path):
    """`snapctl apply | head -1`: the reader of stdout goes away while StartSnapshot calls are in
    flight. The run sends no new call, records every call answered, and says so in one line on
    stderr, exit 1 (it exited 1 without a word, or named an unexpected BrokenPipeError); the next
    apply finishes the job without starting anything twice."""
    work = project(tmp_path, emulator.url, {"app.yaml": many_tasks(1, 12)})
    env = snapctl_env(emulator.url, work)
    emulator.configure(latency_ms=200)
    proc = start_snapctl(work, env, *args, "--no-color", "--parallelism", "3")
    try:
        assert proc.stdout is not None and proc.stderr is not None
        for line in proc.stdout:  # the reader goes away at the first task's line: others are under way
            if ": created" in line:
                break
        proc.stdout.close()
        stderr = proc.stderr.read()
        code = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert_one_error_line(Run(code, "", stderr), "the output was closed before snapctl finished writing it")
    running = set(tasks(emulator.url))
    assert running, running
    listing = state_listing(work, env, "state/snapctl.state.json")
    assert set(listing["tasks"]) == running and not listing.get("pending"), listing
    assert calls(emulator.url, "StartSnapshot") == len(running)
    emulator.configure(latency_ms=0)
    assert run_snapctl(["apply", "--auto-approve"], cwd=work, env=env).code == 0
    assert len(tasks(emulator.url)) == 12 and calls(emulator.url, "StartSnapshot") == 12  # nothing started twice


def test_a_diagnostic_log_that_cannot_be_written_is_one_warning(emulator, tmp_path):
    """SNAPCTL_LOG_PATH on a full device: the apply goes on and ends as it would, and stderr says
    once that the log cannot be written. Python's logging printed a traceback for every record
    (about 50 lines each, one record per task and call)."""
    work = project(tmp_path, emulator.url, {"app.yaml": many_tasks(1, 8)})
    env = snapctl_env(emulator.url, work, SNAPCTL_LOG="info", SNAPCTL_LOG_PATH="/dev/full")
    run = run_snapctl(["apply", "--auto-approve", "--no-color"], cwd=work, env=env)
    assert run.code == 0 and "Apply complete! Tasks: 8 added" in run.stdout, run.output
    assert run.stderr.splitlines() == [
        "Warning: cannot write the diagnostic log /dev/full (No space left on device); nothing more is logged."
    ], run.stderr
    listing = state_listing(work, snapctl_env(emulator.url, work), "state/snapctl.state.json")
    assert set(listing["tasks"]) == set(tasks(emulator.url)) and len(listing["tasks"]) == 8
