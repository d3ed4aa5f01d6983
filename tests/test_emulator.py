"""The emulator over real HTTP: parameter rules, task semantics, auth, limits, faults, persistence, the command."""

from __future__ import annotations

import copy
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest

from reconciler import signing
from reconciler.api import ALREADY_STARTED, ERROR_CODES, TASK_NOT_RUNNING
from reconciler.emulator import EmulatorConfig, EmulatorServer
from reconciler.emulator.tasks import DataFileError

SNAPCTL = str(Path(sys.executable).with_name("snapctl"))
TOS = {"Type": 0, "TosConfig": {"AccountId": "2100000990", "Bucket": "snaps"}}
BLOCKS = {
    0: ("TosConfig", {"AccountId": "2100000990", "Bucket": "snaps"}),
    2: ("CustomConfig", {"Bucket": "snaps", "AccessKey": "AKthirdparty", "SecretKey": "third-party-secret"}),
    3: ("VeImageXConfig", {"AccountId": "2100000990", "ServiceId": "svc1"}),
}


def start_body(**fields) -> dict:
    body = {"AppId": "app1", "RoomId": "room1", "TaskId": "task1", "StorageConfig": copy.deepcopy(TOS)}
    body.update(fields)
    return body


def key_of(body: dict) -> dict:
    return {name: body[name] for name in ("AppId", "RoomId", "TaskId")}


def with_path(body: dict, path: str, value) -> dict:
    body = copy.deepcopy(body)
    *parents, last = path.split(".")
    node = body
    for name in parents:
        node = node.setdefault(name, {})
    node[last] = value
    return body


def error_of(response: httpx.Response) -> dict:
    return response.json()["ResponseMetadata"]["Error"]


def assert_error(response: httpx.Response, code: str, *in_message: str) -> dict:
    code_n, status = ERROR_CODES[code]
    assert response.status_code == status, response.text
    error = error_of(response)
    assert (error["Code"], error["CodeN"]) == (code, code_n)
    for text in in_message:
        assert text in error["Message"]
    return error


def assert_ok(response: httpx.Response, result: str = "ok") -> None:
    assert response.status_code == 200, response.text
    envelope = response.json()
    assert envelope["Result"] == result
    assert "Error" not in envelope["ResponseMetadata"]


def streams(count: int, *, index=True) -> dict:
    return {"StreamList": [{"UserId": f"u{i}", **({"Index": i} if index else {})} for i in range(count)]}


# -- parameter rules -----------------------------------------------------------

BOUNDARIES = [
    ("ImageConfig.Interval", 0, False),
    ("ImageConfig.Interval", 1, True),
    ("ImageConfig.Interval", 600, True),
    ("ImageConfig.Interval", 601, False),
    ("ImageConfig.Width", 0, True),
    ("ImageConfig.Width", 1920, True),
    ("ImageConfig.Width", 1921, False),
    ("ImageConfig.Height", 1920, True),
    ("ImageConfig.Height", 1921, False),
    ("MaxIdleTime", 0, False),
    ("MaxIdleTime", 1, True),
    ("MaxIdleTime", 86400, True),
    ("MaxIdleTime", 86401, False),
    ("ImageConfig.Format", 1, True),
    ("ImageConfig.Format", 2, False),
]


@pytest.mark.parametrize("path, value, accepted", BOUNDARIES, ids=[f"{p}={v}" for p, v, _ in BOUNDARIES])
def test_start_number_boundaries(emulator, path, value, accepted):
    response = emulator.signed_post("StartSnapshot", with_path(start_body(), path, value))
    if accepted:
        assert_ok(response)
    else:
        assert_error(response, "InvalidParameter", path)


@pytest.mark.parametrize("count, accepted", [(17, True), (18, False)])
def test_at_most_17_streams(emulator, count, accepted):
    response = emulator.signed_post("StartSnapshot", start_body(TargetStreams=streams(count)))
    if accepted:
        assert_ok(response)
    else:
        assert_error(response, "InvalidParameter", "TargetStreams", "17")


