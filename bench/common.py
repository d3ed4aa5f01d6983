"""What every benchmark shares: the real ``snapctl`` run in a subprocess and measured,
the emulator in its own process, the figures and how BENCHMARKS.md shows them.

bench/run.py, bench/refresh.py and bench/pgstate.py import this module, never each other.
"""

from __future__ import annotations

import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(ROOT))

import gen  # noqa: E402

_SCRIPT = Path(sys.executable).parent / "snapctl"
#: The real command, as installed next to this Python (.venv/bin/snapctl).
SNAPCTL = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "reconciler.cli"]
QPS = 150
LATENCY_MS, JITTER_MS = 100, 20
#: One round trip of the emulator at its slowest (latency plus all the jitter).
ROUND_TRIP_S = (LATENCY_MS + JITTER_MS) / 1000


# -- plumbing ----------------------------------------------------------------------


def bench_env() -> dict[str, str]:
    env = dict(os.environ)
    # Measure snapctl as installed: with compiled bytecode (see compile_bytecode()).
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.update(gen.ENVIRON)
    env.update({"VOLC_ACCESSKEY": "AKLTsnapctlemulator", "VOLC_SECRETKEY": "snapctl-emulator-secret", "NO_COLOR": "1"})
    env.pop("SNAPCTL_ENDPOINT", None)
    env.pop("SNAPCTL_STATE", None)
    return env


ENV = bench_env()


def compile_bytecode() -> None:
    """A pip install compiles snapctl's modules; an editable one compiles them on first
    import unless PYTHONDONTWRITEBYTECODE is set. Either way, measure with bytecode."""
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(ROOT / "reconciler")],
        check=True,
        env=ENV,
        stdout=subprocess.DEVNULL,
    )


@dataclass
class Run:
    rc: int
    wall_s: float
    rss_mb: float
    stdout: str


def run(args: list[str], *, cwd: Path | None = None, check: bool = True) -> Run:
    """Run a command; its wall time and peak RSS (of it and what it waited for)."""
    with tempfile.TemporaryFile() as out:
        began = time.perf_counter()
        process = subprocess.Popen(
            args, cwd=cwd or ROOT, env=ENV, stdout=out, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL
        )
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - began
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode()
    if check and process.returncode not in (0, 2):
        raise RuntimeError(f"{' '.join(args)} exited {process.returncode}:\n{text[-2000:]}")
    return Run(process.returncode, wall, usage.ru_maxrss * 1024 / 1e6, text)  # ru_maxrss is in KiB


class Emulator:
    """``snapctl emulator`` in its own process, on a free port."""

    def __init__(self, *, latency_ms: int = 0, jitter_ms: int = 0, qps: int = QPS):
        self.args = [
            *SNAPCTL,
            "emulator",
            "--port",
            "0",
            "--latency-ms",
            str(latency_ms),
            "--jitter-ms",
            str(jitter_ms),
            "--qps",
            str(qps),
            "--seed",
            "1",
        ]

    def __enter__(self) -> Emulator:
        self.process = subprocess.Popen(
            self.args, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        line = self.process.stdout.readline()
        match = re.search(r"listening on (http://\S+)", line)
        if match is None:
            self.process.kill()
            raise RuntimeError(f"the emulator did not start: {line!r}")
        self.url = match.group(1)
        return self

    def __exit__(self, *exc) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def _call(self, method: str, path: str) -> dict:
        request = urllib.request.Request(self.url + path, method=method, data=b"{}" if method == "POST" else None)
        with urllib.request.urlopen(request, timeout=10) as answer:
            return json.loads(answer.read())

    def stats(self) -> dict:
        return self._call("GET", "/_emulator/stats")

    def reset(self) -> None:
        self._call("POST", "/_emulator/reset")


def median(values: list[float]) -> float:
    return statistics.median(values)


@dataclass
class Figure:
    section: str
    name: str
    value: str
    target: str = ""
    met: bool | None = None
    runs: str = ""


@dataclass
class Results:
    figures: list[Figure] = field(default_factory=list)
    details: list[str] = field(default_factory=list)

    def add(self, *args, **kwargs) -> None:
        figure = Figure(*args, **kwargs)
        self.figures.append(figure)
        verdict = "" if figure.met is None else (" [met]" if figure.met else " [MISSED]")
        print(f"  {figure.name}: {figure.value}{verdict}", flush=True)


def status(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


# -- the report ------------------------------------------------------------------------------------


def machine() -> list[str]:
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        memory_kib = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
    versions = []
    for name in ("pydantic", "PyYAML", "ryaml", "httpx", "uvicorn", "orjson"):
        try:
            from importlib.metadata import version

            versions.append(f"{name} {version(name)}")
        except Exception:
            versions.append(f"{name} (not installed)")
    return [
        f"- Machine: {cpu}, {os.cpu_count()} cores, {memory_kib / 2**20:.0f} GiB memory, {platform.system()} {platform.release()}",
        f"- Python {platform.python_version()} ({platform.python_implementation()}); {', '.join(versions)}",
    ]


def figure_table(results: Results) -> list[str]:
    """The figures as the Markdown table every block of BENCHMARKS.md shows."""
    lines = ["| area | figure | measured | target | | runs |", "|---|---|---|---|---|---|"]
    for f in results.figures:
        verdict = "" if f.met is None else ("met" if f.met else "**missed**")
        lines.append(f"| {f.section} | {f.name} | {f.value} | {f.target} | {verdict} | {f.runs} |")
    return lines


def write_block(block: str, path: Path, begin: str, end: str, heading: str = "") -> None:
    """Put ``block`` (which starts with ``begin`` and ends with ``end``) in place of the
    block between those marks in ``path``, or append it under ``heading``."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + (f"## {heading}\n\n" if heading else "") + block + "\n"
    path.write_text(text)
