"""Run every snapctl benchmark against the bundled emulator and write BENCHMARKS.md.

    .venv/bin/python bench/run.py            # the full run (about 5 minutes)
    .venv/bin/python bench/run.py --quick    # a smoke run of every benchmark (about a minute)

Every measured command is the real ``snapctl`` in a subprocess (wall time from
start to exit, peak RSS from ``os.wait4``), against ``snapctl emulator`` in
another process, so that client and server never share a GIL. Figures are
medians over repeated runs. The results replace the block between the
``bench:begin`` and ``bench:end`` markers of BENCHMARKS.md (``--out`` to
write elsewhere, ``--no-write`` to only print); the notes around it stay.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import gen
import pgstate
import refresh
import startup
from common import (
    BENCH,
    JITTER_MS,
    LATENCY_MS,
    QPS,
    ROOT,
    ROUND_TRIP_S,
    SNAPCTL,
    Emulator,
    Results,
    compile_bytecode,
    figure_table,
    machine,
    median,
    run,
    status,
    write_block,
)

BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


# -- 3. plan at scale ---------------------------------------------------------------


def bench_plan(
    results: Results, work: Path, sizes: list[int], repeats: dict[int, int], changed_sizes: list[int]
) -> None:
    walls: dict[int, float] = {}
    for size in sizes:
        status(f"plan: {size:,} tasks (manifests and a matching state)")
        manifests = work / f"plan-{size}"
        state = work / f"state-{size}" / "snapctl.state.json"
        gen.write_manifests(manifests, size)
        # In another process: a child's peak RSS counts the parent's pages it was forked
        # with, so this process stays small.
        run([sys.executable, str(BENCH / "state_fixture.py"), str(manifests), str(state)], cwd=BENCH)
        runs = [run([*SNAPCTL, "plan", str(manifests), "--state", str(state)]) for _ in range(repeats[size])]
        assert f"No changes. {size} task(s) match the state." in runs[0].stdout, runs[0].stdout[-500:]
        wall, rss = median([r.wall_s for r in runs]), max(r.rss_mb for r in runs)
        walls[size] = wall
        target, met = "", None
        if size == 10_000:
            target, met = "≤ 0.5 s", wall <= 0.5
        if size == 100_000:
            target, met = "≤ 5 s", wall <= 5
        results.add(
            "Plan",
            f"no-op `snapctl plan`, {size:,} tasks: wall time",
            f"{wall:.2f} s",
            target,
            met,
            f"median of {repeats[size]}",
        )
        results.add(
            "Plan",
            f"no-op `snapctl plan`, {size:,} tasks: peak RSS",
            f"{rss:.0f} MB",
            "≤ 500 MB" if size == 100_000 else "",
            rss <= 500 if size == 100_000 else None,
            f"largest of {repeats[size]}",
        )
        if size in changed_sizes:
            changed = work / f"plan-{size}-changed"
            gen.write_manifests(changed, size, changed=0.05)
            runs = [run([*SNAPCTL, "plan", str(changed), "--state", str(state)]) for _ in range(repeats[size])]
            summary = runs[0].stdout.strip().splitlines()[-1]
            wall, rss = median([r.wall_s for r in runs]), max(r.rss_mb for r in runs)
            results.add(
                "Plan",
                f"`snapctl plan`, {size:,} tasks, 10% changed",
                f"{wall:.2f} s, {rss:.0f} MB",
                "",
                None,
                f"median of {repeats[size]}; {summary}",
            )
        if size >= 10_000:
            for gc_mode in ("on", "off"):
                phases = run([sys.executable, str(BENCH / "phases.py"), str(manifests), str(state), "--gc", gc_mode])
                data = json.loads(phases.stdout)
                shown = ", ".join(
                    f"{name} {p['s']:.2f} s (peak {p['peak_mib'] * 1.048576:.0f} MB)"
                    for name, p in data["phases"].items()
                )
                results.details.append(
                    f"Phases of a no-op plan of {size:,} tasks in one process, garbage collector {gc_mode}: {shown}."
                )
        shutil.rmtree(manifests)
    if len(walls) >= 3:
        # The cost of one more task, between the sizes: equal when time is linear in tasks
        # (start-up and other constant costs cancel out).
        a, b, c = sorted(walls)
        low = (walls[b] - walls[a]) / (b - a) * 1e6
        high = (walls[c] - walls[b]) / (c - b) * 1e6
        results.add(
            "Plan",
            f"linearity: time per added task, {b:,}→{c:,} vs {a:,}→{b:,} tasks",
            f"{high:.1f} vs {low:.1f} µs/task ({high / low:.2f}×)",
            "≈ 1× (linear)",
            0.67 <= high / low <= 1.5,
            "",
        )


# -- 1. apply throughput ----------------------------------------------------------------


def apply_once(emulator: Emulator, work: Path, tasks: int, parallelism: int | None, label: str) -> dict:
    manifests = work / f"apply-{label}"
    state = work / f"apply-state-{label}"
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir(parents=True)
    gen.write_manifests(manifests, tasks)
    emulator.reset()
    args = [
        *SNAPCTL,
        "apply",
        str(manifests),
        "--state",
        str(state / "snapctl.state.json"),
        "--endpoint",
        emulator.url,
        "--auto-approve",
        "--json",
    ]
    if parallelism is not None:
        args += ["--parallelism", str(parallelism)]
    result = run(args)
    document = json.loads(result.stdout)
    assert document["ok"] and document["summary"]["succeeded"] == tasks, document["summary"]
    stats = emulator.stats()
    return {
        "tasks": tasks,
        "elapsed_s": document["elapsed_s"],
        "wall_s": result.wall_s,
        "rss_mb": result.rss_mb,
        "requests": stats["total"],
        "throttled": stats["throttled"],
    }


def bench_apply(results: Results, work: Path, counts: dict[str, int], repeats: int) -> None:
    with Emulator(latency_ms=LATENCY_MS, jitter_ms=JITTER_MS, qps=QPS) as emulator:
        rates: dict[str, float] = {}
        for label, parallelism in (("p1", 1), ("p10", 10), ("default", None)):
            tasks = counts[label]
            status(f"apply: {tasks:,} creates, parallelism {parallelism or '64 (default)'}")
            runs = [apply_once(emulator, work, tasks, parallelism, label) for _ in range(repeats)]
            rate = median([r["tasks"] / r["elapsed_s"] for r in runs])
            rates[label] = rate
            if label == "default":
                end_to_end = median([r["tasks"] / r["wall_s"] for r in runs])
                throttled = sum(r["throttled"] for r in runs) / sum(r["requests"] for r in runs)
                rss = max(r["rss_mb"] for r in runs)
                results.add(
                    "Apply",
                    f"{tasks:,} creates, default `--parallelism 64`: tasks/s",
                    f"{rate:.1f} tasks/s ({rate / QPS:.1%} of {QPS}/s)",
                    "≥ 142 tasks/s (95%)",
                    rate >= 142,
                    f"median of {repeats}; apply phase as reported by `--json` elapsed_s",
                )
                results.add(
                    "Apply",
                    f"{tasks:,} creates: whole command, start to exit",
                    f"{end_to_end:.1f} tasks/s",
                    "",
                    None,
                    "includes start-up, planning and the last answer",
                )
                results.add(
                    "Apply",
                    f"{tasks:,} creates: throttled answers (emulator stats)",
                    f"{throttled:.2%} ({sum(r['throttled'] for r in runs)} of {sum(r['requests'] for r in runs)} requests)",
                    "< 0.5%",
                    throttled < 0.005,
                    f"all {repeats} runs",
                )
                results.add(
                    "Apply",
                    f"{tasks:,} creates: peak RSS of `snapctl apply`",
                    f"{rss:.0f} MB",
                    "",
                    None,
                    "largest of the runs",
                )
            else:
                results.add(
                    "Apply",
                    f"{tasks:,} creates, `--parallelism {parallelism}`: tasks/s",
                    f"{rate:.1f} tasks/s",
                    "",
                    None,
                    f"median of {repeats}",
                )
        results.add(
            "Apply",
            "ratio of tasks/s, parallelism 1 : 10 : 64",
            f"1 : {rates['p10'] / rates['p1']:.1f} : {rates['default'] / rates['p1']:.1f}",
            "",
            None,
            "",
        )


# -- 2. replace throughput ------------------------------------------------------------------


def bench_replace(results: Results, work: Path, tasks: int, repeats: int) -> None:
    with Emulator(latency_ms=LATENCY_MS, jitter_ms=JITTER_MS, qps=QPS) as emulator:
        manifests = work / "replace"
        state = work / "replace-state"
        state.mkdir()
        status(f"replace: creating {tasks:,} tasks")
        gen.write_manifests(manifests, tasks)
        base = [
            *SNAPCTL,
            "apply",
            str(manifests),
            "--state",
            str(state / "snapctl.state.json"),
            "--endpoint",
            emulator.url,
            "--auto-approve",
            "--json",
        ]
        run(base)
        elapsed, throttled, requests = [], 0, 0
        for number in range(repeats):
            width = 800 if number % 2 == 0 else 640
            status(f"replace: {tasks:,} replaces (width -> {width})")
            gen.write_manifests(manifests, tasks, width=width)
            before = emulator.stats()
            document = json.loads(run(base).stdout)
            after = emulator.stats()
            assert document["ok"] and document["summary"]["replace"] == tasks, document["summary"]
            elapsed.append(document["elapsed_s"])
            throttled += after["throttled"] - before["throttled"]
            requests += after["total"] - before["total"]
        took = median(elapsed)
        ideal = tasks / QPS
        limit = 1.2 * ideal + ROUND_TRIP_S
        results.add(
            "Replace",
            f"{tasks:,} replaces (StopSnapshot + StartSnapshot each)",
            f"{took:.2f} s ({took / ideal:.2f}× {tasks:,}/{QPS} s)",
            f"≤ {limit:.2f} s (1.2 × {ideal:.2f} s + one round trip)",
            took <= limit,
            f"median of {repeats}; throttled {throttled} of {requests} requests",
        )


# -- 5. the emulator -------------------------------------------------------------------------------


def bench_emulator(results: Results, seconds: float, repeats: int) -> None:
    status(f"emulator: 64 keep-alive connections for {seconds:g} s, limit off, no latency")
    rates = []
    with Emulator(qps=0) as emulator:
        for _ in range(repeats):
            emulator.reset()
            answer = run(
                [
                    sys.executable,
                    str(BENCH / "loadgen.py"),
                    emulator.url,
                    "--connections",
                    "64",
                    "--seconds",
                    str(seconds),
                ]
            )
            data = json.loads(answer.stdout)
            assert set(data["statuses"]) == {"200"}, data
            served = emulator.stats()["total"]
            assert served == data["requests"], (served, data)
            rates.append(data["rps"])
    rate = median(rates)
    results.add(
        "Emulator",
        "requests/s served (`--qps 0`, zero latency; Start/Update/Stop mix, each freshly signed)",
        f"{rate:,.0f} req/s",
        "≥ 1,500 req/s",
        rate >= 1500,
        f"median of {repeats} runs of {seconds:g} s",
    )


# -- the report ------------------------------------------------------------------------------------


def report(results: Results, command: str, began: float, quick: bool) -> str:
    lines = [
        BEGIN,
        "",
        f"Measured {_dt.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')} with `{command}`"
        f"{' (a --quick smoke run: smaller counts, fewer repeats)' if quick else ''}, "
        f"in {time.monotonic() - began:.0f} s.",
        "",
    ]
    lines += machine()
    lines += ["", *figure_table(results)]
    if results.details:
        lines += [""] + [f"- {d}" for d in results.details]
    lines += ["", END]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="A smoke run: small counts, one repeat.")
    parser.add_argument(
        "--only",
        default="startup,plan,apply,replace,emulator,refresh,pgstate",
        help="Comma-separated subset of: startup, plan, apply, replace, emulator, refresh, pgstate.",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--no-write", action="store_true", help="Print the results; leave BENCHMARKS.md alone.")
    args = parser.parse_args()
    only = set(args.only.split(","))
    began = time.monotonic()
    command = (
        "bench/run.py" + (" --quick" if args.quick else "") + (f" --only {args.only}" if "--only" in sys.argv else "")
    )
    command = f"{Path(sys.executable).relative_to(ROOT) if Path(sys.executable).is_relative_to(ROOT) else sys.executable} {command}"
    compile_bytecode()
    results = Results()
    work = Path(tempfile.mkdtemp(prefix="snapctl-bench-"))
    try:
        if "startup" in only:  # bench/startup.py's figures; its import table is in its own block
            startup.bench_startup(results, work, 5 if args.quick else 11, 1_000 if args.quick else 10_000)
        if "plan" in only:
            if args.quick:
                bench_plan(results, work, [1_000, 5_000, 10_000], {1_000: 3, 5_000: 3, 10_000: 3}, [10_000])
            else:
                bench_plan(
                    results, work, [1_000, 10_000, 100_000], {1_000: 7, 10_000: 7, 100_000: 3}, [10_000, 100_000]
                )
        if "apply" in only:
            counts = {"p1": 20, "p10": 60, "default": 600} if args.quick else {"p1": 100, "p10": 300, "default": 3_000}
            bench_apply(results, work, counts, 1 if args.quick else 3)
        if "replace" in only:
            bench_replace(results, work, 300 if args.quick else 1_000, 1 if args.quick else 3)
        if "emulator" in only:
            bench_emulator(results, 2.0 if args.quick else 5.0, 1 if args.quick else 3)
        if "pgstate" in only:
            pg_began = time.monotonic()
            pg_results = Results()
            pgstate.bench_pgstate(pg_results, work, args.quick)
            pg_block = pgstate.block(pg_results, command, pg_began, args.quick)
        if "refresh" in only:
            refresh_began, load_at_start = time.monotonic(), refresh.load_average()
            refresh_results = Results()
            refresh.bench_refresh(refresh_results, work, 300 if args.quick else 3_000)
            loads = (load_at_start, refresh.load_average())
            refresh_block = refresh.block(refresh_results, command, refresh_began, loads)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    # The refresh and PostgreSQL figures have blocks of their own, so that bench/refresh.py
    # and bench/pgstate.py can rerun them alone.
    if only - {"refresh", "pgstate"}:
        block = report(results, command, began, args.quick)
        print("\n" + block)
        if not args.no_write:
            write_block(block, args.out, BEGIN, END)
            print(f"\nwrote {args.out}")
    if "refresh" in only:
        print("\n" + refresh_block)
        if not args.no_write:
            refresh.write_block(refresh_block, args.out)
            print(f"\nwrote the refresh block of {args.out}")
    if "pgstate" in only:
        print("\n" + pg_block)
        if not args.no_write:
            pgstate.write_block(pg_block, args.out)
            print(f"\nwrote the PostgreSQL block of {args.out}")


if __name__ == "__main__":
    main()