def test_stream_index_must_not_repeat(emulator):
    repeated = streams(2)
    repeated["StreamList"][1]["Index"] = 0
    assert_error(
        emulator.signed_post("StartSnapshot", start_body(TargetStreams=repeated)),
        "InvalidParameter",
        "TargetStreams",
        "Index",
    )
    assert_ok(emulator.signed_post("StartSnapshot", start_body(TargetStreams=streams(2))))
    assert_ok(
        emulator.signed_post("StartSnapshot", start_body(TaskId="no-index", TargetStreams=streams(3, index=False)))
    )


@pytest.mark.parametrize("field", ["AppId", "RoomId", "TaskId", "BusinessId"])
@pytest.mark.parametrize(
    "value, accepted",
    [("a" * 128, True), ("a" * 129, False), ("has space", False), ("has/slash", False), ("ok_@-.9", True), ("", False)],
    ids=["128", "129", "space", "slash", "allowed-punctuation", "empty"],
)
def test_identifiers(emulator, field, value, accepted):
    response = emulator.signed_post("StartSnapshot", start_body(**{field: value}))
    if accepted:
        assert_ok(response)
    else:
        assert_error(response, "InvalidParameter", field)


def test_storage_type_1_is_refused(emulator):
    vod = {"Type": 1, "VodConfig": {"AccountId": "2100000990", "Space": "space"}}
    assert_error(
        emulator.signed_post("StartSnapshot", start_body(StorageConfig=vod)),
        "InvalidParameter",
        "StorageConfig",
        "Type 1",
    )


@pytest.mark.parametrize("storage_type", sorted(BLOCKS))
def test_each_storage_type_needs_its_block(emulator, storage_type):
    block, value = BLOCKS[storage_type]
    missing = emulator.signed_post("StartSnapshot", start_body(StorageConfig={"Type": storage_type}))
    assert_error(missing, "InvalidParameter", "StorageConfig", block)
    assert_ok(emulator.signed_post("StartSnapshot", start_body(StorageConfig={"Type": storage_type, block: value})))


def test_storage_config_is_required(emulator):
    body = start_body()
    del body["StorageConfig"]
    assert_error(emulator.signed_post("StartSnapshot", body), "InvalidParameter", "StorageConfig")


@pytest.mark.parametrize("interval, accepted", [(0, False), (1, True), (600, True), (601, False)])
def test_update_interval_boundaries(emulator, interval, accepted):
    assert_ok(emulator.signed_post("StartSnapshot", start_body()))
    response = emulator.signed_post("UpdateSnapshot", {**key_of(start_body()), "ImageConfig": {"Interval": interval}})
    if accepted:
        assert_ok(response)
    else:
        assert_error(response, "InvalidParameter", "ImageConfig.Interval")


def test_stop_validates_its_ids(emulator):
    assert_error(emulator.signed_post("StopSnapshot", {"AppId": "a", "RoomId": "r"}), "InvalidParameter", "TaskId")


# -- task semantics --------------------------------------------------------------


def test_start_twice_answers_already_started_and_keeps_the_config(emulator):
    first = start_body(ImageConfig={"Interval": 5, "Width": 640})
    assert_ok(emulator.signed_post("StartSnapshot", first))
    changed = with_path(with_path(first, "ImageConfig.Interval", 9), "MaxIdleTime", 60)
    assert_ok(emulator.signed_post("StartSnapshot", changed), ALREADY_STARTED)
    [task] = emulator.tasks()
    assert task["Request"]["ImageConfig"] == {"Format": 0, "Width": 640, "Height": 0, "Interval": 5}
    assert task["Request"]["MaxIdleTime"] == 180
    assert emulator.stats()["by_action"]["StartSnapshot"]["outcomes"] == {"ok": 1, "already_started": 1}


