"""Two plan figures that grow with their input: many ``--target`` flags, and a first
``plan --json`` of many new tasks.

    .venv/bin/python bench/plan_scale.py targets [--tasks 10000] [--targets 5000]
    .venv/bin/python bench/plan_scale.py json [--tasks 100000]

Each runs the real ``snapctl plan`` in a subprocess (wall time from start to exit, peak
RSS from ``os.wait4``) over manifests written by bench/gen.py, without a state (every
task is new), sending nothing. ``targets`` plans with one ``--target`` per task for
``--targets`` tasks, and without targets for comparison; ``json`` plans with ``--json``
to a discarded stdout, and as text for comparison. Prints one JSON line per run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import gen  # noqa: E402

_SCRIPT = Path(sys.executable).parent / "snapctl"
SNAPCTL = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "reconciler.cli"]


def measure(args: list[str], cwd: Path, env: dict[str, str]) -> dict[str, float]:
    """Wall seconds and peak RSS (MiB) of one ``snapctl`` run, which must succeed."""
    began = time.perf_counter()
    process = subprocess.Popen(
        [*SNAPCTL, *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - began
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"snapctl {' '.join(args[:3])} … failed (exit {os.waitstatus_to_exitcode(status)})")
    return {"s": round(wall, 2), "peak_mib": round(usage.ru_maxrss / 1024)}


def addresses(tasks: int) -> list[str]:
    """The addresses bench/gen.py gives ``tasks`` tasks (1,000 per app, 10 rooms each)."""
    out = []
    per_room = gen.TASKS_PER_FILE // gen.ROOMS_PER_FILE
    for index in range(tasks):
        app, rest = divmod(index, gen.TASKS_PER_FILE)
        room = rest // per_room
        out.append(f"bench-app-{app:04d}/room-{room:03d}/task-{rest:04d}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("figure", choices=["targets", "json"])
    parser.add_argument("--tasks", type=int, default=0)
    parser.add_argument("--targets", type=int, default=5000)
    args = parser.parse_args()
    tasks = args.tasks or (10_000 if args.figure == "targets" else 100_000)
    env = dict(os.environ) | gen.ENVIRON | {"NO_COLOR": "1"}
    for name in ("SNAPCTL_STATE", "SNAPCTL_WORKSPACE", "SNAPCTL_ENDPOINT"):
        env.pop(name, None)
    with tempfile.TemporaryDirectory(prefix="snapctl-bench-") as tmp:
        root = Path(tmp)
        gen.write_manifests(root / "manifests", tasks)
        base = ["plan", "manifests", "--state", str(root / "state" / "none.json")]
        if args.figure == "targets":
            chosen = addresses(tasks)[:: max(1, tasks // args.targets)][: args.targets]
            flags = [arg for address in chosen for arg in ("--target", address)]
            runs = {f"{len(chosen)} targets": base + flags, "no target": base}
        else:
            runs = {"--json": [*base, "--json"], "text": base}
        for name, command in runs.items():
            print(json.dumps({"figure": args.figure, "tasks": tasks, "run": name, **measure(command, root, env)}))


if __name__ == "__main__":
    main()
