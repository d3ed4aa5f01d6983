"""A throwaway PostgreSQL server for the tests and the benchmark.

``PgServer().start()`` runs the machine's ``initdb`` and ``pg_ctl`` (found in
``$SNAPCTL_PG_BINDIR`` when set, else in PATH or under /usr/lib/postgresql/*/bin)
on a free loopback port, in a temporary
directory that ``stop()`` removes. PostgreSQL refuses to run as root, so as root
the server runs as the unprivileged ``postgres`` user. Clients log in as a role
with a password (``url``), so the tests see the password handling for real.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

ROLE = "snapctl_test"
BIN_GLOB = "/usr/lib/postgresql/*/bin"
#: A directory holding initdb, pg_ctl and pg_dump, used instead of PATH and BIN_GLOB.
BINDIR_ENV = "SNAPCTL_PG_BINDIR"
INSTALL_ADVICE = "install PostgreSQL (apt-get install -y postgresql), as .ci/run does"


class PgServerError(RuntimeError):
    pass


def find_binary(name: str) -> str:
    """``name`` (initdb, pg_ctl, pg_dump) from ``$SNAPCTL_PG_BINDIR`` when set, else from
    PATH, else from the newest /usr/lib/postgresql/*/bin."""
    bindir = os.environ.get(BINDIR_ENV)
    if bindir:
        found = shutil.which(name, path=bindir)
        if found:
            return found
        raise PgServerError(
            f"PostgreSQL's {name} is not in {BINDIR_ENV}={bindir}; point {BINDIR_ENV} at the "
            f"directory that holds initdb and pg_ctl, or unset it and {INSTALL_ADVICE}"
        )
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"{BIN_GLOB}/{name}"), key=lambda p: int(p.split("/")[-3].split(".")[0]))
    if candidates:
        return candidates[-1]
    raise PgServerError(f"PostgreSQL's {name} is not installed (looked in PATH and {BIN_GLOB}); {INSTALL_ADVICE}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PgServer:
    """One PostgreSQL server on 127.0.0.1 in a temporary directory."""

    def __init__(self, *, durable: bool = False):
        #: durable=False turns fsync off (tests: a killed client, not a power cut, is what they simulate).
        self.durable = durable
        self.password = secrets.token_urlsafe(16)
        self.port = 0
        self.root: Path | None = None
        self._databases = 0

    # Life cycle ------------------------------------------------------------------

    def _as_server_user(self, args: list[str]) -> list[str]:
        if os.geteuid() != 0:
            return args
        runuser = shutil.which("runuser")
        if runuser:
            return [runuser, "-u", "postgres", "--", *args]
        return ["su", "postgres", "-s", "/bin/sh", "-c", " ".join(map(_quote, args))]

    def _run(self, args: list[str], what: str) -> None:
        proc = subprocess.run(self._as_server_user(args), capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            log = self.log_tail()
            raise PgServerError(f"{what} failed (exit {proc.returncode}): {(proc.stderr or proc.stdout).strip()} {log}")

    def log_tail(self) -> str:
        try:
            return "log: " + (self.root / "server.log").read_text()[-800:]  # type: ignore[operator]
        except (OSError, TypeError):
            return ""

    @property
    def data_dir(self) -> Path:
        assert self.root is not None
        return self.root / "data"

    def start(self) -> PgServer:
        initdb, self.pg_ctl = find_binary("initdb"), find_binary("pg_ctl")
        self.root = Path(tempfile.mkdtemp(prefix="snapctl-pg-"))
        pwfile = self.root / "pw"
        pwfile.write_text("superuser-" + self.password + "\n")
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
            shutil.chown(pwfile, "postgres", "postgres")
        os.chmod(self.root, 0o700)
        self._run(
            [
                initdb,
                "-D",
                str(self.data_dir),
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                f"--pwfile={pwfile}",
                "-E",
                "UTF8",
                "--no-sync",
                "--no-instructions",
            ],
            "initdb",
        )
        for attempt in range(5):
            self.port = free_port()
            try:
                self._pg_ctl_start()
                break
            except PgServerError:
                if attempt == 4:
                    raise
        with self.admin() as conn:
            conn.execute(f"CREATE ROLE {ROLE} LOGIN CREATEDB PASSWORD '{self.password}'")
        return self

    def _pg_ctl_start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.root} "
            "-c max_connections=200 -c shared_buffers=64MB"
        )
        if not self.durable:
            options += " -c fsync=off -c full_page_writes=off"
        self._run(
            [self.pg_ctl, "-D", str(self.data_dir), "-o", options, "-l", str(self.root / "server.log"), "-w", "start"],
            "pg_ctl start",
        )

    def restart(self) -> None:
        """Stop (fast: every connection is closed) and start again on the same port."""
        self._run([self.pg_ctl, "-D", str(self.data_dir), "-m", "fast", "-w", "stop"], "pg_ctl stop")
        self._pg_ctl_start()

    def stop(self, *, remove_in_background: bool = False) -> None:
        """Stop the server and remove its directory; ``remove_in_background`` leaves the removal
        to a detached ``rm -rf`` (a directory of dozens of databases can take seconds to remove)."""
        if self.root is None:
            return
        if (self.data_dir / "postmaster.pid").exists():
            subprocess.run(
                self._as_server_user([self.pg_ctl, "-D", str(self.data_dir), "-m", "immediate", "-w", "stop"]),
                capture_output=True,
                timeout=60,
            )
        rm = shutil.which("rm") if remove_in_background else None
        if rm:
            subprocess.Popen(
                [rm, "-rf", "--", str(self.root)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        else:
            shutil.rmtree(self.root, ignore_errors=True)
        self.root = None

    def __enter__(self) -> PgServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # Clients -----------------------------------------------------------------------

    def admin(self, dbname: str = "postgres") -> psycopg.Connection:
        """A superuser connection (autocommit) over the server's Unix socket."""
        return psycopg.connect(host=str(self.root), port=self.port, user="postgres", dbname=dbname, autocommit=True)

    def url(self, dbname: str, *, with_password: bool = True) -> str:
        secret = f":{self.password}" if with_password else ""
        return f"postgresql://{ROLE}{secret}@127.0.0.1:{self.port}/{dbname}"

    def new_database(self, prefix: str = "t") -> str:
        """A new empty database owned by the test role; its name."""
        self._databases += 1
        name = f"{prefix}_{os.getpid()}_{self._databases}_{int(time.time() * 1000) % 100000}"
        with self.admin() as conn:
            conn.execute(f"CREATE DATABASE {name} OWNER {ROLE}")
        return name

    def terminate(self, application_name_like: str, dbname: str) -> int:
        """Kill the server side of every matching client connection; how many."""
        with self.admin() as conn:
            rows = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND application_name LIKE %s AND pid <> pg_backend_pid()",
                (dbname, application_name_like),
            ).fetchall()
        return len(rows)

    def pg_dump(self, dbname: str) -> str:
        proc = subprocess.run(
            [find_binary("pg_dump"), "-h", "127.0.0.1", "-p", str(self.port), "-U", ROLE, dbname],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PGPASSWORD": self.password},
        )
        if proc.returncode != 0:
            raise PgServerError(f"pg_dump failed: {proc.stderr.strip()}")
        return proc.stdout


def _quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)