def test_update_applies_only_the_interval(emulator):
    assert_ok(emulator.signed_post("StartSnapshot", start_body(ImageConfig={"Interval": 5})))
    [before] = emulator.tasks()
    update = {
        **key_of(start_body()),
        "BusinessId": "other",
        "MaxIdleTime": 7,
        "ImageConfig": {"Interval": 30, "Width": 100, "Format": 1},
        "StorageConfig": {"Type": 3, "VeImageXConfig": {"AccountId": "1", "ServiceId": "s"}},
    }
    assert_ok(emulator.signed_post("UpdateSnapshot", update))
    [after] = emulator.tasks()
    expected = copy.deepcopy(before["Request"])
    expected["ImageConfig"]["Interval"] = 30
    assert after["Request"] == expected
    assert after["StartedAt"] == before["StartedAt"] and after["UpdatedAt"] >= before["UpdatedAt"]
    # An update without an Interval changes nothing (the model's default of 2 is not applied).
    assert_ok(emulator.signed_post("UpdateSnapshot", {**key_of(start_body()), "ImageConfig": {"Width": 10}}))
    assert emulator.tasks()[0]["Request"] == expected


@pytest.mark.parametrize("action", ["UpdateSnapshot", "StopSnapshot"])
def test_not_running(emulator, action):
    body = {**key_of(start_body()), "ImageConfig": {"Interval": 3}}
    assert_error(emulator.signed_post(action, body), TASK_NOT_RUNNING, "task1", "not running")


def test_stop_removes_the_task(emulator):
    assert_ok(emulator.signed_post("StartSnapshot", start_body()))
    assert_ok(emulator.signed_post("StopSnapshot", key_of(start_body())))
    assert emulator.tasks() == []
    assert_error(emulator.signed_post("StopSnapshot", key_of(start_body())), TASK_NOT_RUNNING)
    assert_ok(emulator.signed_post("StartSnapshot", start_body()))


def test_tasks_are_keyed_by_app_room_and_task(emulator):
    for app, room in [("a1", "r1"), ("a1", "r2"), ("a2", "r1")]:
        assert_ok(emulator.signed_post("StartSnapshot", start_body(AppId=app, RoomId=room)))
    assert len(emulator.tasks()) == 3


def test_introspection_hides_third_party_keys(emulator):
    block, value = BLOCKS[2]
    assert_ok(emulator.signed_post("StartSnapshot", start_body(StorageConfig={"Type": 2, block: value})))
    [task] = emulator.tasks()
    custom = task["Request"]["StorageConfig"]["CustomConfig"]
    assert custom["AccessKey"] == "sha256:" + signing.sha256_hex(b"AKthirdparty")[:16]
    assert custom["SecretKey"] == "sha256:" + signing.sha256_hex(b"third-party-secret")[:16]
    assert set(task) == {
        "AppId",
        "RoomId",
        "TaskId",
        "Request",
        "StartedAt",
        "UpdatedAt",
        "Status",
        "StopReason",
        "EndedAt",
    }
    assert "third-party-secret" not in emulator.http.get("/_emulator/tasks").text


def test_envelope_of_success(emulator):
    response = emulator.signed_post("StartSnapshot", start_body())
    metadata = response.json()["ResponseMetadata"]
    assert response.headers["content-type"].startswith("application/json")
    assert {k: metadata[k] for k in ("Action", "Version", "Service", "Region")} == {
        "Action": "StartSnapshot",
        "Version": "2023-11-01",
        "Service": "rtc",
        "Region": "cn-north-1",
    }
    assert metadata["RequestId"][:8].isdigit() and len(metadata["RequestId"]) == 32


# -- gateway checks: action, authentication ----------------------------------------


@pytest.mark.parametrize(
    "query, code",
    [
        ({"Version": "2023-11-01"}, "MissingParameter"),
        ({"Action": "StartSnapshot"}, "MissingParameter"),
        ({"Action": "ListSnapshots", "Version": "2023-11-01"}, "InvalidActionOrVersion"),
        ({"Action": "StartSnapshot", "Version": "2020-01-01"}, "InvalidActionOrVersion"),
    ],
)
def test_action_and_version(emulator, query, code):
    # Checked before authentication: the missing Authorization is not what is reported.
    assert_error(emulator.signed_post("", start_body(), query=query, drop=["Authorization"]), code)
    assert emulator.stats()["by_action"] == {"other": {"total": 1, "outcomes": {code: 1}}}


