"""The V4 signer against the vendor's vectors, and the details the vectors do not pin."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reconciler import signing

# A copy of ../shared/api/signing-vectors.json (computed with the vendor's SDK),
# kept in the repository so the vectors are checked on every machine.
VECTORS = Path(__file__).resolve().parent / "data" / "signing-vectors.json"
SHARED_VECTORS = Path(__file__).resolve().parents[2] / "shared/api/signing-vectors.json"


def _vectors():
    return [
        pytest.param(v, id=f"{i}-{v['inputs']['query']['Action']}")
        for i, v in enumerate(json.loads(VECTORS.read_text()))
    ]


def test_the_copy_of_the_vectors_is_current():
    if SHARED_VECTORS.is_file():  # beside the checkout in development and CI
        assert json.loads(SHARED_VECTORS.read_text()) == json.loads(VECTORS.read_text())
    assert len(json.loads(VECTORS.read_text())) >= 6


# The same for the GET vectors of GetSnapshotTask (../shared/api/signing-vectors-get.json).
GET_VECTORS = VECTORS.with_name("signing-vectors-get.json")
SHARED_GET_VECTORS = SHARED_VECTORS.with_name("signing-vectors-get.json")


def test_the_copy_of_the_get_vectors_is_current():
    if SHARED_GET_VECTORS.is_file():
        assert json.loads(SHARED_GET_VECTORS.read_text()) == json.loads(GET_VECTORS.read_text())
    vectors = json.loads(GET_VECTORS.read_text())
    assert len(vectors) == 8
    assert {v["inputs"]["method"] for v in vectors} == {"GET"}


def _sign(inputs: dict) -> dict[str, str]:
    return signing.sign_request(
        key=signing.SigningKey(inputs["access_key"], inputs["secret_key"], inputs["session_token"]),
        method=inputs["method"],
        host=inputs["host"],
        path=inputs["path"],
        query=inputs["query"],
        content_type=inputs["headers"].get("Content-Type"),
        body=inputs["body"].encode("utf-8"),
        region=inputs["region"],
        x_date=inputs["x_date"],
        service=inputs["service"],
    )


@pytest.mark.parametrize("vector", _vectors())
def test_vendor_vector(vector):
    headers = _sign(vector["inputs"])
    assert headers["Authorization"] == vector["outputs"]["authorization"]
    assert headers["X-Content-Sha256"] == vector["outputs"]["x_content_sha256"]
    assert f"SignedHeaders={vector['outputs']['signed_headers']}," in headers["Authorization"]


@pytest.mark.parametrize(
    "vector",
    [pytest.param(v, id=f"get-{i}") for i, v in enumerate(json.loads(GET_VECTORS.read_text()))],
)
def test_vendor_get_vector(vector):
    """A GET signs its query and the empty body's hash; Content-Type only when it is sent."""
    headers = _sign(vector["inputs"])
    assert headers["Authorization"] == vector["outputs"]["authorization"]
    assert headers["X-Content-Sha256"] == vector["outputs"]["x_content_sha256"]


def test_client_get_request_signs_what_the_vectors_sign():
    """The client's GET sends no Content-Type, so it signs host, X-Content-Sha256, X-Date (and the token)."""
    from reconciler.client import read_request_headers

    headers = read_request_headers(
        signing.SigningKey("AK", "SK", "STS2x"), "rtc.volcengineapi.com", "/", {"Action": "GetSnapshotTask"}, "r"
    )
    parsed = signing.parse_authorization(headers["Authorization"])
    assert parsed.signed_headers == ("host", "x-content-sha256", "x-date", "x-security-token")
    assert "Content-Type" not in headers


def _headers(**changes) -> dict[str, str]:
    args = dict(
        key=signing.SigningKey("AK", "SK"),
        method="POST",
        host="rtc.volcengineapi.com",
        path="/",
        query={"Action": "StopSnapshot", "Version": "2023-11-01"},
        content_type="application/json",
        body=b'{"AppId":"a","RoomId":"r","TaskId":"t"}',
        region="cn-north-1",
        x_date="20240101T000000Z",
    )
    args.update(changes)
    return signing.sign_request(**args)


def test_sts_token_is_sent_and_signed():
    with_token = _headers(key=signing.SigningKey("AK", "SK", "STS2token"))
    assert with_token["X-Security-Token"] == "STS2token"
    parsed = signing.parse_authorization(with_token["Authorization"])
    assert parsed.signed_headers == ("content-type", "host", "x-content-sha256", "x-date", "x-security-token")
    other_token = _headers(key=signing.SigningKey("AK", "SK", "STS2other"))
    assert parsed.signature != signing.parse_authorization(other_token["Authorization"]).signature
    assert "X-Security-Token" not in _headers()


@pytest.mark.parametrize("port", ["80", "443"])
def test_default_ports_are_signed_as_the_bare_host(port):
    assert _headers(host=f"rtc.volcengineapi.com:{port}") == _headers()


def test_other_ports_are_signed():
    assert _headers(host="rtc.volcengineapi.com:8080") != _headers()
    assert signing.canonical_host("127.0.0.1:8080") == "127.0.0.1:8080"


def test_canonical_query_sorts_and_encodes():
    assert signing.canonical_query({"b": "x y", "a": "~-_.", "c": "/+"}) == "a=~-_.&b=x%20y&c=%2F%2B"


def test_parse_authorization_round_trip_and_refusals():
    parsed = signing.parse_authorization(_headers()["Authorization"])
    assert (parsed.access_key, parsed.date, parsed.region, parsed.service) == ("AK", "20240101", "cn-north-1", "rtc")
    assert len(parsed.signature) == 64
    for bad in ("Bearer abc", "HMAC-SHA256 Credential=AK/20240101/cn-north-1/rtc", "HMAC-SHA256 nonsense"):
        assert signing.parse_authorization(bad) is None
