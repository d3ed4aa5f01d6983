"""Start-up (issue 20, item 5): each command loads only what it uses, and a plan that is
only shown derives no key for a new task's secret. The figures themselves are in
BENCHMARKS.md (``bench/startup.py``), never timed here."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from snapctl_testing import snapctl_env

from reconciler import engine
from reconciler.apply import Applier
from reconciler.plan import NOT_COMPUTED, ActionKind, make_plan
from reconciler.render import Style, plan_document, plan_text
from reconciler.state import State

ROOT = Path(__file__).resolve().parent.parent

#: What no command below needs: the API client and its event loop, the database driver,
#: the controller's servers, the terminal and diff libraries, and the package metadata
#: pydantic's plugin loader reads (snapctl's models use no plugin: cli._without_pydantic_plugins).
HEAVY = {
    "asyncio",
    "httpx",
    "httpcore",
    "psycopg",
    "rich",
    "deepdiff",
    "uvicorn",
    "prometheus_client",
    "jsonschema",
    "importlib.metadata",
}


def loaded_modules(args: list[str], cwd: Path, env: dict[str, str]) -> set[str]:
    """The modules ``snapctl ARGS`` imports, as ``python -X importtime`` lists them."""
    run = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "reconciler", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    names = set(re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s+(\S+)$", run.stderr, flags=re.M))
    assert names, run.stderr[-2000:]
    return names


def tops(names: set[str]) -> set[str]:
    """Top-level packages, and the names of HEAVY that are submodules (importlib.metadata)."""
    return {name.split(".")[0] for name in names} | (names & HEAVY)


@pytest.fixture
def project(tmp_path):
    (tmp_path / "manifests").mkdir()
    for manifest in (ROOT / "manifests").glob("*.yaml"):
        (tmp_path / "manifests" / manifest.name).write_bytes(manifest.read_bytes())
    env = snapctl_env(None, tmp_path) | {"OFFSITE_ACCESS_KEY": "demo-ak", "OFFSITE_SECRET_KEY": "demo-sk"}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return tmp_path, env


def test_version_loads_neither_the_cli_framework_nor_the_models(project):
    cwd, env = project
    names = loaded_modules(["--version"], cwd, env)
    assert not tops(names) & {"click", "pydantic", "yaml", *HEAVY}, sorted(tops(names))
    assert names & {"reconciler"} and not any(n.startswith("reconciler.") for n in names), sorted(names)


def test_help_lists_every_command_without_loading_any_server(project):
    cwd, env = project
    names = loaded_modules(["--help"], cwd, env)
    assert not tops(names) & HEAVY, sorted(tops(names) & HEAVY)
    assert not names & {"reconciler.emulator.server", "reconciler.emulator.app", "reconciler.manifest"}


def test_validate_loads_neither_the_state_nor_the_plan(project):
    cwd, env = project
    names = loaded_modules(["validate", "manifests/"], cwd, env)
    assert not tops(names) & HEAVY, sorted(tops(names) & HEAVY)
    ours = {n for n in names if n.startswith("reconciler.")}
    assert not ours & {"reconciler.state", "reconciler.plan", "reconciler.render", "reconciler.engine"}, sorted(ours)
    assert "reconciler.manifest" in ours  # it did validate


def test_offline_plan_loads_no_client_driver_or_server(project):
    cwd, env = project
    names = loaded_modules(["plan", "manifests/"], cwd, env)
    assert not tops(names) & HEAVY, sorted(tops(names) & HEAVY)
    assert {"reconciler.plan", "reconciler.state"} <= names  # it did plan


def test_pyyaml_loads_only_for_a_file_the_fast_path_declines(project):
    # Files without tags, merge keys or doubtful scalars are read by ryaml alone, anchors and
    # aliases included (the example multi-document.yaml has them); a merge key takes PyYAML's path.
    cwd, env = project
    assert "*agent-streams" in (cwd / "manifests" / "multi-document.yaml").read_text()
    for args in (["validate", "manifests/"], ["plan", "manifests/"]):
        assert "yaml" not in tops(loaded_modules(args, cwd, env)), args
    merged = (
        (cwd / "manifests" / "multi-document.yaml")
        .read_text()
        .replace("      agent-hourly:\n", "      agent-hourly:\n        <<: {max_idle_time: 300}\n")
    )
    (cwd / "manifests" / "multi-document.yaml").write_text(merged)
    assert "yaml" in tops(loaded_modules(["validate", "manifests/"], cwd, env))


#: The console script's main in a fresh interpreter, saying whether the load froze more.
LOAD_FREEZE_PROBE = """
import gc, sys
import reconciler.manifest as manifest
load = manifest.load_manifests
def probe(*args, **kwargs):
    before = gc.get_freeze_count()
    loaded = load(*args, **kwargs)
    print("grew:", gc.get_freeze_count() > before > 0)
    return loaded