def _x_date(offset_s: float) -> str:
    return signing.format_x_date(datetime.now(timezone.utc) + timedelta(seconds=offset_s))


AUTH_CASES = {
    "no-authorization": (dict(drop=["Authorization"]), "MissingAuthenticationToken"),
    "other-scheme": (dict(headers={"Authorization": "Bearer abc"}), "MissingSignature"),
    "truncated": (
        dict(headers={"Authorization": "HMAC-SHA256 Credential=AK/20240101/cn-north-1/rtc"}),
        "MissingSignature",
    ),
    "no-x-date": (dict(drop=["X-Date"]), "MissingRequestInfo"),
    "malformed-x-date": (dict(headers={"X-Date": "2024-01-01 00:00"}), "InvalidTimestamp"),
    # Offsets, not dates: a date computed at collection goes stale in a long run.
    "x-date-16-min-behind": (dict(x_date_offset_s=-16 * 60), "InvalidTimestamp"),
    "x-date-16-min-ahead": (dict(x_date_offset_s=16 * 60), "InvalidTimestamp"),
    "unknown-access-key": (dict(access_key="AKLTnobody"), "InvalidAccessKey"),
    "wrong-secret": (dict(secret_key="not-the-secret"), "SignatureDoesNotMatch"),
    "other-region": (dict(region="ap-singapore-1"), "SignatureDoesNotMatch"),
    "tampered-body": (dict(sign_body=b'{"AppId":"other"}'), "SignatureDoesNotMatch"),
    "tampered-content-sha256": (dict(headers={"X-Content-Sha256": "0" * 64}), "SignatureDoesNotMatch"),
}


@pytest.mark.parametrize("case", AUTH_CASES)
def test_authentication_errors(emulator, case):
    overrides, code = AUTH_CASES[case]
    if "x_date_offset_s" in overrides:
        overrides = dict(overrides)
        overrides["x_date"] = _x_date(overrides.pop("x_date_offset_s"))
    # An invalid body too: authentication is checked first.
    assert_error(emulator.signed_post("StartSnapshot", b"{not json", **overrides), code)
    assert emulator.tasks() == []


def test_x_date_within_15_minutes_is_accepted(emulator):
    assert_ok(emulator.signed_post("StartSnapshot", start_body(), x_date=_x_date(-14 * 60)))
    assert_ok(emulator.signed_post("StartSnapshot", start_body(TaskId="t2"), x_date=_x_date(14 * 60)))


def test_sts_token_is_verified_when_signed(emulator):
    assert_ok(emulator.signed_post("StartSnapshot", start_body(), session_token="STS2abc"))
    tampered = emulator.signed_post(
        "StopSnapshot", key_of(start_body()), session_token="STS2abc", headers={"X-Security-Token": "STS2xyz"}
    )
    assert_error(tampered, "SignatureDoesNotMatch")
    unsent = emulator.signed_post(
        "StopSnapshot", key_of(start_body()), session_token="STS2abc", drop=["X-Security-Token"]
    )
    assert_error(unsent, "SignatureDoesNotMatch", "x-security-token")


def test_default_port_in_host_is_signed_as_bare_host(emulator):
    # The Host header names port 80 while the request goes to the emulator's port.
    key = signing.SigningKey(emulator.config.access_key, emulator.config.secret_key)
    query = {"Action": "StartSnapshot", "Version": "2023-11-01"}
    body = json.dumps(start_body()).encode()
    signed = signing.sign_request(
        key=key,
        method="POST",
        host="rtc.example.com:80",
        path="/",
        query=query,
        content_type="application/json",
        body=body,
        region="cn-north-1",
    )
    headers = {**signed, "Content-Type": "application/json", "Host": "rtc.example.com:80"}
    assert_ok(emulator.http.post("/", params=query, content=body, headers=headers))


