"""A first run in a fresh project directory (no state/ yet) that the API refuses writes
nothing: no state directory, no state file, no lock file; a concurrent run's lock is never broken."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess

import pytest
from snapctl_testing import SNAPCTL, Run, run_snapctl, snapctl_env, stats, wait_for

from reconciler.state.file import lock_is_held, lock_path

MANIFEST = """\
app_id: app1
storage:
  archive: {type: tos, account_id: "2100000990", bucket: snaps}
defaults:
  storage: archive
rooms:
  Main:
    tasks:
      T1: {}
"""
STATE = "state/snapctl.state.json"
REFUSED = ("apply", "--auto-approve"), ("reconcile",), ("import", "app1/Main/T1")


@pytest.fixture
def work(tmp_path):
    (tmp_path / "manifests").mkdir()
    (tmp_path / "manifests" / "app.yaml").write_text(MANIFEST)
    return tmp_path


def listing(work) -> list[str]:
    return sorted(str(p.relative_to(work)) for p in work.rglob("*"))


def wrong_keys(emulator, work):
    return snapctl_env(emulator.url, work, VOLC_SECRETKEY="wrong-secret")


def refused(run) -> None:
    assert run.code == 1, run.output
    assert run.stderr.count("\n") == 1 and run.stderr.startswith("Error: the API refused the credentials"), run.stderr
    assert "SignatureDoesNotMatch" in run.stderr and "Traceback" not in run.stderr


@pytest.mark.parametrize("args", REFUSED, ids=lambda args: args[0])
def test_refused_credentials_in_a_fresh_directory_leave_nothing(work, emulator, args):
    before = listing(work)
    run = run_snapctl(list(args), cwd=work, env=wrong_keys(emulator, work))
    refused(run)
    assert listing(work) == before == ["manifests", "manifests/app.yaml"]
    assert stats(emulator.url)["total"] == 1  # the refused call, nothing after it
    # A state directory that was there stays, as empty as it was.
    (work / "state").mkdir()
    refused(run_snapctl(list(args), cwd=work, env=wrong_keys(emulator, work)))
    assert listing(work) == [*before, "state"]


def test_a_first_apply_that_succeeds_keeps_its_state(work, emulator):
    env = snapctl_env(emulator.url, work)
    applied = run_snapctl(["apply", "--auto-approve"], cwd=work, env=env)
    assert applied.code == 0, applied.output
    assert {"state/snapctl.state.json", "state/snapctl.state.json.lock"} <= set(listing(work))
    assert json.loads(run_snapctl(["state", "list", "--json"], cwd=work, env=env).stdout)["tasks"] == ["app1/Main/T1"]


def test_a_controller_in_a_fresh_directory_leads_and_acts(work, emulator):
    """``reconcile --watch`` in a project with no state/ yet stood by for ever, saying only
    "Standing by: not leading.": its leadership lock sits beside the state, in a directory no
    one had made. It now makes it (0700) as a first write does, leads and starts the task; a
    directory that cannot be made is named in the standing-by line."""
    from snapctl_testing import Watch, tasks

    env = snapctl_env(emulator.url, work)
    with Watch(work, env, "--no-color") as ctl:
        ctl.wait_line(r" Leading: this controller reads and acts\.$", what="the controller to lead")
        wait_for(lambda: "app1/Main/T1" in tasks(emulator.url), what="the task started")
        assert ctl.stop() == 0, ctl.lines
    assert (work / "state").stat().st_mode & 0o777 == 0o700
    assert json.loads(run_snapctl(["state", "list", "--json"], cwd=work, env=env).stdout)["tasks"] == ["app1/Main/T1"]
    (work / "elsewhere").write_text("a file, not a directory\n")
    with Watch(work, env, "--no-color", "--state", "elsewhere/snapctl.state.json") as ctl:
        line = ctl.wait_line(r" Standing by", what="the controller to stand by").split(" ", 1)[1]
        assert ctl.stop() == 0, ctl.lines
    assert line == f"Standing by: not leading (cannot create the state directory {work}/elsewhere: File exists).", line


def start(work, env, *args) -> subprocess.Popen:
    return subprocess.Popen(
        [SNAPCTL, *args],
        cwd=work,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def holding(work, proc) -> tuple[int, int]:
    """Wait until ``proc`` holds the state's lock; the lock file's inode and device."""
    wait_for(lambda: proc.poll() is not None or lock_is_held(work / STATE), what="the run to take the lock")
    assert proc.poll() is None, proc.communicate()
    lock = os.stat(lock_path(work / STATE))
    return lock.st_ino, lock.st_dev


def finished(proc) -> Run:
    stdout, stderr = proc.communicate(timeout=60)
    return Run(proc.returncode, stdout, stderr)


def test_a_run_waiting_for_the_lock_takes_it_again_when_the_refused_run_removes_it(work, emulator):
    """B waits on the lock file A created; A, refused, removes it and the directory on release:
    B locks a new one (it never runs holding a lock file nobody else can see) and applies."""
    emulator.configure(latency_ms=3000)  # A holds the lock while its call waits for the answer
    first = start(work, wrong_keys(emulator, work), "apply", "--auto-approve")
    lock_file = holding(work, first)
    second = start(work, snapctl_env(emulator.url, work), "apply", "--auto-approve", "--lock-timeout", "60")

    def waits_on_that_lock_file() -> bool:
        with_fds = f"/proc/{second.pid}/fd"
        try:
            opened = [os.stat(f"{with_fds}/{n}") for n in os.listdir(with_fds)]
        except OSError:
            return False
        return any((file.st_ino, file.st_dev) == lock_file for file in opened)

    wait_for(waits_on_that_lock_file, what="the second run to wait on the first one's lock file")
    emulator.configure(latency_ms=0)  # A's call still waits its 3 s; B's own calls need not
    refused(finished(first))
    applied = finished(second)
    # It wrote its state in the directory the refused run removed: it made that again and locked a new file.
    assert applied.code == 0, applied.output
    assert lock_path(work / STATE).exists()
    document = json.loads((work / STATE).read_text())
    assert list(document["tasks"]) == ["app1/Main/T1"] and not document.get("pending")
    assert stats(emulator.url)["total"] == 2


def test_a_refused_run_never_removes_a_lock_file_another_run_holds(work, emulator):
    """While A (refused) holds the lock, its file is removed (as force-unlock does with a stale one)
    and another holder locks a new file of that name: A's release leaves that one alone."""
    emulator.configure(latency_ms=3000)
    first = start(work, wrong_keys(emulator, work), "apply", "--auto-approve")
    holding(work, first)
    lock = lock_path(work / STATE)
    os.unlink(lock)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        refused(finished(first))
        assert os.stat(lock).st_ino == os.fstat(fd).st_ino
        assert lock_is_held(work / STATE)
    finally:
        os.close(fd)
