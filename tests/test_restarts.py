"""When a stopped task is started again (reconciler/restarts.py): failure backoff and the idle-out
policy, judged over simulated runs as the controller judges each read."""

from __future__ import annotations

import pytest

from reconciler import api
from reconciler.restarts import (
    FAILURE_BACKOFF_MAX_S,
    IdleRestart,
    failure_backoff_s,
    idle_backoff_s,
    judge,
)

ADDRESS = "app/room/task"


def seen(observed: api.Observed, started: float, ended: float = 0.0, reason: str = "") -> api.Observation:
    return api.Observation(
        ADDRESS, observed, stop_reason=reason, start_time_ms=int(started * 1000), end_time_ms=int(ended * 1000)
    )


def test_failure_backoff_doubles_from_30_seconds_to_30_minutes():
    assert [failure_backoff_s(n) for n in range(1, 9)] == [0, 30, 60, 120, 240, 480, 960, 1800]
    assert failure_backoff_s(50) == FAILURE_BACKOFF_MAX_S


def test_a_task_that_fails_again_after_its_restart_is_failing_and_backed_off():
    record: dict = {}
    first = judge(seen(api.Observed.failed, 1000, 1001, "StartTaskFailed"), record, now=1002)
    assert first.restart and not first.failing  # the first failure: started again at once, a heal
    record = {k: v for k, v in first.facts.items() if v is not None}
    again = judge(seen(api.Observed.failed, 1002, 1003, "StartTaskFailed"), record, now=1004)
    assert again.failing and not again.restart and again.retry_at == 1003 + 30
    record = {k: v for k, v in again.facts.items() if v is not None}
    # Read again (the same run) before and after the backoff: counted once, started when due.
    assert not judge(seen(api.Observed.failed, 1002, 1003, "StartTaskFailed"), record, now=1020).restart
    due = judge(seen(api.Observed.failed, 1002, 1003, "StartTaskFailed"), record, now=1033)
    assert due.restart and due.failing and due.facts["failures"]["count"] == 2
    running = judge(seen(api.Observed.running, 1040), {k: v for k, v in due.facts.items() if v}, now=1050)
    assert running.recovered and running.facts["failures"] is None


@pytest.mark.parametrize("policy", [IdleRestart.backoff, IdleRestart.always])
def test_an_empty_room_is_never_restarted_more_than_once_per_max_idle_time(policy):
    """A room nobody publishes in: each run idles out MaxIdleTime after its start; read every 10 s."""
    max_idle, now, started, record = 180.0, 0.0, 0.0, {}
    starts = [0.0]
    while now < 4 * 3600:
        now += 10
        if now < started + max_idle:
            continue  # running
        verdict = judge(
            seen(api.Observed.ended, started, started + max_idle, "IdleTimeOut"),
            record,
            max_idle_s=max_idle,
            idle_restart=policy,
            now=now,
        )
        assert not verdict.failing
        record = {k: v for k, v in verdict.facts.items() if v is not None}
        if verdict.restart:
            started = now
            starts.append(now)
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert min(gaps) >= max_idle
    per_hour = [sum(1 for s in starts if h * 3600 <= s < (h + 1) * 3600) for h in range(4)]
    if policy is IdleRestart.always:
        assert 18 <= per_hour[1] <= 20  # 3600 / (180 s + up to 10 s to find it)
    else:
        assert per_hour[0] == 5 and per_hour[2] <= 1 and per_hour[3] <= 1, per_hour


def test_never_leaves_an_idled_out_task_ended_and_a_busy_room_starts_the_count_again():
    ended = seen(api.Observed.ended, 0, 180, "IdleTimeOut")
    never = judge(ended, {}, idle_restart=IdleRestart.never, now=200)
    assert not never.restart and never.retry_at is None and never.idle
    record = {"idle_outs": {"count": 4, "run": 0, "retry_at": None}}
    busy = judge(seen(api.Observed.ended, 1000, 5000, "IdleTimeOut"), record, now=5010)
    assert busy.restart and busy.facts["idle_outs"]["count"] == 1  # someone published: a fresh count
    assert idle_backoff_s(2, 180) == 180 and idle_backoff_s(10, 180) == 3600
