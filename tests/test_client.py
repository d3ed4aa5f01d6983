"""The client against the emulator over real HTTP: outcomes, errors by meaning, retries, rate limit."""

from __future__ import annotations

import asyncio
import random

import pytest
from snapctl_testing import stats

from reconciler import api
from reconciler.client import Outcome, RetryPolicy, SnapshotClient
from reconciler.credentials import load_credentials
from reconciler.emulator.config import DEFAULT_ACCESS_KEY, DEFAULT_SECRET_KEY, EmulatorConfig
from reconciler.emulator.server import EmulatorServer
from reconciler.errors import AuthError, InvalidParameterError, ServerError, ThrottledError, TransportError, UsageError
from reconciler.ratelimit import RateLimiter
from reconciler.runenv import resolve_endpoint, resolve_region
from reconciler.signing import SigningKey

KEY = SigningKey(DEFAULT_ACCESS_KEY, DEFAULT_SECRET_KEY)
FAST_RETRY = RetryPolicy(max_attempts=10, base_s=0.01, cap_s=0.2, total_s=30)


def request(task: str = "T1", interval: int = 2, **overrides) -> api.StartSnapshotRequest:
    body = {
        "AppId": "app1",
        "RoomId": "room1",
        "TaskId": task,
        "ImageConfig": {"Interval": interval},
        "StorageConfig": {"Type": 0, "TosConfig": {"AccountId": "2100000990", "Bucket": "b"}},
    } | overrides
    return api.StartSnapshotRequest.model_validate(body)


@pytest.fixture
def server():
    with EmulatorServer(EmulatorConfig(seed=7)) as srv:
        yield srv


def run(coro):
    return asyncio.run(coro)


def test_outcomes_of_each_action(server):
    async def scenario():
        async with SnapshotClient(server.url, KEY, retry=FAST_RETRY) as client:
            first = await client.start(request())
            again = await client.start(request(interval=9))
            updated = await client.update(
                api.UpdateSnapshotRequest(
                    app_id="app1", room_id="room1", task_id="T1", image_config=api.ImageConfig(interval=7)
                )
            )
            stopped = await client.stop(api.StopSnapshotRequest(app_id="app1", room_id="room1", task_id="T1"))
            stop_again = await client.stop(api.StopSnapshotRequest(app_id="app1", room_id="room1", task_id="T1"))
            update_gone = await client.update(
                api.UpdateSnapshotRequest(
                    app_id="app1", room_id="room1", task_id="T1", image_config=api.ImageConfig(interval=7)
                )
            )
            return first, again, updated, stopped, stop_again, update_gone

    first, again, updated, stopped, stop_again, update_gone = run(scenario())
    assert first.outcome is Outcome.started and first.request_id
    assert again.outcome is Outcome.already_started
    assert updated.outcome is Outcome.updated
    assert stopped.outcome is Outcome.stopped
    assert stop_again.outcome is Outcome.not_running
    assert update_gone.outcome is Outcome.not_running


def test_wrong_secret_is_an_auth_error_sent_once(server):
    async def scenario():
        async with SnapshotClient(server.url, SigningKey(DEFAULT_ACCESS_KEY, "wrong"), retry=FAST_RETRY) as client:
            await client.start(request())

    with pytest.raises(AuthError) as info:
        run(scenario())
    assert info.value.code == "SignatureDoesNotMatch" and info.value.code_n == 100010
    assert info.value.request_id
    assert stats(server.url)["total"] == 1


def test_unknown_access_key_is_an_auth_error(server):
    async def scenario():
        async with SnapshotClient(server.url, SigningKey("AKLTnobody", DEFAULT_SECRET_KEY), retry=FAST_RETRY) as client:
            await client.start(request())

    with pytest.raises(AuthError) as info:
        run(scenario())
    assert info.value.code == "InvalidAccessKey"


def test_parameter_error_carries_code_message_and_is_not_retried(server):
    bad = request().model_copy(update={"max_idle_time": 0})  # bypasses client-side validation on purpose

    async def scenario():
        async with SnapshotClient(server.url, KEY, retry=FAST_RETRY) as client:
            await client.start(bad)

    with pytest.raises(InvalidParameterError) as info:
        run(scenario())
    assert info.value.code.startswith("InvalidParameter")
    assert "MaxIdleTime" in info.value.message
    assert info.value.request_id and info.value.code_n
    assert stats(server.url)["total"] == 1


def test_throttling_is_retried_to_success():
    with EmulatorServer(EmulatorConfig(qps=5)) as server:

        async def scenario():
            async with SnapshotClient(
                server.url, KEY, qps=0, retry=RetryPolicy(max_attempts=30, base_s=0.05, cap_s=0.5, total_s=30)
            ) as client:
                return await asyncio.gather(*(client.start(request(f"T{i}")) for i in range(12))), client.stats

        results, client_stats = run(scenario())
        assert all(r.outcome is Outcome.started for r in results)
        counters = stats(server.url)
        assert counters["throttled"] > 0
        assert client_stats.throttled == counters["throttled"]
        assert counters["tasks_running"] == 12


