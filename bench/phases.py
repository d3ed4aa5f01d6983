"""Where `snapctl plan` spends its time and memory, phase by phase (in one process).

    python bench/phases.py MANIFEST_DIR STATE_FILE [--gc off]

Runs the same library calls as the command (load manifests, read the state,
engine.plan, render) and prints one JSON line: seconds per phase, and the peak
RSS (MiB) reached by the end of each phase. ``--gc off`` disables the cyclic
garbage collector for the whole run, to measure what it costs.
"""

from __future__ import annotations

import argparse
import gc
import resource
import sys
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def peak_mib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("manifests", type=Path)
    parser.add_argument("state", type=Path)
    parser.add_argument("--gc", choices=["on", "off"], default="on")
    args = parser.parse_args()
    if args.gc == "off":
        gc.disable()
    phases: dict[str, dict] = {}
    clock = time.perf_counter()

    def mark(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        phases[name] = {"s": round(now - clock, 3), "peak_mib": peak_mib()}
        clock = now

    from reconciler import engine, render
    from reconciler.manifest import load_manifests

    mark("import")
    manifests = load_manifests([args.manifests])
    mark("load manifests")
    state = engine.read_state(args.state)
    mark("read state")
    bodies = engine.desired_bodies(manifests)
    mark("desired bodies (.wire())")
    from reconciler.plan import make_plan

    plan = make_plan(bodies, state)
    mark("make_plan")
    render.plan_text(plan, render.Style(False))
    mark("render")
    print(orjson.dumps({"tasks": len(manifests.tasks), "changes": len(plan.actions), "phases": phases}).decode())


if __name__ == "__main__":
    main()
