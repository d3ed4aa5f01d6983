"""Hostile API answers, end to end: the real `snapctl` against the hostile server of
``tests/hostile_server.py`` in front of the emulator. An answer not of the documented
shape is unknown: nothing is sent or recorded for it, nothing crashes, and the other
tasks are still read, planned and healed."""

from __future__ import annotations

import json

import pytest
from hostile_server import Hostile
from snapctl_testing import calls, new_project, run_snapctl, snapctl_env, wait_for

from reconciler.state import read_state

APP = "happ"
# Each case: the fields merged into the task's GetSnapshotTask answer, and the field the reason names.
SHAPES = {
    "WidthString": ({"ImageConfig": {"Width": "0"}}, "ImageConfig.Width"),
    "TypeString": ({"StorageConfig": {"Type": "0"}}, "StorageConfig.Type"),
    "TypeList": ({"StorageConfig": {"Type": [0]}}, "StorageConfig.Type"),
    "StreamsString": ({"TargetStreams": {"StreamList": "abc"}}, "TargetStreams.StreamList"),
    "HugeHeight": ({"ImageConfig": {"Height": 10**30}}, "ImageConfig.Height"),
    "Int64Interval": ({"ImageConfig": {"Interval": 2**63}}, "ImageConfig.Interval"),
    "MaxIdleString": ({"MaxIdleTime": "180"}, "MaxIdleTime"),
    "Year10000": ({"StartTime": 253402300800000}, "StartTime"),
    "NegativeEnd": ({"EndTime": -1}, "EndTime"),
    "HugeStart": ({"StartTime": 10**30}, "StartTime"),
    # A status outside 0-4, with a difference that would otherwise be a replace.
    "Status7": ({"Status": 7, "ImageConfig": {"Width": 1000}}, "Status"),
    "StatusNegative": ({"Status": -1}, "Status"),
}
HEALTHY = ["Fine", "Ended"]


def manifest() -> str:
    tasks = "\n".join(f"      {name}: {{}}" for name in [*SHAPES, "Status0", *HEALTHY])
    return (
        f"app_id: {APP}\n"
        "storage:\n"
        '  archive: {type: tos, account_id: "2100000990", bucket: snaps}\n'
        "defaults: {storage: archive, image: {interval: 3, width: 640, height: 360}}\n"
        "rooms:\n"
        "  R:\n"
        "    tasks:\n"
        f"{tasks}\n"
    )


def address(name: str) -> str:
    return f"{APP}/R/{name}"


WRITES = ("StartSnapshot", "UpdateSnapshot", "StopSnapshot")


def writes(url: str) -> dict[str, int]:
    return {action: calls(url, action) for action in WRITES}


@pytest.fixture
def rigged(tmp_path, emulator, hostile):
    """Every task applied through the hostile server; then each case's answer rigged,
    Status 0 (documented: unknown) with a difference, and the task Ended stopped."""
    work = new_project(tmp_path, emulator.url, {"app.yaml": manifest()})
    env = snapctl_env(hostile.url, work)
    applied = run_snapctl(["apply", "--auto-approve"], cwd=work, env=env)
    assert applied.code == 0, applied.output
    for name, (patch, _) in SHAPES.items():
        hostile.rig(address(name), Hostile(task=patch))
    hostile.rig(address("Status0"), Hostile(task={"Status": 0, "ImageConfig": {"Width": 1000}}))
    key = dict(zip(("AppId", "RoomId", "TaskId"), address("Ended").split("/")))
    assert emulator.admin("stop-task", key).status_code == 200
    return work, env


def unknown_lines(text: str) -> dict[str, str]:
    """The plan's ``? ADDRESS: reason`` lines by address."""
    out = {}
    for line in text.splitlines():
        if line.startswith("  ? "):
            where, _, reason = line[4:].partition(": ")
            out[where] = reason
    return out


