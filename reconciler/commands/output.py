"""Terminal output shared by the commands: colour, JSON, warnings, plans, progress, and
errors as one line with an exit status (never a traceback)."""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NoReturn

import click
import orjson

from ..errors import CredentialsError, Interrupted, SnapctlError
from ..style import Style

EXIT_OK, EXIT_ERROR, EXIT_CHANGES, EXIT_INTERRUPTED = 0, 1, 2, 130


def colour_enabled(stream, no_color: bool) -> bool:
    """Colour only on a terminal, and never with NO_COLOR, --no-color or TERM=dumb."""
    if no_color or os.environ.get("NO_COLOR", "") != "" or os.environ.get("TERM") == "dumb":
        return False
    return bool(getattr(stream, "isatty", lambda: False)())


def out(text: str) -> None:
    click.echo(text, nl=False)


def err(text: str) -> None:
    click.echo(text, err=True, nl=False)


def print_json(document: Any) -> None:
    try:
        text = orjson.dumps(document, option=orjson.OPT_INDENT_2).decode()
    except orjson.JSONEncodeError:  # an integer beyond 64 bits (a plan file may hold one): Python's JSON writes it
        import json

        text = json.dumps(document, indent=2, ensure_ascii=False, default=str)
    click.echo(text)


def write_chunks(chunks: Iterable[bytes], size: int = 1 << 20) -> None:
    """Write a document given in pieces to stdout, about ``size`` bytes at a time."""
    pending: list[bytes] = []
    held = 0
    for chunk in chunks:
        pending.append(chunk)
        held += len(chunk)
        if held >= size:
            click.echo(b"".join(pending), nl=False)
            pending, held = [], 0
    click.echo(b"".join(pending), nl=False)


def print_warnings(manifests, style: Style) -> None:
    for warning in manifests.warnings:
        err(style(f"{warning}\n", "yellow"))


def print_plan(the_plan, fmt: str, no_color: bool) -> None:
    """A plan on stdout as text, Markdown or JSON."""
    from .. import render

    if fmt == "json":
        write_chunks(render.plan_json(the_plan))
    elif fmt == "markdown":
        out(render.plan_markdown(the_plan))
    else:
        out(render.plan_text(the_plan, Style(colour_enabled(sys.stdout, no_color))))


def handle_errors(f: Callable) -> Callable:
    """Every failure is one clear message on stderr and exit status 1, never a traceback."""

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        try:
            return f(*args, **kwargs)
        except SnapctlError as exc:
            style = Style(colour_enabled(sys.stderr, kwargs.get("no_color", False)))
            from ..manifest import ManifestError

            if isinstance(exc, ManifestError):
                for diagnostic in exc.diagnostics:
                    err(style(f"{diagnostic}\n", "red" if diagnostic.severity == "error" else "yellow"))
                errors = sum(d.severity == "error" for d in exc.diagnostics)
                err(
                    style(
                        f"Error: {errors} problem(s) in the manifests; nothing was sent and nothing written.\n",
                        "red",
                        "bold",
                    )
                )
            elif isinstance(exc, Interrupted):  # SIGINT/SIGTERM before anything changed
                err(style(f"Interrupted: {exc}.\n", "yellow", "bold"))
                sys.exit(EXIT_INTERRUPTED)
            elif isinstance(exc, CredentialsError):  # as apply names it, with what to check
                from ..render import credentials_refused

                err(style(f"Error: {credentials_refused(exc)}\n", "red", "bold"))
            else:
                err(style(f"Error: {exc}\n", "red", "bold"))
            sys.exit(EXIT_ERROR)
        except BrokenPipeError:  # whoever read stdout went away: `snapctl apply | head -1`
            output_closed()

    return wrapper


def half_done(pending: Mapping[str, Any], addresses: Iterable[str]) -> str:
    """What a run stopped at once by a second signal left: each of ``addresses`` with a call
    not settled in the state (``pending``, the state's intents), named."""
    from ..plan import pending_text

    left = [f"{address} ({pending_text(pending[address])})" for address in addresses if address in pending]
    if not left:
        return "stopped at once by a second signal; no task was left half-done"
    return (
        f"stopped at once by a second signal; {len(left)} task(s) left half-done: {', '.join(left)}; "
        "the state records them: the next snapctl apply finishes them (snapctl plan marks them pending)"
    )


def output_closed() -> NoReturn:
    """Stdout was closed while a command wrote to it: say so on stderr in one line and exit 1.
    A run that was changing tasks stopped sending new calls, and the calls in flight were
    answered and recorded in the state before the error came here (see ``reconciler.apply``);
    reads (``status``, ``plan --refresh``) record nothing."""
    with contextlib.suppress(OSError, ValueError):
        # What stdout still buffers would fail again when the interpreter flushes it at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    with contextlib.suppress(OSError):  # stderr may be gone too (`2>&1 | head -1`)
        err(
            "Error: the output was closed before snapctl finished writing it (broken pipe); snapctl stopped there: "
            "it sent no new call, and every task it had started, changed or stopped is recorded in the state\n"
        )
    sys.exit(EXIT_ERROR)


class Progress:
    """One line per finished task; on a terminal they stay above a live bar (done/total, rate,
    ETA) that is cleared at the end, so the record of each task outlives it."""

    def __init__(self, total: int, style: Style, *, quiet: bool, stream=None):
        self.total = total
        self.style = style
        self.stream = stream or sys.stderr
        self._bar = None
        self._quiet = quiet
        if not quiet and total and self.stream.isatty():
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TaskProgressColumn,
                TextColumn,
                TimeRemainingColumn,
            )
            from rich.progress import (
                Progress as Bar,
            )

            console = Console(file=self.stream, no_color=not style.colour)
            self._bar = Bar(
                TextColumn("applying"),
                BarColumn(),
                MofNCompleteColumn(),
                TaskProgressColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeRemainingColumn(),
                console=console,
                transient=True,
            )
            self._task = self._bar.add_task("apply", total=total, rate="")
            self._bar.start()
            import time

            self._t0 = time.monotonic()

    def __call__(self, result) -> None:
        from ..render import result_line

        if self._bar is not None:
            import time

            done = self._bar.tasks[0].completed + 1
            rate = done / max(time.monotonic() - self._t0, 1e-6)
            self._bar.update(self._task, advance=1, rate=f"{rate:.0f} tasks/s")
            self._bar.console.print(result_line(result, self.style), markup=False, highlight=False)
        elif not self._quiet:
            click.echo(result_line(result, self.style), file=self.stream)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
