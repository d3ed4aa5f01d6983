"""Each command offers the options it uses (issue 18, item 5): every option its --help lists
has an effect there or is refused where it cannot apply, in one line, before anything is
sent; the options that did nothing (status --qps, destroy --read-qps, import --parallelism,
plan --qps) are gone. The API options' effects are shown against the emulator: a write or
read rate the emulator throttles above, a bound on calls in flight it counts connections
of, an answer slower than --timeout."""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from snapctl_testing import new_project, run_snapctl, snapctl_env, wait_for

MANIFEST = """\
app_id: optapp
storage:
  s: {type: tos, account_id: "2100000990", bucket: b}
defaults: {storage: s}
rooms:
  R:
    tasks:
      T1: {}
      T2: {}
      T3: {}
      T4: {}
      T5: {}
      T6: {}
"""
#: Three tasks: at 2 calls a second, unthrottled only when paced.
THREE = MANIFEST.split("      T4")[0]

COMMON = {"--state", "--workspace", "--json", "--no-color", "--help", "-h"}
#: What each command's --help offers, besides COMMON; each option below is exercised by a test.
OFFERED = {
    "plan": {
        "--target", "--replace", "--endpoint", "--read-qps", "--parallelism", "--timeout", "--max-attempts", "--format",
        "--out", "--destroy", "--detailed-exitcode", "--no-secrets", "--refresh",
    },
    "apply": {
        "--target", "--replace", "--endpoint", "--qps", "--read-qps", "--parallelism", "--timeout",
        "--max-attempts", "--lock-timeout", "--refresh", "--auto-approve", "--adopt",
    },
    "destroy": {
        "--target", "--endpoint", "--qps", "--parallelism", "--timeout", "--max-attempts", "--lock-timeout",
        "--auto-approve",
    },
    "reconcile": {
        "--endpoint", "--qps", "--read-qps", "--parallelism", "--timeout", "--max-attempts", "--lock-timeout", "--watch",
        "--interval", "--idle-restart", "--metrics-port", "--metrics-host", "--log-format", "--stuck-after", "--notify",
        "--notify-window", "--no-refresh",
        "--adopt",
    },
    "status": {"--target", "--offline", "--endpoint", "--read-qps", "--parallelism", "--timeout", "--max-attempts"},
    "import": {"--endpoint", "--timeout", "--max-attempts", "--lock-timeout"},
}  # fmt: skip
#: Options these commands listed without using them: refused as unknown now.
REMOVED = [
    (["status"], "--qps", "1"),
    (["destroy"], "--read-qps", "1"),
    (["import", "optapp/R/T1"], "--parallelism", "1"),
    (["import", "optapp/R/T1"], "--qps", "1"),
    (["import", "optapp/R/T1"], "--read-qps", "1"),
    (["plan"], "--qps", "1"),
]
#: Options a command offers that cannot apply with these other flags (or without them).
CANNOT_APPLY = [
    (["reconcile", "--metrics-port", "0"], "--metrics-port applies only with --watch"),
    (["reconcile", "--metrics-host", "0.0.0.0"], "--metrics-host applies only with --watch"),
    (["reconcile", "--interval", "5"], "--interval applies only with --watch"),
    (["reconcile", "--log-format", "json"], "--log-format applies only with --watch"),
    (["reconcile", "--watch", "--stuck-after", "60"], "--stuck-after applies only with --metrics-port"),
    (["reconcile", "--notify", "http://127.0.0.1:9/hook"], "--notify applies only with --watch"),
    (["reconcile", "--watch", "--notify-window", "5"], "--notify-window applies only with --notify"),
    (["reconcile", "--no-refresh", "--read-qps", "5"], "--read-qps does not apply with --no-refresh"),
    (["plan", "--read-qps", "5"], "--read-qps applies only with --refresh"),
    (["plan", "--parallelism", "5"], "--parallelism applies only with --refresh"),
    (["plan", "--timeout", "5"], "--timeout applies only with --refresh"),
    (["plan", "--max-attempts", "2"], "--max-attempts applies only with --refresh"),
    (["plan", "--destroy", "--refresh"], "--refresh does not apply with --destroy"),
    (["apply", "--auto-approve", "--read-qps", "5"], "--read-qps applies only with --refresh"),
    (["status", "--offline", "--read-qps", "5"], "--read-qps does not apply with --offline"),
    (["status", "--offline", "--timeout", "5"], "--timeout does not apply with --offline"),
    (["status", "--offline", "--max-attempts", "2"], "--max-attempts does not apply with --offline"),
    (["status", "--offline", "--endpoint", "http://127.0.0.1:9"], "--endpoint does not apply with --offline"),
]