def test_answers_of_another_shape_are_unknown_and_never_acted_on(rigged, emulator):
    work, env = rigged
    state_file = work / "state" / "snapctl.state.json"

    # plan --refresh (text): each such task could not be seen, with its reason; only Ended restarts.
    before = writes(emulator.url)
    plan = run_snapctl(["plan", "--refresh", "--no-color"], cwd=work, env=env)
    assert plan.code == 0 and "Traceback" not in plan.output, plan.output
    unknown = unknown_lines(plan.stdout)
    for name, (_, field) in SHAPES.items():
        reason = unknown[address(name)]
        assert "GetSnapshotTask answered a task of another shape than documented" in reason, reason
        assert field in reason, reason
    assert "Status 0" in unknown[address("Status0")]
    assert "Plan: 0 to add, 1 to restart, 0 to change, 0 to replace, 0 to destroy." in plan.stdout, plan.stdout
    assert f"{address('Ended')} will be restarted (ended: StopByAPI)" in plan.stdout, plan.stdout

    # plan --refresh --json: the same, as JSON (integers beyond 64 bits never reach it).
    document = json.loads(run_snapctl(["plan", "--refresh", "--json"], cwd=work, env=env).stdout)
    assert {u["address"] for u in document["unknown"]} == {*map(address, SHAPES), address("Status0")}
    assert [a["address"] for a in document["actions"]] == [address("Ended")]
    assert writes(emulator.url) == before

    # apply --refresh: Ended is started again and Status0 confirmed ("already started", as a
    # task not found is); nothing is sent for the others; the journal takes no odd value.
    applied = run_snapctl(["apply", "--refresh", "--auto-approve", "--no-color"], cwd=work, env=env)
    assert applied.code == 0 and "Traceback" not in applied.output, applied.output
    assert writes(emulator.url) == {**before, "StartSnapshot": before["StartSnapshot"] + 2}
    assert emulator.read(APP, "R", "Status0")["ImageConfig"]["Width"] == 640  # never replaced
    observed = read_state(state_file).observed
    for name in SHAPES:
        assert observed[address(name)]["status"] == "unknown"
        assert observed[address(name)]["started"] is None and observed[address(name)]["ended"] is None

    # reconcile: the round heals Ended (stopped again) and leaves the others alone.
    key = dict(zip(("AppId", "RoomId", "TaskId"), address("Ended").split("/")))
    assert emulator.admin("stop-task", key).status_code == 200
    before = writes(emulator.url)
    reconciled = run_snapctl(["reconcile", "--json"], cwd=work, env=env)
    assert "Traceback" not in reconciled.output, reconciled.output
    assert writes(emulator.url) == {**before, "StartSnapshot": before["StartSnapshot"] + 2}
    assert emulator.read(APP, "R", "Ended")["Status"] == 2

    # status (text and JSON): one row per task, unknown with the reason; exit 1 (reads failed).
    status = run_snapctl(["status", "--no-color"], cwd=work, env=env)
    assert status.code == 1 and "Traceback" not in status.output, status.output
    rows = [line for line in status.stdout.splitlines() if line.startswith(APP)]
    assert len(rows) == len(SHAPES) + 1 + len(HEALTHY)
    for name in SHAPES:
        assert any(line.startswith(address(name) + " ") and " unknown " in line for line in rows), status.stdout
    tasks = {t["address"]: t for t in json.loads(run_snapctl(["status", "--json"], cwd=work, env=env).stdout)["tasks"]}
    for name, (_, field) in SHAPES.items():
        assert tasks[address(name)]["status"] == "unknown" and field in tasks[address(name)]["detail"]
        assert tasks[address(name)]["started"] is None and tasks[address(name)]["api_status"] is None
    assert tasks[address("Fine")]["status"] == "running"
    assert writes(emulator.url) == before | {"StartSnapshot": before["StartSnapshot"] + 2}


@pytest.mark.parametrize("name", ["WidthString", "TypeString", "Year10000", "HugeHeight", "Status7"])
def test_import_of_an_answer_of_another_shape_sends_and_records_nothing(name, rigged, emulator):
    work, env = rigged
    state_file = work / "state" / "snapctl.state.json"
    assert run_snapctl(["state", "rm", address(name)], cwd=work, env=env).code == 0
    before = writes(emulator.url)
    imported = run_snapctl(["import", address(name)], cwd=work, env=env)
    assert imported.code == 1, imported.output
    lines = imported.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: GetSnapshotTask answered a task of another shape"), lines
    assert SHAPES[name][1] in lines[0] and f"nothing was started and nothing recorded for {address(name)}" in lines[0]
    assert writes(emulator.url) == before
    state = read_state(state_file)
    assert address(name) not in state.tasks and address(name) not in state.pending


