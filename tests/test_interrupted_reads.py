"""SIGTERM (or Ctrl-C) during the reads of a refresh stops reading at once (issue 17, item 8).

Every command that reads the live tasks (``apply --refresh``, ``plan --refresh``, ``status``,
``reconcile``, ``reconcile --watch``, ``import``) is sent SIGTERM while its reads go on at
2 per second: it stops reading, the commands that hold the state's lock record what they
read, nothing is written to the API, and it exits 130 (0 for ``--watch``, as documented),
with one line saying so and no traceback.
"""

from __future__ import annotations

import json
import signal

import pytest
from snapctl_testing import calls, new_project, run_snapctl, signal_when, snapctl_env, start_snapctl

APP = "sigapp"
TASKS = 12


def manifest(count: int) -> str:
    lines = [
        f"app_id: {APP}",
        "storage:",
        '  archive: {type: tos, account_id: "2100000990", bucket: snaps}',
        "defaults: {storage: archive}",
        "rooms:",
        "  R0:",
        "    tasks:",
    ]
    return "\n".join(lines + [f"      T{i}: {{}}" for i in range(count)]) + "\n"


def observed_in_state(work, env) -> int:
    """How many tasks the state holds an observation of."""
    run = run_snapctl(["status", "--offline", "--json"], cwd=work, env=env)
    assert run.code in (0, 2), run.output
    return sum(task["observed_since"] is not None for task in json.loads(run.stdout)["tasks"])


@pytest.mark.parametrize(
    ("command", "code", "records"),
    [
        (["apply", "--refresh", "--auto-approve"], 130, True),
        (["plan", "--refresh"], 130, False),
        (["status"], 130, False),
        (["reconcile"], 130, True),
        (["reconcile", "--watch"], 0, True),
    ],
    ids=["apply-refresh", "plan-refresh", "status", "reconcile", "reconcile-watch"],
)
def test_sigterm_during_the_reads_stops_reading_at_once(emulator, tmp_path, command, code, records):
    work = new_project(tmp_path, emulator.url, {"app.yaml": manifest(TASKS)})
    env = snapctl_env(emulator.url, work)
    assert run_snapctl(["apply", "--auto-approve"], cwd=work, env=env).code == 0
    writes = emulator.stats()["total"]
    proc = start_snapctl(work, env, *command, "--no-color", "--read-qps", "2", "--parallelism", "2")
    # Two reads are 0.5 s apart at 2/s: once the second has arrived the first is answered.
    stdout, stderr = signal_when(
        proc, lambda: calls(emulator.url, "GetSnapshotTask") >= 2, signal.SIGTERM, what="two reads"
    )
    output = stdout + stderr
    assert proc.returncode == code, output
    assert "Traceback" not in output, output
    reads = calls(emulator.url, "GetSnapshotTask")
    assert reads < TASKS, f"it went on reading after SIGTERM: {reads} reads of {TASKS}\n{output}"
    assert emulator.stats()["total"] == writes + reads  # reads only: nothing started, stopped or updated
    assert "interrupted" in output.lower() and f"of {TASKS} task(s) read" in output, output
    seen = observed_in_state(work, env)
    if records:  # what was read before the stop is in the state
        assert 1 <= seen <= reads, (seen, reads, output)
        assert "recorded in the state" in output, output
    else:
        assert seen == 0, output


def test_sigterm_during_the_read_of_an_import_starts_nothing(emulator, tmp_path):
    work = new_project(tmp_path, emulator.url, {"app.yaml": manifest(1)})
    env = snapctl_env(emulator.url, work)
    emulator.configure(latency_ms=30_000)  # the read is answered long after the signal
    proc = start_snapctl(work, env, "import", f"{APP}/R0/T0", "--no-color")
    stdout, stderr = signal_when(  # it must exit sooner than the answer's latency
        proc, lambda: calls(emulator.url, "GetSnapshotTask") >= 1, signal.SIGTERM, what="the read", timeout=25
    )
    assert proc.returncode == 130, stdout + stderr
    assert stderr.strip() == f"Interrupted: nothing was started and nothing recorded for {APP}/R0/T0.", stderr
    assert calls(emulator.url, "StartSnapshot") == 0
    emulator.configure(latency_ms=0)
    listing = run_snapctl(["state", "list", "--json"], cwd=work, env=env)
    assert listing.code == 0 and json.loads(listing.stdout)["tasks"] == [], listing.output
