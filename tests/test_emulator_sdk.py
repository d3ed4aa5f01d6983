"""The vendor's own SDK signs and calls all four actions against the emulator."""

from __future__ import annotations

import json
from urllib.parse import urlparse

import pytest

pytest.importorskip("volcengine")

from volcengine.ApiInfo import ApiInfo
from volcengine.base.Service import Service
from volcengine.Credentials import Credentials
from volcengine.ServiceInfo import ServiceInfo

from reconciler.api import ALREADY_STARTED, API_VERSION, READ_ACTION, WRITE_ACTIONS

TASK = {"AppId": "sdkapp", "RoomId": "sdkroom", "TaskId": "sdktask"}
START = {**TASK, "StorageConfig": {"Type": 3, "VeImageXConfig": {"AccountId": "2100000990", "ServiceId": "svc"}}}


def sdk_service(emulator, secret_key: str) -> Service:
    config = emulator.config
    info = ServiceInfo(
        urlparse(emulator.url).netloc,
        {"Accept": "application/json"},
        Credentials(config.access_key, secret_key, "rtc", config.region),
        5,
        5,
        scheme="http",
    )
    apis = {
        action: ApiInfo("POST", "/", {"Action": action, "Version": API_VERSION}, {}, {}) for action in WRITE_ACTIONS
    }
    apis[READ_ACTION] = ApiInfo("GET", "/", {"Action": READ_ACTION, "Version": API_VERSION}, {}, {})
    service = Service(info, apis)
    # Service() picks up VOLC_ACCESSKEY or ~/.volc credentials when present; these tests set their own.
    service.set_ak(config.access_key)
    service.set_sk(secret_key)
    return service


def call(service: Service, action: str, body: dict) -> dict:
    return json.loads(service.json(action, {}, json.dumps(body)))


def test_sdk_calls_all_three_actions(emulator):
    service = sdk_service(emulator, emulator.config.secret_key)
    assert call(service, "StartSnapshot", START)["Result"] == "ok"
    assert call(service, "StartSnapshot", START)["Result"] == ALREADY_STARTED
    assert call(service, "UpdateSnapshot", {**TASK, "ImageConfig": {"Interval": 9}})["Result"] == "ok"
    assert emulator.tasks()[0]["Request"]["ImageConfig"]["Interval"] == 9
    read = json.loads(service.get(READ_ACTION, TASK))
    assert read["Result"]["SnapshotTask"]["Status"] == 2
    assert read["Result"]["SnapshotTask"]["ImageConfig"]["Interval"] == 9
    stopped = call(service, "StopSnapshot", TASK)
    assert stopped["Result"] == "ok"
    assert stopped["ResponseMetadata"]["Action"] == "StopSnapshot"
    assert emulator.tasks() == []
    ended = json.loads(service.get(READ_ACTION, TASK))["Result"]["SnapshotTask"]
    assert (ended["Status"], ended["StopReason"]) == (3, "StopByAPI")


def test_sdk_with_wrong_secret_gets_signature_mismatch(emulator):
    service = sdk_service(emulator, "not-the-secret")
    with pytest.raises(Exception) as info:
        call(service, "StartSnapshot", START)
    envelope = json.loads(info.value.args[0])
    assert envelope["ResponseMetadata"]["Error"]["Code"] == "SignatureDoesNotMatch"
    assert envelope["ResponseMetadata"]["Error"]["CodeN"] == 100010
