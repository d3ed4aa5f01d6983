"""Running the emulator under uvicorn: in a background thread (tests, benchmarks) or in the foreground (the command)."""

from __future__ import annotations

import logging
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable

from .app import EmulatorApp
from .config import EmulatorConfig

__all__ = ["EmulatorConfig", "EmulatorServer", "run_forever"]

#: In-flight answers (slow faults, latency) get this long to finish when the server stops.
GRACEFUL_SHUTDOWN_S = 2
START_TIMEOUT_S = 10


def _bind(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return sock


def exposure_warning(sock: socket.socket, *, default_keys: bool) -> str | None:
    """The warning for an emulator listening beyond this machine (any address but a loopback
    one, 0.0.0.0 and :: included), else None: its control endpoints are unsigned."""
    import ipaddress

    host = sock.getsockname()[0]
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:  # pragma: no cover - getsockname gives an address
        pass
    keys = " and its default keys (documented, so known to anyone)" if default_keys else ""
    return (
        f"warning: listening on {host}, not a loopback address: anyone who can reach this port can use its "
        f"unsigned control endpoints (/_emulator/...: reset, config, stop-task, rewrite-task){keys}. "
        "It is a test double; listen on 127.0.0.1 (the default) unless this network is yours alone"
    )


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _uvicorn_server(app: EmulatorApp, *, log_config):
    import uvicorn

    config = uvicorn.Config(
        app,
        loop="auto",  # uvloop when installed
        http="auto",  # httptools when installed
        lifespan="on",
        access_log=False,
        log_config=log_config,
        log_level="warning",
        server_header=False,
        backlog=2048,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )
    return uvicorn.Server(config)


class EmulatorServer:
    """The emulator serving on a background thread; ``port=0`` picks a free port.

    >>> with EmulatorServer(EmulatorConfig()) as server:
    ...     server.url
    """

    def __init__(self, config: EmulatorConfig | None = None, *, clock: Callable[[], float] = time.monotonic):
        self.config = config or EmulatorConfig()
        self.app = EmulatorApp(self.config, clock=clock)
        self.url = ""
        self._server = None
        self._thread: threading.Thread | None = None

    def start(self) -> EmulatorServer:
        """Return once the server accepts connections."""
        sock = _bind(self.config.host, self.config.port)
        self.url = _url(sock)
        # log_config=None: an embedded server leaves the host's logging setup alone.
        self._server = server = _uvicorn_server(self.app, log_config=None)
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="snapctl-emulator", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                sock.close()
                raise RuntimeError(f"the emulator did not start on {self.url}")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        if self._thread is None or self._server is None:
            return
        self._server.should_exit = True
        self._thread.join()
        self._thread = None
        self._server = None

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def run_forever(config: EmulatorConfig, secret_key_source: str = "default") -> None:
    """Serve in the foreground until SIGINT or SIGTERM, then shut down cleanly (tasks written)."""
    import uvicorn.config

    app = EmulatorApp(config)
    # The emulator's own records (a data file it cannot write) go to stderr whatever SNAPCTL_LOG says.
    emulator_log = logging.getLogger("snapctl.emulator")
    if not any(isinstance(h, logging.StreamHandler) for h in emulator_log.handlers):
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
        emulator_log.addHandler(stream)
        emulator_log.setLevel(logging.WARNING)
    sock = _bind(config.host, config.port)
    server = _uvicorn_server(app, log_config=uvicorn.config.LOGGING_CONFIG)

    def stop(*_) -> None:
        server.should_exit = True

    # Until uvicorn takes the signals over (and again when it re-raises the one that stopped
    # it, once done) SIGINT and SIGTERM ask it to stop: one that arrives as soon as the line
    # below is printed stops the server at once (it was ignored, and the emulator ran on),
    # and a signalled shutdown exits with status 0.
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    print(
        f"snapctl emulator listening on {_url(sock)}{config.api_path.rstrip('/')} "
        f"(access key {config.access_key}, secret key {secret_key_source})",
        flush=True,
    )
    exposed = exposure_warning(sock, default_keys=secret_key_source == "default")
    if exposed:
        print(exposed, file=sys.stderr, flush=True)
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if app.table.save_error is not None:
        from .tasks import DataFileError

        raise DataFileError(
            f"could not save the tasks to {config.data} ({app.table.save_error}); the changes since the last save are lost"
        )
