"""Start-up benchmark (issue 20): how fast the commands a pre-commit hook or a pull-request
check runs all day answer, and what each one imports.

    .venv/bin/python bench/startup.py            # medians of 21 runs; writes BENCHMARKS.md's start-up block
    .venv/bin/python bench/startup.py --quick    # 5 runs, 1,000 tasks for the ratio; prints only

Every figure is the installed ``.venv/bin/snapctl`` in a subprocess (interpreter start-up
included), with compiled bytecode as an install has it. The commands run alternately, so
that a busy moment of the machine falls on all of them alike; figures are medians.

- ``snapctl --version``; ``validate manifests/``; ``plan manifests/`` offline, first with no
  state and then against the state applying them leaves (file state);
- a no-op ``plan`` of 10,000 tasks against its state, as a ratio of the time PyYAML's C
  loader takes only to parse the same files (measured in the same run, in-process);
- the import time of each command (``python -X importtime``): the total, and the largest
  top-level imports.
"""

from __future__ import annotations

import argparse
import compileall
import datetime as _dt
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

import gen  # noqa: E402

_SCRIPT = Path(sys.executable).parent / "snapctl"
SNAPCTL = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "reconciler"]
BEGIN, END = "<!-- startup:begin -->", "<!-- startup:end -->"
#: The example manifests' secrets (manifests/offsite-s3.yaml), as the README's quick start sets them.
EXAMPLE_ENV = {"OFFSITE_ACCESS_KEY": "demo-offsite-access-key", "OFFSITE_SECRET_KEY": "demo-offsite-secret-key"}
TARGETS = {"version": 0.04, "validate": 0.15, "plan": 0.20, "ratio": 0.30}


def bench_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # measure with bytecode, as installed
    for name in list(env):
        if name.startswith(("SNAPCTL_", "VOLC_")):
            del env[name]
    env.update(gen.ENVIRON)
    env.update(EXAMPLE_ENV)
    env["NO_COLOR"] = "1"
    return env


def timed(args: list[str], cwd: Path, env: dict[str, str]) -> float:
    began = time.perf_counter()
    done = subprocess.run(args, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({done.returncode}): {done.stderr.decode()[-800:]}")
    return wall


def alternate(commands: dict[str, list[str]], cwd: Path, env: dict[str, str], repeats: int) -> dict[str, float]:
    """Median wall time of each command, run in turn ``repeats`` times (after one warm-up each)."""
    walls: dict[str, list[float]] = {name: [] for name in commands}
    for args in commands.values():
        timed(args, cwd, env)
    for _ in range(repeats):
        for name, args in commands.items():
            walls[name].append(timed(args, cwd, env))
    return {name: statistics.median(values) for name, values in walls.items()}


def yaml_parse_s(directory: Path, repeats: int) -> float:
    """Median time PyYAML's C loader takes to parse every file of ``directory`` (in a fresh process,
    import excluded)."""
    code = (
        "import sys, time, yaml; from pathlib import Path\n"
        "files = sorted(Path(sys.argv[1]).glob('*.yaml')); texts = [f.read_text() for f in files]\n"
        "began = time.perf_counter()\n"
        "for text in texts: list(yaml.load_all(text, Loader=yaml.CSafeLoader))\n"
        "print(time.perf_counter() - began)\n"
    )
    runs = [
        float(subprocess.run([sys.executable, "-c", code, str(directory)], capture_output=True, check=True).stdout)
        for _ in range(repeats)
    ]
    return statistics.median(runs)


#: Where start-up time goes, by cumulative import time wherever they are imported.
PARTS = (
    "click",
    "pydantic",
    "yaml",
    "reconciler.api",
    "reconciler.manifest",
    "reconciler.state",
    "reconciler.plan",
    "reconciler.engine",
)


def import_profile(args: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, list[tuple[str, float]]]:
    """Total import time of ``snapctl ARGS`` (ms; per module the least of 5 runs) and that of
    each of :data:`PARTS` it imports."""
    best: dict[str, tuple[int, float]] = {}
    for _ in range(5):
        done = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "reconciler", *args], cwd=cwd, env=env, capture_output=True
        )
        for line in done.stderr.decode().splitlines():
            match = re.match(r"import time:\s+\d+ \|\s+(\d+) \|( +)(\S+)$", line)
            if match:
                name, depth, ms = match.group(3), len(match.group(2)), int(match.group(1)) / 1000
                best[name] = (depth, min(best[name][1], ms) if name in best else ms)
    total = sum(ms for depth, ms in best.values() if depth == 1)
    return total, [(name, best[name][1]) for name in PARTS if name in best]


