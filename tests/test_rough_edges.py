"""The first week's rough edges (issue 18, item 5): each found by a new user, each tested
end to end with the real ``snapctl`` command (against the emulator where it calls the API)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from snapctl_testing import SNAPCTL, new_project, run_on_terminal, run_snapctl, snapctl_env

# -- every manifest problem in one run --------------------------------------------------------

EVERY_PROBLEM = """\
app_id: app1
storage:
  archive: {type: tos, account_id: "2100000990", bucket: snaps}
  offsite: {type: custom, bucket: b, access_key: "${env:EDGES_UNSET_AK}", secret_key: "${env:EDGES_UNSET_SK}"}
defaults:
  storage: evidance
  max_idle_time: 0
rooms:
  R1:
    image: {width: 5000}
    storage: evidance
    tasks:
      T1: {storage: evidance, image: {interval: 0}}
      T2: {storage: evidance, imgae: {}}
      T3: {storage: offsite, max_idle_time: 0}
"""

# Each problem, by line: an unknown profile where the same level has another error was
# reported only once that error was fixed, and so was a variable not set in the profile a
# task with another error uses.
EXPECTED = [
    "manifests/app.yaml:4:50: error: environment variable EDGES_UNSET_AK is not set",
    "manifests/app.yaml:4:87: error: environment variable EDGES_UNSET_SK is not set",
    "manifests/app.yaml:6:12: error: defaults.storage: unknown storage profile 'evidance'",
    "manifests/app.yaml:7:18: error: defaults.max_idle_time: must be between 1 and 86400",
    "manifests/app.yaml:10:20: error: rooms.R1.image.width: must be between 0 and 1920",
    "manifests/app.yaml:11:14: error: rooms.R1.storage: unknown storage profile 'evidance'",
    "manifests/app.yaml:13:21: error: rooms.R1.tasks.T1.storage: unknown storage profile 'evidance'",
    "manifests/app.yaml:13:49: error: rooms.R1.tasks.T1.image.interval: must be between 1 and 600",
    "manifests/app.yaml:14:21: error: rooms.R1.tasks.T2.storage: unknown storage profile 'evidance'",
    "manifests/app.yaml:14:31: error: rooms.R1.tasks.T2: unknown key 'imgae'; did you mean 'image'?",
    "manifests/app.yaml:15:45: error: rooms.R1.tasks.T3.max_idle_time: must be between 1 and 86400",
]


def test_every_manifest_problem_is_reported_in_one_run(emulator, tmp_path):
    work = new_project(tmp_path, emulator.url, {"app.yaml": EVERY_PROBLEM})
    env = snapctl_env(emulator.url, work)
    for command in (["plan"], ["apply", "--auto-approve"]):
        run = run_snapctl(command, cwd=work, env=env)
        assert run.code == 1 and run.stdout == "", run.output
        lines = run.stderr.splitlines()
        assert [line for line in lines if line.startswith("manifests/")] == [
            next(line for line in lines if line.startswith(fragment)) for fragment in EXPECTED
        ], run.stderr
        assert lines[-1].startswith(f"Error: {len(EXPECTED)} problem(s) in the manifests"), run.stderr
    # validate needs no secret values: the variables are warnings there, every error still reported
    run = run_snapctl(["validate"], cwd=work, env=env)
    assert run.code == 1 and "Error: 9 problem(s)" in run.stderr, run.output
    assert run.stderr.count("warning: environment variable EDGES_UNSET_") == 2, run.stderr
    assert emulator.stats()["total"] == 0
    assert not (work / "state" / "snapctl.state.json").exists()


# -- a --no-secrets plan is not offered for apply ---------------------------------------------

OFFSITE = """\
app_id: app1
storage:
  offsite: {type: custom, bucket: b, access_key: "${env:EDGES_AK}", secret_key: "${env:EDGES_SK}"}
rooms:
  R1:
    tasks:
      T1: {storage: offsite}
