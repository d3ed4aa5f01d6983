"""The project file, snapctl.toml (issue 18): found from any subfolder, it pins the state,
workspace, endpoint, region and manifests of every run; flags, then environment
variables, then the file, then the defaults; ``snapctl init`` writes it.

End to end: the ``snapctl`` command against the emulator (and a real PostgreSQL where a
URL is concerned), never a mock.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from snapctl_testing import one_error_line, run_snapctl, snap, snapctl_env, tasks

APP = "projapp"


def manifest(n: int = 3, app: str = APP) -> str:
    rows = "".join(f"      T{t}: {{image: {{interval: {t + 5}}}}}\n" for t in range(n))
    return (
        f"app_id: {app}\n"
        "storage:\n"
        '  s: {type: tos, account_id: "2100000990", bucket: b}\n'
        f"defaults: {{storage: s}}\nrooms:\n  R:\n    tasks:\n{rows}"
    )


def env_without_endpoint(home: Path, **extra: str) -> dict:
    return snapctl_env(None, home, **extra)


@pytest.fixture
def repo(tmp_path, emulator) -> Path:
    """A repository (it holds .git) with snapctl.toml at its root and the manifests in deploy/."""
    emulator.reset()
    root = tmp_path / "repo"
    (root / ".git").mkdir(parents=True)
    (root / "deploy").mkdir()
    (root / "deploy" / "app.yaml").write_text(manifest())
    (root / "tools" / "deep").mkdir(parents=True)
    (root / "snapctl.toml").write_text(
        f'state = "ops/state/snapctl.state.json"\nendpoint = "{emulator.url}"\nmanifests = ["deploy"]\n'
    )
    return root


def test_a_run_from_a_subfolder_uses_the_project_state_and_another_folder_does_not(tmp_path, repo, emulator):
    env = env_without_endpoint(tmp_path)
    assert "3 added" in snap(repo, env, "apply", "--auto-approve").stdout
    state = repo / "ops" / "state" / "snapctl.state.json"
    assert state.is_file()
    written = state.read_bytes()
    deep = repo / "tools" / "deep"
    assert snap(deep, env, "plan").stdout.startswith("No changes. 3 task(s)")
    assert "3 of 3 declared task(s) running." in snap(deep, env, "status").stdout
    listed = json.loads(snap(deep, env, "state", "list", "--json").stdout)
    assert Path(listed["location"]) == state and len(listed["tasks"]) == 3
    # The project's state named another way is still the state being migrated.
    one_error_line(
        snap(repo, env, "state", "migrate", "--to", "ops/state/snapctl.state.json", code=1), "--to names the"
    )
    # Another folder, outside the project: its own (empty) state; the project's is never touched.
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "manifests").mkdir(parents=True)
    (elsewhere / "manifests" / "app.yaml").write_text(manifest())
    on_emulator = env | {"SNAPCTL_ENDPOINT": emulator.url}
    assert "3 to add" in snap(elsewhere, on_emulator, "plan").stdout
    destroyed = snap(elsewhere, on_emulator, "destroy", "--auto-approve").stdout
    assert "No changes." in destroyed
    assert len(tasks(emulator.url)) == 3 and state.read_bytes() == written
    # A snapctl.toml above the repository's root (.git) is not the repository's.
    inner = repo / "vendored"
    (inner / ".git").mkdir(parents=True)
    (inner / "manifests").mkdir()
    (inner / "manifests" / "app.yaml").write_text(manifest(n=1, app="other"))
    assert "no state yet at state/snapctl.state.json" in snap(inner, on_emulator, "plan").stderr


def test_precedence_flags_then_variables_then_the_file_then_the_defaults(tmp_path, repo, emulator, make_emulator):
    env = env_without_endpoint(tmp_path)
    snap(repo, env, "apply", "--auto-approve")  # the state is bound to the file's endpoint
    other = make_emulator()

    def location(*args: str, **extra: str) -> str:
        return json.loads(snap(repo, env | extra, "state", "list", "--json", *args).stdout)["location"]

    # state: flag, variable, file (relative to its directory), default.
    assert location("--state", "flag.json") == "flag.json"
    assert location("--state", "flag.json", SNAPCTL_STATE="var.json") == "flag.json"
    assert location(SNAPCTL_STATE="var.json") == "var.json"
    assert location() == str(repo / "ops" / "state" / "snapctl.state.json")
    (repo / "snapctl.toml").write_text('manifests = ["deploy"]\n')
    assert location() == str(repo / "state" / "snapctl.state.json")  # the default, in the project
    (repo / "snapctl.toml").write_text(
        f'state = "ops/state/snapctl.state.json"\nendpoint = "{emulator.url}"\nmanifests = ["deploy"]\n'
        'workspace = "staging"\n'
    )

    # workspace: flag, variable, selection, file, default.
    def workspace(*args: str, **extra: str) -> tuple[str, str]:
        shown = json.loads(snap(repo / "tools", env | extra, "workspace", "show", "--json", *args).stdout)
        return shown["workspace"], shown["from"]

    assert workspace() == ("staging", f"set in {repo / 'snapctl.toml'}")
    snap(repo, env, "workspace", "new", "staging")
    snap(repo, env, "workspace", "new", "qa")
    snap(repo / "tools", env, "workspace", "select", "qa")  # kept in the project, not in tools/
    assert (repo / ".snapctl" / "workspace").read_text() == "qa\n"
    assert workspace() == ("qa", f"selected in {repo / '.snapctl' / 'workspace'}")
    assert workspace(SNAPCTL_WORKSPACE="staging") == ("staging", "SNAPCTL_WORKSPACE")
    planned = snap(repo, env | {"SNAPCTL_WORKSPACE": "qa"}, "plan", "--workspace", "default", "--json").stdout
    assert json.loads(planned)["summary"]["add"] == 0  # --workspace default: the applied state
    snap(repo, env, "workspace", "select", "default")

    # endpoint: the file names the other emulator, the state is bound to the first: refused offline.
    (repo / "snapctl.toml").write_text(
        f'state = "ops/state/snapctl.state.json"\nendpoint = "{other.url}"\nmanifests = ["deploy"]\n'
    )
    one_error_line(snap(repo, env, "plan", code=1), f"belongs to endpoint {emulator.url}", f"not {other.url}")
    assert snap(repo, env | {"SNAPCTL_ENDPOINT": emulator.url}, "plan").stdout.startswith("No changes.")
    flagged = snap(repo, env | {"SNAPCTL_ENDPOINT": other.url}, "plan", "--endpoint", emulator.url)
    assert flagged.stdout.startswith("No changes.")
    # Neither flag, variable nor file: an offline plan takes the state's endpoint (and region)...
    (repo / "snapctl.toml").write_text('state = "ops/state/snapctl.state.json"\nmanifests = ["deploy"]\n')
    assert snap(repo, env, "plan").stdout.startswith("No changes.")
    assert snap(repo, env, "plan", "--destroy").stdout.count("will be destroyed") == 3
    # ... but whatever calls the API calls the default endpoint, which the state refuses, before any call.
    before = other.stats()["total"] + emulator.stats()["total"]
    one_error_line(snap(repo, env, "plan", "--refresh", code=1), "belongs to endpoint", "https://rtc.volcengineapi.com")
    one_error_line(snap(repo, env, "destroy", "--auto-approve", code=1), "belongs to endpoint")
    assert other.stats()["total"] + emulator.stats()["total"] == before and len(tasks(emulator.url)) == 3
    # region: VOLC_REGION, then the file.
    (repo / "snapctl.toml").write_text(
        f'state = "ops/state/snapctl.state.json"\nendpoint = "{emulator.url}"\nregion = "cn-beijing"\n'
        'manifests = ["deploy"]\n'
    )
    one_error_line(snap(repo, env, "plan", code=1), "(region cn-north-1)", "(region cn-beijing)")
    assert snap(repo, env | {"VOLC_REGION": "cn-north-1"}, "plan").stdout.startswith("No changes.")
    # manifests: the arguments, then the file's, then manifests/.
    (repo / "one.yaml").write_text(manifest(n=1))
    with_args = snap(repo, env | {"VOLC_REGION": "cn-north-1"}, "plan", "one.yaml").stdout
    assert "2 to destroy" in with_args


def test_a_mistyped_workspace_in_the_file_is_refused_before_any_call(tmp_path, repo, emulator):
    env = env_without_endpoint(tmp_path)
    snap(repo, env, "workspace", "new", "production")
    snap(repo, env, "apply", "--workspace", "production", "--auto-approve")
    calls = emulator.stats()["total"]
    with (repo / "snapctl.toml").open("a") as toml:
        toml.write('workspace = "prodution"\n')
    for args in (["apply", "--auto-approve"], ["destroy", "--auto-approve"]):
        one_error_line(
            snap(repo / "tools", env, *args, code=1),
            f"workspace prodution (set in {repo / 'snapctl.toml'}) does not exist",
            "did you mean production?",
        )
    assert emulator.stats()["total"] == calls and len(tasks(emulator.url)) == 3


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ('state = "s.json"\n\nstate_file = "x"\n', ["snapctl.toml:3: unknown key 'state_file'", "the keys are state"]),
        ('workspace = "a b"\n', ["snapctl.toml:1: workspace: use letters, digits"]),
        ("manifests = 'deploy'\n", ["snapctl.toml:1: manifests: input should be a valid list, not a string"]),
        ('endpoint = "ftp://x"\n', ["snapctl.toml:1: endpoint: the value 'ftp://x' must start with http://"]),
        ("[state]\npath = 1\n", ["snapctl.toml:1: state: input should be a valid string, not a table"]),
        ('state = "x\n', ["snapctl.toml:1: not valid TOML"]),
        ('state = "postgresql://u:Sekr1t@db/x"\n', ["snapctl.toml:1: state: the URL holds a password", "PGPASSWORD"]),
        ('state = "s3://bucket/x"\n', ["snapctl.toml:1: state: unknown kind of state s3://"]),
    ],
    ids=["unknown", "workspace", "type", "endpoint", "table", "syntax", "password", "scheme"],
)
def test_a_bad_project_file_is_one_line_and_nothing_is_sent(tmp_path, emulator, text, fragments):
    work = tmp_path / "w"
    (work / "manifests").mkdir(parents=True)
    (work / "manifests" / "app.yaml").write_text(manifest())
    (work / "snapctl.toml").write_text(text)
    env = snapctl_env(emulator.url, work)
    calls = emulator.stats()["total"]
    for args in (["plan"], ["apply", "--auto-approve"], ["workspace", "list"]):
        line = one_error_line(run_snapctl(args, cwd=work, env=env), *fragments)
        assert "Sekr1t" not in line
    assert emulator.stats()["total"] == calls
    assert sorted(p.name for p in work.iterdir()) == ["manifests", "snapctl.toml"]


def test_init_writes_the_project_file_asking_nothing_without_a_terminal(tmp_path, emulator, pg):
    work = tmp_path / "w"
    (work / "manifests").mkdir(parents=True)
    (work / "manifests" / "app.yaml").write_text(manifest())
    env = env_without_endpoint(tmp_path)
    wrote = snap(work, env, "init").stdout
    toml = work / "snapctl.toml"
    assert wrote.startswith(f"Wrote {toml}:\n") and 'state = "state/snapctl.state.json"' in wrote
    assert 'manifests = ["manifests/"]' in wrote and 'workspace = "default"' in wrote
    assert '\n# endpoint = "https://rtc.volcengineapi.com"\n' in toml.read_text()
    first = toml.read_text()
    one_error_line(snap(work, env, "init", "--workspace", "x", code=1), "snapctl.toml already exists", "--force")
    assert toml.read_text() == first
    # Bad flags: one line, nothing written; a password never goes into the file, nor to the output.
    for args, fragment in (
        (["--endpoint", "nope"], "--endpoint: the value 'nope' must start with http://"),
        (["--workspace", "a/b"], "--workspace: use letters, digits"),
        (["--state", pg.state_url], "--state: the URL holds a password"),
    ):
        line = one_error_line(snap(work, env, "init", "--force", *args, code=1), fragment, "nothing was written")
        assert pg.password not in line
        assert toml.read_text() == first
    # With flags: a team's project on PostgreSQL (the password from PGPASSWORD).
    url = pg.server.url(pg.dbname, with_password=False)
    args = ["--state", url, "--workspace", "production", "--endpoint", emulator.url, "--region", "cn-north-1"]
    wrote = snap(work, env, "init", "--force", *args, "--manifests", "manifests/").stdout
    assert "snapctl workspace new production" in wrote
    on_pg = env | {"PGPASSWORD": pg.password}
    sub = work / "manifests"
    snap(sub, on_pg, "workspace", "new", "production")
    assert "3 added" in snap(sub, on_pg, "apply", "--auto-approve").stdout
    assert pg.query("SELECT count(*) FROM snapctl.tasks WHERE workspace = 'production'")[0][0] == 3
    assert snap(sub, on_pg, "workspace", "list").stdout == "  default\n* production\n"


def on_a_terminal(args: list[str], cwd: Path, env: dict, answers: str) -> tuple[int, str]:
    """Run ``snapctl ARGS`` with a pseudo-terminal as stdin and stdout, ``answers`` typed
    ahead (the terminal hands them out a line per prompt); its exit status and output."""
    import os
    import pty
    import subprocess

    from snapctl_testing import SNAPCTL

    master, slave = pty.openpty()
    proc = subprocess.Popen([SNAPCTL, *args], cwd=cwd, env=env, stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    os.write(master, answers.encode())
    output = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the process closed the terminal
            break
        if not chunk:
            break
        output += chunk
    os.close(master)
    return proc.wait(timeout=60), output.decode(errors="replace")


def test_init_on_a_terminal_asks_for_what_no_flag_gives(tmp_path):
    work = tmp_path / "w"
    work.mkdir()
    code, output = on_a_terminal(
        ["init", "--region", "cn-north-1"], work, env_without_endpoint(tmp_path), "\nstaging\n\ndeploy, more\n"
    )
    assert code == 0, output
    for asked in ("state (the state", "workspace (the workspace", "endpoint (the API endpoint", "manifests ("):
        assert asked in output, output
    assert "region (" not in output  # given as a flag
    text = (work / "snapctl.toml").read_text()
    assert 'state = "state/snapctl.state.json"\nworkspace = "staging"\n' in text
    assert (
        '# endpoint = "https://rtc.volcengineapi.com"\nregion = "cn-north-1"\nmanifests = ["deploy", "more"]\n' in text
    )