def test_show_json_of_a_plan_file_holding_a_huge_integer(rigged):
    work, env = rigged
    saved = run_snapctl(["plan", "--refresh", "--out", "p.plan"], cwd=work, env=env)
    assert saved.code == 0, saved.output
    document = json.loads((work / "p.plan").read_text())
    document["actions"][0]["desired"]["ImageConfig"]["Width"] = 10**30  # an edited (or older) plan file
    (work / "p.plan").write_text(json.dumps(document))
    shown = run_snapctl(["show", "p.plan", "--json"], cwd=work, env=env)
    assert shown.code == 0, shown.output
    changes = {c["path"]: c for c in json.loads(shown.stdout)["actions"][0]["changes"]}
    assert changes["ImageConfig.Width"]["new"] == 10**30


# Deadline, size and compression ------------------------------------------------------


def answer_length(emulator) -> int:
    """The size of a real GetSnapshotTask answer of ``Fine`` (a few hundred bytes)."""
    response = emulator.signed_get(dict(zip(("AppId", "RoomId", "TaskId"), address("Fine").split("/"))))
    return len(response.content)


def test_a_trickled_answer_ends_at_the_timeout_with_one_line(rigged, hostile, emulator):
    work, env = rigged
    hostile.unrig()
    hostile.rig(address("Fine"), Hostile(task={}, trickle_s=0.5))  # a valid answer, one byte each half second
    status = run_snapctl(["status", "--timeout", "2", "--target", address("Fine"), "--no-color"], cwd=work, env=env)
    assert status.code == 1, status.output
    rows = [line for line in status.stdout.splitlines() if line.strip()]
    assert rows[1].startswith(address("Fine") + " ") and " unknown " in rows[1], status.stdout
    assert "did not arrive in full within 2 s" in rows[2], status.stdout
    assert status.stderr == ""
    # The client hung up long before the answer was complete, and did not ask again.
    sent = wait_for(lambda: hostile.sent_bytes.get(address("Fine")), what="the server to find the client gone")
    assert len(sent) == 1 and sent[0] < answer_length(emulator) // 4, sent


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_an_oversized_answer_is_refused_in_one_line(chunked, rigged, hostile, emulator):
    work, env = rigged
    hostile.unrig()
    hostile.rig(address("Fine"), Hostile(task={}, pad=50 << 20, chunked=chunked))  # 50 MB of valid JSON
    status = run_snapctl(["status", "--target", address("Fine"), "--json"], cwd=work, env=env)
    assert status.code == 1, status.output
    (task,) = json.loads(status.stdout)["tasks"]
    assert task["status"] == "unknown" and "larger than 1 MiB" in task["detail"], task
    sent = wait_for(lambda: hostile.sent_bytes.get(address("Fine")), what="the server to find the client gone")
    assert len(sent) == 1 and sent[0] < 16 << 20, sent  # read no further than the cap and the socket buffers


MEASURED = """\
import resource, subprocess, sys
done = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
sys.stdout.buffer.write(done.stdout)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, done.returncode, file=sys.stderr)
"""


def peak_rss_kib(work, env, *args: str) -> tuple[int, int, str]:
    """The peak resident memory (KiB) of ``snapctl ARGS`` run alone, its exit status and its stdout."""
    import subprocess
    import sys

    from snapctl_testing import SNAPCTL

    done = subprocess.run(
        [sys.executable, "-c", MEASURED, SNAPCTL, *args], cwd=work, env=env, capture_output=True, text=True, check=True
    )
    rss, code = done.stderr.split()
    return int(rss), int(code), done.stdout


def gzip_bomb(decoded: int) -> bytes:
    """A valid gzip stream of an envelope followed by ``decoded`` bytes of spaces."""
    import zlib

    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts = [packer.compress(b'{"ResponseMetadata": {"RequestId": "bomb"}, "Result": {"SnapshotTask": {"Status": 2}}}')]
    block = b" " * (1 << 20)
    for _ in range(decoded >> 20):
        parts.append(packer.compress(block))
    parts.append(packer.flush())
    return b"".join(parts)


