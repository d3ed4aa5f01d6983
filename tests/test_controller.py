"""The controller as a service (issue 19): its events and health facts, observed end to end
through the library against the emulator."""

from __future__ import annotations

import threading

from snapctl_testing import new_project, wait_for

from reconciler import controller, engine
from reconciler.emulator.config import DEFAULT_ACCESS_KEY, DEFAULT_SECRET_KEY

MANIFEST = """\
app_id: ctlapp
storage:
  archive: {type: tos, account_id: "2100000990", bucket: snaps}
defaults: {storage: archive}
rooms:
  R1:
    tasks:
      T1: {}
      T2: {}
"""


def settings(url: str) -> engine.Settings:
    return engine.Settings(
        endpoint=url,
        environ={"VOLC_ACCESSKEY": DEFAULT_ACCESS_KEY, "VOLC_SECRETKEY": DEFAULT_SECRET_KEY},
    )


def test_events_and_health_of_a_watching_controller(emulator, tmp_path):
    work = new_project(tmp_path, emulator.url, {"app.yaml": MANIFEST})
    events: list[controller.Event] = []
    status = controller.ControllerStatus([events.append])
    assert status.health().ready() == (False, "controller is starting")
    stop = threading.Event()
    runner = threading.Thread(
        target=controller.watch,
        args=([work / "manifests"], work / "state" / "snapctl.state.json", settings(emulator.url)),
        kwargs={"interval_s": 0.1, "stop": stop, "status": status},
    )
    runner.start()
    try:
        wait_for(lambda: len(emulator.tasks()) == 2, what="both tasks started")
        wait_for(lambda: status.health().ready()[0], what="a ready controller")
        health = status.health()
        assert health.alive() and health.declared == 2 and health.last_tick_at is not None
        (work / "manifests" / "app.yaml").write_text(MANIFEST + "  R2: [\n")
        wait_for(lambda: any(e.kind is controller.EventKind.manifests_broken for e in events), what="broken")
        health = status.health()
        assert not health.manifests_loaded and "app.yaml" in (health.manifests_error or "")
        assert health.ready()[0] is False and "no manifests loaded" in health.ready()[1]
        (work / "manifests" / "app.yaml").write_text(MANIFEST)
        wait_for(lambda: any(e.kind is controller.EventKind.manifests_fixed for e in events), what="fixed")
        assert (
            emulator.admin("streams-stopped", {"AppId": "ctlapp", "RoomId": "R1", "Immediate": True}).status_code == 200
        )
        healed = wait_for(lambda: [e for e in events if e.kind is controller.EventKind.healed], what="a healed event")
        assert {e.address for e in healed} <= {"ctlapp/R1/T1", "ctlapp/R1/T2"}
        assert all(e.document()["event"] in {k.value for k in controller.EventKind} for e in events)
    finally:
        stop.set()
        runner.join(30)
    assert status.health().role is controller.Role.stopped and not status.health().alive()