manifest.load_manifests = probe
from reconciler.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_large_load_is_frozen_after_start_up_was(project):
    # The load of 1,000 tasks or more ends frozen (manifest.loader._GcPause), though start-up
    # froze what it loaded first: else the collector walks every task loaded, again and again.
    cwd, env = project
    tasks = "".join(f"      t{n:04d}: {{}}\n" for n in range(1000))
    (cwd / "manifests" / "many.yaml").write_text(
        "app_id: many\ndefaults: {storage: archive}\nstorage:\n"
        "  archive: {type: tos, account_id: '1', bucket: b}\nrooms:\n  r1:\n    tasks:\n" + tasks
    )
    run = subprocess.run(
        [sys.executable, "-c", LOAD_FREEZE_PROBE, "validate", "manifests/"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert "grew: True" in run.stdout.splitlines(), run.stdout


#: Runs the console script's main in a fresh interpreter; then names the wire models
#: whose validator and serializer were built (api's models are built on first use).
BUILT_PROBE = """
import sys
from reconciler import api
from reconciler.__main__ import main
try:
    code = main(sys.argv[1:])
finally:
    models = [m for m in vars(api).values() if isinstance(m, type) and issubclass(m, api.BaseModel)]
    print("built:", sorted(m.__name__ for m in models if m is not api.BaseModel and m.__pydantic_complete__))
sys.exit(code)
"""


@pytest.mark.parametrize(
    "args, built",
    [(["validate", "manifests/"], []), (["plan", "manifests/"], ["StartSnapshotRequest"])],
)
def test_a_command_builds_only_the_wire_models_it_uses(project, args, built):
    # validate builds requests without validating them; an offline plan serializes them;
    # neither reads an answer (SnapshotTask, Envelope) or sends an update or a stop.
    cwd, env = project
    run = subprocess.run([sys.executable, "-c", BUILT_PROBE, *args], cwd=cwd, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert f"built: {built}" in run.stdout.splitlines(), run.stdout


#: Runs the console script's main in a fresh interpreter, watching the cyclic garbage
#: collector: whether it ran while the command's module loaded (pydantic's models, the
#: wire types), whether it is on while the command works, whether all is frozen at the end.
GC_PROBE = """
import gc, sys
import reconciler.cli as cli
import reconciler.manifest as manifest
collections = []
gc.callbacks.append(lambda phase, info: phase == "start" and collections.append(info["generation"]))
resume, load = cli._resume_gc, manifest.load_manifests
def resumed():
    print("loaded:", gc.isenabled(), "collections:", len(collections))
    resume()
def probe(*args, **kwargs):
    print("during:", gc.isenabled(), "frozen:", gc.get_freeze_count() > 0)
    return load(*args, **kwargs)
cli._resume_gc, manifest.load_manifests = resumed, probe
from reconciler.__main__ import main
collections.clear()
try:
    code = main(sys.argv[1:])
finally:
    print("after:", gc.get_freeze_count() > 0)
sys.exit(code)
"""


def test_the_collector_is_paused_only_while_the_cli_and_the_command_load(project):
    # A command does its work with the collector on (reconcile --watch runs for days), over
    # what start-up loaded frozen out of its reach; at the end everything is frozen, so the
    # interpreter's exit skips those collections. Without the pause, importing the CLI and
    # the command (pydantic, click) runs dozens of collections.
    cwd, env = project
    run = subprocess.run(
        [sys.executable, "-c", GC_PROBE, "validate", "manifests/"], cwd=cwd, env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    lines = [line for line in run.stdout.splitlines() if line.startswith(("loaded:", "during:", "after:"))]
    assert lines == ["loaded: False collections: 0", "during: True frozen: True", "after: True"], run.stdout
    assert "Success!" in run.stdout


BASE = {
    "AppId": "a",
    "RoomId": "r",
    "TaskId": "t",
    "ImageConfig": {"Format": 0, "Width": 0, "Height": 0, "Interval": 2},
    "StorageConfig": {
        "Type": 2,
        "CustomConfig": {"Vendor": 0, "Region": 0, "Bucket": "b", "AccessKey": "AK-1", "SecretKey": "SK-1"},
    },
}


def test_a_plan_only_shown_derives_no_key_and_shows_the_same():
    desired = {f"a/r/t{i}": BASE for i in range(3)}
    shown_state, saved_state = State.new(), State.new()
    saved_state.fingerprint_key, saved_state.lineage = shown_state.fingerprint_key, shown_state.lineage
    shown = make_plan(desired, shown_state, fingerprint_creates=False)
    saved = make_plan(desired, saved_state)
    assert shown_state._fingerprinter is None and not shown_state._memo  # no scrypt was started
    assert saved_state._memo  # the plan to save computed them
    assert [a.kind for a in shown.actions] == [ActionKind.create] * 3
    assert shown.actions[0].desired["StorageConfig"]["CustomConfig"]["SecretKey"] == NOT_COMPUTED
    shown.created_at = saved.created_at
    assert plan_text(shown, Style(False)) == plan_text(saved, Style(False))
    assert plan_document(shown) == plan_document(saved)
    assert shown.display_only and not saved.display_only


def test_a_plan_only_shown_is_never_saved_or_applied(tmp_path):
    shown = make_plan({"a/r/t": BASE}, State.new(), fingerprint_creates=False)
    with pytest.raises(ValueError, match="only to be shown"):
        engine.save_plan(shown, tmp_path / "p.json")
    assert not (tmp_path / "p.json").exists()
    applier = Applier(None, None, {})  # type: ignore[arg-type]  # refused before either is used
    with pytest.raises(ValueError, match="only to be shown"):
        asyncio.run(applier.run(shown))


def test_a_known_task_still_compares_its_secrets():
    # Only a task the state does not hold skips the fingerprint: a changed secret of a
    # recorded task is still found.
    state = State.new()
    state.exists = True
    state.tasks = {"a/r/t": {"request": state.fingerprint(BASE)}}
    edited = {**BASE, "StorageConfig": {"Type": 2, "CustomConfig": {**BASE["StorageConfig"]["CustomConfig"]}}}
    edited["StorageConfig"]["CustomConfig"]["SecretKey"] = "SK-2"
    plan = make_plan({"a/r/t": edited}, state, fingerprint_creates=False)
    assert [a.kind for a in plan.actions] == [ActionKind.replace] and not plan.display_only
    assert [c.path for c in plan.actions[0].changes] == ["StorageConfig.CustomConfig.SecretKey"]


def test_the_plan_command_shows_what_a_saved_plan_holds(project):
    cwd, env = project
    shown = subprocess.run(
        [sys.executable, "-m", "reconciler", "plan", "manifests/", "--no-color"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    saved = subprocess.run(
        [sys.executable, "-m", "reconciler", "plan", "manifests/", "--no-color", "--out", "p.json"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == saved.returncode == 0, shown.stderr + saved.stderr
    assert "(sensitive)" in shown.stdout
    assert saved.stdout.startswith(shown.stdout), (shown.stdout, saved.stdout)
    assert "not-computed" not in (cwd / "p.json").read_text() and "demo-sk" not in (cwd / "p.json").read_text()
    assert not os.path.exists(cwd / "state" / "snapctl.state.json")