def test_gzip_is_never_asked_for_and_a_gzip_bomb_stays_bounded(tmp_path, emulator, hostile):
    names = [f"B{i:02d}" for i in range(64)]
    text = manifest().replace(
        "rooms:\n  R:\n    tasks:\n", "rooms:\n  R:\n    tasks:\n" + "".join(f"      {n}: {{}}\n" for n in names)
    )
    work = new_project(tmp_path, emulator.url, {"app.yaml": text})
    env = snapctl_env(hostile.url, work)
    assert run_snapctl(["apply", "--auto-approve"], cwd=work, env=env).code == 0
    args = ["status", "--read-qps", "0", "--parallelism", "64", "--target", f"{APP}/R", "--json"]
    baseline, code, _ = peak_rss_kib(work, env, *args)
    assert code == 0
    bomb = gzip_bomb(48 << 20)  # 48 MiB of spaces in about 48 KB
    for name in names:
        hostile.rig(address(name), Hostile(body=bomb, headers={"Content-Encoding": "gzip"}))
    peak, code, shown = peak_rss_kib(work, env, *args)  # the same run is read and measured
    assert code == 1, shown
    tasks = {t["address"]: t for t in json.loads(shown)["tasks"]}
    for name in names:
        assert tasks[address(name)]["status"] == "unknown"
        assert "larger than 1 MiB" in tasks[address(name)]["detail"], tasks[address(name)]
    # 64 answers read at once, each given up at 1 MiB decoded: far below one bomb's 48 MiB.
    assert peak - baseline < 100 * 1024, (baseline, peak)
    # snapctl never asks for a compressed answer.
    encodings = {seen.headers.get("accept-encoding") for seen in hostile.requests}
    assert encodings == {"identity"}, encodings


# Strings from outside ------------------------------------------------------------------

#: A string that, printed as is, would end its line, forge a task row and a plan summary, and clear the screen.
FORGED = (
    "IdleTimeOut\n"
    f"{APP}/R/Forged  running      -                  2026-01-01T00:00:00+00:00  -\r\n"
    "Plan: 0 to add, 0 to change, 0 to replace, 0 to destroy.\u2028\x1b[2J\x1b]0;title\x07"
)


def assert_not_forged(text: str) -> None:
    """No line of ``text`` is a forged one, and no terminal escape is in it."""
    for line in text.splitlines():
        assert not line.startswith(f"{APP}/R/Forged"), text
        assert not line.startswith("Plan: 0 to add, 0 to change"), text  # the forged summary
    assert "\x1b" not in text and "\x07" not in text and "\u2028" not in text and "\r" not in text, text


def test_strings_of_read_answers_cannot_forge_output(rigged, hostile, emulator):
    work, env = rigged
    hostile.unrig()
    # A StopReason with line breaks and escapes (an ended task), and an error answer whose
    # Code and Message hold them (the read of Status0).
    hostile.rig(address("Fine"), Hostile(task={"Status": 3, "StopReason": FORGED}))
    hostile.rig(
        address("Status0"),
        Hostile(
            status=400,
            envelope={"ResponseMetadata": {"Error": {"Code": "InvalidParameter.Gone", "CodeN": 1, "Message": FORGED}}},
        ),
    )
    before = writes(emulator.url)
    status = run_snapctl(["status", "--target", f"{APP}/R", "--no-color"], cwd=work, env=env)
    assert status.code == 1, status.output
    assert_not_forged(status.output)
    assert "StopReason: not a reason name" in status.stdout
    assert "not found: InvalidParameter.Gone: IdleTimeOut\\n" in status.stdout and "\\x1b[2J" in status.stdout
    plan = run_snapctl(["plan", "--refresh", "--no-color"], cwd=work, env=env)
    assert plan.code == 0, plan.output
    assert_not_forged(plan.output)
    assert writes(emulator.url) == before
    applied = run_snapctl(["apply", "--refresh", "--auto-approve", "--no-color"], cwd=work, env=env)
    assert_not_forged(applied.output)
    state_text = (work / "state" / "snapctl.state.json").read_text()
    assert "Forged" not in state_text
    offline = run_snapctl(["status", "--offline", "--no-color"], cwd=work, env=env)
    assert_not_forged(offline.output)


