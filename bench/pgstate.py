"""The state in PostgreSQL against the state in a file: apply throughput and no-op plans.

    .venv/bin/python bench/pgstate.py              # alone (about 4 minutes; --quick: 1)
    .venv/bin/python bench/run.py --only pgstate   # the same from bench/run.py

Both replace the block between the ``bench-pgstate:begin`` and ``bench-pgstate:end``
markers of BENCHMARKS.md (``--no-write`` to only print).

A throwaway PostgreSQL server (tests/pg_server.py: the machine's initdb and
pg_ctl, fsync on, as a real server runs) holds the state. Every figure is the
real ``snapctl`` in a subprocess, as in bench/run.py.
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

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(ROOT / "tests"))

import gen  # noqa: E402
from common import (  # noqa: E402
    JITTER_MS,
    LATENCY_MS,
    QPS,
    SNAPCTL,
    Emulator,
    Results,
    compile_bytecode,
    figure_table,
    machine,
    median,
    run,
    status,
)
from common import write_block as common_write_block  # noqa: E402
from pg_server import PgServer  # noqa: E402

#: What reading a PostgreSQL state costs in memory before any task: psycopg's modules,
#: libpq and the libraries it brings (TLS, Kerberos, LDAP), one connection, one query.
DRIVER_COST = """
import sys

def rss_mb():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024

import reconciler.commands.plan, reconciler.engine, reconciler.plan, reconciler.state
before = rss_mb()
from reconciler.state.postgres import PostgresStore
assert not PostgresStore(sys.argv[1]).read().exists
print(rss_mb() - before)
"""


def driver_cost_mb(server: PgServer) -> float:
    """The resident memory a PostgreSQL state adds before its first task (median of 3)."""
    url = server.url(server.new_database("driver"))
    return median([float(run([sys.executable, "-c", DRIVER_COST, url]).stdout) for _ in range(3)])


def bench_pg_plan(results: Results, work: Path, server: PgServer, sizes: dict[int, int]) -> None:
    """No-op plans of the same tasks with the state in a file and in PostgreSQL."""
    driver_mb = driver_cost_mb(server)
    results.add(
        "PostgreSQL state",
        "memory a PostgreSQL state costs before its first task (import psycopg, libpq, connect, one query)",
        f"{driver_mb:.1f} MB",
        "",
        None,
        "median of 3; resident memory before and after, in one process",
    )
    for size, repeats in sizes.items():
        status(f"pgstate plan: {size:,} tasks, file state vs PostgreSQL state")
        manifests = work / f"pgplan-{size}"
        state = work / f"pgplan-state-{size}" / "snapctl.state.json"
        gen.write_manifests(manifests, size)
        run([sys.executable, str(BENCH / "state_fixture.py"), str(manifests), str(state)], cwd=BENCH)
        url = server.url(server.new_database("bench"))
        moved = run([*SNAPCTL, "state", "migrate", "--state", str(state), "--to", url])
        file_runs, pg_runs = [], []
        for _ in range(repeats):  # interleaved, so a change of machine load hits both alike
            file_runs.append(run([*SNAPCTL, "plan", str(manifests), "--state", str(state)]))
            pg_runs.append(run([*SNAPCTL, "plan", str(manifests), "--state", url]))
        for runs in (file_runs, pg_runs):
            assert f"No changes. {size} task(s) match the state." in runs[0].stdout, runs[0].stdout[-300:]
        file_s, pg_s = median([r.wall_s for r in file_runs]), median([r.wall_s for r in pg_runs])
        file_mb, pg_mb = max(r.rss_mb for r in file_runs), max(r.rss_mb for r in pg_runs)
        limit = 1.5 if size <= 10_000 else 2.0
        results.add(
            "PostgreSQL state",
            f"no-op `snapctl plan`, {size:,} tasks: PostgreSQL vs file state",
            f"{pg_s:.2f} s vs {file_s:.2f} s ({pg_s / file_s:.2f}×)",
            f"≤ {limit:g}×",
            pg_s <= limit * file_s,
            f"medians of {repeats}, interleaved",
        )
        results.add(
            "PostgreSQL state",
            f"no-op `snapctl plan`, {size:,} tasks: peak RSS, PostgreSQL vs file state",
            f"{pg_mb:.0f} MB vs {file_mb:.0f} MB",
            "≤ the file state's",
            pg_mb <= file_mb * 1.02,
            f"largest of {repeats}",
        )
        results.add(
            "PostgreSQL state",
            f"no-op `snapctl plan`, {size:,} tasks: peak RSS less the driver's fixed cost, vs file state",
            f"{pg_mb - driver_mb:.0f} MB vs {file_mb:.0f} MB",
            "",
            None,
            "what the PostgreSQL path holds for the tasks, against all the file path holds",
        )
        results.add(
            "PostgreSQL state",
            f"`snapctl state migrate` of {size:,} tasks from a file into PostgreSQL",
            f"{moved.wall_s:.2f} s",
            "",
            None,
            "one run",
        )
        shutil.rmtree(manifests)


def bench_pg_apply(results: Results, work: Path, server: PgServer, tasks: int, repeats: int) -> None:
    """Creates at the API's limit with every intent and outcome committed to PostgreSQL."""
    with Emulator(latency_ms=LATENCY_MS, jitter_ms=JITTER_MS, qps=QPS) as emulator:
        rates, walls, rss, throttled, requests = [], [], [], 0, 0
        manifests = work / "pgapply"
        gen.write_manifests(manifests, tasks)
        for number in range(repeats):
            status(f"pgstate apply: {tasks:,} creates, state in PostgreSQL ({number + 1}/{repeats})")
            url = server.url(server.new_database("bench"))
            emulator.reset()
            args = [*SNAPCTL, "apply", str(manifests), "--state", url, "--endpoint", emulator.url]
            result = run([*args, "--auto-approve", "--json"])
            document = json.loads(result.stdout)
            assert document["ok"] and document["summary"]["succeeded"] == tasks, document["summary"]
            stats = emulator.stats()
            rates.append(tasks / document["elapsed_s"])
            walls.append(tasks / result.wall_s)
            rss.append(result.rss_mb)
            throttled += stats["throttled"]
            requests += stats["total"]
            again = run([*SNAPCTL, "plan", str(manifests), "--state", url, "--endpoint", emulator.url])
            assert f"No changes. {tasks} task(s)" in again.stdout, again.stdout[-300:]
        rate = median(rates)
        results.add(
            "PostgreSQL state",
            f"apply, {tasks:,} creates, state in PostgreSQL: tasks/s",
            f"{rate:.1f} tasks/s ({rate / QPS:.1%} of {QPS}/s)",
            f"≥ {0.95 * QPS:.1f} tasks/s (95%)",
            rate >= 0.95 * QPS,
            f"median of {repeats}; apply phase (`--json` elapsed_s); throttled {throttled} of {requests} requests",
        )
        results.add(
            "PostgreSQL state",
            f"apply, {tasks:,} creates, state in PostgreSQL: whole command; peak RSS",
            f"{median(walls):.1f} tasks/s; {max(rss):.0f} MB",
            "",
            None,
            "start to exit, includes start-up and planning",
        )


