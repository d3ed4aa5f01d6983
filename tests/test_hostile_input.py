"""Hostile input through the CLI: every bad manifest of the corpus, and broken states.

Whatever the input, snapctl answers exit status 1 with a located, readable error,
sends nothing and writes nothing: the state (and its backup) stay byte for byte
what an earlier apply left.

Each corpus case runs ``validate``, ``plan`` and ``apply --auto-approve``: over
250 commands, run through the fork server of ``snapctl_forkserver`` (a fresh
process per command, minus Python's start-up). ``test_fork_server_runs_what_the_executable_runs``
checks that it gives what the real ``snapctl`` executable gives.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from snapctl_forkserver import ForkServer
from snapctl_testing import Run, run_snapctl, snapctl_env, stats

from reconciler.emulator import EmulatorConfig, EmulatorServer

CORPUS = Path(__file__).parent / "bad_manifests"
EXPECTED = json.loads((CORPUS / "expected.json").read_text(encoding="utf-8"))
CASES = sorted(EXPECTED)
STATE = Path("state/snapctl.state.json")
STATE_FILES = [STATE, Path(str(STATE) + ".backup"), Path(str(STATE) + ".journal")]

GOOD = """\
app_id: app1
storage:
  archive: {type: tos, account_id: "2100000990", bucket: snaps}
defaults: {storage: archive}
rooms:
  Room1:
    tasks:
      T1: {image: {interval: 4}}
      T2: {image: {width: 320}}