WRITE_ANSWERS = {
    # StartSnapshot refused with a message that holds line breaks and escapes.
    "message": (
        Hostile(
            status=400,
            envelope={"ResponseMetadata": {"Error": {"Code": "InvalidParameter", "CodeN": 10001, "Message": FORGED}}},
        ),
        "InvalidParameter: IdleTimeOut\\n",
    ),
    # An error code number beyond 64 bits: the envelope is of another shape.
    "code-number": (
        Hostile(
            status=400,
            envelope={"ResponseMetadata": {"Error": {"Code": "InvalidParameter", "CodeN": 10**30, "Message": "x"}}},
        ),
        "HTTP 400 with an envelope of another shape than documented: ResponseMetadata.Error.CodeN",
    ),
    # Started, with a RequestId that holds line breaks and escapes.
    "request-id": (Hostile(envelope={"ResponseMetadata": {"RequestId": FORGED}}), None),
}


@pytest.mark.parametrize("case", sorted(WRITE_ANSWERS))
def test_strings_of_write_answers_cannot_forge_output_or_state(case, rigged, hostile, emulator):
    work, env = rigged
    hostile.unrig()
    answer, shown = WRITE_ANSWERS[case]
    hostile.rig(address("Ended"), answer, action="StartSnapshot")
    applied = run_snapctl(
        ["apply", "--refresh", "--auto-approve", "--no-color", "--target", address("Ended")], cwd=work, env=env
    )
    assert_not_forged(applied.output)
    if shown is not None:  # the emulator did start it (the hostile server forwards every call): end it again
        key = dict(zip(("AppId", "RoomId", "TaskId"), address("Ended").split("/")))
        assert emulator.admin("stop-task", key).status_code == 200
    as_json = run_snapctl(
        ["apply", "--refresh", "--auto-approve", "--json", "--target", address("Ended")], cwd=work, env=env
    )
    assert "Traceback" not in as_json.output, as_json.output
    document = json.loads(as_json.stdout)
    if shown is None:
        assert applied.code == 0, applied.output
        shown_state = run_snapctl(["state", "show", address("Ended")], cwd=work, env=env)
        assert_not_forged(shown_state.output)
        assert "IdleTimeOut\\n" in shown_state.stdout
        entry = read_state(work / "state" / "snapctl.state.json").tasks[address("Ended")]
        assert "\n" not in entry["request_id"] and "\x1b" not in entry["request_id"]
    else:
        assert applied.code == 1 and shown in applied.output, applied.output
        assert document["summary"]["failed"] == 1, document


def test_the_emulator_takes_documented_stop_reasons_only(emulator):
    emulator.signed_post(
        "StartSnapshot",
        {
            "AppId": APP,
            "RoomId": "R",
            "TaskId": "T",
            "StorageConfig": {"Type": 0, "TosConfig": {"AccountId": "1", "Bucket": "b"}},
        },
    )
    key = {"AppId": APP, "RoomId": "R", "TaskId": "T"}
    refused = emulator.admin("stop-task", {**key, "StopReason": FORGED})
    assert refused.status_code == 400 and refused.json()["ResponseMetadata"]["Error"]["Code"] == "InvalidParameter"
    assert emulator.admin("stop-task", {**key, "StopReason": "IdleTimeOut"}).status_code == 200
    assert emulator.read(APP, "R", "T")["StopReason"] == "IdleTimeOut"