def help_options(command: str, work, env) -> set[str]:
    """The flags --help lists (each line of its Options that starts with one)."""
    run = run_snapctl([command, "--help"], cwd=work, env=env)
    assert run.code == 0, run.output
    found: set[str] = set()
    for line in run.stdout.split("Options:")[1].splitlines():
        match = re.match(r"^  ((?:-{1,2}[\w-]+(?:, )?)+)", line)
        if match:
            found.update(match.group(1).replace(",", " ").split())
    return found


@pytest.fixture
def work(tmp_path, emulator):
    return new_project(tmp_path, emulator.url, {"app.yaml": MANIFEST})


def test_help_lists_what_each_command_uses(work, emulator):
    env = snapctl_env(emulator.url, work)
    for command, offered in OFFERED.items():
        assert help_options(command, work, env) == offered | COMMON, command


@pytest.mark.parametrize(("words", "flag", "value"), REMOVED, ids=[f"{w[0]} {f}" for w, f, _ in REMOVED])
def test_options_that_did_nothing_are_refused(work, emulator, words, flag, value):
    env = snapctl_env(emulator.url, work)
    run = run_snapctl([*words, flag, value], cwd=work, env=env)
    assert run.code == 1 and run.stdout == "" and len(run.stderr.splitlines()) == 1, run.output
    assert f"No such option '{flag}'" in run.stderr, run.stderr
    assert emulator.stats()["total"] == 0 and not (work / "state" / "snapctl.state.json").exists()


@pytest.mark.parametrize(("args", "message"), CANNOT_APPLY, ids=[" ".join(a) for a, _ in CANNOT_APPLY])
def test_an_option_that_cannot_apply_is_refused_in_one_line(work, emulator, args, message):
    env = snapctl_env(emulator.url, work)
    run = run_snapctl(args, cwd=work, env=env)
    assert run.code == 1 and run.stdout == "", run.output
    assert len(run.stderr.splitlines()) == 1 and run.stderr.startswith(f"Error: {message}"), run.stderr
    assert run.stderr.rstrip().endswith("; nothing was sent"), run.stderr
    assert emulator.stats()["total"] == 0 and not (work / "state" / "snapctl.state.json").exists()


# -- the API options have an effect wherever they are offered ---------------------------------

#: For each command: what to run (after ``prepare``), and what prepares the emulator and state.
RUNS = {
    "plan": ["plan", "--refresh"],
    "apply": ["apply", "--auto-approve", "--refresh"],
    "destroy": ["destroy", "--auto-approve"],
    "reconcile": ["reconcile"],
    "status": ["status"],
}
#: Whether the command finds the tasks already applied (else it creates them).
APPLIED_FIRST = {"plan": True, "apply": False, "destroy": True, "reconcile": True, "status": True}


def _prepare(command, work, env, emulator) -> dict:
    if APPLIED_FIRST[command]:
        assert run_snapctl(["apply", "--auto-approve"], cwd=work, env=env).code == 0
    if command == "reconcile":  # tasks that ended: the round reads them all and starts them again
        for task in [t["TaskId"] for t in emulator.tasks()]:
            emulator.admin("stop-task", {"AppId": "optapp", "RoomId": "R", "TaskId": task})
    return emulator.stats()


def _delta(before: dict, emulator) -> dict:
    after = emulator.stats()
    return {key: after[key] - before[key] for key in ("throttled", "connections", "total")}


RATE_CASES = [(c, "--qps") for c in ("apply", "destroy", "reconcile")] + [
    (c, "--read-qps") for c in ("plan", "apply", "reconcile", "status")
]