"""


@pytest.fixture(scope="module")
def server():
    with EmulatorServer(EmulatorConfig()) as srv:
        yield srv


@pytest.fixture(scope="module")
def forks():
    fork_server = ForkServer()
    yield fork_server
    fork_server.close()


@pytest.fixture(scope="module")
def applied(tmp_path_factory, server):
    """A working directory whose state was written by two real applies (so it has a backup)."""
    work = tmp_path_factory.mktemp("applied")
    (work / "manifests").mkdir()
    (work / "state").mkdir()
    (work / "manifests" / "app.yaml").write_text(GOOD)
    env = snapctl_env(server.url, work)
    assert run_snapctl(["apply", "--auto-approve"], cwd=work, env=env).code == 0
    (work / "manifests" / "app.yaml").write_text(GOOD.replace("interval: 4", "interval: 5"))
    assert run_snapctl(["apply", "--auto-approve"], cwd=work, env=env).code == 0
    assert (work / STATE).exists() and (work / STATE_FILES[1]).exists()
    return work


def snapshot(work: Path) -> dict[str, bytes | None]:
    return {str(p): (work / p).read_bytes() if (work / p).is_file() else None for p in STATE_FILES}


def corpus_env(url: str, home: Path) -> dict[str, str]:
    # The variables the corpus may use; SNAPCTL_TEST_UNSET and the like stay unset.
    return snapctl_env(url, home, TEST_AK="test-access-key", TEST_SK="test-secret-key")


def assert_clean_failure(run: Run) -> None:
    assert run.code == 1, run.output
    assert "Traceback" not in run.output and 'File "' not in run.output, run.output
    assert run.stdout == "", run.stdout  # errors are never on stdout


@pytest.mark.parametrize("name", CASES)
def test_bad_manifest_is_refused_by_every_command(name, applied, server, forks):
    expected = EXPECTED[name]
    path = CORPUS / name
    where = path / expected["at"] if "at" in expected else path
    prefix = f"{where}:{expected['line']}:{expected['column']}: error: "
    env = corpus_env(server.url, applied)
    before_files = snapshot(applied)
    before_requests = stats(server.url)["total"]
    for args in (["validate", str(path)], ["plan", str(path)], ["apply", "--auto-approve", str(path)]):
        run = forks.run(args, cwd=applied, env=env)
        if args[0] == "validate" and "is not set" in expected["contains"]:
            # validate needs no values: an unset variable is a warning there, at the same place.
            assert run.code == 0 and f"{where}:{expected['line']}:{expected['column']}: warning: " in run.stderr
            continue
        assert_clean_failure(run)
        located = [line for line in run.stderr.splitlines() if line.startswith(prefix)]
        assert located, f"{args[0]}: no line starting with {prefix!r}:\n{run.stderr}"
        assert any(expected["contains"] in line for line in located), f"{args[0]}:\n{run.stderr}"
        assert "nothing was sent and nothing written" in run.stderr
        assert "test-secret-key" not in run.output and "test-access-key" not in run.output
    assert stats(server.url)["total"] == before_requests  # not one request
    assert snapshot(applied) == before_files  # byte for byte


def test_fork_server_runs_what_the_executable_runs(applied, server, forks):
    env = corpus_env(server.url, applied)
    for name in (CASES[0], CASES[len(CASES) // 2], CASES[-1]):
        for args in (["validate", str(CORPUS / name)], ["apply", "--auto-approve", str(CORPUS / name)]):
            assert forks.run(args, cwd=applied, env=env) == run_snapctl(args, cwd=applied, env=env), args
    assert forks.run(["state", "list"], cwd=applied, env=env) == run_snapctl(["state", "list"], cwd=applied, env=env)


# Broken states ---------------------------------------------------------------------


def _truncated(doc: bytes) -> bytes:
    return doc[: len(doc) // 2]


def _with(**fields):
    def change(doc: bytes) -> bytes:
        data = json.loads(doc)
        for key, value in fields.items():
            if value is None:
                data.pop(key, None)
            else:
                data[key] = value
        return json.dumps(data).encode()

    return change


BROKEN_STATES = {
    "truncated": (_truncated, "not valid JSON"),
    "empty": (lambda doc: b"", "not valid JSON"),
    "format-0": (_with(format_version=0), "unknown state format version 0"),
    "format-not-a-number": (_with(format_version="1"), "no format_version"),
    "newer-format": (_with(format_version=99, snapctl_version="9.0.0"), "written in state format 99 by snapctl 9.0.0"),
    "not-an-object": (lambda doc: b"[1, 2, 3]", "a state is a JSON object"),
    "no-lineage": (_with(lineage=None), "missing field 'lineage'"),
    "tasks-wrong-type": (_with(tasks=[]), "wrong type"),
    "binary": (lambda doc: bytes(range(256)), "not valid JSON"),
}
# What each command is given; all of them read the state before doing anything.
STATE_COMMANDS = [
    ["plan"],
    ["plan", "--json"],
    ["apply", "--auto-approve"],
    ["destroy", "--auto-approve"],
    ["reconcile"],
    ["import", "app1/Room1/T1"],
    ["state", "list"],
    ["state", "show", "app1/Room1/T1"],
    ["state", "rm", "app1/Room1/T1"],
]


@pytest.fixture
def copy_of_applied(applied, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(applied, work, ignore=shutil.ignore_patterns("*.lock"))
    return work


def assert_one_line_error(run: Run, fragment: str) -> None:
    assert_clean_failure(run)
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), run.stderr
    assert fragment in lines[0], run.stderr


@pytest.mark.parametrize("kind", sorted(BROKEN_STATES))
def test_broken_state_is_refused_and_left_alone(kind, copy_of_applied, server, forks):
    work = copy_of_applied
    breaker, fragment = BROKEN_STATES[kind]
    (work / STATE).write_bytes(breaker((work / STATE).read_bytes()))
    env = snapctl_env(server.url, work)
    before_files = snapshot(work)
    before_requests = stats(server.url)["total"]
    for args in STATE_COMMANDS:
        run = forks.run(args, cwd=work, env=env)
        assert_one_line_error(run, fragment)
        assert str(STATE) in run.stderr
    real = run_snapctl(["apply", "--auto-approve"], cwd=work, env=env)
    assert_one_line_error(real, fragment)
    assert stats(server.url)["total"] == before_requests
    assert snapshot(work) == before_files


def test_state_that_is_a_directory(copy_of_applied, server, forks):
    work = copy_of_applied
    (work / STATE).unlink()
    (work / STATE).mkdir()
    (work / STATE / "keep").write_text("mine")
    env = snapctl_env(server.url, work)
    before_backup = (work / STATE_FILES[1]).read_bytes()
    before_requests = stats(server.url)["total"]
    for args in STATE_COMMANDS:
        assert_one_line_error(forks.run(args, cwd=work, env=env), "is a directory, not a state file")
    assert_one_line_error(run_snapctl(["apply", "--auto-approve"], cwd=work, env=env), "is a directory")
    assert (work / STATE).is_dir() and (work / STATE / "keep").read_text() == "mine"
    assert (work / STATE_FILES[1]).read_bytes() == before_backup
    assert stats(server.url)["total"] == before_requests


def test_corrupt_journal_line_is_refused(copy_of_applied, server, forks):
    """A journal line that is not the last one cannot be a write cut short by a kill."""
    work = copy_of_applied
    doc = json.loads((work / STATE).read_bytes())
    journal = work / STATE_FILES[2]
    journal.write_bytes(
        json.dumps({"lineage": doc["lineage"], "base_serial": doc["serial"]}).encode()
        + b"\n{garbage\n"
        + json.dumps({"op": "delete", "address": "app1/Room1/T1", "serial": doc["serial"] + 1}).encode()
        + b"\n"
    )
    env = snapctl_env(server.url, work)
    before_files = snapshot(work)
    for args in STATE_COMMANDS:
        assert_one_line_error(forks.run(args, cwd=work, env=env), "corrupt journal line")
    assert snapshot(work) == before_files


def test_saved_plan_for_a_foreign_lineage_is_refused(copy_of_applied, server, forks, tmp_path):
    work = copy_of_applied
    env = snapctl_env(server.url, work)
    (work / "manifests" / "app.yaml").write_text(GOOD.replace("interval: 4", "interval: 9"))
    saved = forks.run(["plan", "--out", "change.plan"], cwd=work, env=env)
    assert saved.code == 0, saved.output
    # Another state (another lineage) takes this one's place, as when plans and states get mixed up.
    other = tmp_path / "other"
    (other / "state").mkdir(parents=True)
    (other / "manifests").mkdir()
    (other / "manifests" / "app.yaml").write_text(GOOD.replace("app1", "app2"))
    assert run_snapctl(["apply", "--auto-approve"], cwd=other, env=snapctl_env(server.url, other)).code == 0
    assert run_snapctl(["apply", "--auto-approve"], cwd=other, env=snapctl_env(server.url, other)).code == 0
    for name in (STATE, STATE_FILES[1]):
        shutil.copyfile(other / name, work / name)
    before_files = snapshot(work)
    before_requests = stats(server.url)["total"]
    for run in (
        forks.run(["apply", "change.plan"], cwd=work, env=env),
        run_snapctl(["apply", "change.plan"], cwd=work, env=env),
    ):
        assert_one_line_error(run, "the saved plan was made for another state")
    assert stats(server.url)["total"] == before_requests
    assert snapshot(work) == before_files


def test_not_a_plan_file_is_refused(copy_of_applied, server, forks):
    work = copy_of_applied
    env = snapctl_env(server.url, work)
    before_files = snapshot(work)
    for content in (b"", b"\x00\xff garbage", b'{"format_version": 1}', b"[]", json.dumps({"actions": "x"}).encode()):
        (work / "bad.plan").write_bytes(content)
        assert_one_line_error(forks.run(["apply", "bad.plan"], cwd=work, env=env), "not a snapctl plan file")
    assert snapshot(work) == before_files
