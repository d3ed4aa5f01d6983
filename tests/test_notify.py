"""Notifications (issue 19, item 7): the controller's events posted to webhooks on 127.0.0.1,
in snapctl's, Slack's and Lark's formats; aggregated, retried, never blocking the loop and
never carrying a secret. Receivers are real HTTP servers started by the tests."""

from __future__ import annotations

import json
import re
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from snapctl_testing import Watch, calls, new_project, run_snapctl, snapctl_env, wait_for

from reconciler import controller, notify
from reconciler.errors import UsageError


class Receiver:
    """A webhook on 127.0.0.1 that records every body it is sent. ``mode``: ``ok`` answers
    200, ``fail`` 500, ``hang`` never answers (until :meth:`close`), ``endless`` answers 200
    with a body that never ends (a kilobyte every 50 ms, until the client hangs up)."""

    def __init__(self, mode: str = "ok"):
        self.mode = mode
        self.bodies: list[bytes] = []
        self.released = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.bodies.append(body)
                if receiver.mode == "hang":
                    receiver.released.wait(120)
                code = 500 if receiver.mode == "fail" else 200
                self.send_response(code)
                if receiver.mode == "endless":
                    self.end_headers()
                    while not receiver.released.wait(0.05):
                        self.wfile.write(b"x" * 1024)  # raises once the client hung up
                    return
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook/SECRET-PATH-{mode}"

    def documents(self) -> list[dict]:
        return [json.loads(body) for body in list(self.bodies)]

    def close(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receivers():
    made: list[Receiver] = []

    def make(mode: str = "ok") -> Receiver:
        made.append(Receiver(mode))
        return made[-1]

    yield make
    for receiver in made:
        receiver.close()


def event(kind: str, address: str | None = None, **fields) -> controller.Event:
    return controller.Event(controller.EventKind(kind), time.time(), address, **fields)


def test_targets_pick_their_format_and_a_bad_url_is_one_line_without_it():
    assert notify.parse_target("https://example.test/x").format == "generic"
    assert notify.parse_target("slack:https://example.test/x") == notify.Target("https://example.test/x", "slack")
    assert notify.parse_target("feishu:http://example.test/x").format == "lark"
    assert notify.parse_target("https://hooks.slack.com/services/T/B/x").format == "slack"
    assert notify.parse_target("https://open.feishu.cn/open-apis/bot/v2/hook/x").format == "lark"
    assert notify.parse_target("https://open.larksuite.com/open-apis/bot/v2/hook/x").format == "lark"
    assert (
        notify.Target("https://hooks.slack.com/services/T/B/SECRET", "slack").shown == "slack:https://hooks.slack.com/…"
    )
    # Also what only the sender found, its thread dying with a traceback: a control character,
    # a port out of range or no number, an unclosed IPv6 bracket (a traceback at start-up).
    for bad in (
        "ftp://example.test/SECRET",
        "slack:SECRET",
        "https:///SECRET",
        "teams:https://example.test/SECRET",
        "https://example.test/SE\x01CRET",
        "https://example.test:99999/SECRET",
        "https://example.test:x/SECRET",
        "slack:https://[::1/SECRET",
    ):
        with pytest.raises(UsageError) as refused:
            notify.parse_target(bad)
        assert "SECRET" not in str(refused.value) and "\n" not in str(refused.value)


def test_an_answer_that_never_ends_holds_no_sender(receivers):
    """A webhook whose answer's body never ends: the sender read it in full, so it hung on the
    first message (and its memory grew) and sent none after it. Only the status is read now."""
    from prometheus_client import CollectorRegistry

    endless = receivers("endless")
    registry = CollectorRegistry()
    notifier = notify.Notifier([notify.Target(endless.url, "generic")], window_s=0.1, registry=registry)
    try:
        for number in (1, 2):
            notifier(event("healed", f"app1/R/T{number}"))
            wait_for(lambda: len(endless.bodies) == number, what=f"message {number} posted")  # noqa: B023
        wait_for(lambda: registry.get_sample_value("snapctl_notifications_total", {"outcome": "sent"}) == 2)
    finally:
        notifier.close(flush_s=0)
    assert [d["events"][0]["address"] for d in endless.documents()] == ["app1/R/T1", "app1/R/T2"]


def test_a_thousand_heals_make_one_message_in_each_format(receivers):
    generic, slack, lark = receivers(), receivers(), receivers()
    notifier = notify.Notifier(
        [notify.Target(generic.url, "generic"), notify.Target(slack.url, "slack"), notify.Target(lark.url, "lark")],
        window_s=600,  # the window stays open until close() sends what it gathered
    )
    addresses = [f"app/R{i // 100}/T{i % 100}" for i in range(1000)]
    for address in addresses:
        notifier(event("healed", address, detail=f"{address} started again"))
    notifier(event("failing", "app/R0/T0", reason="StorageWriteFailed", detail="app/R0/T0 failed again"))
    notifier.close(flush_s=60)

    (document,) = generic.documents()
    assert document["counts"] == {"healed": 1000, "failing": 1}
    assert document["summary"].endswith("1000 healed, 1 failing")
    assert len(document["events"]) == notify.CARRIED and document["more_events"] == 1001 - notify.CARRIED
    assert document["events"][0] == {
        "event": "healed",
        "at": document["events"][0]["at"],
        "address": "app/R0/T0",
        "reason": None,
        "detail": "app/R0/T0 started again",
    }
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", document["from"])
    (text,) = slack.documents()
    assert list(text) == ["text"]
    lines = text["text"].splitlines()
    assert lines[0].endswith("1000 healed, 1 failing")
    assert lines[1].startswith("healed: app/R0/T0, app/R0/T1,") and lines[1].endswith(" and 980 more")
    assert lines[2] == "failing (StorageWriteFailed): app/R0/T0"
    (card,) = lark.documents()
    assert card == {"msg_type": "text", "content": {"text": text["text"]}}


def test_receivers_that_hang_or_fail_never_block_and_failures_are_retried(receivers):
    hanging, failing, fine = receivers("hang"), receivers("fail"), receivers()
    notifier = notify.Notifier(
        [notify.Target(u, "generic") for u in (hanging.url, failing.url, fine.url)],
        window_s=0.05,
        queue_size=100,
        timeout_s=60,
        attempts=3,
        retry_base_s=0.01,
    )
    observing = threading.Thread(
        target=lambda: [notifier(event("healed", f"app/R/T{i}")) for i in range(20_000)], daemon=True
    )
    observing.start()
    observing.join(60)
    assert not observing.is_alive(), "observing events blocked"
    wait_for(lambda: len(failing.bodies) >= 3, what="the failing receiver tried three times")
    wait_for(lambda: sum(d["counts"]["healed"] + d["dropped"] for d in fine.documents()) == 20_000, what="all")
    assert len(fine.documents()) < 20_000 and hanging.bodies
    notifier.close(flush_s=1)


def test_scrub_masks_credentials_in_lines():
    line = "state unreachable: postgresql://snap:pa55@db/x?sslpassword=s3cret&x=1 and https://u:tok@h/p token=abc"
    assert notify.scrub(line) == (
        "state unreachable: postgresql://snap:***@db/x?sslpassword=***&x=1 and https://u:***@h/p token=***"
    )


MANIFEST = """\
app_id: notifyapp
storage:
  offsite: {type: custom, vendor: oss, bucket: offsite, access_key: "${env:OFF_AK}", secret_key: "${env:OFF_SK}"}
defaults: {storage: offsite}
rooms:
  R1:
    tasks:
      T1: {}
      T2: {}
"""


def test_the_controller_notifies_without_blocking_and_without_secrets(emulator, pg, tmp_path, receivers):
    work = new_project(tmp_path, emulator.url, {"app.yaml": MANIFEST})
    env = snapctl_env(
        emulator.url,
        work,
        OFF_AK="AK-notify-secret-1",
        OFF_SK="SK-notify-secret-2",
        SNAPCTL_STATE=pg.state_url,
        SNAPCTL_LOG="info",
    )
    generic, slack, hanging, failing = receivers(), receivers(), receivers("hang"), receivers("fail")
    watch = Watch(
        work, env, "--interval", "0.2", "--notify-window", "0.2",
        "--notify", generic.url, "--notify", f"slack:{slack.url}",
        "--notify", f"lark:{hanging.url}", "--notify", failing.url,
    )  # fmt: skip
    try:
        wait_for(lambda: len(emulator.tasks()) == 2, what="both tasks started")

        def healed() -> list[str]:
            return [e["address"] for d in generic.documents() for e in d["events"] if e["event"] == "healed"]

        for round_ in (1, 2):  # a second time: the hanging and failing receivers block nothing
            # Stopped out of band (a second idle-out at once would be held back: --idle-restart backoff).
            for task in ("T1", "T2"):
                stopped = emulator.admin("stop-task", {"AppId": "notifyapp", "RoomId": "R1", "TaskId": task})
                assert stopped.status_code == 200
            wait_for(lambda n=2 * round_: len(healed()) >= n, what=f"heal {round_} notified")
            assert set(healed()) == {"notifyapp/R1/T1", "notifyapp/R1/T2"}
            wait_for(lambda: len(emulator.tasks()) == 2, what="both tasks running")
            # Read running again, so that the next stop is a first failure, not a second in a row.
            reads = calls(emulator.url, "GetSnapshotTask")
            wait_for(lambda r=reads: calls(emulator.url, "GetSnapshotTask") >= r + 6, what="reads of both")
        wait_for(lambda: any("healed: notifyapp/R1/T" in d["text"] for d in slack.documents()), what="slack")
        # Tried, and the failing one retried (its first retry comes a second after its failure).
        wait_for(lambda: hanging.bodies and len(failing.bodies) >= 2, what="the failing webhook retried")

        (work / "manifests" / "app.yaml").write_text(MANIFEST + "  R2: [\n")
        broken = wait_for(
            lambda: [e for d in generic.documents() for e in d["events"] if e["event"] == "manifests_broken"],
            what="manifests broken",
        )
        assert "app.yaml" in broken[0]["reason"]
        (work / "manifests" / "app.yaml").write_text(MANIFEST)
        wait_for(
            lambda: [e for d in generic.documents() for e in d["events"] if e["event"] == "manifests_fixed"],
            what="manifests fixed",
        )
        assert watch.stop(timeout=60) == 0
    finally:
        watch.stop(signal.SIGKILL)
    output = "\n".join(watch.lines["stdout"] + watch.lines["stderr"])
    everything = b"".join(r.bodies[i] for r in (generic, slack, hanging, failing) for i in range(len(r.bodies)))
    everything += output.encode()
    for secret in ("AK-notify-secret-1", "SK-notify-secret-2", pg.password, "SECRET-PATH"):
        assert secret.encode() not in everything, secret
    assert "notification to generic:http://127.0.0.1/…: HTTP 500; retrying in 1.0s" in output, output


def test_a_bad_notify_url_is_one_line_and_nothing_is_sent(emulator, tmp_path):
    work = new_project(tmp_path, emulator.url, {"app.yaml": MANIFEST})
    env = snapctl_env(emulator.url, work, OFF_AK="a", OFF_SK="b")
    before = emulator.stats()["total"]
    # The second printed a traceback.
    for url, shown in (("hooks.example.test/SECRET", "…"), ("https://[::1/SECRET", "https:…")):
        run = run_snapctl(["reconcile", "--watch", "--notify", url], cwd=work, env=env)
        assert run.code == 1 and run.stdout == "", run.output
        assert run.stderr.startswith(f"Error: --notify {shown}: not a webhook URL") and run.stderr.count("\n") == 1
        assert "SECRET" not in run.output and emulator.stats()["total"] == before
