"""The controller's ops surface (issue 19, item 6): its lines carry their time in text and in
JSON, its metrics port answers /metrics, /healthz and /readyz (and 404 otherwise). Each test
runs the real ``snapctl reconcile --watch`` against the emulator."""

from __future__ import annotations

import datetime
import json
import re
import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from snapctl_testing import SNAPCTL, new_project, snapctl_env, wait_for

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


class Watcher:
    """A running ``snapctl reconcile --watch``: its stdout and stderr lines as they come."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self.lines: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self._readers = [
            threading.Thread(target=self._read, args=(name, getattr(proc, name)), daemon=True) for name in self.lines
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, name: str, pipe) -> None:
        for line in pipe:
            self.lines[name].append(line.rstrip("\n"))

    def wait_line(self, pattern: str, stream: str = "stdout", *, after: int = 0) -> str:
        """The first line (from index ``after``) of ``stream`` that matches ``pattern``."""
        found = re.compile(pattern)
        return wait_for(
            lambda: next((line for line in self.lines[stream][after:] if found.search(line)), None),
            what=f"a line matching {pattern!r} on {stream} (had {self.lines[stream][-5:]})",
        )

    @property
    def port(self) -> int:
        line = self.wait_line(r"Serving metrics on http://[^ ]+:\d+/", "stderr")
        return int(re.search(r":(\d+)/", line).group(1))

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(30)
        for reader in self._readers:
            reader.join(10)
        return code


@contextmanager
def watching(work: Path, env: dict[str, str], *args: str) -> Iterator[Watcher]:
    proc = subprocess.Popen(
        [SNAPCTL, "reconcile", "--watch", "--interval", "0.2", *args],
        cwd=work,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    watcher = Watcher(proc)
    try:
        yield watcher
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


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
        watcher.wait_line(r"Reconciled 2 task\(s\)")
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
