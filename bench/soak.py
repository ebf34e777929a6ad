"""Soak run: mixed load for a long time, a Redis restart in the middle, then a leak check.

    python bench/soak.py --minutes 30            # the full run (not part of CI)
    python bench/soak.py --minutes 2 --quick     # a smoke run

Starts its own ``redis-server`` (append-only, so a restart keeps what it accepted)
and a Hypercorn server with the Redis broker on free loopback ports, then for the
given time keeps streams opening and closing on every stream kind, runs generation
jobs to their end, posts chat messages and channel publishes, and restarts Redis
halfway.  Every loop is bounded in count and time, and only 127.0.0.1 is targeted.

At the end it waits for the server to go idle and reports, as one JSON document
(also written to ``--out``): requests by status (5xx must be zero; 503s are counted
apart, they are the documented answer while Redis is down), streams and jobs that
completed, open streams/subscribers/tasks left, file descriptors and RSS of the
worker processes at the start, after warm-up and at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the shared harness

from harness import RedisServer, ServerProcess  # noqa: E402
from harness.polling import eventually  # noqa: E402
from harness.processes import open_fds, raise_nofile, rss_kib  # noqa: E402

TOKEN = "soak-publish-token"
STREAMS = ["/numbers", "/clock", "/stream", "/channels/soak/events", "/api/v1/stats/stream"]


def proc_status(pid: int) -> dict[str, int]:
    return {"pid": pid, "rss_kib": rss_kib(pid) or 0, "fds": open_fds(pid)}


class Soak:
    def __init__(self, url: str, deadline: float, rng: random.Random) -> None:
        self.url = url
        self.deadline = deadline
        self.rng = rng
        self.statuses: Counter[str] = Counter()
        self.counts: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()

    def record(self, status: int) -> None:
        self.statuses[str(status)] += 1

    async def viewer(self, client: httpx.AsyncClient) -> None:
        while time.monotonic() < self.deadline:
            path = self.rng.choice(STREAMS)
            hold = self.rng.uniform(0.5, 8)
            try:
                async with asyncio.timeout(hold):
                    async with client.stream("GET", path) as response:
                        self.record(response.status_code)
                        async for _ in response.aiter_bytes():
                            pass
                self.counts["streams_ended_by_server"] += 1
            except TimeoutError:
                self.counts["streams_closed_by_client"] += 1
            except httpx.HTTPError as error:
                self.errors[type(error).__name__] += 1
                await asyncio.sleep(0.5)

    async def jobs(self, client: httpx.AsyncClient) -> None:
        while time.monotonic() < self.deadline:
            try:
                async with client.stream(
                    "GET", "/generate?amount=200&length=16&delay_ms=2"
                ) as response:
                    self.record(response.status_code)
                    text = "".join([chunk async for chunk in response.aiter_text()])
                if response.status_code == 200:
                    self.counts["jobs_done" if "event: done" in text else "jobs_incomplete"] += 1
            except httpx.HTTPError as error:
                self.errors[type(error).__name__] += 1
            await asyncio.sleep(self.rng.uniform(0.2, 1.0))

    async def writer(self, client: httpx.AsyncClient) -> None:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        n = 0
        while time.monotonic() < self.deadline:
            n += 1
            try:
                if n % 3 == 0:
                    response = await client.post(
                        "/chat", json={"message": f"soak {n}\nline", "user": "soak"}
                    )
                else:
                    response = await client.post(
                        "/channels/soak", json={"data": {"n": n}}, headers=auth
                    )
                self.record(response.status_code)
            except httpx.HTTPError as error:
                self.errors[type(error).__name__] += 1
            await asyncio.sleep(0.1)


async def stats(client: httpx.AsyncClient) -> dict[str, Any]:
    return (await client.get("/api/v1/stats")).json()["content"]  # type: ignore[no-any-return]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--viewers", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "bench" / "out" / "soak.json"))
    args = parser.parse_args()
    raise_nofile()

    workdir = Path(tempfile.mkdtemp(prefix="soak-"))
    # Append-only, so a restart keeps what it accepted.
    redis = RedisServer(workdir / "redis", durable=True)
    server = ServerProcess(
        workdir / "instance",
        {
            "QUART_BROKER_URL": redis.url,
            "QUART_PUBLISH_TOKEN": TOKEN,
            "QUART_SECRET_KEY": "soak-secret-" + "s" * 32,
            "QUART_SSE_MAX_AGE_S": "20",
            "QUART_MAX_STREAMS_PER_CLIENT": "10000",
            "QUART_MAX_JOBS_PER_SESSION": "1000",
        },
        workers=args.workers,
        args=["--access-logfile", "-"],
        log_path=workdir / "server.log",
    )
    url = server.url
    duration = args.minutes * 60
    samples: list[dict[str, Any]] = []
    try:
        await asyncio.to_thread(redis.start)
        await asyncio.to_thread(server.start, 30.0)
        limits = httpx.Limits(
            max_connections=args.viewers + 50, max_keepalive_connections=args.viewers + 50
        )
        async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
            workers = await asyncio.to_thread(server.worker_pids)
            start: dict[str, Any] = {
                "workers": [proc_status(p) for p in workers],
                "stats": await stats(client),
            }
            began = time.monotonic()
            soak = Soak(url, began + duration, random.Random(7))
            tasks = [asyncio.create_task(soak.viewer(client)) for _ in range(args.viewers)]
            tasks += [asyncio.create_task(soak.jobs(client)) for _ in range(4)]
            tasks += [asyncio.create_task(soak.writer(client)) for _ in range(2)]
            restarted = False
            while time.monotonic() < soak.deadline:
                await asyncio.sleep(min(10, max(0.1, soak.deadline - time.monotonic())))
                elapsed = time.monotonic() - began
                sample = {"t": round(elapsed), "workers": [proc_status(p) for p in workers]}
                try:
                    sample["open_streams"] = (await stats(client)).get("open_streams_total")
                except (httpx.HTTPError, KeyError, ValueError):
                    pass
                samples.append(sample)
                if not restarted and elapsed >= duration / 2:
                    restarted = True
                    await asyncio.to_thread(redis.kill)
                    await asyncio.sleep(3)
                    await asyncio.to_thread(redis.start)
                    soak.counts["redis_restarts"] += 1
            await asyncio.gather(*tasks, return_exceptions=True)
            # Polls the server over HTTP: nothing local to wait on.
            end_stats = await eventually(
                lambda: stats(client),
                lambda s: not s.get("open_streams_total", 0),
                timeout=60,
                interval=0.5,
            )
            await asyncio.sleep(2)
            end: dict[str, Any] = {
                "workers": [proc_status(p) for p in workers],
                "stats": await stats(client),
            }
        warm = next((s for s in samples if s["t"] >= min(120, duration / 4)), samples[0])
        fivexx = sum(
            n for status, n in soak.statuses.items() if status.startswith("5") and status != "503"
        )
        report = {
            "minutes": args.minutes,
            "workers": args.workers,
            "viewers": args.viewers,
            "statuses": dict(soak.statuses),
            "server_errors_5xx_excluding_503": fivexx,
            "counts": dict(soak.counts),
            "client_errors": dict(soak.errors),
            "start": start,
            "after_warmup": warm,
            "end": end,
            "left_open_streams": end_stats.get("open_streams_total"),
            "left_subscribers": end_stats.get("subscribers"),
            "tasks_start_end": [start["stats"].get("tasks"), end["stats"].get("tasks")],
            "samples": samples,
        }
        out = Path(args.out)
        await asyncio.to_thread(out.parent.mkdir, parents=True, exist_ok=True)
        await asyncio.to_thread(out.write_text, json.dumps(report, indent=2))
        summary = {k: v for k, v in report.items() if k != "samples"}
        print(json.dumps(summary, indent=2))
    finally:
        await asyncio.to_thread(server.stop, 20.0)
        await asyncio.to_thread(redis.kill)


if __name__ == "__main__":
    asyncio.run(main())
