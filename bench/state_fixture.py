"""Build the state that applying generated manifests would leave, without an API.

The entries are what ``FileStore.record_put`` writes for a StartSnapshot
(request with secrets fingerprinted, a request id, a time), folded into the
document by ``FileStore.checkpoint`` as the end of an apply does; the serial
is one per recorded call, as after an apply that created every task.
"""

from __future__ import annotations

import datetime as _dt
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reconciler.manifest import load_manifests
from reconciler.state import FileStore


def write_state(manifest_dir: Path, state_path: Path, environ: dict[str, str]) -> int:
    """Write a state holding every task of the manifests under ``manifest_dir``; returns the task count."""
    manifests = load_manifests([manifest_dir], environ=environ)
    state_path.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("", ".journal", ".backup", ".lock"):
        Path(str(state_path) + suffix).unlink(missing_ok=True)
    applied_at = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    with FileStore(state_path, command="bench state fixture") as store:
        state = store.state
        for number, (address, task) in enumerate(manifests.tasks.items(), 1):
            state.tasks[address] = {
                "request": state.fingerprint(task.request.wire()),
                "request_id": f"bench{number:020d}",
                "applied_at": applied_at,
            }
        state.serial = len(manifests.tasks)
        store.checkpoint()
    return len(manifests.tasks)


if __name__ == "__main__":
    from gen import ENVIRON

    count = write_state(Path(sys.argv[1]), Path(sys.argv[2]), {**os.environ, **ENVIRON})
    print(f"{count} tasks recorded in {sys.argv[2]}")