"""


def test_a_no_secrets_plan_saved_to_a_file_is_not_offered_for_apply(emulator, tmp_path):
    work = new_project(tmp_path, emulator.url, {"app.yaml": OFFSITE})
    env = snapctl_env(emulator.url, work)
    run = run_snapctl(["plan", "--no-secrets", "--out", "review.plan"], cwd=work, env=env)
    assert run.code == 0, run.output
    assert "Apply exactly this plan" not in run.stdout and "snapctl apply review.plan" not in run.stdout, run.stdout
    assert "Saved the plan to review.plan, for review only (snapctl show review.plan)" in run.stdout, run.stdout
    assert "cannot be applied" in run.stdout.splitlines()[-1], run.stdout
    # what it says holds: apply refuses it, and sends nothing
    run = run_snapctl(["apply", "review.plan"], cwd=work, env={**env, "EDGES_AK": "ak1", "EDGES_SK": "sk1"})
    assert run.code == 1 and "planned with --no-secrets" in run.stderr, run.output
    assert emulator.stats()["total"] == 0
    # a plan made with the secrets says how to apply it
    run = run_snapctl(["plan", "--out", "p.plan"], cwd=work, env={**env, "EDGES_AK": "ak1", "EDGES_SK": "sk1"})
    assert run.code == 0 and "Apply exactly this plan with: snapctl apply p.plan" in run.stdout, run.output


# -- shell completion -------------------------------------------------------------------------


def test_completion_scripts_are_printed_and_the_bash_one_completes(tmp_path):
    env = snapctl_env(None, tmp_path)
    scripts = {}
    for shell, marker in (
        ("bash", "complete -o nosort -F _snapctl_completion snapctl"),
        ("zsh", "#compdef snapctl"),
        ("fish", "complete --no-files --command snapctl"),
    ):
        run = run_snapctl(["completion", shell], cwd=tmp_path, env=env)
        assert run.code == 0 and run.stderr == "", run.output
        assert marker in run.stdout and "_SNAPCTL_COMPLETE" in run.stdout, run.stdout
        scripts[shell] = run.stdout
    # The variable form the script itself uses prints the same script.
    run = run_snapctl([], cwd=tmp_path, env={**env, "_SNAPCTL_COMPLETE": "bash_source"})
    assert run.stdout == scripts["bash"], run.output
    # Sourced in a real bash, it completes commands and an option's choices.
    script = tmp_path / "snapctl.bash"
    script.write_text(scripts["bash"])
    probe = (
        f"source {script}; "
        'COMP_WORDS=(snapctl pl); COMP_CWORD=1; _snapctl_completion snapctl; echo "${COMPREPLY[*]}"; '
        'COMPREPLY=(); COMP_WORDS=(snapctl plan --format ""); COMP_CWORD=3; _snapctl_completion snapctl; echo "${COMPREPLY[*]}"'
    )
    path = f"{Path(SNAPCTL).parent}:{os.environ.get('PATH', '')}"
    done = subprocess.run(["bash", "-c", probe], env={**env, "PATH": path}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["plan", "text json markdown"], done.stdout + done.stderr
    run = run_snapctl(["completion", "tcsh"], cwd=tmp_path, env=env)
    assert run.code == 1 and len(run.stderr.splitlines()) == 1 and "'tcsh' is not one of" in run.stderr, run.output


# -- apply --refresh: a task not in the state yet is new, not unseen -------------------------

NEW_TASKS = """\
app_id: app1
storage:
  archive: {type: tos, account_id: "2100000990", bucket: snaps}
defaults: {storage: archive}
rooms:
  R1:
    tasks:
      Old: {}
"""


def test_refresh_plans_tasks_new_in_the_manifests_as_creates_not_as_unseen(emulator, tmp_path):
    work = new_project(tmp_path, emulator.url, {"app.yaml": NEW_TASKS})
    env = snapctl_env(emulator.url, work)
    assert run_snapctl(["apply", "--auto-approve"], cwd=work, env=env).code == 0
    (work / "manifests" / "app.yaml").write_text(NEW_TASKS + "      New1: {}\n      New2: {}\n")
    plan = run_snapctl(["plan", "--refresh", "--no-color"], cwd=work, env=env)
    assert plan.code == 0, plan.output
    assert "could not be seen" not in plan.stdout and "TaskNotFound" not in plan.stdout, plan.stdout
    assert "Refreshed 3 task(s) with GetSnapshotTask" in plan.stdout and ": 2 new, 1 running." in plan.stdout
    assert "Plan: 2 to add, 0 to change" in plan.stdout, plan.stdout
    document = json.loads(run_snapctl(["plan", "--refresh", "--json"], cwd=work, env=env).stdout)
    assert document["unknown"] == [] and document["observed"] == {"new": 2, "running": 1}, document
    applied = run_snapctl(["apply", "--refresh", "--auto-approve", "--no-color"], cwd=work, env=env)
    assert applied.code == 0, applied.output
    assert "could not be seen" not in applied.output and "TaskNotFound" not in applied.output, applied.output
    assert "StartSnapshot will confirm" not in applied.output, applied.output
    assert {t["TaskId"] for t in emulator.tasks()} == {"Old", "New1", "New2"}


# -- a credentials variable set under a near-miss name is named ------------------------------


def test_a_near_miss_credentials_variable_is_suggested(emulator, tmp_path):
    work = new_project(tmp_path, emulator.url, {"app.yaml": NEW_TASKS})
    env = snapctl_env(emulator.url, work)
    del env["VOLC_ACCESSKEY"], env["VOLC_SECRETKEY"]
    typo = {**env, "VOLC_ACCESS_KEY": "AK-value-never-shown", "VOLC_SECRET_KEY": "SK-value-never-shown"}
    run = run_snapctl(["apply", "--auto-approve"], cwd=work, env=typo)
    assert run.code == 1 and run.stdout == "" and len(run.stderr.splitlines()) == 1, run.output
    assert run.stderr.startswith(
        "Error: no credentials (VOLC_ACCESS_KEY is set: did you mean VOLC_ACCESSKEY?; "
        "VOLC_SECRET_KEY is set: did you mean VOLC_SECRETKEY?): set VOLC_ACCESSKEY and VOLC_SECRETKEY"
    ), run.stderr
    assert "never-shown" not in run.output
    # one right, one misspelt: the pair's message names the misspelt one too
    half = {**env, "VOLC_ACCESSKEY": "AK-value-never-shown", "VOLC_SECRET_KEY": "SK-value-never-shown"}
    run = run_snapctl(["reconcile"], cwd=work, env=half)
    assert run.code == 1 and len(run.stderr.splitlines()) == 1, run.output
    assert "VOLC_ACCESSKEY is set but VOLC_SECRETKEY is not (VOLC_SECRET_KEY is set: did you mean VOLC_SECRETKEY?)" in (
        run.stderr
    ), run.stderr
    assert "never-shown" not in run.output
    # no near miss, no hint
    run = run_snapctl(["apply", "--auto-approve"], cwd=work, env=env)
    assert run.code == 1 and "Error: no credentials: set VOLC_ACCESSKEY" in run.stderr, run.output
    assert emulator.stats()["total"] == 0 and not (work / "state" / "snapctl.state.json").exists()


# -- after ./quickstart.sh, the README's next step works as written ---------------------------

REPO = Path(__file__).resolve().parent.parent
INSTALL_STEPS = (
    "python3 -m venv .venv",
    ".venv/bin/python -m pip install --quiet --upgrade pip",
    '.venv/bin/python -m pip install --quiet -e ".[test]"',
)


def _tour_block() -> list[str]:
    """The README's first shell block after the quick start: its emulator again, and a plan."""
    for block in (REPO / "README.md").read_text().split("## A ten-minute tour", 1)[1].split("```sh\n")[1:2]:
        return block.split("```")[0].splitlines()
    raise AssertionError("no shell block under '## A ten-minute tour' in README.md")


