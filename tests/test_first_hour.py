"""The first hour of a new user: an unreachable or refusing API, a mistyped command, an
emulator started by hand (behind a path prefix), each answered in one precise line."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess

import pytest
from snapctl_testing import SNAPCTL, new_project, run_snapctl, snapctl_env, stats

from reconciler.emulator.config import DEFAULT_ACCESS_KEY

TASKS = 6
MANIFEST = "app_id: app1\nstorage:\n  s: {type: tos, account_id: '1', bucket: b}\ndefaults: {storage: s}\n" + (
    "rooms:\n  R:\n    tasks:\n" + "".join(f"      T{i}: {{}}\n" for i in range(TASKS))
)
DENIED = "app_id: app2\nstorage:\n  s: {type: tos, account_id: '1', bucket: b}\ndefaults: {storage: s}\n" + (
    "rooms:\n  R:\n    tasks:\n      A: {}\n      B: {}\n"
)


@pytest.fixture
def project(tmp_path, emulator):
    return new_project(tmp_path, emulator.url, {"app.yaml": MANIFEST})


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("Error:")]


def assert_nothing_pending(project, env):
    listed = run_snapctl(["state", "list", "--json"], cwd=project, env=env)
    if listed.code == 0:
        assert json.loads(listed.stdout)["pending"] == {}


def test_unreachable_endpoint_is_named_once_with_how_to_start_the_emulator(project, emulator):
    port = closed_port()
    log = project / "snapctl.log"
    env = snapctl_env(f"http://127.0.0.1:{port}", project, SNAPCTL_LOG="info", SNAPCTL_LOG_PATH=str(log))
    result = run_snapctl(["apply", "--auto-approve"], cwd=project, env=env)
    assert result.code == 1 and "Traceback" not in result.output
    assert result.stderr.splitlines() == [
        f"Error: cannot reach the API at http://127.0.0.1:{port}: the connection was refused; to use the local "
        f"emulator, start it with: snapctl emulator --port {port}; nothing was sent"
    ]
    assert "refused" not in result.stdout and "Apply complete" not in result.stdout
    # Refused connections are retried a few times quickly, not per task: the run stops.
    assert log.read_text().count("retry ") <= 2
    # Nothing was sent, so nothing is pending: the next plan creates, it does not replace.
    assert_nothing_pending(project, env)
    plan = run_snapctl(["plan", "--endpoint", emulator.url], cwd=project, env=env)
    assert f"Plan: {TASKS} to add, 0 to change, 0 to replace" in plan.stdout
    # The other commands that call the API say it the same way, once.
    for command in (["reconcile"], ["import", "app1/R/T0"]):
        other = run_snapctl(command, cwd=project, env=env)
        assert other.code == 1 and len(error_lines(other)) == 1, other.output
        assert f"cannot reach the API at http://127.0.0.1:{port}" in other.stderr
        assert "refused" not in other.stdout
    assert_nothing_pending(project, env)


def test_what_cannot_succeed_is_not_retried(project, emulator):
    log = project / "snapctl.log"
    cases = {
        "http://no-such-host.invalid": "the host name no-such-host.invalid does not resolve",
        # TLS spoken to the emulator's plain-HTTP port.
        emulator.url.replace("http://", "https://"): "the TLS handshake failed",
    }
    for endpoint, expected in cases.items():
        env = snapctl_env(endpoint, project, SNAPCTL_LOG="info", SNAPCTL_LOG_PATH=str(log))
        result = run_snapctl(["apply", "--auto-approve"], cwd=project, env=env)
        assert result.code == 1 and "Traceback" not in result.output
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"Error: cannot reach the API at {endpoint}: {expected}")
        assert lines[0].endswith("; nothing was sent") and result.stdout.count("Plan:") == 1
        assert_nothing_pending(project, env)
    assert "retry" not in log.read_text()
    assert stats(emulator.url)["total"] == 0


@pytest.mark.parametrize(
    "credentials, code",
    [
        ({"VOLC_SECRETKEY": "wrong-secret"}, "SignatureDoesNotMatch"),
        ({"VOLC_ACCESSKEY": "AKLTnobody"}, "InvalidAccessKey"),
    ],
)
def test_credentials_refused_stop_the_run_at_the_first_answer(project, emulator, credentials, code):
    env = snapctl_env(emulator.url, project, **credentials)
    result = run_snapctl(["apply", "--auto-approve", "--parallelism", "2"], cwd=project, env=env)
    assert result.code == 1 and "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: the API refused the credentials: " + code), lines
    assert "The run stopped at the first such answer" in lines[0]
    assert "run the command again" not in result.output and code not in result.stdout
    # At most the calls already in flight when the first answer came (parallelism 2).
    sent = stats(emulator.url)
    assert 1 <= sent["total"] <= 2 and sent["by_action"]["StartSnapshot"]["outcomes"] == {code: sent["total"]}
    assert_nothing_pending(project, env)
    as_json = run_snapctl(["apply", "--auto-approve", "--parallelism", "1", "--json"], cwd=project, env=env)
    document = json.loads(as_json.stdout)
    assert as_json.code == 1 and document["ok"] is False
    assert document["stopped_by"]["code"] == code and document["not_attempted"] == TASKS - 1
    assert [r["code"] for r in document["results"]] == [code]


@pytest.mark.parametrize(
    "credentials, code, hint",
    [
        ({"VOLC_SECRETKEY": "wrong-secret"}, "SignatureDoesNotMatch", "check the secret key (VOLC_SECRETKEY"),
        ({"VOLC_ACCESSKEY": "AKLTnobody"}, "InvalidAccessKey", "check the access key (VOLC_ACCESSKEY"),
    ],
)
def test_credentials_refused_on_reads_say_what_to_check_as_apply_does(project, emulator, credentials, code, hint):
    env = snapctl_env(emulator.url, project, **credentials)
    for command in (["plan", "--refresh"], ["status"]):
        result = run_snapctl([*command, "--parallelism", "1"], cwd=project, env=env)
        assert result.code == 1 and "Traceback" not in result.output, result.output
        assert result.stdout == ""
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: the API refused the credentials: " + code), lines
        assert hint in lines[0] and "[RequestId " in lines[0], lines
    # One read each: the first refusal ends the refresh.
    assert stats(emulator.url)["by_action"]["GetSnapshotTask"]["outcomes"] == {code: 2}
    assert not any((project / "state").iterdir())


def test_clock_off_by_more_than_15_minutes_stops_the_run(project, make_emulator):
    # X-Date has whole seconds, so with no skew allowed every request is "off".
    server = make_emulator(max_skew_s=0)
    env = snapctl_env(server.url, project)
    result = run_snapctl(["apply", "--auto-approve", "--parallelism", "1"], cwd=project, env=env)
    assert result.code == 1
    assert result.stderr.startswith("Error: the API refused the credentials: InvalidTimestamp")
    assert "clock" in result.stderr and len(result.stderr.splitlines()) == 1
    assert stats(server.url)["total"] == 1


def test_access_denied_stays_per_app_and_no_false_promise(project, emulator):
    (project / "manifests" / "denied.yaml").write_text(DENIED)
    emulator.configure(deny_apps=["app2"])
    env = snapctl_env(emulator.url, project)
    result = run_snapctl(["apply", "--auto-approve"], cwd=project, env=env)
    assert result.code == 1
    assert f"Apply failed for 2 of {TASKS + 2} task(s)" in result.stdout
    assert stats(emulator.url)["by_action"]["StartSnapshot"]["outcomes"] == {"ok": TASKS, "AccessDenied": 2}
    # Running it again as it is cannot help: it says what can.
    assert "run the command again to finish the job" not in result.stdout
    assert "fix the failures above, then run the command again" in result.stdout


def test_a_path_that_does_not_serve_the_api_stops_the_run(project, emulator):
    env = snapctl_env(emulator.url + "/wrong", project)
    result = run_snapctl(["apply", "--auto-approve", "--parallelism", "1"], cwd=project, env=env)
    assert result.code == 1 and len(error_lines(result)) == 1 and len(result.stderr.splitlines()) == 1
    assert f"the endpoint {emulator.url}/wrong does not serve the snapshot API" in result.stderr
    assert stats(emulator.url)["total"] <= 1


def test_mistyped_command_suggests_the_right_one(tmp_path):
    env = snapctl_env(None, tmp_path)
    for typed, meant in (("aply", "apply"), ("pln", "plan"), ("reconcle", "reconcile")):
        result = run_snapctl([typed], cwd=tmp_path, env=env)
        assert result.code == 1 and f"No such command '{typed}'. Did you mean {meant}?" in result.stderr
    unknown = run_snapctl(["frobnicate"], cwd=tmp_path, env=env)
    assert unknown.code == 1 and "See snapctl --help." in unknown.stderr


def test_emulator_started_by_hand_behind_a_path_prefix(tmp_path, emulator):
    """An emulator you start yourself, reached through SNAPCTL_ENDPOINT with a path: snapctl posts to
    exactly that path and signs it (the README's recipe)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VOLC_", "SNAPCTL_"))}
    proc = subprocess.Popen(
        [SNAPCTL, "emulator", "--port", "0", "--api-path", "/api"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        line = proc.stdout.readline().strip()
        assert line.startswith("snapctl emulator listening on http://127.0.0.1:")
        assert line.endswith(f"/api (access key {DEFAULT_ACCESS_KEY}, secret key default)"), line
        endpoint = line.split("listening on ", 1)[1].split()[0]
        project = new_project(tmp_path, emulator.url, {"app.yaml": MANIFEST})
        result = run_snapctl(["apply", "--auto-approve"], cwd=project, env=snapctl_env(endpoint, project))
        assert result.code == 0, result.output
        assert f"{TASKS} added" in result.stdout
        root = endpoint.rsplit("/api", 1)[0]
        assert stats(root)["by_action"]["StartSnapshot"]["outcomes"] == {"ok": TASKS}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


CODES = """\
app_id: app1
storage:
  remote: {type: custom, vendor: oss, bucket: b, access_key: "${env:AK}", secret_key: "${env:SK}"}
defaults: {storage: remote, image: {format: png}}
rooms:
  R:
    tasks:
      T: {streams: [{user_id: u1, stream_type: screen}]}
"""


def test_the_plan_speaks_the_manifests_words(tmp_path, emulator):
    project = new_project(tmp_path, emulator.url, {"app.yaml": CODES})
    env = snapctl_env(emulator.url, project, AK="ak-value", SK="sk-value")
    text = run_snapctl(["plan", "--no-color"], cwd=project, env=env).stdout
    for line in (
        "ImageConfig.Format = 1 (png)",
        "StorageConfig.Type = 2 (custom)",
        "StorageConfig.CustomConfig.Vendor = 1 (oss)",
        "TargetStreams.StreamList[0].StreamType = 1 (screen)",
    ):
        assert line in " ".join(text.split()), line
    markdown = run_snapctl(["plan", "--format", "markdown"], cwd=project, env=env).stdout
    assert "ImageConfig.Format = 1 (png)" in markdown and "StorageConfig.Type = 2 (custom)" in markdown
    document = json.loads(run_snapctl(["plan", "--json"], cwd=project, env=env).stdout)
    changes = {c["path"]: c for c in document["actions"][0]["changes"]}
    assert changes["ImageConfig.Format"]["new"] == 1 and changes["ImageConfig.Format"]["new_name"] == "png"
    assert changes["StorageConfig.CustomConfig.Vendor"]["new_name"] == "oss"
    assert changes["ImageConfig.Width"]["new_name"] is None and changes["ImageConfig.Format"]["old_name"] is None
    # A change of a code names both sides.
    assert run_snapctl(["apply", "--auto-approve"], cwd=project, env=env).code == 0
    (project / "manifests" / "app.yaml").write_text(CODES.replace("format: png", "format: jpeg"))
    changed = run_snapctl(["plan", "--no-color"], cwd=project, env=env).stdout
    assert "ImageConfig.Format = 1 (png) -> 0 (jpeg)" in " ".join(changed.split())


def test_s3_as_a_storage_type_points_to_custom(tmp_path, emulator):
    project = new_project(tmp_path, emulator.url, {"app.yaml": CODES.replace("type: custom, vendor: oss", "type: s3")})
    result = run_snapctl(["validate"], cwd=project, env=snapctl_env(None, project, AK="a", SK="s"))
    assert result.code == 1
    assert "manifests/app.yaml:3:18: error: storage.remote.type: must be one of tos, custom, veimagex" in result.stderr
    assert "S3-compatible storage is `type: custom` with `vendor: s3`" in result.stderr


def test_bad_manifests_as_json(tmp_path, emulator):
    bad = CODES.replace("format: png", "format: gif").replace("user_id: u1", "user_id: u1, colour: red")
    project = new_project(tmp_path, emulator.url, {"app.yaml": bad})
    env = snapctl_env(None, project, AK="a", SK="s")
    for command in (["validate", "--json"], ["plan", "--json"], ["plan", "--format", "json"]):
        result = run_snapctl(command, cwd=project, env=env)
        assert result.code == 1 and "Traceback" not in result.output
        document = json.loads(result.stdout)
        assert document["format_version"] == 1 and document["type"] == command[0]
        assert document["valid"] is False
        assert [(d["file"], d["line"], d["severity"]) for d in document["diagnostics"]] == [
            ("manifests/app.yaml", 4, "error"),
            ("manifests/app.yaml", 8, "error"),
        ]
        for diagnostic in document["diagnostics"]:
            assert set(diagnostic) == {"file", "line", "column", "severity", "message"}
            assert isinstance(diagnostic["column"], int) and diagnostic["message"]
        assert "gif" in document["diagnostics"][0]["message"] and "colour" in document["diagnostics"][1]["message"]
    (tmp_path / "empty").mkdir()
    empty = new_project(tmp_path / "empty", emulator.url, {})
    (empty / "manifests" / "notes.txt").write_text("not yaml")
    nothing = json.loads(run_snapctl(["validate", "--json"], cwd=empty, env=env).stdout)
    assert nothing["valid"] is False and nothing["diagnostics"][0]["file"] is None
