"""No secret ever appears in output, logs, plan files or state.

Every command runs with distinctive secret values: the API secret key and an STS
session token from the environment, a storage access/secret key pair through
``${env:...}`` and another written in plain text in a manifest, a secret key in
``~/.volc/credentials``, and wrong ones. Then stdout and stderr of every command,
snapctl's diagnostic log (``SNAPCTL_LOG=debug``), the emulator's own log and
data file, saved plans, the state, its backup, the journal a killed apply
leaves, and every other file snapctl wrote are searched for each value.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from snapctl_testing import SNAPCTL, Run, run_snapctl, snapctl_env

from reconciler.emulator.config import DEFAULT_ACCESS_KEY

# Distinctive values: none is a substring of anything snapctl prints by itself.
VOLC_SECRET = "volcSKq7Wn3ZpL0xS3cr3t"  # the emulator's secret key: the one that works
SESSION_TOKEN = "stsTOKENr8Yb2KfVv5Ht"
ENV_AK = "envAKc4Mx9TqLp2Zs"
ENV_SK = "envSKh6Rz1WdNo8Xe"
ROTATED_SK = "rotSKn1Bq6YcJx4Ua"
PLAIN_AK = "plainAKu3Jy7BeGs5"
PLAIN_SK = "plainSKk2Vf4XaQm9"
WRONG_SK = "wrongSKp5Lc8NtHr1"
FILE_SK = "fileSKd9Gw2MsUe6Ty"
PERCENT_SK = "pctSK%(home)s%%Wq7"  # configparser interpolation would choke on it, or print it
PROXY_PASSWORD = "proxyPWt4Ke9Lz"
SECRETS = [
    VOLC_SECRET,
    SESSION_TOKEN,
    ENV_AK,
    ENV_SK,
    ROTATED_SK,
    PLAIN_AK,
    PLAIN_SK,
    WRONG_SK,
    FILE_SK,
    PERCENT_SK,
    PROXY_PASSWORD,
]

MANIFEST = """\
app_id: app1
storage:
  archive: {type: tos, account_id: "2100000990", bucket: snaps}
  offsite: {type: custom, vendor: s3, bucket: offsite, access_key: "${env:OFF_AK}", secret_key: "${env:OFF_SK}"}
  plain:
    type: custom
    vendor: oss
    bucket: plain
    access_key: %s
    secret_key: %s
defaults:
  storage: archive
  image: {interval: INTERVAL}
rooms:
  R:
    tasks:
      Env: {storage: offsite}
      Plain: {storage: plain}
      Tos: {}