# -- bodies ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, text",
    [(b"", "JSON"), (b"{", "JSON"), (b"[1, 2]", "JSON object"), (b'"text"', "JSON object"), (b"\xff\xfe", "JSON")],
    ids=["empty", "truncated", "array", "string", "not-utf8"],
)
def test_malformed_bodies(emulator, body, text):
    assert_error(emulator.signed_post("StartSnapshot", body), "InvalidParameter", text)


def _padded(size: int) -> bytes:
    raw = json.dumps({**start_body(), "Padding": ""}).encode()
    return raw.replace(b'"Padding": ""', b'"Padding": "' + b"x" * (size - len(raw)) + b'"')


def test_body_size_limit(emulator):
    assert len(_padded(65536)) == 65536
    assert_ok(emulator.signed_post("StartSnapshot", _padded(65536)))
    assert_error(emulator.signed_post("StartSnapshot", _padded(65537)), "InvalidParameter", "65536")
    # The signature of an oversized body is still checked first.
    assert_error(emulator.signed_post("StartSnapshot", _padded(200_000), secret_key="wrong"), "SignatureDoesNotMatch")


# -- rate limit ---------------------------------------------------------------------


class HandClock:
    """A monotonic clock the test sets: the rate limiter sees the moments the test chose,
    however long the machine takes to send the requests."""

    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_qps_limit_per_action_with_sliding_window(make_emulator):
    clock = HandClock(1000.0)
    emulator = make_emulator(qps=5, clock=clock)

    def starts(prefix: str, count: int) -> list[int]:
        return [
            emulator.signed_post("StartSnapshot", start_body(TaskId=f"{prefix}{i}")).status_code for i in range(count)
        ]

    assert starts("t", 20) == [200] * 5 + [429] * 15  # 20 requests at one moment
    assert_error(emulator.signed_post("StartSnapshot", start_body(TaskId="more")), "FlowLimitExceeded")
    # The limit is per action.
    assert_ok(emulator.signed_post("StopSnapshot", key_of(start_body(TaskId="t0"))))
    stats = emulator.stats()
    assert stats["throttled"] == 16
    assert stats["by_action"]["StartSnapshot"] == {"total": 21, "outcomes": {"ok": 5, "FlowLimitExceeded": 16}}
    # The window is one second long, to the instant: full just before, empty at 1 s.
    clock.now = 1000.999
    assert starts("a", 1) == [429]
    # Sliding, not one fixed window per second: 3 accepted at 1001.0 and 2 at 1001.5 fill it ...
    clock.now = 1001.0
    assert starts("b", 3) == [200] * 3
    clock.now = 1001.5
    assert starts("c", 3) == [200, 200, 429]
    # ... and at 1002.0 only the 3 of 1001.0 have left it (refused requests never entered it).
    clock.now = 1002.0
    assert starts("d", 4) == [200, 200, 200, 429]
    clock.now = 1002.5
    assert starts("e", 3) == [200, 200, 429]


def test_qps_zero_disables_the_limit(emulator):
    emulator.configure(qps=0)
    assert all(emulator.signed_post("StartSnapshot", start_body()).status_code == 200 for _ in range(200))
    assert emulator.stats()["throttled"] == 0


# -- faults ------------------------------------------------------------------------


def test_error_fault_answers_500_without_acting(emulator):
    emulator.configure(error_rate=1.0)
    assert_error(emulator.signed_post("StartSnapshot", start_body()), "InternalError")
    assert emulator.tasks() == []
    # Bad requests are refused for what they are, faults or not.
    assert_error(emulator.signed_post("StartSnapshot", b"{"), "InvalidParameter")
    stats = emulator.stats()
    assert stats["faults"] == {"error": 1, "drop": 0, "slow": 0}
    assert stats["by_action"]["StartSnapshot"]["outcomes"] == {"InternalError": 1, "InvalidParameter": 1}


def _dropped_run(make_emulator, seed: int):
    emulator = make_emulator(drop_rate=1.0, seed=seed)
    for i in range(16):
        with pytest.raises(httpx.RemoteProtocolError):
            emulator.signed_post("StartSnapshot", start_body(TaskId=f"t{i}"))
    return emulator, sorted(task["TaskId"] for task in emulator.tasks())


