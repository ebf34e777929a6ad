"""A partition that isolates one host: real separate hosts in network namespaces.

Host A runs in a network namespace of its own (``harness.netns``), joined to this
machine by a veth pair; host B and ``redis-server`` run here.  ``tc netem`` drops
every packet on the pair, both ways: A cannot reach Redis, its clients cannot reach
A, and nobody gets an error or a reset (its TCP connections stay open and deliver
what they held once the partition heals).  What must hold (SPEC §4, §9):

* B takes A's job over once A's lease lapses, and it ends with every index once;
* what A sent before it knew it was cut off never lands after B's writes (its
  publishes are fenced by the lease in Redis), so the stream, every result and what
  watchers got agree;
* when the partition heals, A answers for the job as the broker does, and a
  subscriber that was on A resumes on B with nothing lost and nothing twice.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import aconnect_sse

from harness import HOST, RedisServer, ServerProcess
from harness.netns import Namespace, available
from harness.polling import eventually

TOKEN = "partition-test-publish-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not available(), reason="network namespaces need CAP_SYS_ADMIN"),
]


def env(broker_url: str) -> dict[str, str]:
    return {
        "QUART_BROKER_URL": broker_url,
        "QUART_PUBLISH_TOKEN": TOKEN,
        "QUART_MAX_JOBS_PER_SESSION": "100",
    }


async def test_a_partitioned_host_loses_its_job_to_the_other_and_nothing_else(
    tmp_path: Path, server_factory: Any
) -> None:
    with Namespace() as ns:
        redis = RedisServer(
            tmp_path / "redis", options=["--bind", HOST, ns.outer, "--protected-mode", "no"]
        ).start()
        try:
            a: ServerProcess = server_factory(
                env(f"redis://{ns.outer}:{redis.port}/0"),
                workers=0,
                host=ns.inner,
                prefix=ns.prefix,
            )
            b: ServerProcess = server_factory(env(redis.url), workers=0)
            async with httpx.AsyncClient(timeout=20) as http:
                created = await http.post(
                    f"{a.url}/jobs", json={"amount": 150, "length": 8, "delay_ms": 30}
                )
                assert created.status_code == 201
                job_id, key = created.json()["id"], {"X-Job-Key": created.json()["key"]}
                watched: list[tuple[int, str]] = []
                received: list[str] = []
                opened = asyncio.Event()

                async def watch() -> None:
                    url = f"{b.url}/jobs/{job_id}/events"
                    async with aconnect_sse(http, "GET", url, headers=key, timeout=60) as source:
                        async for sse in source.aiter_sse():
                            if sse.event == "done":
                                return
                            if sse.event == "message" and sse.data:
                                event = json.loads(sse.data)
                                watched.append((event["index"], event["generated_string"]))

                async def subscribe_on_a() -> None:
                    url = f"{a.url}/channels/news/events"
                    async with aconnect_sse(http, "GET", url, timeout=60) as source:
                        opened.set()
                        async for sse in source.aiter_sse():
                            if sse.data:
                                received.append(sse.id)

                watcher = asyncio.create_task(watch())
                subscriber = asyncio.create_task(subscribe_on_a())
                await asyncio.wait_for(opened.wait(), 10)
                ids = []
                for n in range(3):
                    published = await http.post(
                        f"{b.url}/channels/news", json={"data": n}, headers=AUTH
                    )
                    ids.append(published.json()["id"])
                await eventually(lambda: len(received) == 3, timeout=10)
                await eventually(
                    lambda: http.get(f"{a.url}/jobs/{job_id}", headers=key),
                    lambda r: r.json()["produced"] >= 10,
                    timeout=10,
                )

                ns.partition()
                # B takes the job over (A's lease lapses: 3 s) and finishes it; the
                # channel goes on without A.
                for n in range(3, 6):
                    published = await http.post(
                        f"{b.url}/channels/news", json={"data": n}, headers=AUTH
                    )
                    assert published.status_code == 202
                    ids.append(published.json()["id"])
                await asyncio.wait_for(watcher, 60)
                assert len(received) == 3  # nothing reached A

                ns.heal()
                # A learns it lost the job: it answers as the broker does.
                state = await eventually(
                    lambda: http.get(f"{a.url}/jobs/{job_id}", headers=key),
                    lambda r: r.status_code == 200 and r.json()["status"] == "done",
                    timeout=30,
                )
                assert state.json()["produced"] == 150
                results = {
                    host.url: (await http.get(f"{host.url}/jobs/{job_id}/result", headers=key)).text
                    for host in (a, b)
                }
                # The subscriber that was on A resumes on B after its last id.
                subscriber.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await subscriber
                resumed: list[str] = []
                headers = {"Last-Event-ID": received[-1]}
                async with aconnect_sse(
                    http, "GET", f"{b.url}/channels/news/events", headers=headers, timeout=20
                ) as source:
                    async for sse in source.aiter_sse():
                        assert sse.event != "gap"
                        if sse.data:
                            resumed.append(sse.id)
                        if len(resumed) == 3:
                            break
        finally:
            redis.stop()
    assert [index for index, _ in watched] == list(range(1, 151))  # each once, in order
    streamed = [text for _, text in watched]
    for url, text in results.items():
        assert text.splitlines() == streamed, url
    assert received + resumed == ids