def test_faults_are_retried_to_success():
    config = EmulatorConfig(error_rate=0.2, drop_rate=0.1, slow_rate=0.1, slow_ms=1500, seed=3)
    with EmulatorServer(config) as server:

        async def scenario():
            async with SnapshotClient(
                server.url, KEY, qps=0, timeout_s=0.5, retry=FAST_RETRY, rng=random.Random(1)
            ) as client:
                return await asyncio.gather(*(client.start(request(f"T{i}")) for i in range(40)))

        results = run(scenario())
        assert {r.outcome for r in results} <= {Outcome.started, Outcome.already_started}
        counters = stats(server.url)
        assert counters["tasks_running"] == 40
        faults = counters["faults"]
        assert faults["error"] > 0 and faults["drop"] > 0 and faults["slow"] > 0
        assert sum(r.attempts for r in results) > 40


def test_retries_are_bounded():
    with EmulatorServer(EmulatorConfig(error_rate=1.0)) as server:

        async def scenario():
            async with SnapshotClient(
                server.url, KEY, retry=RetryPolicy(max_attempts=3, base_s=0.01, cap_s=0.02)
            ) as client:
                await client.start(request())

        with pytest.raises(ServerError) as info:
            run(scenario())
        assert info.value.code == "InternalError"
        assert stats(server.url)["total"] == 3


def test_unreachable_endpoint_is_a_transport_error():
    async def scenario():
        async with SnapshotClient("http://127.0.0.1:9", KEY, retry=RetryPolicy(max_attempts=2, base_s=0.01)) as client:
            await client.start(request())

    with pytest.raises(TransportError):
        run(scenario())


def test_session_token_is_sent_and_signed(server):
    async def scenario():
        async with SnapshotClient(
            server.url, SigningKey(DEFAULT_ACCESS_KEY, DEFAULT_SECRET_KEY, "STS-token-1"), retry=FAST_RETRY
        ) as client:
            return await client.start(request())

    assert run(scenario()).outcome is Outcome.started


def test_rate_limiter_never_exceeds_the_limit_in_any_window():
    qps = 100
    sent: list[float] = []

    async def scenario():
        limiter = RateLimiter(qps)

        async def one():
            # The moment the limiter let the call start: when this coroutine resumes
            # after that depends on the machine's load, and is not the limiter's doing.
            sent.append(await limiter.acquire())

        await asyncio.gather(*(one() for _ in range(2 * qps + 20)))

    run(scenario())
    sent.sort()
    worst = max(sum(1 for t in sent[i:] if t < start + 1.0) for i, start in enumerate(sent))
    assert worst <= qps
    # Smooth, not bursty: a late start may be caught up by the next call, but never by
    # more than one interval (any two starts with one between are an interval apart).
    # How close to the limit it runs is a speed figure, measured by bench/ (apply's
    # tasks/s), not asserted here: wall time depends on the machine's load.
    assert all(b >= a for a, b in zip(sent, sent[1:]))
    assert min(c - a for a, c in zip(sent, sent[2:])) >= 1 / qps * 0.999


def test_credentials_from_environment_then_file(tmp_path):
    env = {"HOME": str(tmp_path), "VOLC_ACCESSKEY": "AK", "VOLC_SECRETKEY": "SK", "VOLC_SESSION_TOKEN": "TOK"}
    assert load_credentials(env) == SigningKey("AK", "SK", "TOK")
    (tmp_path / ".volc").mkdir()
    (tmp_path / ".volc" / "credentials").write_text("[default]\naccess_key_id = AK2\nsecret_access_key = SK2\n")
    assert load_credentials({"HOME": str(tmp_path)}) == SigningKey("AK2", "SK2", "")
    with pytest.raises(UsageError, match="VOLC_ACCESSKEY"):
        load_credentials({"HOME": str(tmp_path / "nowhere")})
    assert "SK2" not in repr(load_credentials({"HOME": str(tmp_path)}))


def test_endpoint_and_region_resolution():
    assert resolve_endpoint(None, {}) == "https://rtc.volcengineapi.com"
    assert resolve_endpoint(None, {"SNAPCTL_ENDPOINT": "http://127.0.0.1:1/"}) == "http://127.0.0.1:1"
    assert resolve_endpoint("http://x:2", {"SNAPCTL_ENDPOINT": "http://127.0.0.1:1"}) == "http://x:2"
    with pytest.raises(UsageError):
        resolve_endpoint("ftp://x", {})
    assert resolve_region({}) == "cn-north-1" and resolve_region({"VOLC_REGION": "ap-southeast-1"}) == "ap-southeast-1"


def test_throttled_error_is_retryable_class():
    assert ThrottledError("x").retryable and not AuthError("x").retryable


def test_connections_are_reused(server):
    async def scenario():
        async with SnapshotClient(server.url, KEY, qps=0, max_connections=8, retry=FAST_RETRY) as client:
            for i in range(20):
                await client.start(request(f"S{i}"))
            await asyncio.gather(*(client.start(request(f"P{i}")) for i in range(40)))

    run(scenario())
    counters = stats(server.url)
    assert counters["total"] == 60
    # One connection for the sequential calls, then at most the pool's size: keep-alive, not one per call.
    assert counters["connections"] <= 8
