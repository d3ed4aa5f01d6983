"""GetSnapshotTask on the emulator (GET, query, envelope, 60/s) and the task lifecycle
it reports; and the client's typed observation of it."""

from __future__ import annotations

import asyncio
import copy
import os

from snapctl_testing import run_snapctl, wait_for
from test_emulator import BLOCKS, TOS, assert_error, assert_ok, start_body

from reconciler import api
from reconciler.client import RetryPolicy, SnapshotClient
from reconciler.emulator.config import DEFAULT_ACCESS_KEY, DEFAULT_SECRET_KEY
from reconciler.signing import SigningKey
from reconciler.state import State, is_fingerprint

KEY = {"AppId": "app1", "RoomId": "room1", "TaskId": "task1"}


def start(emulator, **fields):
    assert_ok(emulator.signed_post("StartSnapshot", start_body(**fields)))


def test_running_task_reads_back_with_the_api_defaults(emulator):
    start(emulator, ImageConfig={"Interval": 7}, TargetStreams={"StreamList": [{"UserId": "u1"}]})
    response = emulator.signed_get(KEY)
    assert response.json()["ResponseMetadata"]["Action"] == "GetSnapshotTask"
    task = response.json()["Result"]["SnapshotTask"]
    assert (task["Status"], task["StopReason"], task["EndTime"]) == (2, "", 0)
    assert task["StartTime"] > 1_600_000_000_000  # milliseconds
    assert task["MaxIdleTime"] == 180
    assert task["ImageConfig"] == {"Format": 0, "Width": 0, "Height": 0, "Interval": 7}
    assert task["StorageConfig"] == {"Type": 0, "TosConfig": {**TOS["TosConfig"], "Region": 0}}
    assert task["TargetStreams"] == {"StreamList": [{"UserId": "u1", "StreamType": 0, "Index": 0}]}


def test_the_read_returns_the_custom_storage_keys_as_the_api_does(emulator):
    block, value = BLOCKS[2]
    start(emulator, StorageConfig={"Type": 2, block: value})
    custom = emulator.read(*KEY.values())["StorageConfig"]["CustomConfig"]
    assert (custom["AccessKey"], custom["SecretKey"]) == (value["AccessKey"], value["SecretKey"])
    # ... while the introspection endpoint still shows fingerprints only.
    assert "third-party-secret" not in emulator.http.get("/_emulator/tasks").text


def test_stop_by_api_then_start_again(emulator):
    start(emulator)
    assert_ok(emulator.signed_post("StopSnapshot", KEY))
    task = emulator.read(*KEY.values())
    assert (task["Status"], task["StopReason"]) == (3, "StopByAPI")
    assert task["EndTime"] >= task["StartTime"] > 0
    # An ended task is not running: Stop and Update answer as before.
    assert_error(emulator.signed_post("StopSnapshot", KEY), "InvalidParameter.TaskNotRunning")
    assert_error(
        emulator.signed_post("UpdateSnapshot", {**KEY, "ImageConfig": {"Interval": 3}}),
        "InvalidParameter.TaskNotRunning",
    )
    assert emulator.tasks() == []
    assert [t["StopReason"] for t in emulator.http.get("/_emulator/tasks").json()["stopped"]] == ["StopByAPI"]
    start(emulator)  # "ok", not "already started": it starts again
    assert (emulator.read(*KEY.values())["Status"], emulator.read(*KEY.values())["StopReason"]) == (2, "")


def test_idle_timeout_ends_the_task(emulator):
    start(emulator, MaxIdleTime=1)
    response = emulator.admin("streams-stopped", {"AppId": "app1", "RoomId": "room1", "Immediate": True})
    assert response.json()["ended"] == 1
    task = emulator.read(*KEY.values())
    assert (task["Status"], task["StopReason"]) == (3, "IdleTimeOut")


def test_unwritable_storage_fails_to_start(emulator):
    emulator.configure(unwritable_buckets=["snaps"])
    start(emulator)  # the API accepts the start...
    task = emulator.read(*KEY.values())
    assert (task["Status"], task["StopReason"]) == (4, "StartTaskFailed")  # ... and the task fails
    assert emulator.tasks() == []
    emulator.configure(unwritable_buckets=[])
    start(emulator)
    assert emulator.read(*KEY.values())["Status"] == 2


def test_unwritable_bucket_flag(make_emulator):
    emulator = make_emulator(unwritable_buckets=["snaps"])
    start(emulator)
    assert emulator.read(*KEY.values())["Status"] == 4


