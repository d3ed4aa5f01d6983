"""The controller's Prometheus metrics."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .reports import Hold


class Metrics:
    """Prometheus metrics of the controller, served on ``port`` by prometheus_client (None: not
    served here; ``reconcile --watch`` serves ``registry`` with :mod:`reconciler.ops_http`)."""

    def __init__(self, port: int | None = None, host: str = "127.0.0.1"):
        from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

        r = self.registry = CollectorRegistry()
        self.declared = Gauge("snapctl_tasks_declared", "Tasks declared in the manifests in force", registry=r)
        self.converged = Gauge(
            "snapctl_tasks_converged", "Declared tasks running (or waiting for streams) as last read", registry=r
        )
        self.failed = Gauge("snapctl_tasks_failed", "Tasks whose last action failed (last hold that acted)", registry=r)
        self.failing = Gauge(
            "snapctl_tasks_failing",
            "Declared tasks that fail to run (Status 4, or stopped again right after a start), by StopReason",
            ["reason"],
            registry=r,
        )
        self.failing_reasons: set[str] = set()
        self.healed = Counter("snapctl_tasks_healed", "Tasks found not running and started again", registry=r)
        self.requests = Counter(
            "snapctl_api_requests", "API requests by action and outcome", ["action", "outcome"], registry=r
        )
        self.throttled = Counter("snapctl_api_throttled", "API answers FlowLimitExceeded", registry=r)
        self.observed = Gauge(
            "snapctl_tasks_observed", "Declared tasks by the status their last read showed", ["status"], registry=r
        )
        self.task_failures = Counter(
            "snapctl_task_failures", "Tasks found ended or failed, by the API's StopReason", ["reason"], registry=r
        )
        self.reads_total = Counter("snapctl_task_reads", "GetSnapshotTask reads", registry=r)
        self.sweep = Gauge(
            "snapctl_read_period_seconds",
            "How often each declared task is read: max(declared / read budget, --interval)",
            registry=r,
        )
        self.read_lag = Gauge(
            "snapctl_read_lag_seconds", "How far the oldest due read is behind its schedule", registry=r
        )
        self.holds = Counter(
            "snapctl_lock_holds",
            "Holds of the state's lock, by result: ok, failed, locked (the lock held by someone else)",
            ["result"],
            registry=r,
        )
        self.hold_seconds = Gauge("snapctl_lock_hold_seconds", "How long the last hold of the lock took", registry=r)
        self.lock_wait_seconds = Gauge(
            "snapctl_lock_wait_seconds", "How long the last hold waited for the lock", registry=r
        )
        self.manifests_valid = Gauge(
            "snapctl_manifests_valid", "1 when the manifests on disk are the set in force, 0 when broken", registry=r
        )
        self.leader = Gauge("snapctl_controller_leader", "1 while this controller leads, 0 standing by", registry=r)
        self.last_tick = Gauge(
            "snapctl_loop_tick_timestamp_seconds", "When the controller's loop last went round", registry=r
        )
        self._seen_requests: dict[tuple[str, str], int] = {}
        self._seen_throttled = 0
        self.server = self.thread = None
        if port is not None:
            self.server, self.thread = start_http_server(port, addr=host, registry=r)

    def observe_client(self, client: Any) -> None:
        """Count the requests a client made since the last look."""
        if client is None:
            return
        for key, count in client.stats.requests.items():
            seen = self._seen_requests.get(key, 0)
            if count > seen:
                self.requests.labels(*key).inc(count - seen)
            self._seen_requests[key] = count
        if client.stats.throttled > self._seen_throttled:
            self.throttled.inc(client.stats.throttled - self._seen_throttled)
        self._seen_throttled = client.stats.throttled

    def forget_client(self) -> None:
        self._seen_requests, self._seen_throttled = {}, 0

    def observe_hold(self, hold: Hold, client: Any) -> None:
        from ..errors import LockError

        result = "ok" if hold.error is None else "locked" if isinstance(hold.error, LockError) else "failed"
        self.holds.labels(result).inc()
        self.lock_wait_seconds.set(hold.waited_s)
        if hold.error is None:
            self.hold_seconds.set(hold.held_s)
        if hold.report is not None:
            self.healed.inc(len(hold.report.healed))
            self.failed.set(len(hold.report.failures))
        self.observe_client(client)

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
