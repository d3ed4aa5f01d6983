"""What the controller reports: a :class:`Round` of ``reconcile_once`` and a :class:`Hold`
of the state's lock by the controller as a service."""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import api
from ..apply import ApplyReport
from ..errors import SnapctlError
from ..plan import Plan


@dataclass
class Round:
    """The outcome of one reconcile round."""

    plan: Plan | None
    report: ApplyReport | None
    #: Why the round failed: a SnapctlError, or an unexpected error wrapped in one.
    error: SnapctlError | None
    declared: int
    started_at: float
    duration_s: float
    api_requests: dict[tuple[str, str], int]
    throttled: int
    #: The round read the tasks first (not --no-refresh), and what it saw.
    refreshed: bool = False
    observations: dict[str, api.Observation] | None = None
    #: SIGINT/SIGTERM stopped the round during its reads (before it changed anything):
    #: how far the reads got.
    interrupted: str | None = None
    #: Declared tasks that fail to run (address → StopReason): restarted, or held back by backoff.
    failing: dict[str, str] = field(default_factory=dict)
    #: Stopped tasks not started this round (backoff, idle policy): address → when a start is due
    #: (seconds since the epoch; None: not by itself, ``--idle-restart never``).
    deferred: dict[str, float | None] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Everything done and no declared task failing to run."""
        return self.error is None and self.report is not None and self.report.ok and not self.failing

    @property
    def reads(self) -> int:
        return len(self.observations or {})

    @property
    def observed_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for seen in (self.observations or {}).values():
            counts[seen.observed.value] = counts.get(seen.observed.value, 0) + 1
        return dict(sorted(counts.items()))

    @property
    def changes(self) -> dict[str, int]:
        """What the round changed: tasks by action kind, and confirmed unknowns."""
        counts: dict[str, int] = {}
        for result in self.report.results if self.report else []:
            if result.ok and (result.kind != "reassert" or result.healed):
                counts[result.kind] = counts.get(result.kind, 0) + 1
        return counts


@dataclass
class Hold:
    """One hold of the state's lock by the controller: what it recorded and did."""

    started_at: float
    waited_s: float
    held_s: float
    recorded: int
    plan: Plan | None
    report: ApplyReport | None
    #: Tasks found failing in this hold (address → reason), and the stopped tasks not restarted
    #: yet (address → when their restart is due, epoch seconds; None: never).
    failing: dict[str, str]
    deferred: dict[str, float | None]
    error: SnapctlError | None = None
    reads: int = 0
    observed: dict[str, int] | None = None
    #: Of the tasks acted on, the most reads the controller made between a task's read and the act
    #: (a finding is acted on at once: a handful, never a sweep).
    acted_after_reads: int = 0
    #: After a hold that failed: how long the controller waits before the next (seconds).
    retry_in_s: float | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and (self.report is None or self.report.ok)
