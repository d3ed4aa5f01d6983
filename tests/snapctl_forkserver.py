"""Run the ``snapctl`` command hundreds of times without paying Python's start-up each time.

A helper process imports snapctl once, then forks one child per command. The
child is a fresh process with its own working directory, environment, stdin
(``/dev/null``), stdout and stderr (files), and runs ``reconciler.cli.main`` —
what the ``snapctl`` console script runs — exiting with its status (a stray
exception prints its traceback and exits 1, as the interpreter would). Only the
interpreter's start-up and the imports are shared, so a command sees what it
would see when started from a shell, in about 20 ms instead of 300 ms.

Tests that use it also run some of the same commands through the real
``snapctl`` executable and compare (``tests/test_hostile_input.py``).
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from snapctl_testing import Run

_SERVER = r"""
import json, os, sys, traceback
import reconciler.cli
# What the commands import lazily, loaded once here (imports do no work of a command).
import reconciler.commands.apply, reconciler.commands.plan, reconciler.commands.reconcile, reconciler.commands.state, reconciler.commands.status, reconciler.engine, reconciler.manifest, reconciler.render, reconciler.controller, yaml
# The PostgreSQL backend's driver (about 60 ms a command on a postgresql:// state).
import psycopg, reconciler.state.postgres, reconciler.commands.workspace, reconciler.commands.import_

for line in sys.stdin:
    request = json.loads(line)
    pid = os.fork()
    if pid != 0:
        print(json.dumps({"pid": pid}), flush=True)
    if pid == 0:
        code = 1
        try:
            os.chdir(request["cwd"])
            os.environ.clear()
            os.environ.update(request["env"])
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(os.open(request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), 1)
            os.dup2(os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), 2)
            sys.stdin = open(os.devnull)
            sys.argv = ["snapctl", *request["args"]]
            try:
                code = reconciler.cli.main(request["args"])
            except SystemExit as exc:
                if exc.code is None or isinstance(exc.code, int):
                    code = exc.code or 0
                else:
                    print(exc.code, file=sys.stderr)
                    code = 1
            except BaseException:
                traceback.print_exc()
                code = 1
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"code": os.waitstatus_to_exitcode(status)}), flush=True)
"""


class ForkServer:
    def __init__(self) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _SERVER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self._dir = tempfile.TemporaryDirectory(prefix="snapctl-fork-")
        self._lock = threading.Lock()
        self._count = 0
        # The server's answers, read by a thread so that a command that hangs can be timed out.
        self._answers: queue.Queue[dict | None] = queue.Queue()
        threading.Thread(target=self._read_answers, daemon=True).start()

    def _read_answers(self) -> None:
        for line in self._proc.stdout:
            self._answers.put(json.loads(line))
        self._answers.put(None)

    def _answer(self, timeout: float | None) -> dict:
        answer = self._answers.get(timeout=timeout)
        if answer is None:
            raise RuntimeError("the snapctl fork server died")
        return answer

    def run(self, args: list[str], *, cwd: Path, env: dict[str, str], timeout: float | None = None) -> Run:
        with self._lock:
            self._count += 1
            out = Path(self._dir.name) / f"{self._count}.out"
            err = Path(self._dir.name) / f"{self._count}.err"
            request = {"args": args, "cwd": str(cwd), "env": env, "stdout": str(out), "stderr": str(err)}
            self._proc.stdin.write(json.dumps(request) + "\n")
            self._proc.stdin.flush()
            pid = self._answer(30)["pid"]
            try:
                code = self._answer(timeout)["code"]
            except queue.Empty:
                os.kill(pid, signal.SIGKILL)
                self._answer(30)
                raise subprocess.TimeoutExpired(["snapctl", *args], timeout or 0) from None
            run = Run(code, out.read_text(errors="replace"), err.read_text(errors="replace"))
            out.unlink()
            err.unlink()
            return run

    def close(self) -> None:
        self._proc.stdin.close()
        self._proc.wait(timeout=30)
        self._dir.cleanup()