def machine() -> str:
    try:
        import pydantic

        versions = f"pydantic {pydantic.VERSION}"
    except ImportError:  # pragma: no cover
        versions = ""
    load = os.getloadavg()[0]
    return (
        f"{platform.node() or 'this machine'}: {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{versions}; load average {load:.2f} when the run began"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="5 runs, 1,000 tasks for the ratio; print only")
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--no-write", action="store_true", help="print, do not touch BENCHMARKS.md")
    args = parser.parse_args()
    repeats = 5 if args.quick else args.repeats
    big = 1_000 if args.quick else 10_000
    compileall.compile_dir(ROOT / "reconciler", quiet=1)
    env = bench_env()
    began = _dt.datetime.now(_dt.timezone.utc)
    header = machine()
    with tempfile.TemporaryDirectory(prefix="snapctl-startup-") as tmp:
        work = Path(tmp)
        shutil.copytree(ROOT / "manifests", work / "manifests")
        fresh = work / "fresh"
        fresh.mkdir()
        run_fixture = [sys.executable, str(BENCH / "state_fixture.py")]
        state = work / "state" / "snapctl.state.json"
        subprocess.run([*run_fixture, str(work / "manifests"), str(state)], cwd=BENCH, env=env, check=True)
        small = alternate(
            {
                "version": [*SNAPCTL, "--version"],
                "validate": [*SNAPCTL, "validate", str(work / "manifests")],
                "plan_fresh": [*SNAPCTL, "plan", str(work / "manifests"), "--state", str(fresh / "none.json")],
                "plan": [*SNAPCTL, "plan", str(work / "manifests"), "--state", str(state)],
            },
            work,
            env,
            repeats,
        )
        many = work / "many"
        gen.write_manifests(many, big)
        many_state = work / "many-state" / "snapctl.state.json"
        subprocess.run([*run_fixture, str(many), str(many_state)], cwd=BENCH, env=env, check=True)
        plan_big = alternate({"plan": [*SNAPCTL, "plan", str(many), "--state", str(many_state)]}, work, env, repeats)
        parse_big = yaml_parse_s(many, max(3, repeats // 3))
        profiles = {
            "--version": import_profile(["--version"], work, env),
            "validate manifests/": import_profile(["validate", "manifests"], work, env),
            "plan manifests/": import_profile(["plan", "manifests", "--state", str(state)], work, env),
            "status --offline": import_profile(["status", "--offline", "manifests", "--state", str(state)], work, env),
            "--help": import_profile(["--help"], work, env),
        }
    ratio = plan_big["plan"] / parse_big

    def verdict(value: float, target: float) -> str:
        return "met" if value <= target else "missed"

    rows = [
        ("`snapctl --version`", f"{small['version']:.3f} s", "≤ 0.04 s", verdict(small["version"], TARGETS["version"])),
        (
            "`snapctl validate manifests/` (11 tasks)",
            f"{small['validate']:.3f} s",
            "≤ 0.15 s",
            verdict(small["validate"], TARGETS["validate"]),
        ),
        (
            "`snapctl plan manifests/`, against their state (no changes)",
            f"{small['plan']:.3f} s",
            "≤ 0.20 s",
            verdict(small["plan"], TARGETS["plan"]),
        ),
        (
            "`snapctl plan manifests/`, no state yet",
            f"{small['plan_fresh']:.3f} s",
            "≤ 0.20 s",
            verdict(small["plan_fresh"], TARGETS["plan"]),
        ),
        (
            f"no-op `snapctl plan` of {big:,} tasks ÷ PyYAML C loader parsing them",
            f"{plan_big['plan']:.3f} s ÷ {parse_big:.3f} s = {ratio:.2f}",
            "≤ 0.30",
            verdict(ratio, TARGETS["ratio"]),
        ),
    ]
    lines = [
        f"Run {began:%Y-%m-%d %H:%M} UTC on {header}; medians of {repeats} runs, commands alternating.",
        "",
        "| Figure | Value | Target | |",
        "|---|---|---|---|",
        *[f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows],
        "",
        "Import time by command (`python -X importtime`, least of 5 runs per module): the total, and the",
        "cumulative time of the main parts it loads (nested parts count in their parent too).",
        "",
        "| Command | Imports | Parts |",
        "|---|---|---|",
        *[
            f"| `snapctl {name}` | {total:.0f} ms | {', '.join(f'{m} {ms:.0f} ms' for m, ms in largest)} |"
            for name, (total, largest) in profiles.items()
        ],
    ]
    block = "\n".join(lines)
    print(block)
    if args.quick or args.no_write:
        return
    path = ROOT / "BENCHMARKS.md"
    text = path.read_text()
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN) + len(BEGIN)] + "\n" + block + "\n" + text[text.index(END) :]
    else:
        text += (
            f"\n## Start-up\n\n`.venv/bin/python bench/startup.py` (about two minutes).\n\n{BEGIN}\n{block}\n{END}\n"
        )
    path.write_text(text)


if __name__ == "__main__":
    main()
