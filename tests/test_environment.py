"""The run's environment is checked once, up front: credentials, the endpoint, the region,
proxies, the log path and the metrics address. A bad input is one ``Error:`` line on
stderr, exit 1, nothing printed before it, nothing sent, no traceback, no secret shown."""

from __future__ import annotations

import socket

import pytest
from snapctl_testing import new_project, run_snapctl, snapctl_env, stats

from reconciler.emulator.config import DEFAULT_ACCESS_KEY

MANIFEST = """\
app_id: app1
storage:
  s: {type: tos, account_id: "2100000990", bucket: snaps}
defaults: {storage: s}
rooms:
  R:
    tasks:
      A: {}
      B: {}
"""

SECRET = "zzSecretValue42"


@pytest.fixture
def project(tmp_path, emulator):
    return new_project(tmp_path, emulator.url, {"app.yaml": MANIFEST})


def assert_one_line(result, *expected: str) -> str:
    """Exit 1, nothing on stdout, exactly one ``Error:`` line on stderr holding ``expected``."""
    assert result.code == 1, result.output
    assert result.stdout == "", result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    assert "Traceback" not in result.output and SECRET not in result.output
    return lines[0]


BAD_ENVIRONMENTS = {
    "token with a trailing newline": (
        {"VOLC_SESSION_TOKEN": f"tok-{SECRET}\n"},
        "VOLC_SESSION_TOKEN holds a line break",
    ),
    "non-ASCII access key": ({"VOLC_ACCESSKEY": "AKLTé" + SECRET}, "VOLC_ACCESSKEY holds a non-ASCII character"),
    "control character in the secret": ({"VOLC_SECRETKEY": SECRET + "\x07x"}, "VOLC_SECRETKEY holds a control"),
    "secret key without access key": ({"VOLC_ACCESSKEY": ""}, "VOLC_SECRETKEY is set but VOLC_ACCESSKEY is not"),
    "non-ASCII region": ({"VOLC_REGION": "cn-nörth-1"}, "VOLC_REGION holds a non-ASCII character"),
    "ftp proxy": ({"HTTP_PROXY": f"ftp://user:{SECRET}@proxy:21"}, "HTTP_PROXY is a ftp:// proxy"),
    "proxy port out of range": ({"https_proxy": f"http://user:{SECRET}@proxy:99999"}, "https_proxy is not a valid"),
    "endpoint port out of range": ({"SNAPCTL_ENDPOINT": "http://127.0.0.1:70000"}, "port must be a number from 1"),
    "endpoint with another scheme": ({"SNAPCTL_ENDPOINT": "ftp://127.0.0.1"}, "must start with http:// or https://"),
    "endpoint without host": ({"SNAPCTL_ENDPOINT": "http://:8080"}, "has no host name"),
    "endpoint with a password": ({"SNAPCTL_ENDPOINT": f"http://u:{SECRET}@h"}, "must not hold a user name or password"),
    # Whatever else is wrong with it, an endpoint holding a password is never shown.
    "endpoint with a password and another scheme": (
        {"SNAPCTL_ENDPOINT": f"ftp://u:{SECRET}@h"},
        "must not hold a user name or password",
    ),
    "endpoint with a password and an unclosed bracket": (
        {"SNAPCTL_ENDPOINT": f"http://u:{SECRET}@[::1"},
        "must not hold a user name or password",
    ),
    "endpoint with a password and one slash": (
        {"SNAPCTL_ENDPOINT": f"https:/u:{SECRET}@h"},
        "must not hold a user name or password",
    ),
    "endpoint with a space": ({"SNAPCTL_ENDPOINT": "http://exa mple.com"}, "SNAPCTL_ENDPOINT holds white space"),
    "endpoint with a query": ({"SNAPCTL_ENDPOINT": "http://h:1/?Action=x"}, "must not have a query"),
    "log in a missing directory": (
        {"SNAPCTL_LOG": "debug", "SNAPCTL_LOG_PATH": "no/such/dir/snapctl.log"},
        "SNAPCTL_LOG_PATH no/such/dir/snapctl.log: the directory no/such/dir does not exist",
    ),
}


@pytest.mark.parametrize("case", list(BAD_ENVIRONMENTS))
def test_bad_environment_is_one_line_before_anything(project, emulator, case):
    extra, expected = BAD_ENVIRONMENTS[case]
    env = snapctl_env(emulator.url, project, **extra)
    assert_one_line(run_snapctl(["apply", "--auto-approve"], cwd=project, env=env), expected)
    assert stats(emulator.url)["total"] == 0
    assert not (project / "state" / "snapctl.state.json").exists()


