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

:class:`ShellForkServer` does the same for shell scripts (the CI templates' jobs):
a ``snapctl`` on their PATH hands the server its own stdin, stdout and stderr, so
redirections and pipes work as with the console script, and exits with the
command's status.
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

_IMPORTS = r"""
import json, os, signal, socket, sys, traceback
import reconciler.cli
# What the commands import lazily, loaded once here (imports do no work of a command).
import reconciler.commands.apply, reconciler.commands.plan, reconciler.commands.reconcile, reconciler.commands.state, reconciler.commands.status, reconciler.engine, reconciler.manifest, reconciler.render, reconciler.controller, yaml
# The PostgreSQL backend's driver (about 60 ms a command on a postgresql:// state).
import psycopg, reconciler.state.postgres, reconciler.commands.workspace, reconciler.commands.import_

def run_main(request):
    # In the forked child, its stdin, stdout and stderr in place: snapctl's main, and exit with its status.
    code = 1
    try:
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
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
"""

_SERVER = (
    _IMPORTS
    + r"""
for line in sys.stdin:
    request = json.loads(line)
    pid = os.fork()
    if pid != 0:
        print(json.dumps({"pid": pid}), flush=True)
    if pid == 0:
        try:
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(os.open(request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), 1)
            os.dup2(os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), 2)
            sys.stdin = open(os.devnull)
        except BaseException:
            os._exit(1)
        run_main(request)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"code": os.waitstatus_to_exitcode(status)}), flush=True)
"""
)

#: Serves the ``snapctl`` of :class:`ShellForkServer`: each connection brings a command's
#: stdin, stdout and stderr (SCM_RIGHTS), arguments, directory and environment; a child
#: forked for it forks the command, and answers its exit status once it ends.
_SOCKET_SERVER = (
    _IMPORTS
    + r"""
listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
listener.bind(sys.argv[1])
listener.listen(64)
signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the children that answer are not waited for
print("listening", flush=True)
while True:
    connection, _ = listener.accept()
    if os.fork() != 0:
        connection.close()
        continue
    listener.close()
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    message, fds, _, _ = socket.recv_fds(connection, 1 << 20, 3)
    pid = os.fork()
    if pid == 0:
        try:
            connection.close()
            for target, fd in enumerate(fds):
                os.dup2(fd, target)
                os.close(fd)
        except BaseException:
            os._exit(1)
        run_main(json.loads(message))
    for fd in fds:
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    connection.send(str(code if code >= 0 else 128 - code).encode())
    os._exit(0)
"""
)

#: The ``snapctl`` on the PATH of a :class:`ShellForkServer`: it hands its stdin, stdout and
#: stderr to the server, with its arguments, directory and environment, and exits with the
#: command's status. Python without site (a few ms) runs it.
_SHIM = r"""#!{python} -IS
import json, os, socket, sys
connection = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
connection.connect({socket!r})
request = {{"args": sys.argv[1:], "cwd": os.getcwd(), "env": dict(os.environ)}}
socket.send_fds(connection, [json.dumps(request).encode()], [0, 1, 2])
sys.exit(int(connection.recv(16) or b"1"))
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


class ShellForkServer:
    """A directory (``bin``) holding a ``snapctl`` for shell scripts to run, as the console script
    would run, with the script's stdin, stdout and stderr, directory and environment, but forked
    from a process that imported snapctl once (CI templates run a dozen commands a job)."""

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="snapctl-shell-")
        self.bin = Path(self._dir.name) / "bin"
        self.bin.mkdir()
        address = str(Path(self._dir.name) / "server")
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _SOCKET_SERVER, address], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True
        )
        if self._proc.stdout.readline() != "listening\n":
            raise RuntimeError("the snapctl shell fork server did not start")
        shim = self.bin / "snapctl"
        shim.write_text(_SHIM.format(python=sys.executable, socket=address))
        shim.chmod(0o755)

    def close(self) -> None:
        self._proc.kill()
        self._proc.wait(timeout=30)
        self._proc.stdout.close()
        self._dir.cleanup()
