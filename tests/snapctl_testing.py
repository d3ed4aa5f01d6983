"""Helpers for driving the ``snapctl`` command and reading the emulator's counters."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from reconciler.emulator.config import DEFAULT_ACCESS_KEY, DEFAULT_SECRET_KEY

SNAPCTL = str(Path(sys.executable).parent / "snapctl")


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def snapctl_env(endpoint: str | None, home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VOLC_", "SNAPCTL_", "NO_COLOR"))}
    env.update(HOME=str(home), VOLC_ACCESSKEY=DEFAULT_ACCESS_KEY, VOLC_SECRETKEY=DEFAULT_SECRET_KEY)
    if endpoint:
        env["SNAPCTL_ENDPOINT"] = endpoint
    env.update(extra)
    return env


_FORKS = None


def _fork_server():
    """One fork server per test process (see snapctl_forkserver), started on first use."""
    global _FORKS
    if _FORKS is None:
        import atexit

        from snapctl_forkserver import ForkServer

        _FORKS = ForkServer()
        atexit.register(_FORKS.close)
    return _FORKS


_SHELL = None


def snapctl_bin() -> Path:
    """A directory to put first on a shell script's PATH: its ``snapctl`` is forked as
    :func:`run_snapctl` forks one, but with the script's stdin, stdout and stderr (see
    snapctl_forkserver.ShellForkServer); ``SNAPCTL_TEST_EXEC=1``: the console script's own."""
    global _SHELL
    if os.environ.get("SNAPCTL_TEST_EXEC") == "1":
        return Path(SNAPCTL).parent
    if _SHELL is None:
        import atexit

        from snapctl_forkserver import ShellForkServer

        _SHELL = ShellForkServer()
        atexit.register(_SHELL.close)
    return _SHELL.bin


def run_snapctl(
    args: list[str], *, cwd: Path, env: dict[str, str], input: str | None = None, timeout: float = 120
) -> Run:
    """Run ``snapctl ARGS`` to completion. Without ``input`` it runs in a process forked from
    one that imported snapctl once (the same ``main`` the console script runs, in a fresh
    process with this cwd, environment and /dev/null stdin: start-up is what it saves);
    ``SNAPCTL_TEST_EXEC=1`` runs the console script every time instead."""
    if input is None and os.environ.get("SNAPCTL_TEST_EXEC") != "1":
        return _fork_server().run(list(args), cwd=cwd, env=env, timeout=timeout)
    proc = subprocess.run(
        [SNAPCTL, *args],
        cwd=cwd,
        env=env,
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=None if input is not None else subprocess.DEVNULL,
    )
    return Run(proc.returncode, proc.stdout, proc.stderr)


def run_on_terminal(
    args: list[str], cwd: Path, env: dict[str, str], answer: str | None = None, *, program: str = SNAPCTL
) -> tuple[int, str]:
    """Run ``program ARGS`` (``snapctl`` by default) on a pseudo-terminal (stdin, stdout and
    stderr all the terminal) to completion; its exit code and everything it showed. ``answer``
    is typed once the command asks ("Enter a value")."""
    import pty
    import select

    pid, fd = pty.fork()
    if pid == 0:
        os.chdir(cwd)
        os.execve(program, [program, *args], env)
    output = b""
    deadline = time.monotonic() + 60
    answered = False
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            output += chunk
            if answer is not None and not answered and b"Enter a value" in output:
                os.write(fd, answer.encode() + b"\r")
                answered = True
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), output.decode(errors="replace")


def start_apply(work: Path, env: dict[str, str], *extra: str, quiet: bool = False) -> subprocess.Popen:
    """``snapctl apply --auto-approve`` in the background (to kill or race it); ``quiet``
    discards its output, else stdout and stderr are pipes to read with ``communicate``."""
    return start_snapctl(work, env, "apply", "--auto-approve", "--no-color", *extra, quiet=quiet)


def start_snapctl(
    work: Path, env: dict[str, str], *args: str, quiet: bool = False, hangup_ignored: bool = False
) -> subprocess.Popen:
    """``snapctl ARGS`` in the background, as :func:`start_apply` starts apply; ``hangup_ignored``:
    with SIGHUP ignored, as ``nohup`` starts a command."""
    output = subprocess.DEVNULL if quiet else subprocess.PIPE
    return subprocess.Popen(
        [SNAPCTL, *args],
        cwd=work,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=output,
        stderr=output,
        text=True,
        preexec_fn=(lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN)) if hangup_ignored else None,
    )


def signal_when(
    proc: subprocess.Popen, ready: Callable[[], Any], signum: int, *, what: str, timeout: float = 60
) -> tuple[str, str]:
    """Send ``signum`` to ``proc`` once ``ready()`` is true; its output once it exits (killed
    if it outlives ``timeout``, so that a failing test leaves no process behind)."""
    try:
        wait_for(ready, what=what)
        proc.send_signal(signum)
        return proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


