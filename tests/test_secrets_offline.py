"""Secrets offline: validate and pull-request plans work without secret values; a storage
profile no task uses needs nothing; a plan made without secrets cannot be applied."""

from __future__ import annotations

import json

import pytest
from snapctl_testing import new_project, run_snapctl, snapctl_env, stats

MANIFEST = """\
app_id: app1
storage:
  offsite: {type: custom, vendor: s3, bucket: offsite, access_key: "${env:OFF_AK}", secret_key: "${env:OFF_SK}"}
  retired: {type: custom, vendor: oss, bucket: old, access_key: "${env:OLD_AK}", secret_key: "${env:OLD_SK}"}
  archive: {type: tos, account_id: "2100000990", bucket: snaps}
defaults: {storage: archive}
rooms:
  R:
    tasks:
      Env: {storage: offsite}
      Tos: {}
"""
SECRETS = {"OFF_AK": "offAKv7Jm2Qx", "OFF_SK": "offSKc3Hn8Lw"}


def at(name: str) -> str:
    """Where ``${env:NAME}`` is written in MANIFEST: manifests/app.yaml:LINE:COLUMN."""
    reference = '"${env:' + name + '}"'
    for number, line in enumerate(MANIFEST.splitlines(), 1):
        if reference in line:
            return f"manifests/app.yaml:{number}:{line.index(reference) + 1}"
    raise AssertionError(name)


@pytest.fixture
def project(tmp_path, emulator):
    return new_project(tmp_path, emulator.url, {"app.yaml": MANIFEST})


def no_leak(result):
    assert "Traceback" not in result.output
    assert not [s for s in SECRETS.values() if s in result.output]


def test_validate_needs_no_secret_values(project, emulator):
    env = snapctl_env(emulator.url, project)
    result = run_snapctl(["validate"], cwd=project, env=env)
    assert result.code == 0, result.output
    assert "Success! 2 task(s) in 1 file(s) are valid." in result.stdout
    warnings = [line for line in result.stderr.splitlines() if "is not set" in line]
    assert [w.split(": warning: ")[0] for w in warnings] == [at(n) for n in ("OFF_AK", "OFF_SK", "OLD_AK", "OLD_SK")]
    assert all("plan and apply need it" in w for w in warnings)
    document = json.loads(run_snapctl(["validate", "--json"], cwd=project, env=env).stdout)
    assert document["valid"] is True
    assert {d["severity"] for d in document["diagnostics"]} == {"warning"}
    # Well-formedness is still checked offline.
    (project / "manifests" / "app.yaml").write_text(MANIFEST.replace("${env:OFF_SK}", "${ENV:OFF_SK}"))
    broken = run_snapctl(["validate"], cwd=project, env=env)
    assert broken.code == 1 and "unsupported reference ${ENV:OFF_SK}" in broken.stderr
    # A variable unset where its field's rules cannot hold the reference: still a warning here.
    (project / "manifests" / "app.yaml").write_text(MANIFEST.replace('"2100000990"', '"${env:ACCOUNT}"'))
    account = run_snapctl(["validate"], cwd=project, env=env)
    assert account.code == 0 and "environment variable ACCOUNT is not set" in account.stderr


def test_a_profile_no_task_uses_needs_nothing(project, emulator):
    env = snapctl_env(emulator.url, project, **SECRETS)  # OLD_AK/OLD_SK of "retired" are not set
    plan = run_snapctl(["plan"], cwd=project, env=env)
    assert plan.code == 0 and "Plan: 2 to add" in plan.stdout and "OLD_" not in plan.output
    applied = run_snapctl(["apply", "--auto-approve"], cwd=project, env=env)
    assert applied.code == 0, applied.output
    no_leak(applied)
    # Where a task uses it, it is an error at its place, as before.
    (project / "manifests" / "app.yaml").write_text(MANIFEST.replace("Tos: {}", "Tos: {storage: retired}"))
    used = run_snapctl(["plan"], cwd=project, env=env)
    assert used.code == 1
    assert f"{at('OLD_AK')}: error: environment variable OLD_AK is not set" in used.stderr


def test_plan_without_secrets_for_pull_requests(project, emulator):
    env = snapctl_env(emulator.url, project, **SECRETS)
    assert run_snapctl(["apply", "--auto-approve"], cwd=project, env=env).code == 0
    before = stats(emulator.url)["total"]
    offline = snapctl_env(emulator.url, project)  # no storage secrets at all
    # Secrets unchanged or not: never planned as a change.
    same = run_snapctl(["plan", "--no-secrets", "--detailed-exitcode"], cwd=project, env=offline)
    assert same.code == 0, same.output
    assert "No changes. 2 task(s) match the state." in same.stdout and "--no-secrets" in same.stdout
    # Another change is planned, with the secret fields shown as unknown for a new task.
    (project / "manifests" / "app.yaml").write_text(
        MANIFEST.replace("Tos: {}", "Tos: {image: {interval: 9}}\n      New: {storage: offsite}")
    )
    changed = run_snapctl(["plan", "--no-secrets", "--no-color", "--out", "pr.plan"], cwd=project, env=offline)
    assert changed.code == 0, changed.output
    assert "Plan: 1 to add, 1 to change, 0 to replace" in changed.stdout
    assert "StorageConfig.CustomConfig.SecretKey = (unknown)" in " ".join(changed.stdout.split())
    document = json.loads(run_snapctl(["show", "pr.plan", "--json"], cwd=project, env=offline).stdout)
    assert document["secrets_unknown"] is True
    new = next(a for a in document["actions"] if a["address"] == "app1/R/New")
    assert {c["path"]: c["new"] for c in new["changes"]}["StorageConfig.CustomConfig.AccessKey"] == "(unknown)"
    markdown = run_snapctl(["plan", "--no-secrets", "--format", "markdown"], cwd=project, env=offline).stdout
    assert "cannot be applied" in markdown
    # Such a plan cannot be applied, even with the secrets set.
    refused = run_snapctl(["apply", "pr.plan"], cwd=project, env=env)
    assert refused.code == 1 and refused.stdout == ""
    assert refused.stderr.splitlines() == [
        "Error: pr.plan was planned with --no-secrets: its secret fields are unknown, so it cannot be applied; "
        "save a plan with the secrets set (snapctl plan --out FILE), or apply the manifests"
    ]
    assert stats(emulator.url)["total"] == before
    # With the secrets, a rotated one is a change again.
    rotated = run_snapctl(["plan"], cwd=project, env=env | {"OFF_SK": "rotated"})
    assert "0 to change, 1 to replace" not in rotated.stdout and "to replace" in rotated.stdout
    no_leak(rotated)
