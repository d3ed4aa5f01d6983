"""The shared state in PostgreSQL, end to end: the snapctl command against the
emulator and a real PostgreSQL server (tests/pg_server.py), never a mock."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
from pathlib import Path

from snapctl_testing import SNAPCTL, Run, run_snapctl, snapctl_bin, snapctl_env, start_apply, stats, tasks, wait_for

from reconciler.state.postgres import SCHEMA_VERSION

HOST = socket.gethostname()
STORAGE_AK, STORAGE_SK = "AK-PGSTATE-7c1e", "SK-PGSTATE-distinctive-92f4"


def manifest(n: int = 6, interval: int = 10, app: str = "pgapp") -> str:
    rows = "".join(f"      T{t:02d}: {{image: {{interval: {interval + t % 3}}}}}\n" for t in range(n))
    return (
        f"app_id: {app}\n"
        "storage:\n"
        "  s: {type: custom, bucket: b, access_key: '${env:STORAGE_AK}', secret_key: '${env:STORAGE_SK}'}\n"
        f"defaults: {{storage: s}}\nrooms:\n  R:\n    tasks:\n{rows}"
    )


def runner(root: Path, name: str, url: str, state_url: str, text: str, **extra: str) -> tuple[Path, dict]:
    """A folder with its own HOME, as a CI runner of its own would be."""
    work = root / name
    (work / "manifests").mkdir(parents=True)
    (work / "manifests" / "app.yaml").write_text(text)
    env = snapctl_env(url, work, SNAPCTL_STATE=state_url, STORAGE_AK=STORAGE_AK, STORAGE_SK=STORAGE_SK, **extra)
    return work, env


def snap(work: Path, env: dict, *args: str, code: int = 0) -> Run:
    run = run_snapctl(list(args), cwd=work, env=env)
    assert run.code == code, run.output
    assert "Traceback" not in run.output
    return run


def holder_pid(pg, workspace: str = "default") -> int | None:
    try:
        rows = pg.query("SELECT pid FROM snapctl.locks WHERE workspace = %s", workspace)
    except Exception:  # no schema yet
        return None
    return rows[0][0] if rows else None


def recorded(pg, workspace: str = "default") -> int:
    try:
        return pg.query("SELECT count(*) FROM snapctl.tasks WHERE workspace = %s AND entry IS NOT NULL", workspace)[0][
            0
        ]
    except Exception:
        return 0


def started_once(url: str, n: int) -> None:
    """Every task was started exactly once by the emulator (re-sent calls answer "already started")."""
    start = stats(url)["by_action"]["StartSnapshot"]
    assert start["outcomes"].get("ok") == n, start
    assert set(start["outcomes"]) <= {"ok", "already_started"}, start


def test_two_runners_share_one_state(tmp_path, emulator, pg):
    a, env_a = runner(tmp_path, "a", emulator.url, pg.state_url, manifest())
    b, env_b = runner(tmp_path, "b", emulator.url, pg.state_url, manifest())
    assert "6 to add" in snap(a, env_a, "apply", "--auto-approve").stdout
    assert snap(b, env_b, "plan").stdout.startswith("No changes.")
    # B changes an interval and removes a task; A, from its own folder, sees it done.
    (b / "manifests" / "app.yaml").write_text(manifest(n=5, interval=30))
    applied = snap(b, env_b, "apply", "--auto-approve").stdout
    assert "0 added, 5 changed, 0 replaced, 1 destroyed" in applied, applied
    (a / "manifests" / "app.yaml").write_text(manifest(n=5, interval=30))
    assert snap(a, env_a, "plan").stdout.startswith("No changes.")
    listed = snap(a, env_a, "state", "list")
    assert listed.stdout.split() == [f"pgapp/R/T{t:02d}" for t in range(5)]
    assert "postgresql backend" in listed.stderr and "(workspace default)" in listed.stderr
    assert pg.password not in listed.output and "snapctl_test:***@" in listed.stderr
    running = tasks(emulator.url)
    assert sorted(running) == [f"pgapp/R/T{t:02d}" for t in range(5)]
    assert {t["Request"]["ImageConfig"]["Interval"] for t in running.values()} == {30, 31, 32}
    started_once(emulator.url, 6)
    # Created on first use, versioned; a second client finds it as it is.
    assert pg.query("SELECT max(version) FROM snapctl.schema_version")[0][0] == SCHEMA_VERSION


def test_four_applies_at_once_one_proceeds_three_name_the_holder(tmp_path, emulator, pg):
    emulator.configure(latency_ms=300)
    runners = [runner(tmp_path, f"r{i}", emulator.url, pg.state_url, manifest(n=12)) for i in range(4)]
    procs = [start_apply(work, env, "--timeout", "30") for work, env in runners]
    pids = {p.pid for p in procs}
    try:
        winner_pid = wait_for(lambda: (pid := holder_pid(pg)) in pids and pid, what="one apply to take the lock")
        winner = next(p for p in procs if p.pid == winner_pid)
        os.kill(winner.pid, signal.SIGSTOP)  # held still until the three others have given up
        try:
            losers = [p.communicate(timeout=120) + (p.returncode,) for p in procs if p is not winner]
        finally:
            os.kill(winner.pid, signal.SIGCONT)
        out, err = winner.communicate(timeout=120)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert winner.returncode == 0 and "Apply complete! Tasks: 12 added" in out, out + err
    for _out, err_, code in losers:
        lines = err_.strip().splitlines()
        assert code == 1 and len(lines) == 1, err_
        assert f"is locked by pid {winner.pid} on {HOST} (snapctl apply)" in lines[0]
        assert pg.password not in err_
    started_once(emulator.url, 12)
    assert holder_pid(pg) is None  # released and forgotten


def test_sigkill_mid_apply_then_the_next_apply_converges(tmp_path, emulator, pg):
    emulator.configure(latency_ms=200)
    work, env = runner(tmp_path, "w", emulator.url, pg.state_url, manifest(n=20))
    proc = start_apply(work, env, "--parallelism", "4")
    try:
        wait_for(lambda: recorded(pg) >= 4 or proc.poll() is not None, what="a few tasks recorded")
        proc.kill()
    finally:
        proc.wait()
    pending = pg.query("SELECT count(*) FROM snapctl.tasks WHERE pending IS NOT NULL")[0][0]
    assert holder_pid(pg) == proc.pid  # its record stays, stale; the server dropped its lock
    again = snap(work, env, "apply", "--auto-approve")  # no force-unlock, no --lock-timeout
    assert "locked" not in again.output
    assert snap(work, env, "plan", "--detailed-exitcode").stdout.startswith("No changes.")
    assert len(tasks(emulator.url)) == 20
    started_once(emulator.url, 20)
    assert stats(emulator.url)["by_action"]["StartSnapshot"]["outcomes"].get("already_started", 0) <= pending


def test_database_restart_between_runs_is_invisible(tmp_path, emulator, pg):
    work, env = runner(tmp_path, "w", emulator.url, pg.state_url, manifest(n=4))
    snap(work, env, "apply", "--auto-approve")
    pg.server.restart()
    assert snap(work, env, "plan").stdout.startswith("No changes.")
    (work / "manifests" / "app.yaml").write_text(manifest(n=5))
    assert "1 added" in snap(work, env, "apply", "--auto-approve").stdout
    started_once(emulator.url, 5)


def test_connection_killed_mid_apply_loses_nothing(tmp_path, emulator, pg):
    emulator.configure(latency_ms=100)
    work, env = runner(tmp_path, "w", emulator.url, pg.state_url, manifest(n=20))
    proc = start_apply(work, env, "--parallelism", "4")
    try:
        wait_for(lambda: recorded(pg) >= 4 or proc.poll() is not None, what="a few tasks recorded")
        assert pg.server.terminate("snapctl apply%", pg.dbname) == 1
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1, out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: lost the state database postgresql://"), err
    assert "Run the command again" in lines[0] and pg.password not in err and "Traceback" not in err
    sent = stats(emulator.url)["by_action"]["StartSnapshot"]["total"]
    assert sent < 20  # it stopped starting calls
    # Every call it sent is in the state, recorded or pending: the next run converges.
    rows = pg.query("SELECT count(*) FROM snapctl.tasks")[0][0]
    assert rows == sent
    snap(work, env, "apply", "--auto-approve")
    assert snap(work, env, "plan", "--detailed-exitcode").stdout.startswith("No changes.")
    started_once(emulator.url, 20)


def test_workspaces_are_independent(tmp_path, emulator, pg):
    prod, env_prod = runner(tmp_path, "p", emulator.url, pg.state_url, manifest(n=3, app="prod"))
    stag, env_stag = runner(
        tmp_path, "s", emulator.url, pg.state_url, manifest(n=2, app="stag"), SNAPCTL_WORKSPACE="staging"
    )
    snap(prod, env_prod, "apply", "--auto-approve")
    assert "does not exist" in snap(stag, env_stag, "plan", code=1).stderr  # created, never conjured
    snap(stag, env_stag, "workspace", "new", "staging")
    assert "2 to add" in snap(stag, env_stag, "plan").stdout
    snap(stag, env_stag, "apply", "--auto-approve")
    listed = snap(stag, env_stag, "state", "list", "--json")
    assert '"workspaces": [\n    "default",\n    "staging"\n  ]' in listed.stdout
    assert snap(prod, env_prod, "state", "list").stdout.split() == [f"prod/R/T{t:02d}" for t in range(3)]
    assert snap(prod, env_prod, "state", "list", "--workspace", "staging").stdout.split() == [
        "stag/R/T00",
        "stag/R/T01",
    ]
    # One workspace's lock does not hold the other.
    (stag / "manifests" / "app.yaml").write_text(manifest(n=1, app="stag"))
    snap(stag, env_stag, "apply", "--auto-approve")
    assert snap(prod, env_prod, "plan").stdout.startswith("No changes.")


def test_migrate_both_ways_keeps_the_lineage_and_a_clean_plan(tmp_path, emulator, pg):
    work, env = runner(tmp_path, "w", emulator.url, "state/snapctl.state.json", manifest(n=3))
    snap(work, env, "apply", "--auto-approve")
    lineage = re.search(r'"lineage": "([^"]+)"', snap(work, env, "state", "list", "--json").stdout)[1]
    moved = snap(work, env, "state", "migrate", "--to", pg.state_url, "--to-workspace", "prod", "--keep-source")
    assert pg.password not in moved.output and "3 task(s)" in moved.stdout
    on_pg = env | {"SNAPCTL_STATE": pg.state_url, "SNAPCTL_WORKSPACE": "prod"}
    assert snap(work, on_pg, "plan").stdout.startswith("No changes. 3 task(s)")
    assert lineage in snap(work, on_pg, "state", "list", "--json").stdout
    (work / "manifests" / "app.yaml").write_text(manifest(n=4))
    snap(work, on_pg, "apply", "--auto-approve")
    # Back into a file: the same state, one more task.
    snap(
        work, on_pg, "state", "migrate", "--to", "back/snapctl.state.json", "--to-workspace", "default", "--keep-source"
    )
    back = env | {"SNAPCTL_STATE": "back/snapctl.state.json"}
    assert snap(work, back, "plan").stdout.startswith("No changes. 4 task(s)")
    assert lineage in (work / "back" / "snapctl.state.json").read_text()
    # (--keep-source kept both sources usable.) A destination holding another state is refused, and left alone.
    refused = snap(work, env, "state", "migrate", "--to", pg.state_url, "--to-workspace", "prod", code=1)
    assert "ahead of the source" in refused.stderr  # the same lineage, written since
    other, env_other = runner(tmp_path, "o", emulator.url, "state/snapctl.state.json", manifest(n=1, app="other"))
    snap(other, env_other, "apply", "--auto-approve")
    refused = snap(other, env_other, "state", "migrate", "--to", pg.state_url, "--to-workspace", "prod", code=1)
    assert "holds another state (lineage" in refused.stderr
    assert snap(work, on_pg, "plan").stdout.startswith("No changes. 4 task(s)")
    started_once(emulator.url, 5)


def test_a_refused_first_run_leaves_no_workspace_and_migrate_takes_over_an_empty_one(tmp_path, emulator, pg):
    # A pipeline's first apply with a wrong secret: refused at its first call, it records
    # nothing, and leaves no workspace (the schema, made on first use, stays).
    ci, env_ci = runner(tmp_path, "ci", emulator.url, pg.state_url, manifest(n=2), VOLC_SECRETKEY="wrong")
    assert "refused the credentials" in snap(ci, env_ci, "apply", "--auto-approve", code=1).stderr
    assert pg.query("SELECT count(*) FROM snapctl.workspaces")[0][0] == 0
    assert pg.query("SELECT count(*) FROM snapctl.tasks")[0][0] == 0
    # An earlier snapctl left such a run's workspace behind: holding nothing, never bound.
    pg.query(
        "INSERT INTO snapctl.workspaces (name, lineage, serial, format_version, fingerprint_key, "
        "fingerprint_params, snapctl_version) VALUES ('default', 'left-by-an-earlier-run', 2, 2, 'k', "
        """'{"kdf": "scrypt", "n": 16384, "r": 8, "p": 1}', '0.1.0')"""
    )
    # The team then moves its file state there: nothing in the way is nothing to keep.
    work, env = runner(tmp_path, "w", emulator.url, "state/snapctl.state.json", manifest(n=2))
    snap(work, env, "apply", "--auto-approve")
    lineage = re.search(r'"lineage": "([^"]+)"', snap(work, env, "state", "list", "--json").stdout)[1]
    assert "2 task(s)" in snap(work, env, "state", "migrate", "--to", pg.state_url, "--keep-source").stdout
    on_pg = env | {"SNAPCTL_STATE": pg.state_url}
    assert lineage in snap(work, on_pg, "state", "list", "--json").stdout
    assert snap(work, on_pg, "plan").stdout.startswith("No changes. 2 task(s)")
    # A workspace that was applied against and then emptied is another state still: refused.
    other, env_other = runner(tmp_path, "o", emulator.url, pg.state_url, manifest(n=1, app="other"))
    on_z = env_other | {"SNAPCTL_WORKSPACE": "z"}
    snap(other, env_other, "workspace", "new", "z")
    snap(other, on_z, "apply", "--auto-approve")
    snap(other, on_z, "destroy", "--auto-approve")
    assert recorded(pg, "z") == 0
    refused = snap(work, env, "state", "migrate", "--to", pg.state_url, "--to-workspace", "z", code=1)
    assert "holds another state (lineage" in refused.stderr
    assert stats(emulator.url)["by_action"]["StartSnapshot"]["outcomes"]["ok"] == 3  # each task started once


def test_another_endpoint_is_refused_before_any_request(tmp_path, emulator, make_emulator, pg):
    work, env = runner(tmp_path, "w", emulator.url, pg.state_url, manifest(n=2))
    snap(work, env, "plan", "--out", "first.plan")
    snap(work, env, "apply", "--auto-approve")
    other = make_emulator()
    elsewhere = env | {"SNAPCTL_ENDPOINT": other.url}
    for args in (["plan"], ["apply", "--auto-approve"], ["reconcile"]):
        refused = snap(work, elsewhere, *args, code=1)
        assert f"belongs to endpoint {emulator.url} (region cn-north-1), not {other.url}" in refused.stderr
    (work / "manifests" / "app.yaml").write_text(manifest(n=3))
    snap(work, env, "plan", "--out", "second.plan")
    refused = snap(work, elsewhere, "apply", "second.plan", code=1)
    assert "belongs to endpoint" in refused.stderr
    assert other.stats()["total"] == 0
    # Moved deliberately: the same tasks, reached through another address.
    rebound = snap(work, elsewhere, "state", "rebind")
    assert f"now bound to {other.url}" in rebound.stdout
    refused = snap(work, elsewhere, "apply", "second.plan", code=1)
    assert "stale" in refused.stderr or "made for endpoint" in refused.stderr
    assert other.stats()["total"] == 0


def test_no_secret_in_the_database_or_any_output(tmp_path, emulator, pg):
    work, env = runner(tmp_path, "w", emulator.url, pg.state_url, manifest(n=3))
    outputs = [snap(work, env, "apply", "--auto-approve"), snap(work, env, "state", "show", "pgapp/R/T00")]
    outputs.append(snap(work, env, "state", "list", "--json"))
    wrong = env | {"SNAPCTL_STATE": pg.state_url.replace(pg.password, pg.password[::-1])}
    outputs.append(snap(work, wrong, "plan", code=1))
    assert "password authentication failed" in outputs[-1].stderr
    # The password from PGPASSWORD (libpq's own variable), not in the URL.
    from_env = env | {"SNAPCTL_STATE": pg.server.url(pg.dbname, with_password=False), "PGPASSWORD": pg.password}
    outputs.append(snap(work, from_env, "plan"))
    dump = pg.server.pg_dump(pg.dbname)
    assert "scrypt:" in dump and '"n": 16384' in dump
    for secret in (STORAGE_AK, STORAGE_SK, pg.password, pg.password[::-1], env["VOLC_SECRETKEY"]):
        assert secret not in dump
        for run in outputs:
            assert secret not in run.output


def run_template_steps(path: Path, job: str, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    """The ``run`` lines of one job of a CI template, in order, in one bash -e script
    (GitHub Actions' and GitLab's way); steps that install or talk to the forge are left out."""
    import yaml

    doc = yaml.safe_load(path.read_text())
    if "jobs" in doc:
        lines = [step["run"] for step in doc["jobs"][job]["steps"] if "run" in step]
    else:
        lines = list(doc[job]["script"])
    kept = [line for line in lines if "pip install" not in line and not line.lstrip().startswith("gh ")]
    script = "set -eo pipefail\n" + "\n".join(kept)
    return subprocess.run(["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def template_env(work: Path, env: dict) -> dict:
    """The environment of a template's job; its ``snapctl`` is forked as run_snapctl's are (snapctl_bin)."""
    return env | {
        "PATH": f"{snapctl_bin()}:{Path(SNAPCTL).parent}:{os.environ['PATH']}",
        "SNAPCTL_WORKSPACE": "production",
        "GITHUB_STEP_SUMMARY": str(work / "summary.md"),
        "GITHUB_OUTPUT": str(work / "output"),
    }


def test_ci_templates_run_in_order_converge_and_fail_loudly(tmp_path, emulator, pg):
    docs = Path(__file__).resolve().parent.parent / "docs" / "ci"
    # GitHub Actions: a pull request's plan, then the merge's apply, each on a runner of its own.
    pr, env_pr = runner(tmp_path, "gh-pr", emulator.url, pg.state_url, manifest(n=3))
    missing = run_template_steps(docs / "github-actions.yml", "plan", template_env(pr, env_pr), pr)
    assert missing.returncode == 1 and "workspace production (SNAPCTL_WORKSPACE) does not exist" in missing.stderr
    snap(pr, env_pr, "workspace", "new", "production")  # once, as the templates say
    done = run_template_steps(docs / "github-actions.yml", "plan", template_env(pr, env_pr), pr)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "changes=true" in (pr / "output").read_text() and "3 to add" in (pr / "summary.md").read_text()
    main, env_main = runner(tmp_path, "gh-main", emulator.url, pg.state_url, manifest(n=3))
    done = run_template_steps(docs / "github-actions.yml", "apply", template_env(main, env_main), main)
    assert done.returncode == 0 and "Apply complete! Tasks: 3 added" in done.stdout, done.stdout + done.stderr
    # GitLab, the next merge (one more task), on yet another runner: the same state.
    gl, env_gl = runner(tmp_path, "gl", emulator.url, pg.state_url, manifest(n=4))
    env_gl = template_env(gl, env_gl)
    for job in ("validate", "plan", "apply"):
        done = run_template_steps(docs / "gitlab-ci.yml", job, env_gl, gl)
        assert done.returncode == 0, (job, done.stdout + done.stderr)
    assert "Apply complete! Tasks: 1 added" in done.stdout and len(tasks(emulator.url)) == 4
    # The state cannot be written: the job fails, loudly, before any request; the next run converges.
    (gl / "manifests" / "app.yaml").write_text(manifest(n=5))
    with pg.server.admin() as conn:
        conn.execute(f"ALTER DATABASE {pg.dbname} SET default_transaction_read_only = on")
    failed = run_template_steps(docs / "gitlab-ci.yml", "apply", env_gl, gl)
    assert failed.returncode == 1 and "Error: cannot lock the state" in failed.stderr, failed.stderr
    assert "read-only transaction" in failed.stderr and len(tasks(emulator.url)) == 4
    with pg.server.admin() as conn:
        conn.execute(f"ALTER DATABASE {pg.dbname} SET default_transaction_read_only = off")
    done = run_template_steps(docs / "gitlab-ci.yml", "apply", env_gl, gl)
    assert done.returncode == 0 and "Apply complete! Tasks: 1 added" in done.stdout, done.stdout + done.stderr
    assert len(tasks(emulator.url)) == 5
    started_once(emulator.url, 5)
    # A task that fails to start although StartSnapshot answered "ok": both templates' convergence
    # check reads what runs and fails the job; once storage works, the next apply restarts it.
    emulator.configure(unwritable_buckets=["b"])
    for work, env_job, template in (
        (gl, env_gl, "gitlab-ci.yml"),
        (main, template_env(main, env_main), "github-actions.yml"),
    ):
        (work / "manifests" / "app.yaml").write_text(manifest(n=6))
        failed = run_template_steps(docs / template, "apply", env_job, work)
        assert failed.returncode == 2, (template, failed.stdout + failed.stderr)
        assert "Apply complete!" in failed.stdout, failed.stdout
        assert "will be restarted (failed: StartTaskFailed)" in failed.stdout, failed.stdout
    emulator.configure(unwritable_buckets=[])
    done = run_template_steps(docs / "gitlab-ci.yml", "apply", env_gl, gl)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "No changes." in done.stdout.split("Apply complete!")[-1] and len(tasks(emulator.url)) == 6
    for template in docs.glob("*.yml"):
        assert "|| true" not in template.read_text(), template


def test_observations_of_a_refresh_are_kept_in_the_database(tmp_path, emulator, pg):
    work, env = runner(tmp_path, "w", emulator.url, pg.state_url, manifest(n=2))
    snap(work, env, "apply", "--auto-approve")
    snap(work, env, "reconcile")  # reads every task first, and records what it saw
    assert pg.query("SELECT count(*) FROM snapctl.tasks WHERE observed->>'status' = 'running'")[0][0] == 2
    shown = snap(work, env, "state", "show", "pgapp/R/T00", "--json").stdout
    assert '"status": "running"' in shown
    # Forgetting a task forgets what was seen of it.
    snap(work, env, "state", "rm", "pgapp/R/T01")
    assert pg.query("SELECT address FROM snapctl.tasks") == [("pgapp/R/T00",)]


def test_lock_timeout_waits_and_force_unlock_names_a_live_holder(tmp_path, emulator, pg):
    from reconciler.state import PostgresStore

    work, env = runner(tmp_path, "w", emulator.url, pg.state_url, manifest(n=2))
    holder = PostgresStore(pg.state_url, command="snapctl apply").__enter__()
    try:
        refused = snap(work, env, "force-unlock", code=1)
        assert f"locked by a live process: pid {os.getpid()} on {HOST} (snapctl apply)" in refused.stderr
        waiting = start_apply(work, env, "--lock-timeout", "60")
        # Both connected for the lock: the apply tries it (pg_try_advisory_lock) until the holder lets go.
        wait_for(
            lambda: (
                pg.query("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'snapctl apply (lock)'")[0][0]
                == 2
            ),
            what="the apply to wait for the lock",
        )
    finally:
        holder.close()
    out, err = waiting.communicate(timeout=120)
    assert waiting.returncode == 0 and "Apply complete! Tasks: 2 added" in out, out + err
    assert snap(work, env, "force-unlock").stdout == "The state is not locked.\n"


def test_plan_works_with_the_read_only_role_of_the_ci_templates(tmp_path, emulator, pg):
    """docs/ci/plan-role.sql, run as written (but for the names), makes a role the pull-request
    jobs plan with: the templates' plan job works with it; it cannot write the state."""
    import yaml
    from pg_server import ROLE

    docs = Path(__file__).resolve().parent.parent / "docs" / "ci"
    # The templates give the plan jobs the read-only URL, and only the apply jobs the read-write one.
    github = yaml.safe_load((docs / "github-actions.yml").read_text())
    assert github["jobs"]["plan"]["env"]["SNAPCTL_STATE"] == "${{ secrets.SNAPCTL_STATE_READONLY }}"
    assert (
        github["env"]["SNAPCTL_STATE"] == "${{ secrets.SNAPCTL_STATE }}" and "env" not in github["jobs"]["apply"]
    ) or ("SNAPCTL_STATE" not in github["jobs"]["apply"]["env"])
    gitlab = yaml.safe_load((docs / "gitlab-ci.yml").read_text())
    assert gitlab["plan"]["variables"]["SNAPCTL_STATE"] == "$SNAPCTL_STATE_READONLY"
    assert "SNAPCTL_STATE" not in gitlab["apply"].get("variables", {})
    main, env_main = runner(tmp_path, "main", emulator.url, pg.state_url, manifest(n=3))
    snap(main, env_main, "workspace", "new", "production")
    done = run_template_steps(docs / "github-actions.yml", "apply", template_env(main, env_main), main)
    assert done.returncode == 0, done.stdout + done.stderr
    sql = (docs / "plan-role.sql").read_text()
    for placeholder in ("DATABASE snapctl ", "FOR ROLE snapctl ", "'change-me'"):
        assert placeholder in sql, placeholder
    sql = sql.replace("DATABASE snapctl ", f"DATABASE {pg.dbname} ").replace("FOR ROLE snapctl ", f"FOR ROLE {ROLE} ")
    password = "plan-role-password"
    with pg.server.admin(pg.dbname) as conn:
        conn.execute("DROP ROLE IF EXISTS snapctl_plan")  # one server per test process: a role of an earlier test
        conn.execute(sql.replace("'change-me'", f"'{password}'"))
    readonly = pg.state_url.replace(f"{ROLE}:{pg.password}@", f"snapctl_plan:{password}@")
    assert readonly != pg.state_url
    # A pull request's plan job, as the templates run it, with the read-only role's URL.
    pr, env_pr = runner(tmp_path, "pr", emulator.url, readonly, manifest(n=4))
    sent = stats(emulator.url)["total"]
    for template in ("github-actions.yml", "gitlab-ci.yml"):
        done = run_template_steps(docs / template, "plan", template_env(pr, env_pr), pr)
        assert done.returncode == 0, (template, done.stdout + done.stderr)
        assert "Plan: 1 to add, 0 to change" in (pr / "plan.md").read_text()
    assert stats(emulator.url)["total"] == sent  # a plan sends nothing
    # The role cannot write: apply is refused at the lock, before any request.
    refused = run_snapctl(["apply", "--auto-approve"], cwd=pr, env=env_pr | {"SNAPCTL_WORKSPACE": "production"})
    assert refused.code == 1 and "Error: cannot lock the state" in refused.stderr, refused.output
    assert stats(emulator.url)["total"] == sent and len(tasks(emulator.url)) == 3