class Watch:
    """``snapctl reconcile --watch ARGS`` in the background, its lines collected as they come:
    ``lines["stdout"]`` and ``lines["stderr"]`` (``merged``: stderr goes to stdout, in the order
    written, and ``lines["stderr"]`` stays empty). As a context manager it kills a controller
    the test did not stop."""

    def __init__(self, work: Path, env: dict[str, str], *args: str, merged: bool = False):
        self.work = work
        self.proc = subprocess.Popen(
            [SNAPCTL, "reconcile", "--watch", *args],
            cwd=work,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT if merged else subprocess.PIPE,
            text=True,
        )
        self.lines: dict[str, list[str]] = {"stdout": [], "stderr": []}
        pipes = {"stdout": self.proc.stdout, "stderr": self.proc.stderr}
        self._readers = [
            threading.Thread(target=self._read, args=(pipe, self.lines[name]), daemon=True)
            for name, pipe in pipes.items()
            if pipe is not None
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(pipe, lines: list[str]) -> None:
        for line in pipe:
            lines.append(line.rstrip("\n"))

    def wait_line(
        self, pattern: str, stream: str = "stdout", *, after: int = 0, what: str = "", timeout: float = 60
    ) -> str:
        """The first line of ``stream`` from index ``after`` on that matches ``pattern``."""
        found = re.compile(pattern)
        lines = self.lines[stream]
        return wait_for(
            lambda: next((line for line in lines[after:] if found.search(line)), None),
            what=f"{what or repr(pattern)} on {stream} (last lines: {lines[-30:]})",
            timeout=timeout,
        )

    def documents(self, stream: str = "stdout") -> list[dict]:
        """The JSON documents (``--json``, ``--log-format json``) among the lines of ``stream``."""
        return [json.loads(line) for line in list(self.lines[stream]) if line.startswith("{")]

    @property
    def port(self) -> int:
        """The metrics port (``--metrics-port 0``) from its ``Serving metrics`` line."""
        stream = "stderr" if self.proc.stderr is not None else "stdout"
        line = self.wait_line(r"Serving metrics on http://[^ ]+:\d+/", stream, what="the metrics line")
        return int(re.search(r":(\d+)/", line).group(1))  # type: ignore[union-attr]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Send ``sig`` (if it still runs) and wait for the exit status; killed if it outlives ``timeout``."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self._end()

    def _end(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for reader in self._readers:
            reader.join(10)

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc) -> None:
        self._end()


def stats(url: str) -> dict:
    return httpx.get(f"{url}/_emulator/stats").json()


def tasks(url: str) -> dict[str, dict]:
    """Running tasks in the emulator by APP/ROOM/TASK."""
    return {f"{t['AppId']}/{t['RoomId']}/{t['TaskId']}": t for t in httpx.get(f"{url}/_emulator/tasks").json()["tasks"]}


def calls(url: str, action: str) -> int:
    return stats(url)["by_action"].get(action, {}).get("total", 0)


def new_project(root: Path, url: str, manifests: dict[str, str]) -> Path:
    """A working directory with these files in manifests/ and an empty state/, against a reset emulator."""
    httpx.post(f"{url}/_emulator/reset")
    (root / "manifests").mkdir()
    (root / "state").mkdir()
    for name, text in manifests.items():
        (root / "manifests" / name).write_text(text)
    return root


def wait_for(predicate, *, timeout: float = 30.0, what: str = "condition", interval: float = 0.005, most: float = 0.05):
    """Poll ``predicate`` until it returns something true, and return that. The pause between
    polls doubles from ``interval`` to ``most``: a condition met at once is seen at once, and a
    long wait does not keep the in-process emulator (whose counters many predicates read over
    HTTP) busy answering the test instead of the snapctl under test."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
        interval = min(interval * 2, max(most, interval))
    raise AssertionError(f"timed out waiting for {what}")


def snap(work: Path, env: dict[str, str], *args: str, code: int = 0) -> Run:
    """``snapctl ARGS`` in ``work``, which must exit ``code`` without a traceback."""
    run = run_snapctl(list(args), cwd=work, env=env)
    assert run.code == code, run.output
    assert "Traceback" not in run.output and 'File "' not in run.output, run.output
    return run


def one_error_line(run: Run, *fragments: str) -> str:
    """Exit 1, no traceback, exactly one line on stderr (``Error: …``) holding every fragment."""
    assert run.code == 1, run.output
    assert "Traceback" not in run.output and 'File "' not in run.output, run.output
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), run.stderr
    for fragment in fragments:
        assert fragment in lines[0], run.stderr
    return lines[0]