def test_a_new_task_reads_not_started_for_the_start_delay_then_running(emulator):
    emulator.configure(start_delay_ms=300)
    start(emulator)
    assert emulator.read(*KEY.values())["Status"] == 1
    assert [t["Status"] for t in emulator.tasks()] == [1]
    # Not started yet is not stopped: a second Start answers "already started", Update works.
    assert emulator.signed_post("StartSnapshot", start_body()).json()["Result"].startswith("The task has been started")
    assert_ok(emulator.signed_post("UpdateSnapshot", {**KEY, "ImageConfig": {"Interval": 3}}))
    wait_for(lambda: emulator.read(*KEY.values())["Status"] == 2, timeout=10, what="Status 2")
    assert emulator.stats()["tasks_running"] == 1


def test_start_delay_flag(make_emulator):
    emulator = make_emulator(start_delay_ms=60_000)
    start(emulator)
    assert emulator.read(*KEY.values())["Status"] == 1


def test_refused_starts_answer_the_code_and_start_nothing(emulator):
    emulator.configure(refuse_starts=["app1/room1/task1"], refuse_start_code="AccessDenied")
    assert_error(emulator.signed_post("StartSnapshot", start_body()), "AccessDenied", "injected")
    assert emulator.tasks() == [] and emulator.stats()["by_action"]["StartSnapshot"]["outcomes"] == {"AccessDenied": 1}
    start(emulator, TaskId="task2")  # only the task named is refused
    emulator.configure(refuse_starts=["*"], refuse_start_code="InvalidParameter")
    assert_error(emulator.signed_post("StartSnapshot", start_body(TaskId="task3")), "InvalidParameter", "injected")
    assert_ok(emulator.signed_post("StopSnapshot", {**KEY, "TaskId": "task2"}))  # the other actions as before
    for wrong in ({"refuse_start_code": "Nope"}, {"refuse_starts": ["app1/room1"]}):
        assert_error(emulator.admin("config", wrong), "InvalidParameter")
    emulator.configure(refuse_starts=[])
    start(emulator)
    assert [t["TaskId"] for t in emulator.tasks()] == ["task1"]


def test_refuse_start_flags(make_emulator, tmp_path):
    emulator = make_emulator(refuse_starts=["*"], refuse_start_code="InternalError")
    assert_error(emulator.signed_post("StartSnapshot", start_body()), "InternalError", "injected")
    for flags in (["--refuse-start-code", "Nope"], ["--refuse-start", "app1"]):
        run = run_snapctl(["emulator", "--port", "0", *flags], cwd=tmp_path, env=dict(os.environ))
        assert run.code == 1 and run.stderr.startswith("Error: invalid settings: refuse_start"), run.output


def test_out_of_band_rewrite_and_stop(emulator):
    start(emulator)
    response = emulator.admin("rewrite-task", {**KEY, "ImageConfig": {"Interval": 9, "Width": 320}})
    assert response.status_code == 200, response.text
    assert emulator.read(*KEY.values())["ImageConfig"] == {"Format": 0, "Width": 320, "Height": 0, "Interval": 9}
    assert_error(emulator.admin("rewrite-task", {**KEY, "ImageConfig": {"Interval": 0}}), "InvalidParameter")
    assert emulator.admin("stop-task", {**KEY, "StopReason": "UnknownStopReason"}).status_code == 200
    task = emulator.read(*KEY.values())
    assert (task["Status"], task["StopReason"]) == (3, "UnknownStopReason")
    assert_error(emulator.admin("rewrite-task", {**KEY, "MaxIdleTime": 5}), "InvalidParameter.TaskNotRunning")


def test_an_aged_task_reads_as_started_that_much_earlier(emulator):
    start(emulator)
    started = emulator.read(*KEY.values())["StartTime"]
    assert emulator.admin("age-task", {**KEY, "Seconds": 3600}).status_code == 200
    assert emulator.read(*KEY.values())["StartTime"] == started - 3_600_000
    # Past the 72-hour read window: not found, and still running.
    assert emulator.admin("age-task", {**KEY, "Seconds": 72 * 3600}).status_code == 200
    assert_error(emulator.signed_get(KEY), "InvalidParameter.TaskNotFound")
    assert [t["TaskId"] for t in emulator.tasks()] == ["task1"]
    assert_error(emulator.admin("age-task", {**KEY, "Seconds": -1}), "InvalidParameter")
    assert_error(
        emulator.admin("age-task", {**KEY, "TaskId": "other", "Seconds": 1}), "InvalidParameter.TaskNotRunning"
    )


def test_not_found_past_the_read_window_and_for_unknown_tasks(emulator):
    assert_error(emulator.signed_get(KEY), "InvalidParameter.TaskNotFound", "not found")
    start(emulator)
    emulator.configure(read_window_s=0)
    assert_error(emulator.signed_get(KEY), "InvalidParameter.TaskNotFound")
    # Still running: a StartSnapshot says so.
    assert_ok(emulator.signed_post("StartSnapshot", start_body()), api.ALREADY_STARTED)


