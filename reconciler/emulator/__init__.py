"""The snapshot API emulator: ``snapctl emulator``, and ``EmulatorServer`` for tests and benchmarks.

Its names are imported on first use, so that ``snapctl --help`` (which lists the
``emulator`` command) loads neither the server nor asyncio; uvicorn is imported
only when a server starts.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import EmulatorConfig
    from .server import EmulatorServer, run_forever

__all__ = ["EmulatorConfig", "EmulatorServer", "run_forever"]

_HOMES = {"EmulatorConfig": ".config", "EmulatorServer": ".server", "run_forever": ".server"}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(home, __name__), name)
