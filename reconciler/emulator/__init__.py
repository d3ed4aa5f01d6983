"""The snapshot API emulator: ``snapctl emulator``, and ``EmulatorServer`` for tests and benchmarks.

uvicorn is imported only when a server starts.
"""

from .config import EmulatorConfig
from .server import EmulatorServer, run_forever

__all__ = ["EmulatorConfig", "EmulatorServer", "run_forever"]
