"""Helpers for driving the ``snapctl`` command and reading the emulator's counters."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx

from reconciler.emulator.config import DEFAULT_ACCESS_KEY, DEFAULT_SECRET_KEY

SNAPCTL = str(Path(sys.executable).parent / "snapctl")


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def snapctl_env(endpoint: str | None, home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VOLC_", "SNAPCTL_", "NO_COLOR"))}
    env.update(HOME=str(home), VOLC_ACCESSKEY=DEFAULT_ACCESS_KEY, VOLC_SECRETKEY=DEFAULT_SECRET_KEY)
    if endpoint:
        env["SNAPCTL_ENDPOINT"] = endpoint
    env.update(extra)
    return env


def run_snapctl(args: list[str], *, cwd: Path, env: dict[str, str], input: str | None = None, timeout: float = 120) -> Run:
    proc = subprocess.run(
        [SNAPCTL, *args], cwd=cwd, env=env, input=input, capture_output=True, text=True, timeout=timeout,
        stdin=None if input is not None else subprocess.DEVNULL,
    )
    return Run(proc.returncode, proc.stdout, proc.stderr)


def stats(url: str) -> dict:
    return httpx.get(f"{url}/_emulator/stats").json()


def tasks(url: str) -> dict[str, dict]:
    """Running tasks in the emulator by APP/ROOM/TASK."""
    return {f"{t['AppId']}/{t['RoomId']}/{t['TaskId']}": t for t in httpx.get(f"{url}/_emulator/tasks").json()["tasks"]}


def calls(url: str, action: str) -> int:
    return stats(url)["by_action"].get(action, {}).get("total", 0)
