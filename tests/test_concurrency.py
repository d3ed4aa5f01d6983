"""One writer per state: concurrent applies, waiting for the lock, and a killed holder."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from snapctl_testing import new_project, run_snapctl, snapctl_env, start_apply, stats, tasks, wait_for

from reconciler.emulator import EmulatorConfig, EmulatorServer
from reconciler.state import lock_path, read_lock_holder

APP = "lockapp"
N_TASKS = 60
HOST = socket.gethostname()


def manifest() -> str:
    rows = "".join(f"      T{t:02d}: {{image: {{interval: {1 + t % 9}}}}}\n" for t in range(N_TASKS // 3))
    rooms = "".join(f"  Room{r}:\n    tasks:\n{rows}" for r in range(3))
    return (
        f"app_id: {APP}\nstorage:\n  s: {{type: tos, account_id: '2100000990', bucket: snaps}}\n"
        f"defaults: {{storage: s}}\nrooms:\n{rooms}"
    )


@pytest.fixture(scope="module")
def server():
    # 100 ms per answer: an apply of 60 tasks holds the lock for a while.
    with EmulatorServer(EmulatorConfig(latency_ms=100)) as srv:
        yield srv


@pytest.fixture
def work(tmp_path, server):
    return new_project(tmp_path, server.url, {"app.yaml": manifest()})


@pytest.fixture
def env(work, server):
    return snapctl_env(server.url, work)


STATE = Path("state/snapctl.state.json")


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


def assert_converged(work: Path, url: str) -> None:
    doc = json.loads((work / STATE).read_bytes())
    assert len(doc["tasks"]) == N_TASKS and "pending" not in doc
    assert len(tasks(url)) == N_TASKS
    start = stats(url)["by_action"]["StartSnapshot"]
    assert start["total"] == N_TASKS and start["outcomes"] == {"ok": N_TASKS}  # no task started twice
    assert not (work / (str(STATE) + ".journal")).exists()


def test_eight_applies_at_once_one_proceeds_the_others_fail_fast(work, env, server):
    procs = [start_apply(work, env, "--timeout", "30") for _ in range(8)]
    pids = {p.pid for p in procs}
    try:
        # Whoever took the lock is held still until every other one has given up, so the
        # eight really overlap whatever the machine's load.
        holder = wait_for(
            lambda: (h := read_lock_holder(work / STATE)) and h.pid in pids and h, what="one apply to take the lock"
        )
        winner = next(p for p in procs if p.pid == holder.pid)
        os.kill(winner.pid, signal.SIGSTOP)
        try:
            losers = [p for p in procs if p is not winner]
            results = [finish(p) for p in losers]
        finally:
            os.kill(winner.pid, signal.SIGCONT)
        code, out, err = finish(winner)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert code == 0, out + err
    assert "Apply complete! Tasks: 60 added" in out
    for code, out, err in results:
        assert code == 1, out + err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in err, err
        assert f"is locked by pid {winner.pid} on {HOST} (snapctl apply)" in lines[0], err
        assert "--lock-timeout" in lines[0]
    assert_converged(work, server.url)


def test_eight_applies_with_lock_timeout_succeed_in_turn(work, env, server):
    procs = [start_apply(work, env, "--lock-timeout", "60") for _ in range(8)]
    try:
        results = [finish(p) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [code for code, _, _ in results] == [0] * 8, results
    applied = [out for _, out, _ in results if "Apply complete! Tasks: 60 added" in out]
    noops = [out for _, out, _ in results if out.startswith("No changes.")]
    assert len(applied) == 1 and len(noops) == 7
    assert_converged(work, server.url)


def test_a_killed_apply_never_blocks_the_next(work, env, server):
    for round_ in range(3):
        proc = start_apply(work, env)
        # Kill it while it holds the lock, at a different point of its run each time.
        wait_for(
            lambda: (h := read_lock_holder(work / STATE)) and h.pid == proc.pid,  # noqa: B023
            what="the apply to take the lock",
        )
        time.sleep(0.1 * round_)
        proc.kill()
        proc.wait()
        assert read_lock_holder(work / STATE).pid == proc.pid  # its record stays behind, stale
        following = run_snapctl(["apply", "--auto-approve", "--target", f"{APP}/Room{round_}"], cwd=work, env=env)
        assert following.code == 0, following.output
        assert "locked" not in following.output
    final = run_snapctl(["apply", "--auto-approve"], cwd=work, env=env)
    assert final.code == 0, final.output
    assert len(tasks(server.url)) == N_TASKS
    assert run_snapctl(["plan", "--detailed-exitcode"], cwd=work, env=env).code == 0


def test_a_refused_apply_waits_for_the_holder_record(work, env, server):
    """A holder writes its record just after taking the lock; one refused in between
    still names it rather than "another process"."""
    fd = os.open(lock_path(work / STATE), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held, no record yet
        proc = start_apply(work, env)
        lock_file = str(lock_path(work / STATE).resolve())

        def opened_lock_file() -> bool:
            if proc.poll() is not None:
                return True  # already gave up
            try:
                return any(
                    os.readlink(f"/proc/{proc.pid}/fd/{n}") == lock_file for n in os.listdir(f"/proc/{proc.pid}/fd")
                )
            except OSError:
                return False

        wait_for(opened_lock_file, what="the apply to open the lock file")
        record = {
            "host": HOST,
            "pid": os.getpid(),
            "started_at": "2030-01-01T00:00:00+00:00",
            "command": "snapctl apply",
        }
        os.pwrite(fd, json.dumps(record).encode(), 0)
        code, _out, err = finish(proc)
    finally:
        os.close(fd)
    assert code == 1
    assert f"is locked by pid {os.getpid()} on {HOST} (snapctl apply)" in err, err
    assert stats(server.url)["total"] == 0
