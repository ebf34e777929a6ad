"""Jobs' memory: RSS of one worker running MAX_JOBS large jobs, watched, then replayed.

Two servers on the embedded broker, one after the other, the same jobs:

``storage``
    The product's default: a job keeps its last ``JOB_WINDOW`` events in
    memory, and a watcher from the start replays the rest from the result file.
``memory``
    ``JOB_WINDOW`` above the job's size: every event stays in memory until the
    job's TTL, as before the journal (the replay is served from memory).

For each: the serving process's RSS at rest, at its peak while the jobs run
and are watched, after they finished, and at its peak while every job is
replayed from its first event by one client per job; and the replay rate
(events/s).  ``python -m bench.jobmem [--jobs N --amount A --length L]``
prints the figures as JSON; :func:`run` returns them (``bench/scenarios.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from harness import ServerProcess
from harness.processes import rss_kib

SECRET = "bench-secret-key-not-for-production-0123456789abcdef"


class Peak:
    """The highest RSS of ``pid`` while it runs (sampled every 50 ms in a thread)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.kib = rss_kib(pid) or 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.kib = max(self.kib, rss_kib(self.pid) or 0)

    def __enter__(self) -> Peak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


async def drain(client: httpx.AsyncClient, url: str, headers: dict[str, str]) -> int:
    """Read a job's stream to its end; the number of events."""
    events = 0
    async with client.stream("GET", url, headers=headers) as response:
        assert response.status_code == 200, response.status_code
        async for line in response.aiter_lines():
            if line.startswith("id: "):
                events += 1
    return events


async def measure(mode: str, jobs: int, amount: int, length: int, base: Path) -> dict[str, Any]:
    env = {
        "QUART_SECRET_KEY": SECRET,
        "QUART_MAX_JOBS": str(jobs),
        "QUART_MAX_JOBS_PER_SESSION": str(jobs),
        "QUART_MAX_AMOUNT": str(max(amount, 1)),
        "QUART_MAX_LENGTH": str(max(length, 1)),
        "QUART_JOB_TTL_S": "3600",
        "QUART_JOB_ORPHAN_S": "3600",
        "QUART_GC_FULL_INTERVAL_S": "5",
    }
    if mode == "memory":
        env["QUART_JOB_WINDOW"] = str(amount + 2)
    server = ServerProcess(base / mode, env, workers=0).start()
    try:
        pid = server.pid
        figures: dict[str, Any] = {"mode": mode, "rss_start_kib": rss_kib(pid)}
        limits = httpx.Limits(max_connections=jobs * 2 + 4)
        async with httpx.AsyncClient(base_url=server.url, timeout=600, limits=limits) as client:
            started = []
            for _ in range(jobs):
                response = await client.post(
                    "/jobs", json={"amount": amount, "length": length, "delay_ms": 0}
                )
                assert response.status_code == 201, response.text
                started.append(response.json())
            with Peak(pid) as peak:
                t0 = time.perf_counter()
                counts = await asyncio.gather(
                    *(
                        drain(client, f"/jobs/{job['id']}/events?key={job['key']}", {})
                        for job in started
                    )
                )
                figures["watch_s"] = round(time.perf_counter() - t0, 2)
            assert all(count == amount + 1 for count in counts), counts
            figures["rss_watched_peak_kib"] = peak.kib
            await asyncio.sleep(6)  # a full collection (GC_FULL_INTERVAL_S) in between
            figures["rss_finished_kib"] = rss_kib(pid)
            with Peak(pid) as peak:
                t0 = time.perf_counter()
                counts = await asyncio.gather(
                    *(
                        drain(
                            client,
                            f"/jobs/{job['id']}/events?key={job['key']}",
                            {"Last-Event-ID": f"{job['id']}:0"},
                        )
                        for job in started
                    )
                )
                elapsed = time.perf_counter() - t0
            assert all(count == amount + 1 for count in counts), counts
            figures["rss_replay_peak_kib"] = peak.kib
            figures["replay_s"] = round(elapsed, 2)
            figures["replay_events_per_s"] = round(sum(counts) / elapsed)
            figures["rss_after_replay_kib"] = rss_kib(pid)
        return figures
    finally:
        server.stop()


def run(jobs: int, amount: int, length: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="jobmem-") as tmp:
        base = Path(tmp)
        results = {
            mode: asyncio.run(measure(mode, jobs, amount, length, base))
            for mode in ("storage", "memory")
        }
    storage, memory = results["storage"], results["memory"]
    return {
        "scenario": "jobmem",
        "jobs": jobs,
        "amount": amount,
        "length": length,
        "text_mb": round(jobs * amount * (length + 1) / 1e6, 1),
        **results,
        # > 1: replaying from the file is faster than from memory.
        "replay_rate_storage_over_memory": round(
            storage["replay_events_per_s"] / memory["replay_events_per_s"], 2
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--amount", type=int, default=20000)
    parser.add_argument("--length", type=int, default=1024)
    args = parser.parse_args()
    print(json.dumps(run(args.jobs, args.amount, args.length), indent=2))


if __name__ == "__main__":
    main()