def test_metrics_label_documented_stop_reasons_only(rigged, hostile, emulator):
    """A StopReason the API makes up (a valid name, undocumented) counts as "other": a label per
    invented name would grow the controller's memory without end."""
    import re

    import httpx
    from snapctl_testing import Watch

    work, env = rigged
    hostile.unrig()
    hostile.rig(address("Fine"), Hostile(task={"Status": 3, "StopReason": "MadeUpReason42", "EndTime": 1}))
    with Watch(work, env, "--interval", "60", "--metrics-port", "0", "--json") as watch:
        port = watch.port

        def counted() -> str | None:
            # The first hold may act on another task before this one's read is judged.
            text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
            return text if "snapctl_task_failures_total{" in text else None

        metrics = wait_for(counted, what="the failure counted")
        watch.stop(timeout=60)
    assert re.search(r'snapctl_task_failures_total\{reason="other"\} 1\.0', metrics), metrics
    assert "MadeUpReason42" not in metrics


def test_metrics_label_documented_error_codes_only(rigged, hostile, emulator):
    """An error Code the API makes up counts as "other" (or "InvalidParameter.other" for one of that
    documented class): a label per invented code would grow the controller's memory without end."""
    import re

    import httpx
    from snapctl_testing import Watch

    work, env = rigged
    hostile.unrig()
    for name, code in (("Fine", "MadeUpCode42"), ("Ended", "InvalidParameter.MadeUp43")):
        error = {"Code": code, "CodeN": 4242, "Message": "made up"}
        hostile.rig(address(name), Hostile(envelope={"ResponseMetadata": {"Error": error}}, status=400))
    with Watch(work, env, "--interval", "60", "--metrics-port", "0", "--json") as watch:
        port = watch.port

        def counted() -> str | None:
            # The other tasks' reads are answered in any order with these two: wait for one of them too.
            text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
            wanted = ('outcome="InvalidParameter.other"', 'outcome="other"', 'GetSnapshotTask",outcome="ok"')
            return text if all(label in text for label in wanted) else None

        metrics = wait_for(counted, what="both failed reads and a read that succeeded counted")
        watch.stop(timeout=60)
    assert re.search(r'snapctl_api_requests_total\{action="GetSnapshotTask",outcome="other"\} [1-9]', metrics)
    assert re.search(
        r'snapctl_api_requests_total\{action="GetSnapshotTask",outcome="InvalidParameter.other"\} [1-9]', metrics
    )
    assert re.search(r'snapctl_api_requests_total\{action="GetSnapshotTask",outcome="ok"\} [1-9]', metrics)
    assert "MadeUp" not in metrics, metrics


def test_the_controller_sends_nothing_for_an_answer_of_another_shape(rigged, emulator):
    """reconcile --watch reads as reconcile does: a task whose answer is of another shape is
    unknown and never confirmed with StartSnapshot (a Start for a task nothing can be said of
    would restart one that ended). It took such a read for a failed one, which StartSnapshot
    confirms, and sent a Start for each of them at every sweep."""
    from snapctl_testing import Watch

    work, env = rigged
    state_file = work / "state" / "snapctl.state.json"
    before = writes(emulator.url)
    everything = {address(name) for name in [*SHAPES, "Status0", *HEALTHY]}
    with Watch(work, env, "--interval", "60", "--no-color", merged=True) as watch:
        # Each read is recorded under the lock in the hold that acts on it: once every task's
        # read is recorded, whatever it called for is sent, and the hold ends before the stop.
        wait_for(lambda: everything <= set(read_state(state_file).observed), what="every task's read recorded")
        wait_for(lambda: calls(emulator.url, "StartSnapshot") >= before["StartSnapshot"] + 2, what="the two starts")
        assert watch.stop(timeout=60) == 0, watch.lines["stdout"]
    assert "Traceback" not in "\n".join(watch.lines["stdout"]), watch.lines["stdout"]
    # Ended started again and Status0 confirmed (as reconcile does); nothing sent for the others.
    assert writes(emulator.url) == {**before, "StartSnapshot": before["StartSnapshot"] + 2}
    observed = read_state(state_file).observed
    assert all(observed[address(name)]["status"] == "unknown" for name in SHAPES), observed


