"""When to start a stopped task again: failure backoff and the idle-out policy.

A declared task found ended or failed is started again, but not blindly:

- **Failing.** A task found stopped by anything but an idle-out counts one
  failure per run (a run is one StartTime); a task seen running again is not
  failing any more. A task is *failing* when the API says it failed to start
  stopped again (failed, e.g. Status 4 ``StartTaskFailed``, or ended) after
  snapctl started it again, without ever being seen running: two failures in
  a row. The first failure is restarted at once (a heal); the n-th in a row waits ``backoff(n)`` after it
  stopped: 30 s, 1 min, 2 min, ... doubling up to 30 min (:data:`FAILURE_BACKOFF_S`,
  :data:`FAILURE_BACKOFF_MAX_S`).
- **Idle-outs** (StopReason ``IdleTimeOut``: nobody published for MaxIdleTime).
  A task restarted in a room where nobody publishes ends again MaxIdleTime
  later, so ``always`` costs one StartSnapshot per ``MaxIdleTime + detection``
  per empty room (20 an hour at the default 180 s). ``backoff`` (the default)
  restarts the first idle-out at once and the n-th in a row (runs that ended
  within MaxIdleTime + 60 s of their start: nobody published at all)
  ``MaxIdleTime × (2^(n-1) - 1)`` after it ended, at most 1 h: never more than
  one restart per MaxIdleTime, and about one an hour for a room left empty. A run
  that lasted longer (someone published) starts the count again. ``never``
  leaves idled-out tasks ended (reported, not failing).

What is counted lives in the state, beside the task's last observation
(``failures`` and ``idle_outs``), so every replica and every one-shot
``reconcile`` judges the same way.
"""

from __future__ import annotations

import datetime as _dt
import enum
from dataclasses import dataclass
from typing import Any

from . import api

FAILURE_BACKOFF_S = 30.0
FAILURE_BACKOFF_MAX_S = 1800.0
IDLE_BACKOFF_MAX_S = 3600.0
#: A run that ended within MaxIdleTime + this of its start saw nobody publish.
IDLE_GRACE_S = 60.0
IDLE_TIMEOUT = "IdleTimeOut"
#: The keys these facts take in a task's observation record in the state.
FACT_KEYS = ("failures", "idle_outs")


class IdleRestart(str, enum.Enum):
    """What to do with a task that idled out (``--idle-restart``)."""

    always = "always"
    backoff = "backoff"
    never = "never"


def failure_backoff_s(count: int) -> float:
    """How long after its ``count``-th failure in a row a task is started again."""
    if count <= 1:
        return 0.0
    return min(FAILURE_BACKOFF_S * 2 ** (count - 2), FAILURE_BACKOFF_MAX_S)


def idle_backoff_s(count: int, max_idle_s: float) -> float:
    """How long after its ``count``-th idle-out in a row a task is started again (``backoff``)."""
    if count <= 1:
        return 0.0
    return min(max_idle_s * (2 ** (count - 1) - 1), IDLE_BACKOFF_MAX_S)


def iso(at: float) -> str:
    return _dt.datetime.fromtimestamp(at, _dt.timezone.utc).isoformat(timespec="seconds")


def epoch(text: str) -> float:
    return _dt.datetime.fromisoformat(text).timestamp()


@dataclass(frozen=True)
class Verdict:
    """What to do about one observation, and what to remember of it."""

    #: Start the task now.
    restart: bool
    #: When a restart is due (seconds since the epoch), if not now; None: never by itself.
    retry_at: float | None
    #: The task fails to run (see the module's docstring).
    failing: bool
    #: The StopReason the verdict is about ("" for a running task).
    reason: str
    #: The facts to record beside the observation (``failures``, ``idle_outs``; None removes one).
    facts: dict[str, Any]
    #: It was failing and runs again.
    recovered: bool = False

    @property
    def idle(self) -> bool:
        """Left ended by the idle policy for now (not failing)."""
        return not self.restart and not self.failing and self.reason == IDLE_TIMEOUT


def judge(
    seen: api.Observation,
    last: dict[str, Any] | None,
    *,
    max_idle_s: float = api.DEFAULT_MAX_IDLE_TIME,
    idle_restart: IdleRestart = IdleRestart.backoff,
    now: float,
) -> Verdict:
    """The verdict on ``seen`` given ``last``, the task's record in the state (its facts)."""
    last = last or {}
    failures: dict[str, Any] | None = last.get("failures")
    idle_outs: dict[str, Any] | None = last.get("idle_outs")
    if seen.observed is api.Observed.running:
        was = bool(failures and failures.get("failing"))
        return Verdict(False, None, False, "", {"failures": None, "idle_outs": idle_outs}, recovered=was)
    if not seen.stopped:  # not started yet, or unknown: nothing learnt
        failing = bool(failures and failures.get("failing"))
        reason = failures.get("reason", "") if failures and failing else ""
        return Verdict(False, None, failing, reason, {"failures": failures, "idle_outs": idle_outs})
    run = seen.start_time_ms
    ended = seen.end_time_ms / 1000 if seen.end_time_ms else now
    reason = seen.stop_reason or seen.observed.value
    if seen.observed is api.Observed.ended and seen.stop_reason == IDLE_TIMEOUT:
        lasted = ended - run / 1000 if run else 0.0
        pure = lasted <= max_idle_s + IDLE_GRACE_S
        if idle_outs is not None and idle_outs.get("run") == run:
            count = idle_outs["count"]
        else:
            count = (idle_outs["count"] if idle_outs is not None and pure else 0) + 1
        if idle_restart is IdleRestart.never:
            retry_at: float | None = None
        elif idle_restart is IdleRestart.always:
            retry_at = run / 1000 + max_idle_s if run else ended
        else:
            retry_at = ended + idle_backoff_s(count, max_idle_s)
        facts = {
            "failures": failures,
            "idle_outs": {"count": count, "run": run, "retry_at": iso(retry_at) if retry_at else None},
        }
        return Verdict(retry_at is not None and now >= retry_at, retry_at, False, reason, facts)
    if failures is not None and failures.get("run") == run:
        count = failures["count"]
        retry_at = epoch(failures["retry_at"]) if failures.get("retry_at") else ended
    else:
        count = (failures["count"] if failures is not None else 0) + 1
        retry_at = ended + failure_backoff_s(count)
    failing = count >= 2
    facts = {
        "failures": {"count": count, "run": run, "reason": reason, "failing": failing, "retry_at": iso(retry_at)},
        "idle_outs": idle_outs,
    }
    return Verdict(now >= retry_at, retry_at, failing, reason, facts)
