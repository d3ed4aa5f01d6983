"""The controller's ops surface (issue 19, item 6): its lines carry their time in text and in
JSON, its metrics port answers /metrics, /healthz and /readyz (and 404 otherwise). Each test
runs the real ``snapctl reconcile --watch`` against the emulator."""

from __future__ import annotations

import datetime
import json
import re
from pathlib import Path

import httpx
from snapctl_testing import Watch, new_project, snapctl_env, wait_for

MANIFEST = """\
app_id: opsapp
storage:
  archive: {type: tos, account_id: "2100000990", bucket: snaps}
defaults: {storage: archive}
rooms:
  R1:
    tasks:
      T1: {}
      T2: {}
"""
STAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z) ")


def watching(work: Path, env: dict[str, str], *args: str) -> Watch:
    """``snapctl reconcile --watch --interval 0.2 ARGS``, to use in a ``with`` block."""
    return Watch(work, env, "--interval", "0.2", *args)


def parse_time(text: str) -> datetime.datetime:
    """An RFC 3339 UTC time as snapctl writes it (milliseconds, Z)."""
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", text), text
    moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    assert moment.utcoffset() == datetime.timedelta(0)
    return moment


def test_watch_lines_carry_their_time_in_text_and_json(emulator, tmp_path):
    work = new_project(tmp_path, emulator.url, {"app.yaml": MANIFEST})
    env = snapctl_env(emulator.url, work, SNAPCTL_LOG="info")
    started = datetime.datetime.now(datetime.timezone.utc)

    with watching(work, env, "--log-format", "json") as watcher:
        watcher.wait_line(r"Acted in .*: 2 change\(s\)")
        assert watcher.stop() == 0
    lines = watcher.lines["stdout"] + watcher.lines["stderr"]
    assert any("opsapp/R1/T1: created" in line for line in watcher.lines["stdout"]), lines
    documents = [json.loads(line) for line in lines]  # every line is one JSON object
    for document in documents:
        assert started - datetime.timedelta(seconds=1) <= parse_time(document["time"])
        assert document["level"] in {"info", "warning", "error"} and document["stream"] in {"stdout", "stderr", "log"}
    messages = [d["message"] for d in documents]
    assert any(m.startswith("Stopped after") for m in messages), messages
    assert any(d["stream"] == "log" for d in documents), messages  # SNAPCTL_LOG's records too

    # Text: every line starts with its time; a --json document stays one document, with its time.
    # (A task stopped out of band, so that the controller acts and writes a document.)
    assert emulator.admin("stop-task", {"AppId": "opsapp", "RoomId": "R1", "TaskId": "T1"}).status_code == 200
    with watching(work, env, "--json") as watcher:
        document = json.loads(watcher.wait_line(r'"type":"reconcile"'))
        assert document["ok"] and document["declared"] == 2
        assert next(iter(document)) == "time" and parse_time(document["time"])
        assert watcher.stop() == 0
    assert watcher.lines["stderr"], "no line on stderr"
    for line in watcher.lines["stderr"]:
        stamp = STAMP.match(line)
        assert stamp and parse_time(stamp.group(1)), line
    assert "Stopped after" in watcher.lines["stderr"][-1]


def get(port: int, path: str, **kw) -> httpx.Response:
    return httpx.request(kw.pop("method", "GET"), f"http://127.0.0.1:{port}{path}", timeout=30, **kw)