def test_no_socks_extra_is_refused_clearly(project, emulator):
    try:
        import socksio  # noqa: F401

        pytest.skip("socksio is installed: SOCKS proxies are supported")
    except ImportError:
        pass
    env = snapctl_env(emulator.url, project, ALL_PROXY=f"socks5://user:{SECRET}@proxy:1080")
    for command in (["apply", "--auto-approve"], ["reconcile"], ["destroy", "--auto-approve"]):
        assert_one_line(
            run_snapctl(command, cwd=project, env=env), "ALL_PROXY is a SOCKS proxy", "pip install 'snapctl[socks]'"
        )


def test_every_api_command_checks_the_endpoint_first(project, emulator):
    env = snapctl_env("http://127.0.0.1:65536", project)
    for command in (
        ["plan"],
        ["apply", "--auto-approve"],
        ["destroy", "--auto-approve"],
        ["reconcile"],
        ["import", "app1/R/A"],
    ):
        assert_one_line(run_snapctl(command, cwd=project, env=env), "SNAPCTL_ENDPOINT", "from 1 to 65535")
    # The flag wins over the environment, and plan takes it too (it sends nothing).
    good = run_snapctl(["plan", "--endpoint", emulator.url], cwd=project, env=env)
    assert good.code == 0 and "2 to add" in good.stdout
    assert stats(emulator.url)["total"] == 0


def test_missing_credentials_before_the_plan(project, emulator):
    env = snapctl_env(emulator.url, project)
    del env["VOLC_ACCESSKEY"], env["VOLC_SECRETKEY"]
    line = assert_one_line(run_snapctl(["apply", "--auto-approve"], cwd=project, env=env), "no credentials")
    assert ".volc/credentials" in line
    # plan needs no credentials.
    assert run_snapctl(["plan"], cwd=project, env=env).code == 0


def _file_env(project, emulator, text: str | bytes):
    env = snapctl_env(emulator.url, project)
    del env["VOLC_ACCESSKEY"], env["VOLC_SECRETKEY"]
    path = project / ".volc" / "credentials"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return env


@pytest.mark.parametrize(
    "text, expected",
    [
        (f"[default]\naccess_key_id = AK\n{SECRET}\n", "credentials line 3: cannot read credentials"),
        (b"[default]\naccess_key_id = AK\nsecret_access_key = " + SECRET.encode() + b"\xff\n", "line 3"),
        (f"access_key_id = AK\nsecret_access_key = {SECRET}\n", "line 1: cannot read credentials"),
        (f"[default]\naccess_key_id = AK\nsecret_access_key = {SECRET}\n  more\n", "secret_access_key in"),
        (f"[default]\naccess_key_id = AK\nsecret_access_key = {SECRET}\nsession_token = tök\n", "session_token in"),
        ("[default]\naccess_key_id = AK\n", "the [default] section has no secret_access_key"),
    ],
)
def test_bad_credentials_file_names_file_and_line_never_the_value(project, emulator, text, expected):
    env = _file_env(project, emulator, text)
    assert_one_line(run_snapctl(["apply", "--auto-approve"], cwd=project, env=env), expected)
    assert stats(emulator.url)["total"] == 0


def test_credentials_file_is_read_literally(project, make_emulator):
    # % and %% are part of the secret: no interpolation.
    secret = "pct%s%%ecret%"
    server = make_emulator(secret_key=secret)
    env = _file_env(
        project,
        server,
        f"[default]\naccess_key_id = {DEFAULT_ACCESS_KEY}\nsecret_access_key = {secret}\n",
    )
    env["SNAPCTL_ENDPOINT"] = server.url
    result = run_snapctl(["apply", "--auto-approve"], cwd=project, env=env)
    assert result.code == 0, result.output
    assert "2 added" in result.stdout and secret not in result.output


def test_metrics_address_problems_are_one_line(project, emulator):
    env = snapctl_env(emulator.url, project)
    unresolvable = run_snapctl(
        ["reconcile", "--watch", "--metrics-port", "0", "--metrics-host", "no-such-host.invalid"], cwd=project, env=env
    )
    assert_one_line(unresolvable, "--metrics-host 'no-such-host.invalid' does not resolve")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = run_snapctl(["reconcile", "--watch", "--metrics-port", str(port)], cwd=project, env=env)
    assert_one_line(busy, f"cannot serve metrics on 127.0.0.1:{port}")
    assert stats(emulator.url)["total"] == 0
