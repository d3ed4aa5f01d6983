"""Every numeric flag takes a finite number in its range, through one type (issue 17, item 10).

``--qps nan``, ``--timeout nan`` ended in tracebacks, ``--interval nan`` never waited and
``--lock-timeout nan`` waited forever: NaN and infinities compare false, so range checks let
them through. Each numeric flag of every command (and the emulator's) is now refused with
NaN, an infinity and an out-of-range value: one line, exit 1, nothing sent.
"""

from __future__ import annotations

import click
import pytest
from snapctl_testing import new_project, run_snapctl, snapctl_env

from reconciler.cli import COMMANDS, cli
from reconciler.commands.options import Number

MANIFEST = """\
app_id: numapp
storage:
  archive: {type: tos, account_id: "2100000990", bucket: snaps}
defaults: {storage: archive}
rooms:
  R0:
    tasks:
      T0: {}
"""


def _commands() -> list[tuple[list[str], click.Command]]:
    """Every command by its words (``["state", "rm"]``)."""
    found = []
    context = click.Context(cli)
    for name in sorted(COMMANDS):
        command = cli.get_command(context, name)
        assert command is not None
        if isinstance(command, click.Group):
            found += [([name, sub], command.commands[sub]) for sub in sorted(command.commands)]
        else:
            found.append(([name], command))
    return found


def numeric_options() -> list[tuple[list[str], click.Option]]:
    """Every option of every command whose value is a number."""
    numeric = (click.types.IntParamType, click.types.FloatParamType, Number)
    return [
        (words, param)
        for words, command in _commands()
        for param in command.params
        if isinstance(param, click.Option) and isinstance(param.type, numeric)
    ]


def test_every_numeric_option_is_a_finite_number_in_a_range():
    options = numeric_options()
    assert len(options) >= 20, options  # the API options of six commands, reconcile's and the emulator's
    loose = [f"{' '.join(words)} {param.opts[0]}" for words, param in options if not isinstance(param.type, Number)]
    assert loose == [], f"numeric options not of the Number type: {loose}"


def _cases() -> list[tuple[list[str], str, str]]:
    """Each distinct numeric option once (the same decorator serves several commands: the test
    above checks their type), with NaN; and, for one float and one integer option, an
    infinity, a number too large for a float, and the first value past the range."""
    cases, seen = [], set()
    for words, param in numeric_options():
        key = (words == ["emulator"], param.opts[0])
        if key not in seen:
            seen.add(key)
            cases.append((words, param.opts[0], "nan"))
    by_flag = {(tuple(words), param.opts[0]): param for words, param in numeric_options()}
    for words, flag in ((["apply"], "--lock-timeout"), (["reconcile"], "--metrics-port")):
        high = by_flag[(tuple(words), flag)].type.high
        cases += [(words, flag, value) for value in ("-inf", "1e999", str(int(high) + 1))]
    return cases


CASES = _cases()


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("numbers")


@pytest.mark.parametrize(("words", "flag", "value"), CASES, ids=[f"{' '.join(w)} {f} {v}" for w, f, v in CASES])
def test_a_number_that_is_not_finite_or_out_of_range_is_refused(emulator, work, words, flag, value):
    if not (work / "manifests").exists():
        new_project(work, emulator.url, {"app.yaml": MANIFEST})
    env = snapctl_env(emulator.url, work)
    args = [*words, f"{flag}={value}"]
    if words == ["import"]:
        args.insert(1, "numapp/R0/T0")
    if words == ["reconcile"]:
        args.append("--watch")  # --interval and --metrics-port are --watch's
    if words == ["emulator"] and flag != "--port":
        args.append("--port=0")  # were the value taken, a free port, not 8080
    before = emulator.stats()["total"]
    run = run_snapctl(args, cwd=work, env=env, timeout=30)
    assert run.code == 1, run.output
    assert "Traceback" not in run.output and "listening" not in run.output, run.output
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr  # one line, as every bad input
    error = lines[0]
    assert error.startswith(f"Error: Invalid value for '{flag}': {value!r} is not "), run.stderr
    integer = {param.opts[0]: param.type.integer for w, param in numeric_options() if w == words}[flag]
    if value.isdigit():
        assert "is not in the range" in error, error
    else:
        assert ("is not an integer" if integer else "is not a finite number") in error, error
    assert run.stdout == "" and emulator.stats()["total"] == before
    assert not (work / "state" / "snapctl.state.json").exists()