def test_the_metrics_port_answers_metrics_probes_and_404(emulator, tmp_path):
    work = new_project(tmp_path, emulator.url, {"app.yaml": MANIFEST + "  R2: [\n"})  # broken from the start
    env = snapctl_env(emulator.url, work)
    with watching(work, env, "--metrics-port", "0", "--timeout", "60", "--stuck-after", "2") as watcher:
        port = watcher.port
        # Not ready without a good manifest set, and the body says why; alive all the same.
        # (Before its first load it says "controller is starting": wait past that.)
        not_ready = wait_for(
            lambda: (lambda r: r if r.status_code == 503 and "starting" not in r.text else None)(get(port, "/readyz"))
        )
        assert not_ready.text.startswith("not ready: no manifests loaded: ") and "app.yaml" in not_ready.text
        assert not_ready.headers["content-type"].startswith("text/plain")
        (work / "manifests" / "app.yaml").write_text(MANIFEST)
        ready = wait_for(lambda: (lambda r: r if r.status_code == 200 else None)(get(port, "/readyz")))
        assert ready.text == "ready: leading\n"
        wait_for(lambda: get(port, "/healthz").text == "ok\n", what="/healthz ok")
        wait_for(lambda: "snapctl_tasks_declared 2.0" in get(port, "/metrics").text, what="metrics of the tasks")
        metrics = get(port, "/metrics")
        assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
        assert "snapctl_controller_ready 1.0" in metrics.text and "snapctl_controller_alive 1.0" in metrics.text
        assert "# TYPE snapctl_api_requests_total counter" in metrics.text
        openmetrics = get(port, "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
        assert openmetrics.text.endswith("# EOF\n")
        for path in ("/", "/nope", "/metrics/extra", "/healthz/", "/favicon.ico"):
            answer = get(port, path)
            assert answer.status_code == 404, path
            assert "snapctl_" not in answer.text and "/healthz" in answer.text
        assert get(port, "/metrics?name[]=snapctl_tasks_declared").status_code == 200
        assert get(port, "/readyz", method="HEAD").content == b""
        assert get(port, "/metrics", method="POST").status_code == 405

        # A loop that does not go round (it acts, and every answer of the API comes 4 s late, past
        # the 2 s bound): /healthz says so. The act is a create, which needs no read first.
        emulator.configure(slow_rate=1.0, slow_ms=4_000)
        (work / "manifests" / "app.yaml").write_text(MANIFEST + "      T3: {}\n")
        stuck = wait_for(lambda: (lambda r: r if r.status_code == 503 else None)(get(port, "/healthz")))
        assert re.fullmatch(r"loop stuck: it last went round \d+s ago \(the bound is 2s\)\n", stuck.text), stuck.text
        emulator.configure(slow_rate=0.0)
        wait_for(lambda: get(port, "/healthz").status_code == 200, what="the loop going round again")
        assert watcher.stop() == 0


def test_probes_judge_the_controllers_health_facts():
    """The probes against a ControllerStatus the test moves through its states (the server and
    the status are the controller's own, over real HTTP)."""
    import time

    from prometheus_client import CollectorRegistry

    from reconciler.controller import ControllerStatus, Role
    from reconciler.ops_http import OpsServer

    status = ControllerStatus()
    server = OpsServer("127.0.0.1", 0, CollectorRegistry(), status.health, stuck_after_s=60)
    try:
        assert (get(server.port, "/readyz").status_code, get(server.port, "/readyz").text) == (
            503,
            "not ready: controller is starting\n",
        )
        assert get(server.port, "/healthz").status_code == 200  # not gone round yet, but not stuck
        status.update(role=Role.standing_by, manifests_loaded=True)
        status.tick()
        assert get(server.port, "/readyz").text == "ready: standing by\n"
        assert "snapctl_controller_ready 1.0" in get(server.port, "/metrics").text
        status.update(state_reachable=False, state_error="cannot reach the PostgreSQL state (timeout)")
        answer = get(server.port, "/readyz")
        assert (answer.status_code, answer.text) == (
            503,
            "not ready: state unreachable: cannot reach the PostgreSQL state (timeout)\n",
        )
        assert "snapctl_controller_ready 0.0" in get(server.port, "/metrics").text
        status.update(last_tick_monotonic=time.monotonic() - 1000)
        answer = get(server.port, "/healthz")
        assert answer.status_code == 503 and answer.text.startswith("loop stuck: it last went round 100")
        assert "snapctl_controller_alive 0.0" in get(server.port, "/metrics").text
        status.update(role=Role.stopped)
        assert get(server.port, "/healthz").text == "controller is stopped\n"
    finally:
        server.close()