def test_after_the_quickstart_the_readmes_next_step_works_as_written(tmp_path):
    from pg_server import free_port

    clone = tmp_path / "clone"
    clone.mkdir()
    shutil.copytree(REPO / "manifests", clone / "manifests")
    (clone / "state").mkdir()
    # The quick start's steps, but for the install (this test runs in an installed snapctl).
    script = (REPO / "quickstart.sh").read_text()
    for step in INSTALL_STEPS:
        assert step in script, step
        script = script.replace(step, "true")
    (clone / "quickstart.sh").write_text(script)
    (clone / ".venv" / "bin").mkdir(parents=True)
    for name, target in (("snapctl", SNAPCTL), ("python", sys.executable)):
        wrapper = clone / ".venv" / "bin" / name
        wrapper.write_text(f'#!/bin/sh\nexec {target} "$@"\n')
        wrapper.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VOLC_", "SNAPCTL_", "OFFSITE_"))}
    env.update(HOME=str(clone))
    port = str(free_port())
    done = subprocess.run(
        ["bash", "quickstart.sh"],
        cwd=clone,
        env={**env, "SNAPCTL_QUICKSTART_PORT": port},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    started = int(done.stdout.rsplit("Tasks running in the emulator:", 1)[1].split()[0])
    assert started > 0, done.stdout

    # The README's next block, word for word but for the quick start's port (18080 there).
    block = _tour_block()
    assert any("18080" in line for line in block), block
    expected = next(line.split("#", 1)[1].strip() for line in block if line.startswith("snapctl plan "))
    steps = [line.replace("18080", port) for line in block]
    (clone / "next-step.sh").write_text(
        "set -e\ntrap 'kill $(jobs -p) 2>/dev/null; wait' EXIT\n" + "\n".join(steps) + "\n"
    )
    next_step = subprocess.run(
        ["bash", "next-step.sh"], cwd=clone, env=env, capture_output=True, text=True, timeout=120
    )
    assert next_step.returncode == 0, next_step.stdout + next_step.stderr
    assert "belongs to endpoint" not in next_step.stderr, next_step.stderr
    assert expected == f"No changes. {started} task(s) match the state.", (expected, started)
    assert expected in next_step.stdout, next_step.stdout + next_step.stderr


# -- the docs name files that exist and say what an empty manifest does -----------------------


def test_docs_name_manifest_files_that_exist_and_say_an_empty_file_is_an_error(emulator, tmp_path):
    import re

    # (the pages that send a user to the repository's examples; docs/ show made-up files in examples)
    pages = [REPO / "quickstart.sh", REPO / "README.md", REPO / "manifests" / "README.md"]
    named = {(page.name, m) for page in pages for m in re.findall(r"manifests/[\w.-]+\.ya?ml", page.read_text())}
    assert ("quickstart.sh", "manifests/offsite-s3.yaml") in named
    assert [(page, name) for page, name in sorted(named) if not (REPO / name).is_file()] == []
    # What manifests/README.md says of empty files and documents is what snapctl does.
    rules = " ".join((REPO / "manifests" / "README.md").read_text().split())
    assert "a file that holds no document (empty, or only comments) is an error" in rules
    assert "skipped (an empty file with a warning)" not in rules
    work = new_project(tmp_path, emulator.url, {"app.yaml": NEW_TASKS + "---\n", "empty.yaml": "# nothing\n"})
    run = run_snapctl(["validate"], cwd=work, env=snapctl_env(emulator.url, work))
    assert run.code == 1 and "manifests/empty.yaml:1:1: error: the file holds no YAML document" in run.stderr
    assert "app.yaml" not in run.stderr, run.stderr


# -- snapctl schema --out: the schema where a user's manifests can point at it ----------------


def test_schema_out_writes_the_schema_for_a_projects_manifests(tmp_path):
    import jsonschema

    env = snapctl_env(None, tmp_path)
    printed = run_snapctl(["schema"], cwd=tmp_path, env=env)
    assert printed.code == 0 and printed.stdout.encode() == (REPO / "docs" / "snapctl.schema.json").read_bytes()
    (tmp_path / "schemas").mkdir()
    for given, written in (("schemas", "schemas/snapctl.schema.json"), ("editor.json", "editor.json")):
        run = run_snapctl(["schema", "--out", given], cwd=tmp_path, env=env)
        assert run.code == 0 and run.stderr == "", run.output
        assert (tmp_path / written).read_text() == printed.stdout  # the same bytes as printed
        assert oct((tmp_path / written).stat().st_mode & 0o044) == oct(0o044)  # readable by all, as in a repo
        assert f"Wrote the manifest schema to {written}." in run.stdout, run.stdout
    # The line it prints, as the first line of a manifest in manifests/, reaches the schema.
    line = run_snapctl(["schema", "--out", "schemas/"], cwd=tmp_path, env=env).stdout.splitlines()[-1].strip()
    assert line == "# yaml-language-server: $schema=../schemas/snapctl.schema.json", line
    reference = (tmp_path / "manifests" / line.split("$schema=")[1]).resolve()
    schema = json.loads(reference.read_text())
    jsonschema.validate({"app_id": "a", "rooms": {"R": {"tasks": {"T": {}}}}}, schema)
    # A place that cannot be written: one line, nothing left behind.
    for bad, message in (("missing/", "missing/: no such directory"), ("nodir/x.json", "cannot write the schema")):
        run = run_snapctl(["schema", "--out", bad], cwd=tmp_path, env=env)
        assert run.code == 1 and run.stdout == "" and len(run.stderr.splitlines()) == 1, run.output
        assert message in run.stderr, run.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["editor.json", "schemas"]
    assert [p.name for p in (tmp_path / "schemas").iterdir()] == ["snapctl.schema.json"]


# -- storage regions by name, where the vendor's table is known -------------------------------

REGIONS = """\
app_id: app1
storage:
  tos: {type: tos, account_id: "2100000990", bucket: snaps, region: cn-shanghai}
  s3: {type: custom, vendor: s3, bucket: b, region: eu-west-1, access_key: "${env:RK}", secret_key: "${env:RS}"}
  oss: {type: custom, vendor: oss, bucket: b, region: 7, access_key: "${env:RK}", secret_key: "${env:RS}"}
  kodo: {type: custom, vendor: kodo, bucket: b, region: 3, access_key: "${env:RK}", secret_key: "${env:RS}"}
rooms:
  R:
    tasks:
      Tos: {storage: tos}
      S3: {storage: s3}
      Oss: {storage: oss}
      Kodo: {storage: kodo}
"""


def test_storage_regions_take_the_vendors_names_and_plans_show_both(emulator, tmp_path):
    work = new_project(tmp_path, emulator.url, {"app.yaml": REGIONS})
    env = snapctl_env(emulator.url, work, RK="region-access-key", RS="region-secret-key")
    plan = run_snapctl(["plan", "--no-color"], cwd=work, env=env)
    assert plan.code == 0, plan.output
    regions = [line.split("+ ")[1] for line in plan.stdout.splitlines() if "Config.Region" in line]
    assert [" ".join(r.split()) for r in regions] == [
        "StorageConfig.CustomConfig.Region = 3",  # Kodo: no table, no name
        "StorageConfig.CustomConfig.Region = 7 (oss-cn-shenzhen)",  # an integer, named
        "StorageConfig.CustomConfig.Region = 4 (eu-west-1)",
        "StorageConfig.TosConfig.Region = 2 (cn-shanghai)",
    ], plan.stdout
    assert run_snapctl(["apply", "--auto-approve"], cwd=work, env=env).code == 0
    sent = {t["TaskId"]: t["Request"]["StorageConfig"] for t in emulator.tasks()}
    assert sent["Tos"]["TosConfig"]["Region"] == 2 and sent["S3"]["CustomConfig"]["Region"] == 4
    assert sent["Oss"]["CustomConfig"]["Region"] == 7 and sent["Kodo"]["CustomConfig"]["Region"] == 3
    # A change of region by name: old and new named, in text and JSON.
    (work / "manifests" / "app.yaml").write_text(REGIONS.replace("region: cn-shanghai", "region: cn-beijing"))
    plan = run_snapctl(["plan", "--no-color"], cwd=work, env=env)
    assert "~ StorageConfig.TosConfig.Region = 2 (cn-shanghai) -> 0 (cn-beijing)" in plan.stdout, plan.stdout
    document = json.loads(run_snapctl(["plan", "--json"], cwd=work, env=env).stdout)
    (change,) = [c for a in document["actions"] for c in a["changes"]]
    assert (change["old"], change["old_name"], change["new"], change["new_name"]) == (2, "cn-shanghai", 0, "cn-beijing")
    shown = run_snapctl(["state", "show", "app1/R/S3"], cwd=work, env=env).stdout
    assert "StorageConfig.CustomConfig.Region = 4 (eu-west-1)" in shown, shown


BAD_REGIONS = """\
app_id: app1
storage:
  a: {type: tos, account_id: "1", bucket: b, region: cn-bejing}
  b: {type: custom, vendor: s3, bucket: b, region: eu-central-1, access_key: k, secret_key: s}
  c: {type: custom, vendor: s3, bucket: b, region: 23, access_key: k, secret_key: s}
  d: {type: custom, vendor: cos, bucket: b, region: ap-guangzhou, access_key: k, secret_key: s}
  e: {type: veimagex, account_id: "1", service_id: s, region: cn-beijing}
  f: {type: custom, vendor: oss, bucket: b, region: us-east-1, access_key: k, secret_key: s}
rooms:
  R: {tasks: {T: {storage: a}}}
"""


def test_a_region_the_table_does_not_know_or_refuses_is_one_located_error(emulator, tmp_path):
    work = new_project(tmp_path, emulator.url, {"app.yaml": BAD_REGIONS})
    env = snapctl_env(emulator.url, work)
    run = run_snapctl(["validate"], cwd=work, env=env)
    assert run.code == 1, run.output
    errors = [line for line in run.stderr.splitlines() if ": error: " in line]
    assert errors == [
        "manifests/app.yaml:3:54: error: storage.a.region: 'cn-bejing' is not in the TOS region table; did you "
        "mean 'cn-beijing'?",
        "manifests/app.yaml:4:52: error: storage.b.region: Amazon S3 region 7 (eu-central-1) is not supported by "
        "the API (the vendor's Region table marks it 暂不支持); choose another region",
        "manifests/app.yaml:5:52: error: storage.c.region: Amazon S3 region 23 (us-gov-west-1) is not supported by "
        "the API (the vendor's Region table marks it 暂不支持); choose another region",
        "manifests/app.yaml:6:53: error: storage.d.region: region names are not known for Tencent COS: give the "
        "API's integer code from the vendor's Region table (see docs/regions.md)",
        "manifests/app.yaml:7:63: error: storage.e.region: region names are not known for veImageX: give the "
        "API's integer code from the vendor's Region table (see docs/regions.md)",
        "manifests/app.yaml:8:53: error: storage.f.region: 'us-east-1' is not in the Alibaba OSS region table; "
        "did you mean 'oss-us-east-1'?",
    ], run.stderr
    assert emulator.stats()["total"] == 0


# -- restarts are not creates -----------------------------------------------------------------

RESTARTS = """\
app_id: app1
storage:
  archive: {type: tos, account_id: "2100000990", bucket: snaps}
defaults: {storage: archive}
rooms:
  Idle: {tasks: {T1: {}, T2: {}}}
  Main: {tasks: {Stop: {}}}
"""


def _ended(emulator, work, env) -> None:
    """Three tasks applied, then ended: two idled out, one stopped by API; and one new task declared."""
    assert run_snapctl(["apply", "--auto-approve"], cwd=work, env=env).code == 0
    assert emulator.admin("streams-stopped", {"AppId": "app1", "RoomId": "Idle", "Immediate": True}).json()["ended"]
    assert emulator.admin("stop-task", {"AppId": "app1", "RoomId": "Main", "TaskId": "Stop"}).status_code == 200
    (work / "manifests" / "app.yaml").write_text(RESTARTS + "  New: {tasks: {N: {}}}\n")


def test_restarts_have_their_own_symbol_count_and_reason(emulator, tmp_path):
    work = new_project(tmp_path, emulator.url, {"app.yaml": RESTARTS})
    env = snapctl_env(emulator.url, work)
    _ended(emulator, work, env)
    plan = run_snapctl(["plan", "--refresh", "--no-color"], cwd=work, env=env)
    assert plan.code == 0, plan.output
    assert "Plan: 1 to add, 3 to restart, 0 to change, 0 to replace, 0 to destroy." in plan.stdout, plan.stdout
    assert "  # app1/Idle/T1 will be restarted (ended: IdleTimeOut)\n   > app1/Idle/T1\n" in plan.stdout
    assert "  # app1/Main/Stop will be restarted (ended: StopByAPI)\n" in plan.stdout
    assert "  # app1/New/N will be created\n   + app1/New/N\n" in plan.stdout
    document = json.loads(run_snapctl(["plan", "--refresh", "--json"], cwd=work, env=env).stdout)
    assert {a["address"]: (a["action"], a["symbol"]) for a in document["actions"]} == {
        "app1/Idle/T1": ("restart", ">"),
        "app1/Idle/T2": ("restart", ">"),
        "app1/Main/Stop": ("restart", ">"),
        "app1/New/N": ("create", "+"),
    }
    assert (document["summary"]["add"], document["summary"]["restart"]) == (1, 3)
    applied = run_snapctl(["apply", "--refresh", "--auto-approve", "--no-color"], cwd=work, env=env)
    assert applied.code == 0, applied.output
    assert "Apply complete! Tasks: 1 added, 3 restarted, 0 changed" in applied.stdout, applied.stdout
    assert "app1/Idle/T1: healed: ended (IdleTimeOut) (StartSnapshot started)" in applied.stdout, applied.stdout


def test_reconcile_says_why_it_healed(emulator, tmp_path):
    work = new_project(tmp_path, emulator.url, {"app.yaml": RESTARTS})
    env = snapctl_env(emulator.url, work)
    _ended(emulator, work, env)
    round_ = run_snapctl(["reconcile", "--no-color"], cwd=work, env=env)
    assert round_.code == 0, round_.output
    lines = round_.stdout.splitlines()
    assert "app1/Idle/T1: healed: ended (IdleTimeOut) (StartSnapshot started)" in lines, round_.stdout
    assert "app1/Main/Stop: healed: ended (StopByAPI) (StartSnapshot started)" in lines, round_.stdout
    assert {t["TaskId"] for t in emulator.tasks()} == {"T1", "T2", "Stop", "N"}


def test_a_saved_plan_of_format_1_is_read_with_its_restarts(emulator, tmp_path):
    work = new_project(tmp_path, emulator.url, {"app.yaml": RESTARTS})
    env = snapctl_env(emulator.url, work)
    _ended(emulator, work, env)
    assert run_snapctl(["plan", "--refresh", "--out", "fix.plan"], cwd=work, env=env).code == 0
    saved = json.loads((work / "fix.plan").read_text())
    assert saved["format_version"] == 2
    # As snapctl 0.2 saved it: restarts were creates, and the summary had no restart count.
    old = dict(saved, format_version=1)
    old["actions"] = [dict(a, kind="create") for a in saved["actions"]]
    old["summary"] = {k: v for k, v in saved["summary"].items() if k != "restart"} | {"add": 4}
    (work / "old.plan").write_text(json.dumps(old))
    shown = run_snapctl(["show", "old.plan", "--no-color"], cwd=work, env=env)
    assert "Plan: 1 to add, 3 to restart," in shown.stdout, shown.output
    future = dict(saved, format_version=3)
    (work / "future.plan").write_text(json.dumps(future))
    refused = run_snapctl(["apply", "future.plan"], cwd=work, env=env)
    assert refused.code == 1 and "plan format 3 is not supported (this snapctl reads 1 and 2)" in refused.stderr
    applied = run_snapctl(["apply", "old.plan", "--no-color"], cwd=work, env=env)
    assert applied.code == 0 and "Tasks: 1 added, 3 restarted" in applied.stdout, applied.output


# -- a second signal during a replace: the half-done tasks are named, and plan marks them -----

REPLACED = """\
app_id: app1
storage:
  archive: {type: tos, account_id: "2100000990", bucket: snaps}
defaults: {storage: archive}
rooms:
  R: {tasks: {A: {image: {width: 320}}, B: {image: {width: 320}}}}
"""


def signalled_twice(proc: subprocess.Popen, sent: Callable[[], bool]) -> tuple[str, str]:
    """Once ``sent`` (the calls are in flight), SIGINT (finish the calls in flight ...) then
    SIGTERM (... the second signal, never merged with the first: now); the output."""
    import signal

    from snapctl_testing import wait_for

    try:
        wait_for(sent, what="the calls sent")
        proc.send_signal(signal.SIGINT)
        proc.send_signal(signal.SIGTERM)
        return proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_second_signal_during_a_replace_names_what_it_left_half_done(emulator, tmp_path):

    from snapctl_testing import calls

    work = new_project(tmp_path, emulator.url, {"app.yaml": REPLACED})
    env = snapctl_env(emulator.url, work)
    assert run_snapctl(["apply", "--auto-approve"], cwd=work, env=env).code == 0
    (work / "manifests" / "app.yaml").write_text(REPLACED.replace("320", "640"))
    starts = calls(emulator.url, "StartSnapshot")
    # The emulator acts at once and answers 2 s later: both stops are done, then both starts
    # are sent and done, and snapctl has heard of neither start when the signals come.
    emulator.configure(latency_ms=2000)
    proc = subprocess.Popen(
        [SNAPCTL, "apply", "--auto-approve", "--no-color"],
        cwd=work,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stdout, stderr = signalled_twice(proc, lambda: calls(emulator.url, "StartSnapshot") >= starts + 2)
    emulator.configure(latency_ms=0)
    assert proc.returncode == 130, stdout + stderr
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1] == (
        "Interrupted: stopped at once by a second signal; 2 task(s) left half-done: "
        "app1/R/A (stopped, then StartSnapshot sent: outcome not known), "
        "app1/R/B (stopped, then StartSnapshot sent: outcome not known); the state records them: "
        "the next snapctl apply finishes them (snapctl plan marks them pending)."
    ), stderr
    plan = run_snapctl(["plan", "--no-color"], cwd=work, env=env)
    assert "  # app1/R/A will be created (pending: stopped, then StartSnapshot sent: outcome not known)" in (
        plan.stdout
    ), plan.stdout
    assert "Plan: 2 to add," in plan.stdout, plan.stdout
    applied = run_snapctl(["apply", "--auto-approve"], cwd=work, env=env)
    assert applied.code == 0, applied.output
    assert {t["TaskId"]: t["Request"]["ImageConfig"]["Width"] for t in emulator.tasks()} == {"A": 640, "B": 640}
    assert run_snapctl(["plan", "--detailed-exitcode"], cwd=work, env=env).code == 0


@pytest.mark.parametrize("watch", [False, True], ids=["reconcile", "watch"])
def test_a_second_signal_during_a_reconcile_names_what_it_left_half_done(watch, emulator, tmp_path):
    """As apply does: a second signal while reconcile's (or the controller's) StartSnapshot calls
    are in flight stops at once and names each task whose call the state holds unsettled; it said
    only "Interrupted.". The next apply settles them, starting nothing twice."""

    from snapctl_testing import calls, start_snapctl, tasks

    from reconciler.state import read_state

    lines = [
        "app_id: app1",
        "storage:",
        '  a: {type: tos, account_id: "2100000990", bucket: b}',
        "defaults: {storage: a}",
    ]
    manifest = "\n".join([*lines, "rooms:", "  R:", "    tasks:", *(f"      T{i}: {{}}" for i in range(6))]) + "\n"
    work = new_project(tmp_path, emulator.url, {"app.yaml": manifest})
    env = snapctl_env(emulator.url, work)
    # The emulator acts at once and answers 2 s later: snapctl has heard of neither start when the signals come.
    emulator.configure(latency_ms=2000)
    proc = start_snapctl(work, env, "reconcile", *(["--watch"] if watch else []), "--no-color", "--parallelism", "2")
    stdout, stderr = signalled_twice(proc, lambda: calls(emulator.url, "StartSnapshot") >= 2)
    emulator.configure(latency_ms=0)
    assert proc.returncode == 130 and "Traceback" not in stderr, stdout + stderr
    pending = read_state(work / "state" / "snapctl.state.json").pending
    running = set(tasks(emulator.url))
    assert set(pending) == running and len(running) == 2, (pending, running)
    named = ", ".join(f"{address} (StartSnapshot sent, outcome not known)" for address in sorted(pending))
    assert stderr.strip().splitlines()[-1] == (
        f"Interrupted: stopped at once by a second signal; 2 task(s) left half-done: {named}; the state records "
        "them: the next snapctl apply finishes them (snapctl plan marks them pending)."
    ), stderr
    assert run_snapctl(["apply", "--auto-approve"], cwd=work, env=env).code == 0
    assert len(tasks(emulator.url)) == 6 and emulator.stats()["by_action"]["StartSnapshot"]["outcomes"]["ok"] == 6


def _opening_a_fifo(pid: int) -> int:
    """How many threads of ``pid`` wait in open() for a named pipe's reader."""
    waiting = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            waiting += (task / "wchan").read_text() == "wait_for_partner"
        except OSError:  # the thread ended meanwhile
            continue
    return waiting


def test_a_second_signal_during_a_record_of_the_controller_keeps_the_lock_until_it_is_written(emulator, tmp_path):
    """A second signal while a hold of ``reconcile --watch`` writes a record in its thread: the
    hold closed the state (its last write, then the lock released: another writer may take it)
    while the record was still being written. The state now waits for the records in progress
    before it closes.

    Made deterministic with a named pipe: the record after the first StartSnapshot answered
    binds the state, a whole write whose first step opens ``.snapctl.state.json.backup.PID.tmp``;
    a named pipe there holds that record's thread in open() until the test reads it (the record
    then fails, as a pipe cannot be synced to disk: its StartSnapshot stays pending). A close
    that does not wait for it opens the same pipe for its own write."""
    from snapctl_testing import calls, start_snapctl, tasks, wait_for

    from reconciler.state import read_state
    from reconciler.state.file import lock_is_held

    work = new_project(tmp_path, emulator.url, {"app.yaml": NEW_TASKS.split("      Old")[0] + "      T: {}\n"})
    log = work / "snapctl.log"
    env = snapctl_env(emulator.url, work, SNAPCTL_LOG="debug", SNAPCTL_LOG_PATH=str(log))
    state = work / "state" / "snapctl.state.json"
    proc = start_snapctl(work, env, "reconcile", "--watch", "--no-color")
    held = work / "state" / f".snapctl.state.json.backup.{proc.pid}.tmp"
    os.mkfifo(held)
    try:
        wait_for(lambda: calls(emulator.url, "StartSnapshot") == 1 and _opening_a_fifo(proc.pid) == 1)
        proc.send_signal(signal.SIGINT)
        proc.send_signal(signal.SIGTERM)
        waiting = "closing the state waits for 1 record(s) in progress"
        wait_for(lambda: (log.exists() and waiting in log.read_text()) or _opening_a_fifo(proc.pid) > 1)
        assert _opening_a_fifo(proc.pid) == 1, "the state was closed while a record was still being written"
        assert lock_is_held(state)
        with open(held, "rb") as pipe:  # the record goes on
            assert pipe.read()
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130 and "Traceback" not in stderr, stdout + stderr
    assert stderr.strip().splitlines()[-1] == (
        "Interrupted: stopped at once by a second signal; 1 task(s) left half-done: app1/R1/T (StartSnapshot "
        "sent, outcome not known); the state records them: the next snapctl apply finishes them (snapctl plan "
        "marks them pending)."
    ), stdout + stderr
    assert set(read_state(state).pending) == set(tasks(emulator.url)) == {"app1/R1/T"}
    assert run_snapctl(["apply", "--auto-approve"], cwd=work, env=snapctl_env(emulator.url, work)).code == 0
    assert set(read_state(state).tasks) == {"app1/R1/T"} and calls(emulator.url, "StartSnapshot") == 2


def test_a_replace_whose_start_is_refused_is_marked_pending_in_plan(emulator, tmp_path):
    work = new_project(tmp_path, emulator.url, {"app.yaml": REPLACED})
    env = snapctl_env(emulator.url, work)
    assert run_snapctl(["apply", "--auto-approve"], cwd=work, env=env).code == 0
    (work / "manifests" / "app.yaml").write_text(REPLACED.replace("A: {image: {width: 320}}", "A: {image: {width: 9}}"))
    emulator.configure(refuse_starts=["app1/R/A"])
    failed = run_snapctl(["apply", "--auto-approve"], cwd=work, env=env)
    assert failed.code == 1, failed.output
    emulator.configure(refuse_starts=[])
    plan = run_snapctl(["plan", "--no-color"], cwd=work, env=env)
    assert "  # app1/R/A will be created (pending: stop sent, start not yet)\n" in plan.stdout, plan.stdout
    assert "(an interrupted replace stopped the task and never started it again: started again)" in plan.stdout
    document = json.loads(run_snapctl(["plan", "--json"], cwd=work, env=env).stdout)
    assert [(a["address"], a["pending"]) for a in document["actions"]] == [("app1/R/A", "stop sent, start not yet")]
    assert run_snapctl(["apply", "--auto-approve"], cwd=work, env=env).code == 0
    assert {t["TaskId"]: t["Request"]["ImageConfig"]["Width"] for t in emulator.tasks()} == {"A": 9, "B": 320}


# -- on a terminal, a line per changed task stays above the progress bar ----------------------


def test_on_a_terminal_each_changed_task_keeps_its_line_above_the_bar(emulator, tmp_path):
    many = "".join(f"      T{i:02d}: {{}}\n" for i in range(24))
    work = new_project(tmp_path, emulator.url, {"app.yaml": NEW_TASKS.split("      Old")[0] + many})
    env = snapctl_env(emulator.url, work, TERM="xterm", COLUMNS="120")
    emulator.configure(latency_ms=100)
    code, output = run_on_terminal(["apply", "--auto-approve", "--parallelism", "4"], work, env)
    emulator.configure(latency_ms=0)
    assert code == 0, output
    assert "tasks/s" in output and "24/24" in output, output  # the live bar was drawn
    text = output.replace("\r", "")
    for i in range(24):
        line = f"app1/R1/T{i:02d}: created (StartSnapshot started)"
        assert text.count(line) == 1, (line, output)
    # the record comes before the summary, which is printed once the bar is gone
    assert text.rindex("app1/R1/T") < text.index("Apply complete! Tasks: 24 added"), output