def test_get_checks_method_parameters_signature_and_limit(emulator):
    assert_error(emulator.signed_post("GetSnapshotTask", KEY), "InvalidActionOrVersion", "GET")
    assert_error(emulator.signed_get({}, action="StartSnapshot"), "InvalidActionOrVersion", "POST")
    assert_error(emulator.signed_get({"AppId": "app 1", "RoomId": "r", "TaskId": "t"}), "InvalidParameter")
    assert_error(emulator.signed_get({"RoomId": "r", "TaskId": "t"}), "InvalidParameter", "AppId")
    query = {"Action": "GetSnapshotTask", "Version": api.API_VERSION, **KEY}
    assert_error(emulator.http.get("/", params=query), "MissingAuthenticationToken")
    emulator.configure(read_qps=2)
    codes = [emulator.signed_get(KEY).json()["ResponseMetadata"].get("Error", {}).get("Code") for _ in range(3)]
    assert codes.count("FlowLimitExceeded") >= 1
    stats = emulator.stats()["by_action"]["GetSnapshotTask"]["outcomes"]
    assert stats["FlowLimitExceeded"] == codes.count("FlowLimitExceeded")


def test_sts_signed_read(emulator):
    start(emulator)
    response = emulator.signed_get(KEY, session_token="STS2token")
    assert response.status_code == 200, response.text


# -- the client's observation -------------------------------------------------------


def observe(url: str, state: State | None = None, **key) -> api.Observation:
    async def run():
        client = SnapshotClient(
            url, SigningKey(DEFAULT_ACCESS_KEY, DEFAULT_SECRET_KEY), retry=RetryPolicy(max_attempts=3, base_s=0.01)
        )
        async with client:
            return await client.get_task(
                **({"app_id": "app1", "room_id": "room1", "task_id": "task1"} | key),
                fingerprint=state.fingerprint if state else None,
            )

    return asyncio.run(run())


def test_client_observes_running_ended_failed_and_unknown(emulator):
    assert observe(emulator.url).observed is api.Observed.unknown
    start(emulator, ImageConfig={"Interval": 4})
    seen = observe(emulator.url)
    assert seen.observed is api.Observed.running and seen.healthy
    assert seen.live["ImageConfig"]["Interval"] == 4 and "BusinessId" not in seen.live
    emulator.admin("stop-task", KEY)
    seen = observe(emulator.url)
    assert (seen.observed, seen.stop_reason, seen.describe()) == (api.Observed.ended, "StopByAPI", "ended (StopByAPI)")
    emulator.configure(unwritable_buckets=["snaps"])
    start(emulator)
    assert observe(emulator.url).describe() == "failed (StartTaskFailed)"
    emulator.configure(read_window_s=0)
    unknown = observe(emulator.url)
    assert unknown.observed is api.Observed.unknown and "not found" in unknown.detail and unknown.live is None


def test_client_fingerprints_the_storage_keys_at_the_edge(emulator):
    block, value = BLOCKS[2]
    start(emulator, StorageConfig={"Type": 2, block: copy.deepcopy(value)})
    state = State.new()
    seen = observe(emulator.url, state)
    custom = seen.live["StorageConfig"]["CustomConfig"]
    assert is_fingerprint(custom["SecretKey"]) and is_fingerprint(custom["AccessKey"])
    declared = state.fingerprint(start_body(StorageConfig={"Type": 2, block: copy.deepcopy(value)}))
    assert api.comparable(declared) == seen.live
    assert value["SecretKey"] not in repr(seen)


def test_throttled_reads_are_retried_and_read_qps_is_its_own_limit(emulator):
    start(emulator)
    emulator.configure(read_qps=4)

    async def run():
        client = SnapshotClient(
            emulator.url,
            SigningKey(DEFAULT_ACCESS_KEY, DEFAULT_SECRET_KEY),
            read_qps=0,  # no client-side limit: the emulator's 429s must be retried
            retry=RetryPolicy(max_attempts=20, base_s=0.05, cap_s=0.5),
        )
        async with client:
            seen = await asyncio.gather(*(client.get_task("app1", "room1", "task1") for _ in range(10)))
            return seen, client.stats

    seen, stats = asyncio.run(run())
    assert {s.observed for s in seen} == {api.Observed.running}
    assert stats.throttled > 0 and stats.requests[("GetSnapshotTask", "ok")] == 10
    # The write limit is untouched by the reads.
    assert_ok(emulator.signed_post("StartSnapshot", start_body()), api.ALREADY_STARTED)
