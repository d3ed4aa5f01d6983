"""The controller benchmark: `reconcile --watch` against the API's limits (issue 19).

    .venv/bin/python bench/controller.py                  # 3,000 tasks, writes its block of BENCHMARKS.md
    .venv/bin/python bench/controller.py --tasks 10000    # the same at 10,000 (its own block)
    .venv/bin/python bench/controller.py --quick          # 300 tasks, a smoke run

Against ``snapctl emulator --latency-ms 100`` (every answer takes 100 ms) with the
documented limits (150 writes/s per action, 60 reads/s), N declared tasks:

1. apply the N tasks, start ``reconcile --watch --json`` (defaults: --read-qps 60,
   --interval 10) and let it read every task once;
2. **quiet**: one more sweep with nothing to do: StartSnapshot calls (target 0);
3. **heals**: 400 tasks stopped out of band (StopByAPI) at random moments over a few
   minutes; heal latency = the moment of the stop to the controller's JSON line
   reporting the task started again (p50 with its 95% interval, p95), against one
   read sweep (N / 60 s) + 5 s: p50 ≤ 0.55 and p95 ≤ 1.0 of it; the act's share
   (from the read that found the task ended to the hold's end) and how long each
   hold of the state's lock took;
   meanwhile, at random moments, the state's lock taken as a pipeline's
   ``apply --lock-timeout 10`` takes it: how long it waited (target ≤ 2 s), and real
   ``snapctl apply --lock-timeout 10`` runs (all must succeed);
4. **start failure**: a task added whose bucket the emulator cannot write to: from
   its start to the read that finds it failed (target ≤ 35 s);
5. **failover** (PostgreSQL state): two controllers, the leader SIGKILLed, a task
   stopped right after: how long until the standby leads, and until the task runs
   again (target 15 s + its detection time, one sweep at most).

The results replace the block between the ``bench-controller-N:begin`` and
``…:end`` markers of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(ROOT / "tests"))

import gen  # noqa: E402
from common import ENV, SNAPCTL, Emulator, Results, compile_bytecode, figure_table, machine, run, status  # noqa: E402
from common import write_block as run_write_block  # noqa: E402

READ_QPS = 60
LATENCY_MS = 100


class Admin:
    """The emulator's control endpoints."""

    def __init__(self, url: str):
        self.url = url

    def call(self, method: str, path: str, payload: dict | None = None) -> dict:
        data = json.dumps(payload or {}).encode() if method == "POST" else None
        request = urllib.request.Request(
            self.url + path, method=method, data=data, headers={"content-type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return json.loads(answer.read())
        except urllib.error.HTTPError as exc:
            return json.loads(exc.read())

    def stats(self) -> dict:
        return self.call("GET", "/_emulator/stats")

    def starts(self) -> int:
        return self.stats()["by_action"].get("StartSnapshot", {}).get("total", 0)

    def reads(self) -> int:
        return self.stats()["by_action"].get("GetSnapshotTask", {}).get("total", 0)

    def stop(self, address: str) -> bool:
        app, room, task = address.split("/")
        answer = self.call(
            "POST", "/_emulator/stop-task", {"AppId": app, "RoomId": room, "TaskId": task, "StopReason": "StopByAPI"}
        )
        return "Error" not in answer.get("ResponseMetadata", {})


class Watch:
    """``snapctl reconcile --watch --json``: its JSON lines and other lines, each with its arrival time."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None):
        self.process = subprocess.Popen(
            [*SNAPCTL, "reconcile", "--watch", "--json", "--no-color", *args],
            cwd=ROOT,
            env=env or ENV,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.documents: list[tuple[float, dict]] = []
        self.lines: list[tuple[float, str]] = []
        self._threads = [
            threading.Thread(target=self._read, args=(self.process.stdout, True), daemon=True),
            threading.Thread(target=self._read, args=(self.process.stderr, False), daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _read(self, stream, documents: bool) -> None:
        for line in stream:
            now = time.time()
            if documents and line.startswith("{"):
                self.documents.append((now, json.loads(line)))
            else:
                self.lines.append((now, line.rstrip("\n")))

    def started(self) -> dict[str, list[float]]:
        """When the controller reported each task started (healed or created), by address."""
        out: dict[str, list[float]] = {}
        for at, document in self.documents:
            for result in document.get("result", {}).get("results", []):
                if result.get("ok", True) and any(c["action"] == "StartSnapshot" for c in result.get("calls", [])):
                    out.setdefault(result["address"], []).append(at)
        return out

    def holds(self) -> list[tuple[float, dict]]:
        """The documents of the holds that acted: (arrival, document)."""
        return [(at, d) for at, d in self.documents if d.get("type") == "reconcile" and "result" in d]

    def line_at(self, text: str) -> float | None:
        return next((at for at, line in self.lines if text in line), None)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * (len(ordered) - 1))))]


def median_interval(values: list[float], z: float = 1.96) -> tuple[float, float]:
    """A distribution-free 95% confidence interval of the median (order statistics)."""
    ordered, n = sorted(values), len(values)
    half = z * (n**0.5) / 2
    return ordered[max(0, int(n / 2 - half))], ordered[min(n - 1, int(n / 2 + half))]


def lock_wait(state: str, timeout: float = 10.0) -> float:
    """Take the state's lock as a pipeline's apply --lock-timeout would; how long that waited."""
    from reconciler.state import store_for

    store = store_for(state, lock_timeout_s=timeout, command="bench pipeline")
    began = time.monotonic()
    store.open()
    waited = time.monotonic() - began
    store.close()
    return waited


def failing_manifest(path: Path) -> None:
    path.write_text(
        "app_id: bench-fail\n"
        "storage:\n"
        '  broken: {type: tos, account_id: "2100000990", bucket: bench-nowrite}\n'
        "defaults: {storage: broken}\n"
        "rooms:\n"
        "  room-000:\n"
        "    tasks:\n"
        "      task-0000: {}\n"
    )


def bench_controller(results: Results, work: Path, tasks: int, window_s: float, stops: int) -> None:
    sweep = tasks / READ_QPS
    target_s = sweep + 5
    emulator = Emulator(latency_ms=LATENCY_MS)
    emulator.args += ["--unwritable-bucket", "bench-nowrite"]
    with emulator:
        admin = Admin(emulator.url)
        manifests, state_dir = work / "manifests", work / "state"
        state_dir.mkdir(parents=True)
        gen.write_manifests(manifests, tasks)
        state = str(state_dir / "snapctl.state.json")
        common = [str(manifests), "--state", state, "--endpoint", emulator.url]
        status(f"controller: applying {tasks:,} tasks")
        run([*SNAPCTL, "apply", *common, "--auto-approve", "--json"])
        addresses = sorted(json.loads(run([*SNAPCTL, "state", "list", "--json", "--state", state]).stdout)["tasks"])
        reads0 = admin.reads()
        # --interval: the shortest time between two reads of a task; at most one sweep, so reads use the budget.
        watch = Watch([*common, "--interval", f"{min(10.0, max(1.0, sweep)):g}"])
        try:
            status(f"controller: first sweep ({sweep:.0f} s)")
            wait_until(lambda: admin.reads() - reads0 >= tasks, sweep * 3 + 60, "the first sweep")

            status(f"controller: a quiet sweep ({sweep:.0f} s)")
            starts, reads = admin.starts(), admin.reads()
            wait_until(lambda: admin.reads() - reads >= tasks, sweep * 3 + 60, "a quiet sweep")
            quiet_starts = admin.starts() - starts
            results.add(
                "Controller",
                f"StartSnapshot calls of a converged controller over one sweep of {tasks:,} tasks",
                str(quiet_starts),
                "0",
                met=quiet_starts == 0,
            )

            status(f"controller: {stops} tasks stopped at random moments over {window_s:.0f} s, pipelines meanwhile")
            rng = random.Random(19)
            victims = rng.sample(addresses, stops)
            moments = sorted(rng.uniform(0, window_s) for _ in victims)
            pipeline_moments = sorted(rng.uniform(0, window_s) for _ in range(10))
            stopped_at: dict[str, float] = {}
            waits: list[float] = []
            applies: list[tuple[float, int]] = []
            began, reads_began = time.time(), admin.reads()
            events = sorted(
                [(m, "stop", v) for m, v in zip(moments, victims)] + [(m, "lock", "") for m in pipeline_moments]
            )
            for n, (moment, kind, victim) in enumerate(events):
                delay = began + moment - time.time()
                if delay > 0:
                    time.sleep(delay)
                if kind == "stop":
                    at = time.time()
                    if admin.stop(victim):
                        stopped_at[victim] = at
                elif n % 2:
                    waits.append(lock_wait(state))
                else:
                    applied = run([*SNAPCTL, "apply", *common, "--auto-approve", "--lock-timeout", "10"], check=False)
                    applies.append((applied.wall_s, applied.rc))
            status("controller: waiting for the last heals")

            def healed() -> dict[str, float]:
                seen = watch.started()
                return {
                    v: min(t for t in seen.get(v, []) if t >= s)
                    for v, s in stopped_at.items()
                    if any(t >= s for t in seen.get(v, []))
                }

            try:
                wait_until(lambda: len(healed()) == len(stopped_at), target_s * 2 + 60, "every heal")
            except RuntimeError:
                pass
            rate = (admin.reads() - reads_began) / (time.time() - began)
            actual = tasks / rate + 5
            results.add(
                "Controller",
                "GetSnapshotTask reads/s the controller achieved over the heal window",
                f"{rate:.1f} reads/s: a sweep of {tasks / rate:.0f} s",
                f"{READ_QPS} reads/s (--read-qps)",
            )
            done = healed()
            latencies = [done[v] - stopped_at[v] for v in done]
            p50, p95 = statistics.median(latencies), percentile(latencies, 0.95)
            low, high = median_interval(latencies)
            results.add(
                "Controller",
                f"heal latency p50, {len(done)} of {len(stopped_at)} stopped tasks healed",
                f"{p50:.1f} s ({p50 / target_s:.2f} of N/60 s + 5 s = {target_s:.0f} s; "
                f"{p50 / actual:.2f} of the sweep achieved + 5 s; 95% interval of the median "
                f"{low:.1f}-{high:.1f} s; half the achieved sweep is {tasks / rate / 2:.1f} s)",
                f"≤ {0.55 * target_s:.1f} s (0.55)",
                met=p50 <= 0.55 * target_s and len(done) == len(stopped_at),
            )
            results.add(
                "Controller",
                "heal latency p95 (max)",
                f"{p95:.1f} s ({p95 / target_s:.2f}; {p95 / actual:.2f} of the sweep achieved + 5 s; "
                f"max {max(latencies):.1f} s)",
                f"≤ {target_s:.1f} s (1.0)",
                met=p95 <= target_s,
            )
            # Where a heal's time goes: waiting for the task's next read (uniform over a sweep), then
            # the act. A hold's document counts the reads the controller made from the oldest acted-on
            # read to the hold's end (acted_after_reads): at the achieved rate, how long that took.
            holds = [d for at, d in watch.holds() if at >= began]
            acts = [d["acted_after_reads"] / rate for d in holds]
            durations = [d["duration_s"] for d in holds]
            if acts:
                results.add(
                    "Controller",
                    f"…of which the act: from the read that found a task ended to the end of the hold "
                    f"that started it again ({len(holds)} holds that acted)",
                    f"median {statistics.median(acts):.2f} s, p95 {percentile(acts, 0.95):.2f} s, "
                    f"max {max(acts):.2f} s",
                    "within a second or two",
                    met=percentile(acts, 0.95) <= 2.0,
                )
                results.add(
                    "Controller",
                    "one hold of the state's lock by the controller (record, plan, act, record), holds that acted",
                    f"median {statistics.median(durations):.2f} s, p95 {percentile(durations, 0.95):.2f} s, "
                    f"max {max(durations):.2f} s",
                    "well under 1 s",
                    met=percentile(durations, 0.95) < 1.0,
                )
            results.add(
                "Controller",
                f"state lock taken as a pipeline's apply --lock-timeout 10 would, {len(waits)} times at random moments: wait",
                f"median {statistics.median(waits):.2f} s, max {max(waits):.2f} s",
                "≤ 2 s",
                met=max(waits) <= 2.0,
            )
            results.add(
                "Controller",
                f"`snapctl apply --lock-timeout 10` of {tasks:,} tasks meanwhile, {len(applies)} runs",
                f"{sum(rc == 0 for _, rc in applies)} succeeded; wall median {statistics.median(w for w, _ in applies):.1f} s, max {max(w for w, _ in applies):.1f} s",
                "all succeed",
                met=all(rc == 0 for _, rc in applies),
            )

            status("controller: a task whose storage cannot be written added")
            failing_manifest(manifests / "zz-failing.yaml")
            address = "bench-fail/room-000/task-0000"
            wait_until(lambda: address in watch.started(), 120, "the failing task's start")
            start = watch.started()[address][0]
            wait_until(
                lambda: len(watch.started().get(address, [])) >= 2 or watch.line_at(f"{address}: failing"),
                120,
                "its failure found",
            )
            again = watch.started()[address]
            noticed = (again[1] if len(again) > 1 else watch.line_at(f"{address}: failing")) - start
            results.add(
                "Controller",
                "a start that fails (StartTaskFailed): from the start to the read that finds it failed",
                f"{noticed:.1f} s",
                "≤ 35 s",
                met=noticed <= 35,
            )
            wait_until(lambda: watch.line_at(f"{address}: failing"), 120, "the failing line")
            reported = watch.line_at(f"{address}: failing") - start
            results.add(
                "Controller",
                "…and from its first start to 'failing' (restarted once, failed again)",
                f"{reported:.1f} s",
                "",
            )
            (manifests / "zz-failing.yaml").unlink()
        finally:
            watch.stop()


def bench_failover(results: Results, work: Path, tasks: int) -> None:
    from pg_server import PgServer

    sweep = tasks / READ_QPS
    with PgServer(durable=True) as server, Emulator(latency_ms=LATENCY_MS) as emulator:
        admin = Admin(emulator.url)
        url = server.url(server.new_database("failover"))
        manifests = work / "failover"
        gen.write_manifests(manifests, tasks)
        common = [str(manifests), "--state", url, "--endpoint", emulator.url]
        status(f"failover: applying {tasks:,} tasks to a PostgreSQL state")
        run([*SNAPCTL, "apply", *common, "--auto-approve", "--json"])
        addresses = sorted(json.loads(run([*SNAPCTL, "state", "list", "--json", "--state", url]).stdout)["tasks"])
        leader = Watch(common)
        standby = None
        try:
            wait_until(lambda: leader.line_at("Leading"), 60, "a leader")
            standby = Watch(common)
            wait_until(lambda: standby.line_at("Standing by"), 60, "a standby")
            reads = admin.reads()
            wait_until(lambda: admin.reads() - reads >= tasks, sweep * 3 + 60, "the leader's first sweep")
            victim = random.Random(7).choice(addresses)
            status("failover: SIGKILL the leader, stop a task")
            killed = time.time()
            leader.stop(signal.SIGKILL)
            admin.stop(victim)
            wait_until(lambda: standby.line_at("Leading"), 120, "the standby to lead")
            took = standby.line_at("Leading") - killed
            wait_until(lambda: victim in standby.started(), sweep * 3 + 60, "the task healed")
            healed = standby.started()[victim][0] - killed
            position = addresses.index(victim) / READ_QPS
            results.add(
                "Failover",
                f"leader SIGKILLed ({tasks:,} tasks, PostgreSQL state): the standby leads after",
                f"{took:.1f} s",
                "≤ 15 s",
                met=took <= 15,
            )
            results.add(
                "Failover",
                "…a task stopped at the kill runs again after",
                f"{healed:.1f} s (its read comes {position:.0f} s into the new leader's first sweep)",
                f"≤ 15 s + detection ({15 + sweep:.0f} s)",
                met=healed <= 15 + sweep,
            )
        finally:
            leader.stop(signal.SIGKILL)
            if standby is not None:
                standby.stop()


def block(results: Results, tasks: int, command: str, began: float, loads: tuple) -> str:
    begin, end = markers(tasks)
    return "\n".join(
        [
            begin,
            "",
            f"Measured {_dt.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')} with `{command}` in "
            f"{time.monotonic() - began:.0f} s; load average {loads[0]:.1f} at the start, {loads[1]:.1f} at the end, "
            f"on {os.cpu_count()} cores (a shared machine: other processes ran meanwhile).",
            "",
            *machine(),
            "",
            *figure_table(results),
            "",
            end,
        ]
    )


def markers(tasks: int) -> tuple[str, str]:
    return f"<!-- bench-controller-{tasks}:begin -->", f"<!-- bench-controller-{tasks}:end -->"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=3_000)
    parser.add_argument("--quick", action="store_true", help="300 tasks, a short window.")
    parser.add_argument("--no-failover", action="store_true", help="Leave out the PostgreSQL failover.")
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--no-write", action="store_true", help="Print the results; leave BENCHMARKS.md alone.")
    args = parser.parse_args()
    tasks = 300 if args.quick else args.tasks
    window = 60.0 if args.quick else max(180.0, 2 * tasks / READ_QPS)
    # Enough heals that the median is a measurement of the controller, not of where a few
    # random moments fell against the read cycle: with 40, the p50 of a correct controller
    # ranged from 0.27 to 0.65 of the target's sweep depending on the cycle's phase.
    stops = 12 if args.quick else 400
    command = "bench/controller.py" + (" --quick" if args.quick else f" --tasks {tasks}")
    compile_bytecode()
    began, load_at_start = time.monotonic(), os.getloadavg()[0]
    results = Results()
    work = Path(tempfile.mkdtemp(prefix="snapctl-bench-ctl-"))
    try:
        bench_controller(results, work, tasks, window, stops)
        if not args.no_failover:
            bench_failover(results, work, tasks)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = block(results, tasks, command, began, (load_at_start, os.getloadavg()[0]))
    print("\n" + text)
    if not args.no_write:
        begin, end = markers(tasks)
        run_write_block(text, args.out, begin, end, heading=f"Controller: {tasks:,} tasks")
        print(f"\nwrote the controller block of {args.out}")


if __name__ == "__main__":
    main()