def test_a_write_answered_without_its_documented_result_is_never_taken_for_done(tmp_path, emulator, hostile):
    """A write succeeds with Result "ok" (a start: or "already started"); the API's pages say
    Result is empty when a call fails. An answer with no error and an empty Result was taken
    for done: a StartSnapshot the API refused was recorded as running, and no later plan ever
    started the task. Such an answer now proves nothing: the task fails, its call stays
    pending, and the next apply starts it."""
    manifest = (
        f"app_id: {APP}\n"
        "storage:\n"
        '  archive: {type: tos, account_id: "2100000990", bucket: snaps}\n'
        "defaults: {storage: archive}\n"
        "rooms:\n"
        "  R:\n"
        "    tasks:\n"
        "      Refused: {}\n"
        "      Fine: {}\n"
    )
    work = new_project(tmp_path, emulator.url, {"app.yaml": manifest})
    env = snapctl_env(hostile.url, work)
    refused = Hostile(status=200, envelope={"ResponseMetadata": {"Error": None}, "Result": ""})
    hostile.rig(address("Refused"), refused, action="StartSnapshot")
    emulator.configure(refuse_starts=[address("Refused")])
    try:
        applied = run_snapctl(["apply", "--auto-approve", "--no-color"], cwd=work, env=env)
    finally:
        emulator.configure(refuse_starts=[])
        hostile.unrig(address("Refused"), action="StartSnapshot")
    assert applied.code == 1 and "Traceback" not in applied.output, applied.output
    assert 'StartSnapshot answered with no error but without its documented Result ("ok"): Result = ""' in (
        applied.output
    ), applied.output
    state = read_state(work / "state" / "snapctl.state.json")
    assert set(state.tasks) == {address("Fine")} and set(state.pending) == {address("Refused")}
    assert {f"{t['AppId']}/{t['RoomId']}/{t['TaskId']}" for t in emulator.tasks()} == {address("Fine")}
    again = run_snapctl(["apply", "--auto-approve", "--no-color"], cwd=work, env=env)
    assert again.code == 0, again.output
    assert {f"{t['AppId']}/{t['RoomId']}/{t['TaskId']}" for t in emulator.tasks()} == {
        address("Fine"),
        address("Refused"),
    }
    assert set(read_state(work / "state" / "snapctl.state.json").tasks) == {address("Fine"), address("Refused")}


def test_an_error_message_quoting_a_secret_of_the_call_shows_none(tmp_path, emulator, hostile):
    """An answer whose message quotes the storage keys the call sent, or the credentials it was
    signed with: none of them reaches the output, the diagnostic log or the state (``***``)."""
    from reconciler.emulator.config import DEFAULT_SECRET_KEY

    storage_secret, storage_key = "SK-quoted-back-7a1c", "AK-quoted-back-2b9d"
    text = (
        f"app_id: {APP}\nstorage:\n"
        "  offsite:\n    type: custom\n    vendor: s3\n    region: 0\n    bucket: b\n"
        "    access_key: ${env:QUOTED_AK}\n    secret_key: ${env:QUOTED_SK}\n"
        "rooms:\n  R:\n    tasks:\n      Quoted: {storage: offsite}\n      Fine: {storage: offsite}\n"
    )
    work = new_project(tmp_path, emulator.url, {"app.yaml": text})
    log = tmp_path / "snapctl.log"
    env = snapctl_env(
        hostile.url, work, QUOTED_AK=storage_key, QUOTED_SK=storage_secret,
        SNAPCTL_LOG="debug", SNAPCTL_LOG_PATH=str(log),
    )  # fmt: skip
    quoted = f"SecretKey {storage_secret} (AccessKey {storage_key}) refused; signed with {DEFAULT_SECRET_KEY}"
    error = {"Code": "InvalidParameter", "CodeN": 10001, "Message": quoted}
    hostile.rig(address("Quoted"), Hostile(envelope={"ResponseMetadata": {"Error": error}}, status=400),
                action="StartSnapshot")  # fmt: skip
    for args in (["apply", "--auto-approve"], ["apply", "--auto-approve", "--json"]):
        run = run_snapctl(args, cwd=work, env=env)
        assert run.code == 1 and "refused; signed with ***" in run.output, run.output
        assert "SecretKey *** (AccessKey ***)" in run.output, run.output
    kept = [run.output, log.read_text(), *(p.read_text() for p in (work / "state").iterdir() if p.is_file())]
    for secret in (storage_secret, storage_key, DEFAULT_SECRET_KEY):
        assert not [text for text in kept if secret in text], secret
