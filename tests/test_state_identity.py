"""Issue 17, the state's identity and the smaller defects around it: a saved plan applies
only to the state (location and workspace) it was made for, two states never share a
lineage unless one was migrated from the other, ``state rebind`` names both regions,
``show`` reads a plan file as ``apply`` does.

End to end: the ``snapctl`` command against the emulator and, for PostgreSQL, a real
server (tests/pg_server.py), never a mock.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from snapctl_testing import one_error_line, run_snapctl, snap, snapctl_env, wait_for

APP = "idapp"


def manifest(n: int = 2) -> str:
    rows = "".join(f"      T{t}: {{image: {{interval: {t + 5}}}}}\n" for t in range(n))
    return (
        f"app_id: {APP}\n"
        "storage:\n"
        '  s: {type: tos, account_id: "2100000990", bucket: b}\n'
        f"defaults: {{storage: s}}\nrooms:\n  R:\n    tasks:\n{rows}"
    )


def project(tmp_path: Path, url: str, state: str, n: int = 2, **extra: str) -> tuple[Path, dict]:
    work = tmp_path / "work"
    (work / "manifests").mkdir(parents=True)
    (work / "manifests" / "app.yaml").write_text(manifest(n))
    return work, snapctl_env(url, work, SNAPCTL_STATE=state, **extra)


# -- state rebind ------------------------------------------------------------------------


def test_rebind_names_the_old_region_and_the_new_one(tmp_path, emulator, make_emulator):
    work, env = project(tmp_path, emulator.url, "state/snapctl.state.json")
    snap(work, env, "apply", "--auto-approve")
    other = make_emulator(region="ap-southeast-1")
    moved = env | {"SNAPCTL_ENDPOINT": other.url, "VOLC_REGION": "ap-southeast-1"}
    rebound = snap(work, moved, "state", "rebind")
    assert (
        f"was bound to {emulator.url} (region cn-north-1); it is now bound to {other.url} (region ap-southeast-1)"
        in rebound.stdout
    ), rebound.stdout
    listed = json.loads(snap(work, moved, "state", "list", "--json").stdout)
    assert (listed["endpoint"], listed["region"]) == (other.url, "ap-southeast-1")


# -- show reads a plan file as apply does ------------------------------------------------


def test_show_counts_the_plans_actions_and_refuses_a_format_it_cannot_read(tmp_path, emulator):
    work, env = project(tmp_path, emulator.url, "state/snapctl.state.json", n=3)
    snap(work, env, "apply", "--auto-approve")
    (work / "manifests" / "app.yaml").write_text(manifest(1))
    snap(work, env, "plan", "--out", "p.plan")
    doc = json.loads((work / "p.plan").read_text())
    assert doc["summary"] == {"add": 0, "change": 0, "replace": 0, "destroy": 2, "restart": 0}
    doc["summary"] = {"add": 0, "change": 0, "replace": 0, "destroy": 0}
    (work / "edited.plan").write_text(json.dumps(doc))
    shown = snap(work, env, "show", "edited.plan", "--no-color")
    assert (
        f"{APP}/R/T1 will be destroyed" in shown.stdout
        and "Plan: 0 to add, 0 to change, 0 to replace, 2 to destroy." in shown.stdout
    ), shown.stdout
    assert json.loads(snap(work, env, "show", "edited.plan", "--json").stdout)["summary"]["destroy"] == 2
    assert (
        "**Plan: 0 to add, 0 to change, 0 to replace, 2 to destroy.**"
        in snap(work, env, "show", "edited.plan", "--format", "markdown").stdout
    )
    for version in (99, 0, "1", None):
        doc["format_version"] = version
        (work / "future.plan").write_text(json.dumps(doc))
        for args in (["show", "future.plan"], ["show", "future.plan", "--json"], ["apply", "future.plan"]):
            one_error_line(
                run_snapctl(args, cwd=work, env=env), f"future.plan: plan format {version!r} is not supported"
            )
    del doc["format_version"]
    (work / "future.plan").write_text(json.dumps(doc))
    one_error_line(run_snapctl(["show", "future.plan"], cwd=work, env=env), "not a snapctl plan file")
    (work / "future.plan").write_text('["not", "a", "plan"]')
    one_error_line(run_snapctl(["show", "future.plan"], cwd=work, env=env), "not a snapctl plan file")
    assert emulator.stats()["by_action"].keys() == {"StartSnapshot"}  # the first apply's only
    applied = snap(work, env, "apply", "edited.plan")  # the actions are what apply carries out, and says
    assert "0 changed, 0 replaced, 2 destroyed." in applied.stdout, applied.stdout
    assert emulator.stats()["by_action"]["StopSnapshot"]["total"] == 2


# -- the emulator beyond loopback --------------------------------------------------------


def _answers(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.parametrize(
    ("host", "flags", "warned"),
    [
        ("0.0.0.0", [], "and its default keys"),
        ("0.0.0.0", ["--secret-key", "s3cr3t-of-my-own"], "(/_emulator/...: reset, config, stop-task, rewrite-task)."),
        ("127.0.0.1", [], None),
        ("localhost", [], None),
    ],
)
def test_an_emulator_listening_beyond_loopback_warns_that_its_control_endpoints_are_exposed(host, flags, warned):
    import os
    import signal
    import subprocess

    from snapctl_testing import SNAPCTL

    env = {k: v for k, v in os.environ.items() if not k.startswith(("VOLC_", "SNAPCTL_"))}
    proc = subprocess.Popen(
        [SNAPCTL, "emulator", "--host", host, "--port", "0", *flags],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        listening = proc.stdout.readline()
        assert "snapctl emulator listening on http://" in listening, listening
        port = listening.split("listening on http://", 1)[1].split()[0].rsplit(":", 1)[1]
        # Serving (so that SIGTERM reaches its handler, not the one before it).
        wait_for(lambda: _answers(f"http://127.0.0.1:{port}/_emulator/stats"), what="the emulator to answer")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _, stderr = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    lines = [line for line in stderr.splitlines() if line.startswith("warning: listening on")]
    if warned is None:
        assert lines == [], stderr
    else:
        assert len(lines) == 1 and lines[0].startswith(f"warning: listening on {host}, not a loopback address"), stderr
        assert "unsigned control endpoints" in lines[0] and warned in lines[0], lines[0]
        assert "s3cr3t" not in stderr


# -- a saved plan applies only to the state it was made for ----------------------------------


def lineage_of(work: Path, env: dict, *args: str) -> str | None:
    listed = json.loads(snap(work, env, "state", "list", "--json", *args).stdout)
    return listed["lineage"] if listed["serial"] else None


@pytest.mark.parametrize("backend", ["file", "postgresql"])
def test_a_plan_made_for_an_empty_workspace_applies_to_that_one_only(tmp_path, emulator, pg_server, backend):
    from urllib.parse import quote

    if backend == "postgresql":
        location, elsewhere = (pg_server.url(pg_server.new_database()) for _ in range(2))
    else:
        location, elsewhere = "state/snapctl.state.json", str(tmp_path / "other" / "snapctl.state.json")
    work, env = project(tmp_path, emulator.url, location)
    # The scenario: planned while pa is empty, applied to pb, then to pa.
    for name in ("pa", "pb"):
        snap(work, env, "workspace", "new", name)
    empty_pb = json.loads(snap(work, env, "state", "list", "--json", "--workspace", "pb").stdout)
    snap(work, env, "plan", "--workspace", "pa", "--out", "p.plan")
    saved = (work / "p.plan").read_text()
    for secret in (pg_server.password, quote(pg_server.password, safe="")):
        assert secret not in saved
    refused = run_snapctl(["apply", "p.plan", "--workspace", "pb"], cwd=work, env=env)
    line = one_error_line(refused, "the saved plan was made for the state ", "nothing was sent")
    assert (
        ("(workspace pa), not " in line and "(workspace pb)" in line)
        if backend == "postgresql"
        else ("snapctl.state.pa.json, not " in line and "snapctl.state.pb.json" in line)
    ), line
    assert emulator.stats()["total"] == 0
    assert json.loads(snap(work, env, "state", "list", "--json", "--workspace", "pb").stdout) == empty_pb
    snap(work, env, "apply", "p.plan", "--workspace", "pa")
    assert one_error_line(run_snapctl(["apply", "p.plan", "--workspace", "pa"], cwd=work, env=env), "stale")
    # pb, applied on its own, is another state: another lineage, and migrate will not overwrite it.
    (work / "manifests" / "app.yaml").write_text(manifest(1).replace(APP, "otherapp"))
    snap(work, env, "apply", "--auto-approve", "--workspace", "pb")
    pa, pb = lineage_of(work, env, "--workspace", "pa"), lineage_of(work, env, "--workspace", "pb")
    assert pa and pb and pa != pb
    migrate = ["state", "migrate", "--workspace", "pa", "--to", location, "--to-workspace", "pb"]
    moved = run_snapctl(migrate, cwd=work, env=env)
    one_error_line(moved, "holds another state (lineage")
    listed = snap(work, env, "state", "list", "--workspace", "pb").stdout.split()
    assert listed == ["otherapp/R/T0"] and lineage_of(work, env, "--workspace", "pb") == pb
    # The same in the default workspace of two places: an empty one, then a copy of the same state.
    (work / "manifests" / "app.yaml").write_text(manifest(2))
    snap(work, env, "plan", "--out", "d.plan")
    refused = run_snapctl(["apply", "d.plan", "--state", elsewhere], cwd=work, env=env)
    one_error_line(refused, "the saved plan was made for the state ")
    assert lineage_of(work, env, "--state", elsewhere) is None
    snap(work, env, "apply", "--auto-approve", "--adopt")  # the tasks pa runs, now the default workspace's too
    snap(work, env, "state", "migrate", "--to", elsewhere, "--keep-source")
    assert lineage_of(work, env, "--state", elsewhere) == lineage_of(work, env)
    (work / "manifests" / "app.yaml").write_text(manifest(3))
    snap(work, env, "plan", "--out", "e.plan")
    one_error_line(run_snapctl(["apply", "e.plan", "--state", elsewhere], cwd=work, env=env), "made for the state")
    assert "1 added" in snap(work, env, "apply", "e.plan").stdout
    starts = emulator.stats()["by_action"]["StartSnapshot"]["outcomes"]
    assert starts["ok"] == 4, starts  # pa's two, pb's one, the default workspace's third: each started once


def test_an_emulator_stops_on_a_sigterm_sent_as_soon_as_it_says_it_listens():
    # The signal used to land between the listening line and uvicorn's own handlers, where a
    # no-op handler swallowed it: the emulator ran on (a supervisor's stop went unheard).
    import os
    import signal
    import subprocess

    from snapctl_testing import SNAPCTL

    env = {k: v for k, v in os.environ.items() if not k.startswith(("VOLC_", "SNAPCTL_"))}
    for _ in range(3):
        proc = subprocess.Popen(
            [SNAPCTL, "emulator", "--port", "0"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert "snapctl emulator listening on http://" in proc.stdout.readline()
            proc.send_signal(signal.SIGTERM)
            _, stderr = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0, stderr
        assert "Traceback" not in stderr
