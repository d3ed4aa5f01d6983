"""Reconcile: observe every declared task (GetSnapshotTask), then start what
ended or failed, correct drift and apply pending changes, once
(:func:`reconcile_once`, in :mod:`.once`) or as a long-running GitOps controller
(:class:`Controller` and :func:`watch`, in :mod:`.service`) with Prometheus
metrics (:mod:`.metrics`). A round over tasks that all run as declared sends
reads only.

The controller's surface for an ops layer (HTTP probes, notifications, logs), in :mod:`.status`:

- :class:`Event`: what happened that someone may want to hear about (a task
  failing, recovered, healed, drift corrected, manifests broken or fixed,
  leadership changed). Observers (``Callable[[Event], None]``) are given to
  :func:`watch` (``observers=``) or added with :meth:`ControllerStatus.subscribe`;
  they are called on the controller's loop, one event at a time, and must not
  block (queue the work elsewhere); an observer that raises is logged and kept.
  Events hold no secret: addresses, StopReasons and error lines only.
- :class:`Health`: the facts a probe needs (:meth:`ControllerStatus.health`):
  when the loop last ticked, whether this replica leads or stands by (and who
  leads), whether manifests are loaded (and the error of a broken set), whether
  the state is reachable. :meth:`Health.alive` and :meth:`Health.ready` judge them.
"""

from __future__ import annotations

from ..signals import graceful_stop
from .metrics import Metrics
from .once import judge_round, reconcile_once
from .reports import Hold, Round
from .schedule import Schedule
from .service import (
    ACT_EVERY_S,
    ACTIONS_PER_HOLD,
    API_PAUSE_S,
    LEADER_CHECK_S,
    LOCK_PAUSE_S,
    LOCK_WAIT_S,
    MANIFEST_CHECK_S,
    READ_AGAIN_AFTER_START_S,
    RECORD_EVERY_S,
    STATE_REREAD_S,
    Controller,
    watch,
)
from .status import ControllerStatus, Event, EventKind, Health, Observer, Role

__all__ = [
    "ACTIONS_PER_HOLD",
    "ACT_EVERY_S",
    "API_PAUSE_S",
    "LEADER_CHECK_S",
    "LOCK_PAUSE_S",
    "LOCK_WAIT_S",
    "MANIFEST_CHECK_S",
    "READ_AGAIN_AFTER_START_S",
    "RECORD_EVERY_S",
    "STATE_REREAD_S",
    "Controller",
    "ControllerStatus",
    "Event",
    "EventKind",
    "Health",
    "Hold",
    "Metrics",
    "Observer",
    "Role",
    "Round",
    "Schedule",
    "graceful_stop",
    "judge_round",
    "reconcile_once",
    "watch",
]