@pytest.mark.parametrize(("command", "flag"), RATE_CASES, ids=[f"{c} {f}" for c, f in RATE_CASES])
def test_rate_options_pace_the_calls(tmp_path, make_emulator, command, flag):
    """The emulator limits the action to 2 calls a second: a rate of 0 (no limit) is throttled,
    a rate of 1 (half the limit: the machine's delays cannot bunch two calls) is not."""
    skipped = 0.0  # seconds the emulator's clock is ahead of the real one
    emulator = make_emulator(clock=lambda: time.monotonic() + skipped)
    work = new_project(tmp_path, emulator.url, {"app.yaml": MANIFEST})
    env = snapctl_env(emulator.url, work)
    setting = {"--qps": "qps", "--read-qps": "read_qps"}[flag]
    unlimited = {setting: 150 if setting == "qps" else 60}
    throttled = {}
    for rate in ("0", "1"):
        (work / rate).mkdir()
        new_project(work / rate, emulator.url, {"app.yaml": THREE})
        before = _prepare(command, work / rate, env, emulator)
        # The emulator limits by a sliding one-second window: let the calls of the preparation
        # (an apply at full speed) leave it, so that only the command's own calls are counted
        # (its clock moves 1.1 s on rather than the test sleeping them).
        skipped += 1.1
        emulator.configure(**{setting: 2})
        with ThreadPoolExecutor(1) as pool:
            running = pool.submit(run_snapctl, [*RUNS[command], flag, rate], cwd=work / rate, env=env)
            if rate == "0":
                # Throttled once is what the unpaced run shows: the limit is lifted then, so that its
                # retries pass at once instead of waiting for the window to move on.
                wait_for(
                    lambda r=running, b=before: r.done() or _delta(b, emulator)["throttled"], what="a throttled call"
                )
                emulator.configure(**unlimited)
            run = running.result()
        emulator.configure(**unlimited)
        assert run.code in (0, 2), run.output
        throttled[rate] = _delta(before, emulator)["throttled"]
    assert throttled["0"] > 0 and throttled["1"] == 0, throttled


@pytest.mark.parametrize("command", list(RUNS))
def test_parallelism_bounds_the_calls_in_flight(work, emulator, command):
    """Answers take 100 ms: one call in flight at a time uses one connection, eight use more."""
    env = snapctl_env(emulator.url, work)
    used = {}
    for bound in ("1", "8"):
        (work / bound).mkdir()
        new_project(work / bound, emulator.url, {"app.yaml": MANIFEST})
        before = _prepare(command, work / bound, env, emulator)
        emulator.configure(latency_ms=100)
        run = run_snapctl([*RUNS[command], "--parallelism", bound], cwd=work / bound, env=env)
        emulator.configure(latency_ms=0)
        assert run.code in (0, 2), run.output
        used[bound] = _delta(before, emulator)["connections"]
    assert used["8"] > used["1"] <= 2, used  # one connection per phase (reads, then writes) at 1


@pytest.mark.parametrize("command", ["status", "import"])
def test_timeout_bounds_the_wait_for_an_answer(work, emulator, command):
    """Answers take 1.5 s: --timeout 0.2 gives up on them (the same ApiOptions reach every
    command; these two show it for reads and for a command with neither rate nor bound)."""
    env = snapctl_env(emulator.url, work)
    assert run_snapctl(["apply", "--auto-approve", "--state", "other.json"], cwd=work, env=env).code == 0
    args = ["import", "optapp/R/T1"] if command == "import" else ["status", "--target", "optapp/R/T1"]
    emulator.configure(latency_ms=1500)
    run = run_snapctl([*args, "--timeout", "0.2", "--max-attempts", "2"], cwd=work, env=env)
    emulator.configure(latency_ms=0)
    assert run.code in (1, 2) and "Traceback" not in run.output, run.output
    assert "timed out" in run.output, run.output


#: A command per kind of call (reads; writes; the one-task import) and its per-task calls.
ATTEMPT_RUNS = {
    "status": (["status", "--target", "optapp/R/T1"], "GetSnapshotTask"),
    "apply": (["apply", "--auto-approve", "--target", "optapp/R/T1"], "StartSnapshot"),
    "import": (["import", "optapp/R/T1"], "GetSnapshotTask"),
}


@pytest.mark.parametrize("command", list(ATTEMPT_RUNS))
def test_max_attempts_bounds_the_retries_of_a_request(work, emulator, command):
    """Every answer is a 5xx (retried): --max-attempts 3 sends each request 3 times, 1 once."""
    env = snapctl_env(emulator.url, work)
    if command != "apply":
        assert run_snapctl(["apply", "--auto-approve", "--state", "other.json"], cwd=work, env=env).code == 0
    args, action = ATTEMPT_RUNS[command]
    sent = {}
    for attempts in ("3", "1"):
        before = emulator.stats()["by_action"].get(action, {}).get("total", 0)
        emulator.configure(error_rate=1.0)
        # apply: a state of its own each time (one a failed start left pending would be read first).
        own_state = ["--state", f"attempts-{attempts}.json"] if command == "apply" else []
        run = run_snapctl([*args, *own_state, "--max-attempts", attempts], cwd=work, env=env)
        emulator.configure(error_rate=0.0)
        assert run.code in (1, 2) and "Traceback" not in run.output, run.output
        sent[attempts] = emulator.stats()["by_action"][action]["total"] - before
    assert sent == {"3": 3, "1": 1}, sent