def bench_pgstate(results: Results, work: Path, quick: bool) -> None:
    # Each part on a fresh server of its own: after the plans' 100,000-row migrations the
    # server spends minutes checkpointing, on the same 2 cores and disk as the apply it
    # would slow (129.9 tasks/s measured after them, 144.0 alone, same code).
    with PgServer(durable=True) as server:
        bench_pg_apply(results, work, server, 600 if quick else 3_000, 1 if quick else 3)
    with PgServer(durable=True) as server:
        bench_pg_plan(results, work, server, {10_000: 3} if quick else {10_000: 7, 100_000: 3})


BEGIN, END = "<!-- bench-pgstate:begin -->", "<!-- bench-pgstate:end -->"


def block(results: Results, command: str, began: float, quick: bool) -> str:
    load = os.getloadavg()
    lines = [
        BEGIN,
        "",
        f"Measured {_dt.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')} with `{command}`"
        f"{' (--quick: smaller counts, fewer repeats)' if quick else ''}, in {time.monotonic() - began:.0f} s; "
        f"load average at the end {load[0]:.1f} on {os.cpu_count()} cores"
        + (
            " (above the core count: measured under load from other processes, so the times are pessimistic "
            "and the ratios the figures to read)."
            if load[0] > (os.cpu_count() or 1)
            else " (a quiet machine)."
        ),
        "",
        *machine(),
        "",
        *figure_table(results),
    ]
    lines += ["", END]
    return "\n".join(lines)


def write_block(text: str, path: Path) -> None:
    common_write_block(text, path, BEGIN, END, heading="PostgreSQL state")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="Smaller counts, fewer repeats.")
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--no-write", action="store_true", help="Print the results; leave BENCHMARKS.md alone.")
    args = parser.parse_args()
    began = time.monotonic()
    command = f"bench/pgstate.py{' --quick' if args.quick else ''}"
    compile_bytecode()
    results = Results()
    work = Path(tempfile.mkdtemp(prefix="snapctl-bench-pg-"))
    try:
        bench_pgstate(results, work, args.quick)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = block(results, command, began, args.quick)
    print("\n" + text)
    if not args.no_write:
        write_block(text, args.out)
        print(f"\nwrote the PostgreSQL block of {args.out}")


if __name__ == "__main__":
    main()