def test_drop_fault_closes_the_connection_before_or_after_acting(make_emulator, caplog):
    caplog.set_level(logging.ERROR)
    emulator, started = _dropped_run(make_emulator, seed=7)
    outcomes = emulator.stats()["by_action"]["StartSnapshot"]["outcomes"]
    assert outcomes["dropped_after"] == len(started) and 0 < len(started) < 16
    assert outcomes["dropped_before"] == 16 - len(started)
    assert emulator.stats()["faults"]["drop"] == 16
    # Dropping after an action that is refused drops all the same.
    for i in range(8):
        with pytest.raises(httpx.RemoteProtocolError):
            emulator.signed_post("StopSnapshot", key_of(start_body(TaskId=f"none{i}")))
    assert emulator.stats()["by_action"]["StopSnapshot"]["outcomes"]["dropped_after"] > 0
    # The same seed drops the same way.
    assert _dropped_run(make_emulator, seed=7)[1] == started
    assert not [r for r in caplog.records if "ASGI" in r.getMessage()]
    # The emulator keeps serving after the drops.
    emulator.configure(drop_rate=0)
    assert_ok(emulator.signed_post("StartSnapshot", start_body(TaskId="after")))


def test_slow_fault_acts_then_answers_late(emulator):
    emulator.configure(slow_rate=1.0, slow_ms=400)
    with pytest.raises(httpx.ReadTimeout):
        emulator.signed_post("StartSnapshot", start_body(), timeout=0.15)
    assert [task["TaskId"] for task in emulator.tasks()] == ["task1"]
    began = time.monotonic()
    assert_ok(emulator.signed_post("StopSnapshot", key_of(start_body())))
    assert time.monotonic() - began >= 0.4
    assert emulator.stats()["faults"]["slow"] == 2


def test_latency_and_jitter_on_every_answer(emulator):
    emulator.configure(latency_ms=150, jitter_ms=50)
    for send in (
        lambda: emulator.signed_post("StartSnapshot", start_body()),
        lambda: emulator.signed_post("StartSnapshot", b"{", drop=["Authorization"]),
    ):
        began = time.monotonic()
        send()
        assert 0.15 <= time.monotonic() - began < 1.0
    began = time.monotonic()
    emulator.tasks()
    assert time.monotonic() - began < 0.15, "introspection is not delayed"


def test_fault_rates_are_validated(emulator):
    assert_error(emulator.admin("config", {"error_rate": 1.5}), "InvalidParameter", "error_rate")
    assert_error(emulator.admin("config", {"error_rate": 0.6, "drop_rate": 0.6}), "InvalidParameter", "exceed 1")
    assert_error(emulator.admin("config", {"port": 1}), "InvalidParameter", "port")
    assert emulator.configure(qps=7)["qps"] == 7


# -- idle timeout ----------------------------------------------------------------------


def test_task_idles_out_after_streams_stop(emulator):
    assert_ok(emulator.signed_post("StartSnapshot", start_body(MaxIdleTime=1)))
    assert_ok(emulator.signed_post("StartSnapshot", start_body(TaskId="patient", MaxIdleTime=60)))
    assert_ok(emulator.signed_post("StartSnapshot", start_body(RoomId="other", MaxIdleTime=1)))
    marked = emulator.admin("streams-stopped", {"AppId": "app1", "RoomId": "room1"})
    assert marked.json()["ended"] == 0
    assert len(emulator.tasks()) == 3
    time.sleep(1.1)
    assert sorted((t["RoomId"], t["TaskId"]) for t in emulator.tasks()) == [("other", "task1"), ("room1", "patient")]
    assert_error(emulator.signed_post("StopSnapshot", key_of(start_body())), TASK_NOT_RUNNING)
    # Starting again is a new task, and the room publishes again.
    assert_ok(emulator.signed_post("StartSnapshot", start_body(MaxIdleTime=1)))
    time.sleep(1.1)
    assert len(emulator.tasks()) == 3


