"""How much the heal-latency median of bench/controller.py can move with the read cycle's phase.

    .venv/bin/python bench/heal_phases.py                 # 3,000 and 10,000 tasks, 40 and 400 heals

A controller at its read budget reads the tasks in a cycle of N / rate seconds; a task
stopped at moment t is found at its next read. With the benchmark's own seed (the same
victims and stop moments as bench/controller.py) and a cycle in address order, this
computes the median time to find the stopped tasks for every phase of the cycle against
the stops (the phase a run lands on is set by the time of the sweeps before the heals),
as a share of the target's sweep + 5 s. No controller runs: it is arithmetic on the
benchmark's sample, to tell a controller's latency from the luck of a small sample.
"""

from __future__ import annotations

import random
import statistics
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))

import gen  # noqa: E402

READ_QPS = 60


def spread(tasks: int, stops: int, rate: float = 59.4, step_s: float = 0.5) -> tuple[float, float, float, float]:
    """(lowest, highest, mean, share over 0.55) of the median over the cycle's phases."""
    from reconciler.manifest import load_manifests

    with tempfile.TemporaryDirectory() as directory:
        gen.write_manifests(Path(directory), tasks)
        addresses = sorted(load_manifests([Path(directory)], environ=gen.ENVIRON).tasks)
    rng = random.Random(19)  # as bench/controller.py
    victims = rng.sample(addresses, stops)
    window = max(180.0, 2 * tasks / READ_QPS)
    moments = sorted(rng.uniform(0, window) for _ in victims)
    position = {address: n for n, address in enumerate(addresses)}
    period, target = tasks / rate, tasks / READ_QPS + 5
    medians = []
    for k in range(int(period / step_s)):
        phase = k * step_s
        found = [(position[v] / rate + phase - t) % period for v, t in zip(victims, moments)]
        medians.append(statistics.median(found) / target)
    return min(medians), max(medians), statistics.mean(medians), sum(m > 0.55 for m in medians) / len(medians)


def main() -> None:
    print("tasks   heals  median over the cycle's phases (share of N/60 s + 5 s)")
    for tasks in (3_000, 10_000):
        for stops in (40, 400):
            low, high, mean, over = spread(tasks, stops)
            print(
                f"{tasks:>6,} {stops:>6}  {low:.2f} to {high:.2f}, mean {mean:.2f}; over 0.55 at {over:.0%} of phases"
            )


if __name__ == "__main__":
    main()
