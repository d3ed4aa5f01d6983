"""Stopping a run gracefully on SIGTERM, SIGINT or SIGHUP."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def graceful_stop() -> Iterator[threading.Event]:
    """SIGTERM/SIGINT set the event (in-flight calls finish, the state is written);
    a second signal interrupts at once. So does SIGHUP (the terminal or the SSH session
    went away), unless it is ignored, as ``nohup`` makes it: then the run goes on."""
    stop = threading.Event()
    previous = {}

    def handler(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        if sig is signal.SIGHUP and signal.getsignal(sig) is signal.SIG_IGN:
            continue
        previous[sig] = signal.signal(sig, handler)
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