def test_start_during_idle_time_clears_the_mark(emulator):
    assert_ok(emulator.signed_post("StartSnapshot", start_body(MaxIdleTime=1)))
    emulator.admin("streams-stopped", {"AppId": "app1", "RoomId": "room1"})
    assert_ok(emulator.signed_post("StartSnapshot", start_body(MaxIdleTime=1)), ALREADY_STARTED)
    time.sleep(1.1)
    assert len(emulator.tasks()) == 1


def test_immediate_streams_stop_ends_tasks_at_once(emulator):
    assert_ok(emulator.signed_post("StartSnapshot", start_body()))
    assert_ok(emulator.signed_post("StartSnapshot", start_body(TaskId="task2")))
    marked = emulator.admin("streams-stopped", {"AppId": "app1", "RoomId": "room1", "Immediate": True})
    assert marked.json()["ended"] == 2
    assert emulator.tasks() == [] and emulator.stats()["tasks_running"] == 0
    assert_ok(emulator.signed_post("StartSnapshot", start_body()))


def test_streams_stopped_validates(emulator):
    assert_error(emulator.admin("streams-stopped", {"AppId": "app1"}), "InvalidParameter", "RoomId")
    assert_error(
        emulator.admin("streams-stopped", {"AppId": "app1", "RoomId": "r", "Immediate": "yes"}),
        "InvalidParameter",
        "Immediate",
    )


# -- introspection -------------------------------------------------------------------------


def test_stats_format_and_reset(emulator):
    assert_ok(emulator.signed_post("StartSnapshot", start_body()))
    assert_error(emulator.signed_post("UpdateSnapshot", key_of(start_body(TaskId="none"))), TASK_NOT_RUNNING)
    emulator.tasks()
    assert emulator.stats() == {
        "total": 2,
        "by_action": {
            "StartSnapshot": {"total": 1, "outcomes": {"ok": 1}},
            "UpdateSnapshot": {"total": 1, "outcomes": {TASK_NOT_RUNNING: 1}},
        },
        "throttled": 0,
        "faults": {"error": 0, "drop": 0, "slow": 0},
        "connections": 1,
        "tasks_running": 1,
    }
    assert emulator.admin("reset").status_code == 200
    assert emulator.stats()["total"] == 0 and emulator.tasks() == []


@pytest.mark.parametrize(
    "method, path", [("GET", "/nowhere"), ("PUT", "/"), ("GET", "/_emulator/reset"), ("POST", "/_emulator/tasks")]
)
def test_unknown_paths(emulator, method, path):
    assert_error(emulator.http.request(method, path), "InvalidActionOrVersion", path)


def test_get_of_the_root_is_the_api(emulator):
    """GET / serves GetSnapshotTask, so a GET without Action is refused as the gateway does."""
    assert_error(emulator.http.get("/"), "MissingParameter", "Action")


def test_admin_bodies_are_checked(emulator):
    assert_error(emulator.http.post("/_emulator/config", content=b"{"), "InvalidParameter", "JSON")
    assert_error(emulator.http.post("/_emulator/config", content=b"[]"), "InvalidParameter", "object")


# -- persistence -----------------------------------------------------------------------------


