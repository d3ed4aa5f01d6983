"""A raw HTTP/1.1 keep-alive load generator for the emulator (asyncio streams).

    python bench/loadgen.py URL [--connections 64] [--seconds 5]

Each connection sends, one after the other on its own keep-alive connection,
StartSnapshot, UpdateSnapshot and StopSnapshot of its own tasks (so every
answer is a success), every request freshly signed with
``reconciler.signing.sign_request``. Prints one JSON line: requests answered,
seconds, requests per second, and the HTTP statuses seen. httpx's client
cannot generate this load from Python here; this needs about 0.1 ms of CPU
per request.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reconciler.api import API_VERSION
from reconciler.emulator.config import DEFAULT_ACCESS_KEY, DEFAULT_REGION, DEFAULT_SECRET_KEY
from reconciler.signing import SigningKey, sign_request

KEY = SigningKey(DEFAULT_ACCESS_KEY, DEFAULT_SECRET_KEY)
ACTIONS = ("StartSnapshot", "UpdateSnapshot", "StopSnapshot")
STORAGE = {"Type": 0, "TosConfig": {"AccountId": "2100000990", "Region": 0, "Bucket": "loadgen"}}


def body(action: str, connection: int, task: int) -> bytes:
    ids = {"AppId": "loadgen", "RoomId": f"room-{connection}", "TaskId": f"task-{task}"}
    if action == "StartSnapshot":
        return orjson.dumps({**ids, "ImageConfig": {"Interval": 2}, "StorageConfig": STORAGE})
    if action == "UpdateSnapshot":
        return orjson.dumps({**ids, "ImageConfig": {"Interval": 5}})
    return orjson.dumps(ids)


async def connection(host: str, port: int, number: int, deadline: float, statuses: collections.Counter) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    host_header = f"{host}:{port}"
    sent = 0
    try:
        while time.monotonic() < deadline:
            action = ACTIONS[sent % 3]
            payload = body(action, number, sent // 3)
            query = {"Action": action, "Version": API_VERSION}
            signed = sign_request(
                key=KEY,
                method="POST",
                host=host_header,
                path="/",
                query=query,
                content_type="application/json",
                body=payload,
                region=DEFAULT_REGION,
            )
            head = (
                f"POST /?Action={action}&Version={API_VERSION} HTTP/1.1\r\n"
                f"Host: {host_header}\r\nContent-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
                f"X-Date: {signed['X-Date']}\r\nX-Content-Sha256: {signed['X-Content-Sha256']}\r\n"
                f"Authorization: {signed['Authorization']}\r\n\r\n"
            )
            writer.write(head.encode("latin-1") + payload)
            response = await reader.readuntil(b"\r\n\r\n")
            status = int(response[9:12])
            length = 0
            for line in response.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            statuses[status] += 1
            sent += 1
    finally:
        writer.close()


async def run(url: str, connections: int, seconds: float) -> dict:
    parsed = urlparse(url)
    statuses: collections.Counter = collections.Counter()
    began = time.monotonic()
    await asyncio.gather(
        *(connection(parsed.hostname, parsed.port, n, began + seconds, statuses) for n in range(connections))
    )
    elapsed = time.monotonic() - began
    total = sum(statuses.values())
    return {
        "requests": total,
        "seconds": round(elapsed, 3),
        "rps": round(total / elapsed, 1),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    print(orjson.dumps(asyncio.run(run(args.url, args.connections, args.seconds))).decode(), flush=True)


if __name__ == "__main__":
    main()
