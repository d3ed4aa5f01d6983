"""The state file: atomic writes, journal, backup, permissions, secrets, the lock."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from reconciler.errors import LockError, StateError
from reconciler.state import (
    FORMAT_VERSION,
    FileStore,
    backup_path,
    journal_path,
    lock_is_held,
    read_state,
)

BODY = {
    "AppId": "a",
    "RoomId": "r",
    "TaskId": "t",
    "StorageConfig": {
        "Type": 2,
        "CustomConfig": {"Vendor": 0, "Bucket": "b", "AccessKey": "AK-PLAIN-1", "SecretKey": "SK-PLAIN-1"},
    },
}


def test_new_state_is_written_with_version_lineage_serial_and_0600(tmp_path):
    path = tmp_path / "s.json"
    with FileStore(path) as store:
        store.record_put("a/r/t", BODY, "req-1")
        store.record_put("a/r/u", BODY)
    doc = json.loads(path.read_text())
    assert doc["format_version"] == FORMAT_VERSION
    assert doc["serial"] == 2 and doc["lineage"]
    assert set(doc["tasks"]) == {"a/r/t", "a/r/u"}
    assert doc["tasks"]["a/r/t"]["request_id"] == "req-1"
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert not journal_path(path).exists()


def test_secrets_are_fingerprinted_never_stored(tmp_path):
    path = tmp_path / "s.json"
    with FileStore(path) as store:
        store.record_put("a/r/t", BODY)
        journal = journal_path(path).read_text()
    text = path.read_text() + journal + backup_path(path).read_text()
    assert "SK-PLAIN-1" not in text and "AK-PLAIN-1" not in text
    stored = read_state(path).tasks["a/r/t"]["request"]["StorageConfig"]["CustomConfig"]
    assert stored["SecretKey"].startswith("scrypt:")
    # Same secret, same fingerprint (a change is noticed, an equal value is not).
    state = read_state(path)
    assert state.fingerprint(BODY) == state.tasks["a/r/t"]["request"]
    changed = json.loads(json.dumps(BODY))
    changed["StorageConfig"]["CustomConfig"]["SecretKey"] = "SK-PLAIN-2"
    assert state.fingerprint(changed) != state.tasks["a/r/t"]["request"]


def test_every_call_is_in_the_journal_before_close(tmp_path):
    path = tmp_path / "s.json"
    store = FileStore(path)
    store.open()
    store.record_put("a/r/t", BODY)
    store.record_put("a/r/u", BODY)
    store.record_delete("a/r/t")
    # A reader (another process, or a run after a kill) sees every completed call.
    seen = read_state(path)
    assert set(seen.tasks) == {"a/r/u"} and seen.serial == 3
    store.close()
    assert read_state(path).serial == 3


def test_a_cut_journal_line_is_ignored_and_folded_on_next_open(tmp_path):
    path = tmp_path / "s.json"
    store = FileStore(path)
    store.open()
    store.record_put("a/r/t", BODY)
    with open(journal_path(path), "ab") as journal:
        journal.write(b'{"op": "put", "address": "a/r/x", "ser')  # killed mid-write
    store._unlock()  # simulate death: nothing folded
    assert set(read_state(path).tasks) == {"a/r/t"}
    with FileStore(path) as again:
        assert set(again.state.tasks) == {"a/r/t"}
    assert not journal_path(path).exists()
    assert json.loads(path.read_text())["serial"] == 1


def test_backup_keeps_the_previous_document(tmp_path):
    path = tmp_path / "s.json"
    with FileStore(path) as store:
        store.record_put("a/r/t", BODY)
    first = path.read_text()
    with FileStore(path) as store:
        store.record_delete("a/r/t")
    assert backup_path(path).read_text() == first
    assert json.loads(backup_path(path).read_text())["serial"] == 1


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"format_version": 1, "lineage": "x", "ser', "not valid JSON"),
        ('{"format_version": 99, "lineage": "x", "serial": 1, "fingerprint_key": "k", "tasks": {}}', "Upgrade snapctl"),
        (
            '{"format_version": 0, "lineage": "x", "serial": 1, "fingerprint_key": "k", "tasks": {}}',
            "unknown state format",
        ),
        ('{"lineage": "x"}', "not a snapctl state"),
        ("[]", "JSON object"),
        ('{"format_version": 1, "lineage": "x", "serial": "1", "fingerprint_key": "k", "tasks": {}}', "wrong type"),
    ],
)
def test_broken_states_are_refused_and_not_overwritten(tmp_path, content, message):
    path = tmp_path / "s.json"
    path.write_text(content)
    with pytest.raises(StateError, match=message):
        read_state(path)
    with pytest.raises(StateError, match=message):
        FileStore(path).open()
    assert path.read_text() == content
    assert not lock_is_held(path)


def test_second_writer_is_refused_naming_the_holder(tmp_path):
    path = tmp_path / "s.json"
    with FileStore(path, command="snapctl apply"), pytest.raises(LockError) as info:
        FileStore(path).open()
    message = str(info.value)
    assert f"pid {os.getpid()}" in message and "snapctl apply" in message and "--lock-timeout" in message


def test_lock_timeout_waits_for_the_holder(tmp_path):
    path = tmp_path / "s.json"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
        import time
        from reconciler.state import FileStore
        with FileStore({str(path)!r}):
            print("locked", flush=True)
            time.sleep(1.0)
    """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "locked"
    t0 = time.monotonic()
    with pytest.raises(LockError):
        FileStore(path, lock_timeout_s=0.2).open()
    with FileStore(path, lock_timeout_s=10):
        assert time.monotonic() - t0 > 0.3
    holder.wait(10)