def test_tasks_survive_a_restart(make_emulator, tmp_path):
    data = tmp_path / "state" / "tasks.json"
    first = make_emulator(data=data)
    block, value = BLOCKS[2]
    assert_ok(first.signed_post("StartSnapshot", start_body(StorageConfig={"Type": 2, block: value})))
    assert_ok(first.signed_post("StartSnapshot", start_body(TaskId="t2")))
    assert_ok(first.signed_post("StartSnapshot", start_body(TaskId="gone")))
    assert_ok(first.signed_post("UpdateSnapshot", {**key_of(start_body(TaskId="t2")), "ImageConfig": {"Interval": 42}}))
    assert_ok(first.signed_post("StopSnapshot", key_of(start_body(TaskId="gone"))))
    # Written while running, soon after the changes.
    deadline = time.monotonic() + 2
    while not data.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert data.exists()
    before = first.tasks()
    first.server.stop()
    # The storage keys stay out of the data file; the keys file beside it is the
    # emulated service's own credential store, readable by its owner only.
    assert "third-party-secret" not in data.read_text()
    keys = data.with_name("tasks.json.keys")
    assert "third-party-secret" in keys.read_text() and keys.stat().st_mode & 0o777 == 0o600
    assert data.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in data.parent.iterdir()) == ["tasks.json", "tasks.json.keys"], "no temporary file"

    second = make_emulator(data=data)
    assert second.tasks() == before
    # A restart is invisible to a read: the task runs with the keys it was started with.
    read = second.signed_get({"AppId": "app1", "RoomId": "room1", "TaskId": "task1"}).json()
    custom = read["Result"]["SnapshotTask"]["StorageConfig"]["CustomConfig"]
    assert (custom["AccessKey"], custom["SecretKey"]) == ("AKthirdparty", "third-party-secret")
    assert_ok(second.signed_post("StartSnapshot", start_body(TaskId="t2")), ALREADY_STARTED)
    assert_ok(second.signed_post("StopSnapshot", key_of(start_body(TaskId="t2"))))
    second.server.stop()
    assert [t["TaskId"] for t in make_emulator(data=data).tasks()] == ["task1"]


def test_unreadable_data_file_is_refused(tmp_path):
    data = tmp_path / "tasks.json"
    data.write_text('{"version": 1, "tasks": [{"Request": {"AppId": "a b"}}]}')
    with pytest.raises(DataFileError, match="not valid"):
        EmulatorServer(EmulatorConfig(data=data))
    data.write_text("not json")
    with pytest.raises(DataFileError, match="not an emulator data file"):
        EmulatorServer(EmulatorConfig(data=data))


# -- the command -------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_command_help():
    result = subprocess.run([SNAPCTL, "emulator", "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    for flag in (
        "--port",
        "--access-key",
        "--secret-key",
        "--qps",
        "--error-rate",
        "--drop-rate",
        "--slow-ms",
        "--data",
        "--seed",
        "--refuse-start",
        "--refuse-start-code",
    ):
        assert flag in result.stdout


@pytest.mark.parametrize(
    "args, text", [(["--error-rate", "2"], "--error-rate"), (["--drop-rate", "0.7", "--slow-rate", "0.7"], "exceed 1")]
)
def test_command_refuses_bad_flags(args, text):
    result = subprocess.run([SNAPCTL, "emulator", *args], capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert text in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_command_serves_until_sigterm(tmp_path):
    port = _free_port()
    secret = "command-test-secret"
    env = {**os.environ, "SNAPCTL_EMULATOR_SECRET_KEY": secret}
    data = tmp_path / "tasks.json"
    process = subprocess.Popen(
        [SNAPCTL, "emulator", "--port", str(port), "--data", str(data)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(f"{url}/_emulator/stats", timeout=1)
                break
            except httpx.TransportError:
                assert process.poll() is None and time.monotonic() < deadline, "the emulator did not come up"
                time.sleep(0.05)
        body = json.dumps(start_body()).encode()
        query = {"Action": "StartSnapshot", "Version": "2023-11-01"}
        signed = signing.sign_request(
            key=signing.SigningKey("AKLTsnapctlemulator", secret),
            method="POST",
            host=f"127.0.0.1:{port}",
            path="/",
            query=query,
            content_type="application/json",
            body=body,
            region="cn-north-1",
        )
        assert_ok(
            httpx.post(f"{url}/", params=query, content=body, headers={**signed, "Content-Type": "application/json"})
        )
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, err
    assert (
        out.strip()
        == f"snapctl emulator listening on {url} (access key AKLTsnapctlemulator, secret key from SNAPCTL_EMULATOR_SECRET_KEY)"
    )
    assert secret not in out + err
    assert [t["TaskId"] for t in json.loads(data.read_text())["tasks"]] == ["task1"]
