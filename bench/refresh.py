"""The refresh benchmark: `plan --refresh` and a converged `reconcile` round at scale.

    .venv/bin/python bench/refresh.py              # 3,000 tasks, writes its block of BENCHMARKS.md
    .venv/bin/python bench/refresh.py --quick      # 300 tasks, a smoke run
    .venv/bin/python bench/run.py --only refresh   # the same, from the full runner

Against ``snapctl emulator --latency-ms 100`` (every answer takes 100 ms) with
the documented limits (150/s per write action, 60/s for GetSnapshotTask):

1. apply N creates (the set to refresh);
2. `plan --refresh --detailed-exitcode --json` of the N converged tasks: reads/s
   (the GetSnapshotTask count over the refresh phase, ``refresh_s`` of the JSON
   plan: first read to last answer) and the share of reads throttled;
3. `reconcile --json` over the converged set: StartSnapshot calls of the round
   (target 0), and the same round with `--no-refresh` (the blind re-assert, one
   StartSnapshot per task) for comparison.

The results replace the block between the ``bench-refresh:begin`` and
``bench-refresh:end`` markers of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gen
from common import ROOT, SNAPCTL, Emulator, Results, compile_bytecode, figure_table, machine, run, status
from common import write_block as common_write_block

READ_QPS = 60
LATENCY_MS = 100
BEGIN, END = "<!-- bench-refresh:begin -->", "<!-- bench-refresh:end -->"


def by_action(stats: dict, action: str, outcome: str | None = None) -> int:
    entry = stats["by_action"].get(action, {})
    return entry.get("total", 0) if outcome is None else entry.get("outcomes", {}).get(outcome, 0)


def bench_refresh(results: Results, work: Path, tasks: int) -> None:
    """Add the refresh figures to ``results``."""
    with Emulator(latency_ms=LATENCY_MS) as emulator:
        manifests, state = work / "refresh", work / "refresh-state"
        state.mkdir(parents=True)
        gen.write_manifests(manifests, tasks)
        emulator.reset()
        common = [str(manifests), "--state", str(state / "snapctl.state.json"), "--endpoint", emulator.url]
        status(f"refresh: applying {tasks:,} creates")
        applied = json.loads(run([*SNAPCTL, "apply", *common, "--auto-approve", "--json"]).stdout)
        assert applied["ok"] and applied["summary"]["succeeded"] == tasks, applied["summary"]

        status(f"refresh: plan --refresh of {tasks:,} converged tasks")
        before = emulator.stats()
        refreshed = run([*SNAPCTL, "plan", *common, "--refresh", "--detailed-exitcode", "--json"], check=False)
        after = emulator.stats()
        assert refreshed.rc == 0, f"plan --refresh of a converged set exited {refreshed.rc}"
        document = json.loads(refreshed.stdout)
        reads = by_action(after, "GetSnapshotTask") - by_action(before, "GetSnapshotTask")
        throttled = by_action(after, "GetSnapshotTask", "FlowLimitExceeded") - by_action(
            before, "GetSnapshotTask", "FlowLimitExceeded"
        )
        writes = sum(by_action(after, a) - by_action(before, a) for a in ("StartSnapshot", "UpdateSnapshot"))
        phase_s = document["refresh_s"]
        rate = (reads - throttled) / phase_s
        results.add(
            "Refresh",
            f"`plan --refresh` of {tasks:,} converged tasks: reads/s",
            f"{rate:.1f} reads/s ({rate / READ_QPS:.1%} of {READ_QPS}/s)",
            f"≥ {0.95 * READ_QPS:.0f} reads/s (95%)",
            rate >= 0.95 * READ_QPS,
            f"{reads - throttled:,} reads in {phase_s:.1f} s (the refresh phase, `refresh_s` of `--json`; "
            f"whole command {refreshed.wall_s:.1f} s); exit 0, {writes} write calls",
        )
        results.add(
            "Refresh",
            f"`plan --refresh` of {tasks:,}: throttled reads",
            f"{throttled / max(reads, 1):.2%} ({throttled} of {reads})",
            "≤ 0.5%",
            throttled / max(reads, 1) <= 0.005,
            "emulator stats",
        )

        status(f"refresh: a converged reconcile round of {tasks:,} tasks")
        before = emulator.stats()
        round_ = json.loads(run([*SNAPCTL, "reconcile", *common, "--json"]).stdout)
        after = emulator.stats()
        starts = by_action(after, "StartSnapshot") - by_action(before, "StartSnapshot")
        assert round_["ok"], round_
        results.add(
            "Refresh",
            f"StartSnapshot calls of a converged `reconcile` round of {tasks:,} tasks",
            f"{starts}",
            "0",
            starts == 0,
            f"{round_['reads']:,} reads, round {round_['duration_s']:.1f} s",
        )
        before = emulator.stats()
        blind = json.loads(run([*SNAPCTL, "reconcile", *common, "--json", "--no-refresh"]).stdout)
        after = emulator.stats()
        assert blind["ok"], blind
        results.add(
            "Refresh",
            "the same round with `--no-refresh` (the blind re-assert)",
            f"{by_action(after, 'StartSnapshot') - by_action(before, 'StartSnapshot'):,} StartSnapshot",
            "",
            None,
            f"round {blind['duration_s']:.1f} s",
        )


def load_average() -> float:
    """The machine's 1-minute load average (other work competing for the cores)."""
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def block(results: Results, command: str, began: float, loads: tuple[float, float] | None = None) -> str:
    lines = [
        BEGIN,
        "",
        f"Measured {_dt.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')} with `{command}`, "
        f"in {time.monotonic() - began:.0f} s.",
        "",
        *machine(),
        "",
    ]
    if loads is not None:
        cores = os.cpu_count() or 1
        busy = max(loads) > cores * 0.75
        lines.append(
            f"- Load average (1 min) at the start and the end: {loads[0]:.2f}, {loads[1]:.2f} on {cores} cores"
            + (": **measured under load** (other work competed for the cores)" if busy else ": a quiet machine")
        )
    lines += [
        "",
        *figure_table(results),
    ]
    lines += ["", END]
    return "\n".join(lines)


def write_block(text: str, path: Path) -> None:
    common_write_block(text, path, BEGIN, END, heading="Refresh")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="300 tasks: a smoke run.")
    parser.add_argument("--tasks", type=int, default=None, help="Tasks to refresh (default 3,000).")
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--no-write", action="store_true", help="Print the results; leave BENCHMARKS.md alone.")
    args = parser.parse_args()
    tasks = args.tasks or (300 if args.quick else 3_000)
    began = time.monotonic()
    compile_bytecode()
    results = Results()
    work = Path(tempfile.mkdtemp(prefix="snapctl-bench-refresh-"))
    load_at_start = load_average()
    try:
        bench_refresh(results, work, tasks)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    command = "bench/refresh.py" + (" --quick" if args.quick else "") + (f" --tasks {tasks}" if args.tasks else "")
    text = block(results, f".venv/bin/python {command}", began, (load_at_start, load_average()))
    print("\n" + text)
    if not args.no_write:
        write_block(text, args.out)
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