""" % (PLAIN_AK, PLAIN_SK)


def read_task(url: str, address: str) -> dict:
    """GetSnapshotTask's SnapshotTask, signed with the emulator's secret key."""
    from reconciler.client import read_request_headers
    from reconciler.signing import SigningKey

    app, room, task = address.split("/")
    query = {"Action": "GetSnapshotTask", "Version": "2023-11-01", "AppId": app, "RoomId": room, "TaskId": task}
    headers = read_request_headers(
        SigningKey(DEFAULT_ACCESS_KEY, VOLC_SECRET), url.split("://", 1)[1], "/", query, "cn-north-1"
    )
    answer = httpx.get(f"{url}/", params=query, headers=headers)
    assert answer.status_code == 200, answer.text
    return answer.json()["Result"]["SnapshotTask"]


def fingerprint(secret: str) -> str:
    return "sha256:" + hashlib.sha256(secret.encode()).hexdigest()[:16]


def leaks(text: str) -> list[str]:
    return [s for s in SECRETS if s in text]


class Scanner:
    """Runs snapctl and remembers everything it printed, to search at the end (and at once)."""

    def __init__(self, work: Path):
        self.work = work
        self.runs: list[tuple[list[str], Run]] = []

    def run(self, env: dict, *args: str, expect: int | None = 0) -> Run:
        result = run_snapctl(list(args), cwd=self.work, env=env)
        self.runs.append((list(args), result))
        assert not leaks(result.output), (args, leaks(result.output), result.output)
        assert "Traceback" not in result.output, (args, result.output)
        if expect is not None:
            assert result.code == expect, (args, result.output)
        return result

    def files(self, *skip: Path) -> dict[Path, bytes]:
        return {p: p.read_bytes() for p in self.work.rglob("*") if p.is_file() and p not in skip}


@pytest.fixture
def emulator_process(tmp_path):
    """``snapctl emulator`` as its own process, with VOLC_SECRET as its secret key; its log is kept."""
    log_out, log_err = tmp_path / "emulator.out", tmp_path / "emulator.err"
    data = tmp_path / "emulator-data" / "tasks.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VOLC_", "SNAPCTL_"))}
    env["SNAPCTL_EMULATOR_SECRET_KEY"] = VOLC_SECRET
    with log_out.open("wb") as out, log_err.open("wb") as err:
        proc = subprocess.Popen(
            [SNAPCTL, "emulator", "--port", "0", "--data", str(data)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
        )
    try:
        deadline = time.monotonic() + 30
        while "listening on" not in log_out.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log_err.read_text()
            time.sleep(0.02)
        url = log_out.read_text().split("listening on ", 1)[1].split()[0]
        yield url, proc, [log_out, log_err, data]
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)


def test_no_secret_anywhere(tmp_path, emulator_process):
    url, emulator, emulator_files = emulator_process
    work = tmp_path / "work"
    (work / "manifests").mkdir(parents=True)
    (work / "state").mkdir()
    manifest = work / "manifests" / "app.yaml"
    manifest.write_text(MANIFEST.replace("INTERVAL", "2"))
    log = work / "snapctl.log"
    env = snapctl_env(
        url,
        work,
        VOLC_SECRETKEY=VOLC_SECRET,
        VOLC_SESSION_TOKEN=SESSION_TOKEN,
        OFF_AK=ENV_AK,
        OFF_SK=ENV_SK,
        SNAPCTL_LOG="debug",
        SNAPCTL_LOG_PATH=str(log),
    )
    scan = Scanner(work)
    admin = lambda path, payload: httpx.post(f"{url}/_emulator/{path}", json=payload).raise_for_status()  # noqa: E731

    # Offline commands.
    assert "plain text" in scan.run(env, "validate").stderr  # warned, without the value
    scan.run(env, "validate", "--json")
    scan.run(env, "schema")
    scan.run(env, "plan")
    scan.run(env, "plan", "--json")
    scan.run(env, "plan", "--format", "markdown")
    scan.run(env, "plan", "--out", "first.plan")
    assert "(sensitive)" in scan.run(env, "plan", "--no-color").stdout

    # A saved plan, then changes: a rotated secret (replace) and an interval (update).
    scan.run(env, "apply", "first.plan")
    # The storage keys did reach the API: the emulator shows them fingerprinted on arrival.
    running = {t["TaskId"]: t["Request"] for t in httpx.get(f"{url}/_emulator/tasks").json()["tasks"]}
    assert running["Env"]["StorageConfig"]["CustomConfig"]["SecretKey"] == fingerprint(ENV_SK)
    assert running["Plain"]["StorageConfig"]["CustomConfig"]["AccessKey"] == fingerprint(PLAIN_AK)
    rotated = env | {"OFF_SK": ROTATED_SK}
    scan.run(rotated, "plan", "--detailed-exitcode", expect=2)
    scan.run(rotated, "apply", "--auto-approve", "--json")
    manifest.write_text(MANIFEST.replace("INTERVAL", "3"))
    scan.run(rotated, "apply", "--auto-approve")

    # A killed apply leaves its journal behind: calls are answered after 3 s, the kill
    # lands once the journal holds the intents of the replacements.
    admin("config", {"latency_ms": 3000})
    manifest.write_text(MANIFEST.replace("INTERVAL", "4").replace("bucket: plain", "bucket: plain2"))
    journal = work / "state" / "snapctl.state.json.journal"
    proc = subprocess.Popen(
        [SNAPCTL, "apply", "--auto-approve"],
        cwd=work,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 30
    while not (journal.exists() and journal.read_bytes().count(b'"op":"intent"') >= 3):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    proc.kill()
    killed_output = proc.communicate()[0].decode()
    assert not leaks(killed_output)
    left_behind = scan.files(manifest)
    assert journal in left_behind and "StorageConfig" in journal.read_text()
    admin("config", {"latency_ms": 0})
    scan.run(env, "state", "list")
    scan.run(env, "apply", "--auto-approve")

    # Reconcile, state commands, import, force-unlock.
    scan.run(env, "reconcile")
    scan.run(env, "reconcile", "--json")
    # GetSnapshotTask returns the storage keys in clear, as the real API does (the
    # emulator keeps them in memory only); every refresh fingerprints them on arrival.
    assert read_task(url, "app1/R/Env")["StorageConfig"]["CustomConfig"]["SecretKey"] == ENV_SK
    scan.run(env, "plan", "--refresh")
    scan.run(env, "plan", "--refresh", "--json")
    scan.run(env, "plan", "--refresh", "--format", "markdown")
    scan.run(env, "plan", "--refresh", "--out", "refreshed.plan")
    scan.run(env, "apply", "--refresh", "--auto-approve")
    scan.run(env, "status")
    scan.run(env, "status", "--json")
    scan.run(env, "state", "list", "--json")
    for address in ("app1/R/Env", "app1/R/Plain"):
        scan.run(env, "state", "show", address)
        scan.run(env, "state", "show", address, "--json")
    scan.run(env, "state", "rm", "app1/R/Env")
    scan.run(env, "import", "app1/R/Env")
    scan.run(env, "state", "rm", "app1/R/Plain")
    scan.run(env, "import", "app1/R/Plain", "--json")
    scan.run(env, "force-unlock")

    # Failure paths: a wrong secret key, a denied app, an endpoint that does not answer,
    # bad manifests around secrets, a broken credentials file.
    manifest.write_text(MANIFEST.replace("INTERVAL", "5"))
    wrong = env | {"VOLC_SECRETKEY": WRONG_SK}
    assert "SignatureDoesNotMatch" in scan.run(wrong, "apply", "--auto-approve", expect=1).stderr
    scan.run(wrong, "apply", "--auto-approve", "--json", expect=1)
    scan.run(wrong, "reconcile", "--json", expect=1)
    scan.run(env, "state", "rm", "app1/R/Tos")
    assert "SignatureDoesNotMatch" in scan.run(wrong, "import", "app1/R/Tos", expect=1).stderr
    scan.run(env, "import", "app1/R/Tos")
    admin("config", {"deny_apps": ["app1"]})
    assert "AccessDenied" in scan.run(env, "apply", "--auto-approve", expect=1).stdout
    scan.run(env, "destroy", "--auto-approve", "--json", expect=1)
    admin("config", {"deny_apps": []})
    # Another endpoint needs another state (a state is bound to its endpoint).
    unreachable = env | {"SNAPCTL_ENDPOINT": "http://127.0.0.1:9", "SNAPCTL_STATE": "state/unreachable.json"}
    refused = scan.run(unreachable, "apply", "--auto-approve", "--parallelism", "1", expect=1)
    assert "cannot reach the API at http://127.0.0.1:9" in refused.stderr
    refused = scan.run(env | {"SNAPCTL_ENDPOINT": "http://127.0.0.1:9"}, "apply", "--auto-approve", expect=1)
    assert "belongs to endpoint" in refused.stderr
    # Hostile environments: a token with a line break, proxies snapctl cannot use (with a password).
    for hostile in (
        {"VOLC_SESSION_TOKEN": SESSION_TOKEN + "\n"},
        {"HTTP_PROXY": f"ftp://user:{PROXY_PASSWORD}@proxy:21"},
        {"HTTPS_PROXY": f"http://user:{PROXY_PASSWORD}@proxy:99999"},
        {"ALL_PROXY": f"socks4://user:{PROXY_PASSWORD}@proxy:1080"},
    ):
        assert scan.run(env | hostile, "apply", "--auto-approve", expect=1).stderr.startswith("Error: ")
    broken = work / "broken"
    broken.mkdir()
    (broken / "syntax.yaml").write_text(
        f'app_id: app1\nstorage:\n  s: {{type: custom, bucket: b, access_key: {PLAIN_AK}, secret_key: "{PLAIN_SK}\n'
    )
    (broken / "types.yaml").write_text(
        f"app_id: app2\nstorage:\n  s: {{type: custom, bucket: b, access_key: [{PLAIN_AK}], secret_key: {{k: {PLAIN_SK}}}}}\n"
        "rooms: {}\n"
    )
    (broken / "unknown.yaml").write_text(
        f"app_id: app3\nstorage:\n  s: {{type: tos, account_id: '1', bucket: b, acces_key: {PLAIN_AK}, secret: {PLAIN_SK}}}\nrooms: {{}}\n"
    )
    for command in (["validate"], ["plan"], ["apply", "--auto-approve"]):
        scan.run(env, *command, "broken", expect=1)
    home_file = work / ".volc" / "credentials"
    home_file.parent.mkdir()
    no_env_keys = {k: v for k, v in env.items() if k not in ("VOLC_ACCESSKEY", "VOLC_SECRETKEY", "VOLC_SESSION_TOKEN")}
    home_file.write_text(f"[default]\naccess_key_id = {DEFAULT_ACCESS_KEY}\nsecret_access_key = {VOLC_SECRET}\n")
    scan.run(no_env_keys, "apply", "--auto-approve")
    for broken_file in (
        f"[default]\naccess_key_id = {DEFAULT_ACCESS_KEY}\n{FILE_SK}\nsecret_access_key {FILE_SK}\n".encode(),
        b"[default]\naccess_key_id = x\nsecret_access_key = " + FILE_SK.encode() + b"\xff\xfe\n",
    ):
        home_file.write_bytes(broken_file)
        assert "cannot read credentials" in scan.run(no_env_keys, "destroy", "--auto-approve", expect=1).stderr
        scan.run(no_env_keys, "reconcile", expect=1)
    home_file.write_text(f"[default]\naccess_key_id = {DEFAULT_ACCESS_KEY}\nsecret_access_key = {WRONG_SK}\n")
    scan.run(no_env_keys, "destroy", "--auto-approve", expect=1)
    home_file.write_text(f"[default]\naccess_key_id = {DEFAULT_ACCESS_KEY}\nsecret_access_key = {PERCENT_SK}\n")
    assert "SignatureDoesNotMatch" in scan.run(no_env_keys, "destroy", "--auto-approve", expect=1).stderr
    home_file.write_text(
        f"[default]\naccess_key_id = {DEFAULT_ACCESS_KEY}\nsecret_access_key = {FILE_SK}\n  {PERCENT_SK}\n"
    )
    assert "line 3" in scan.run(no_env_keys, "destroy", "--auto-approve", expect=1).stderr

    scan.run(env, "destroy", "--auto-approve", "--json")
    assert httpx.get(f"{url}/_emulator/tasks").json()["tasks"] == []

    # Everything snapctl wrote, then the emulator's log and data file after a clean stop.
    written = scan.files(manifest, home_file, *broken.iterdir())
    assert work / "first.plan" in written and work / "state" / "snapctl.state.json.backup" in written
    # The log was written (it is scanned with the rest): results, failures and retries.
    log_text = log.read_text()
    assert "StartSnapshot=started" in log_text and "code=SignatureDoesNotMatch" in log_text and "retry" in log_text
    for path, content in {**left_behind, **written}.items():
        assert not leaks(content.decode(errors="replace")), path
    commands = {" ".join(args[:2]) if args[0] == "state" else args[0] for args, _ in scan.runs}
    assert commands >= {
        "validate",
        "plan",
        "apply",
        "reconcile",
        "import",
        "state list",
        "state show",
        "state rm",
        "destroy",
        "force-unlock",
        "schema",
        "status",
    }
    emulator.send_signal(signal.SIGTERM)
    assert emulator.wait(30) == 0
    for path in emulator_files:
        assert path.exists()
        assert not leaks(path.read_text(errors="replace")), path


def test_settings_and_the_run_environment_never_show_a_secret():
    """A library user who logs the engine's Settings (or what they resolve to) logs no secret:
    Settings held the whole environment, secret key and session token included, in its repr."""
    from reconciler import engine

    environ = {
        "VOLC_ACCESSKEY": "AK-repr-test",
        "VOLC_SECRETKEY": "SK-repr-secret-1f2e",
        "VOLC_SESSION_TOKEN": "token-repr-secret-3d4c",
        "VOLC_REGION": "cn-north-1",
    }
    settings = engine.Settings(endpoint="http://127.0.0.1:9", environ=environ)
    resolved = settings.resolve()
    for shown in (repr(settings), str(settings), repr(resolved), str(resolved)):
        assert "SK-repr-secret-1f2e" not in shown and "token-repr-secret-3d4c" not in shown, shown
    assert "http://127.0.0.1:9" in repr(settings)