def test_a_killed_holder_never_blocks_the_next_run(tmp_path):
    path = tmp_path / "s.json"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
        import time
        from reconciler.state import FileStore
        store = FileStore({str(path)!r})
        store.open()
        store.record_put("a/r/t", {{"AppId": "a"}})
        print("locked", flush=True)
        time.sleep(60)
    """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "locked"
    assert lock_is_held(path)
    holder.send_signal(signal.SIGKILL)
    holder.wait(10)
    with FileStore(path) as store:  # no wait, no force-unlock
        assert set(store.state.tasks) == {"a/r/t"}


def test_document_layout_one_task_per_line_and_any_json_layout_reads(tmp_path):
    path = tmp_path / "s.json"
    with FileStore(path) as store:
        for task in ("t1", "t2", "t3"):
            store.record_put(f"a/r/{task}", BODY | {"TaskId": task})
    lines = path.read_bytes().split(b"\n")
    assert lines[0].startswith(b'{"format_version":%d,' % FORMAT_VERSION) and lines[1] == b'"tasks":{'
    assert [line[:9] for line in lines[2:5]] == [b'"a/r/t1":', b'"a/r/t2":', b'"a/r/t3":']
    lazy = read_state(path)
    # Re-indented by hand (or by another tool): still the same state.
    path.write_text(json.dumps(json.loads(path.read_text()), indent=4))
    indented = read_state(path)
    assert dict(lazy.tasks) == dict(indented.tasks) and lazy.serial == indented.serial == 3
    assert lazy.tasks["a/r/t2"]["request"]["TaskId"] == "t2"


def test_a_broken_entry_is_a_state_error_when_read(tmp_path):
    path = tmp_path / "s.json"
    with FileStore(path) as store:
        store.record_put("a/r/t1", BODY)
        store.record_put("a/r/t2", BODY)
    raw = path.read_bytes()
    broken = raw.replace(b'"a/r/t2":{"request":{', b'"a/r/t2":{"request":[{', 1)
    path.write_bytes(broken)
    state = read_state(path)
    assert state.tasks["a/r/t1"]["request"]["AppId"] == "a"
    with pytest.raises(StateError, match="a/r/t2"):
        state.tasks["a/r/t2"]
    assert path.read_bytes() == broken


def test_old_hmac_fingerprints_compare_equal_and_are_replaced_on_apply(tmp_path, emulator):
    """A state written before scrypt fingerprints: an unchanged secret stays unchanged,
    and the next apply re-records the task with a scrypt fingerprint (no API call for it)."""
    import hashlib
    import hmac

    from snapctl_testing import new_project, run_snapctl, snapctl_env, stats

    from reconciler.manifest import load_manifests

    def manifest(tasks):
        rows = "".join(f"      {t}: {{}}\n" for t in tasks)
        return (
            "app_id: old\nstorage:\n  s: {type: custom, bucket: b, access_key: '${env:OLD_AK}', "
            f"secret_key: '${{env:OLD_SK}}'}}\ndefaults: {{storage: s}}\nrooms:\n  R:\n    tasks:\n{rows}"
        )

    work = new_project(tmp_path, emulator.url, {"app.yaml": manifest(["A"])})
    secrets_env = {"OLD_AK": "AK-OLD-1", "OLD_SK": "SK-OLD-1"}
    env = snapctl_env(emulator.url, work, **secrets_env)
    key = "k" * 64
    wire = load_manifests([work / "manifests"], environ=secrets_env).tasks["old/R/A"].request.wire()
    for field in ("AccessKey", "SecretKey"):
        value = wire["StorageConfig"]["CustomConfig"][field]
        digest = hmac.new(key.encode(), value.encode(), hashlib.sha256).hexdigest()
        wire["StorageConfig"]["CustomConfig"][field] = "hmac-sha256:" + digest[:32]
    old = {
        "format_version": 1,
        "lineage": "l-old",
        "serial": 1,
        "fingerprint_key": key,
        "tasks": {"old/R/A": {"request": wire}},
    }
    (work / "state" / "snapctl.state.json").write_text(json.dumps(old))
    plan = run_snapctl(["plan"], cwd=work, env=env)
    assert plan.code == 0 and plan.stdout.startswith("No changes. 1 task(s)"), plan.output
    # A changed secret is still noticed.
    changed = run_snapctl(["plan"], cwd=work, env=env | {"OLD_SK": "SK-OLD-2"})
    assert "StorageConfig.CustomConfig.SecretKey" in changed.stdout
    # Read back (the keys come back in clear): fingerprinted like the old record, so no drift.
    running = load_manifests([work / "manifests"], environ=secrets_env).tasks["old/R/A"].request.wire()
    assert emulator.signed_post("StartSnapshot", running).status_code == 200
    refreshed = run_snapctl(["plan", "--refresh", "--detailed-exitcode"], cwd=work, env=env)
    assert refreshed.code == 0 and "1 task(s) run as declared" in refreshed.stdout, refreshed.output
    (work / "manifests" / "app.yaml").write_text(manifest(["A", "B"]))
    applied = run_snapctl(["apply", "--auto-approve"], cwd=work, env=env)
    assert applied.code == 0 and "1 added" in applied.stdout, applied.output
    doc = json.loads((work / "state" / "snapctl.state.json").read_text())
    assert doc["format_version"] == FORMAT_VERSION and doc["lineage"] == "l-old"
    stored = doc["tasks"]["old/R/A"]["request"]["StorageConfig"]["CustomConfig"]
    assert stored["SecretKey"].startswith("scrypt:") and stored["AccessKey"].startswith("scrypt:")
    assert "SK-OLD-1" not in json.dumps(doc)
    assert stats(emulator.url)["by_action"]["StartSnapshot"]["total"] == 2  # A by the test, B by apply
    assert run_snapctl(["plan"], cwd=work, env=env).stdout.startswith("No changes. 2 task(s)")
