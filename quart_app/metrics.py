"""Application-wide statistics: counters, per-worker gauges, the stats stream, /metrics.

Two kinds of numbers, kept differently so that they add up across workers:

* **Counters** (events sent, jobs finished by status, stream ends by reason,
  broker reconnects, history records) grow in each process without any I/O
  and are added to the broker's shared counters (``Broker.incr``) once per
  ``STATS_INTERVAL_S``; page views go to ``incr`` directly.  A total is the
  broker's counter plus what this process has not flushed yet, so this
  process's own numbers are exact at once and another worker's are at most
  one interval late.  With Redis the totals live as long as Redis does.
* **Gauges** (open streams by kind, running jobs, subscribers per topic,
  presence connections) are true of one process only.  Each process publishes its own, with a
  timestamp, every interval (``set_record("stats:workers:<minute>", ...)``);
  a total sums this process's live values and the other workers' fresh
  snapshots (newer than three intervals).  A stopped worker drops out at
  once (it publishes an empty snapshot when it stops) or, if it was killed,
  after three intervals.  Keys rotate every minute so entries of dead
  workers expire with them.  Each worker also reports the members and
  connections (in every process: read from the broker) of its busiest presence
  channels; the dashboard lists the busiest of them all.

``/metrics`` renders the same totals in Prometheus' text format through a
collector of its own registry, not prometheus_client's multiprocess mode:
the numbers are already summed across workers (and hosts, with Redis), so
one scrape of any worker gives the whole picture and no shared directory is
needed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import secrets
import socket
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .brokers.base import (
    BrokerUnavailable,
    CloseReason,
    LocalTopic,
    Overflow,
    SubscriberTally,
    Subscription,
    make_message,
)
from .health import Delivery
from .jobs import TERMINAL, JobStatus
from .streams import CLOSE_REASONS, KINDS, Feed
from .tasks import cancel_and_wait

if TYPE_CHECKING:
    from .state import AppState

log = logging.getLogger("quart_app.metrics")

STREAM_KIND = "stats"
JOB_STATUSES = tuple(status.value for status in JobStatus if status in TERMINAL)
_BUCKET_S = 60
# Topics listed by name in the subscriber gauges; the others are summed by kind.
TOPICS_SHOWN = 100
# Presence channels the dashboard lists (the busiest, by members).
PRESENCE_SHOWN = 10
# Counting the tasks takes at most 1 / TASK_COUNT_SHARE of the time (0.01%).
TASK_COUNT_SHARE = 10_000


# Topics never listed by name: jobs (their ids are capabilities), the delivery probe's.
_UNLISTED = frozenset({"job", "health"})


def subscriber_gauges(tally: SubscriberTally, shown: int = TOPICS_SHOWN) -> dict[str, int]:
    """Subscribers by topic: the ``shown`` busiest by name, the rest summed per kind
    (``channel:(others)``), and every job topic under ``job``.

    What each worker shares every interval does not grow with the number of
    topics, totals per kind stay exact, and the work is O(shown), not O(topics).
    Job ids are capabilities (whoever knows one may cancel the job): never shown.
    """
    gauges: dict[str, int] = {}
    listed: Counter[str] = Counter()
    for topic, count in tally.busiest():
        if len(gauges) >= shown:
            break
        kind = tally.kind(topic)
        if kind in _UNLISTED:
            continue
        gauges[topic] = count
        listed[kind] += count
    for kind, total in tally.kinds.items():
        if kind == "health":
            continue  # the delivery probe's own subscription, not a client
        if kind == "job":
            gauges["job"] = total
        elif total > listed[kind]:
            gauges[f"{kind}:(others)" if kind else "(others)"] = total - listed[kind]
    return gauges


def presence_totals(workers: list[dict[str, Any]], shown: int = PRESENCE_SHOWN) -> dict[str, Any]:
    """Presence over every worker: its connections (each worker counts its own), the
    members of the presence channels the workers report (each reports the counts of its
    busiest ones, the same everywhere) and the ``shown`` busiest, by members."""
    connections = 0
    channels: dict[str, tuple[int, int]] = {}
    for gauges in workers:
        presence = gauges.get("presence")
        if not isinstance(presence, dict):
            continue
        connections += int(presence.get("connections", 0))
        for topic, counts in (presence.get("channels") or {}).items():
            members, conns = counts
            channels[str(topic)] = (int(members), int(conns))
    busiest = sorted(channels.items(), key=lambda item: (-item[1][0], -item[1][1], item[0]))
    return {
        "connections": connections,
        "members": sum(members for members, _ in channels.values()),
        "channels": [
            {"channel": topic.removeprefix("channel:"), "members": members, "connections": conns}
            for topic, (members, conns) in busiest[:shown]
        ],
    }


class Stats:
    """This process's counters and gauges, and the totals over every worker."""

    def __init__(self, state: AppState, *, interval_s: float, history: int) -> None:
        self.state = state
        self.broker = state.broker
        self.interval_s = interval_s
        self.history_len = history
        self.worker = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.jobs_by_status: Counter[str] = Counter()
        self._flushed: dict[str, int] = {}
        self._lock = asyncio.Lock()
        self._seq = 0
        self._tag = secrets.token_hex(3)
        self.topic = LocalTopic(STREAM_KIND, history)
        # (time, events sent, jobs finished) of recent stream ticks, for rates.
        # Room for a minute of ticks plus the extra ones a newcomer's wake-up causes.
        self._samples: deque[tuple[float, int, int]] = deque(
            maxlen=2 * math.ceil(60 / interval_s) + 8
        )
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_warning = -math.inf
        self._tasks = 0
        self._tasks_due = -math.inf

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="stats")

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        for sub in list(self.topic.subscribers):
            sub.close(CloseReason.CLOSED)
        try:
            await self.flush()
            # An empty snapshot: the others stop counting this worker at once.
            await self._publish_gauges({"t": 0})
        except Exception as error:
            log.warning("stats: last flush failed: %s", error)

    def job_finished(self, public: dict[str, Any]) -> None:
        """``JobRegistry.on_finish`` hook."""
        self.jobs_by_status[str(public.get("status"))] += 1

    # -- local numbers -----------------------------------------------------------

    def local_counters(self) -> dict[str, int]:
        state = self.state
        counters = {
            "events_sent": state.hub.events_sent,
            "broker_reconnects": int(getattr(state.broker, "reconnects", 0)),
        }
        for status, count in self.jobs_by_status.items():
            counters[f"jobs_finished:{status}"] = count
        for reason, count in state.hub.closes.items():
            counters[f"stream_closes:{reason}"] = count
        history = state.history
        if history is not None:
            counters["history_written"] = history.written
            counters["history_dropped"] = history.dropped
            counters["history_failed"] = history.failed
            counters["history_pruned"] = history.pruned
        return counters

    def _task_count(self) -> int:
        """asyncio tasks alive here.

        Counting walks every task: about 12 ms at 20,000 streams, a pause that every
        stream feels.  So it runs at most every ten intervals, and no more often
        than keeps it under 0.01% of the time (every 2 minutes at that size).
        """
        now = time.monotonic()
        if now >= self._tasks_due:
            started = time.perf_counter()
            self._tasks = len(asyncio.all_tasks())
            spent = time.perf_counter() - started
            self._tasks_due = now + max(10 * self.interval_s, spent * TASK_COUNT_SHARE)
        return self._tasks

    async def presence_gauges(self) -> dict[str, Any]:
        """This process's presence connections, and the members and connections (in
        every process) of its busiest presence topics: ``{topic: [members, conns]}``."""
        presence = self.state.presence
        if presence is None:
            return {"connections": 0, "channels": {}}
        try:
            busiest = await presence.busiest()
        except BrokerUnavailable:
            busiest = []
        return {
            "connections": presence.connections(),
            "channels": {topic: [members, conns] for topic, members, conns in busiest},
        }

    def local_gauges(self) -> dict[str, Any]:
        state = self.state
        open_streams = state.hub.counts()
        open_streams.setdefault(STREAM_KIND, 0)
        subscribers = subscriber_gauges(state.broker.subscribers)
        history = state.history
        return {
            "t": time.time(),
            "open_streams": open_streams,
            "running_jobs": state.jobs.running(),
            "subscribers": subscribers,
            "ticker_running": bool(state.ticker is not None and state.ticker.running),
            "history_queued": history.queued if history is not None else 0,
            "tasks": self._task_count(),
        }

    # -- sharing them ------------------------------------------------------------

    async def flush(self) -> None:
        """Add what this process counted since the last flush to the shared counters."""
        async with self._lock:
            for key, value in self.local_counters().items():
                delta = value - self._flushed.get(key, 0)
                if delta:
                    await self.broker.incr(key, delta)
                    self._flushed[key] = value

    def _bucket_key(self, bucket: int) -> str:
        return f"stats:workers:{bucket}"

    async def _publish_gauges(self, gauges: dict[str, Any]) -> None:
        bucket = int(time.time() // _BUCKET_S)
        await self.broker.set_record(
            self._bucket_key(bucket), {self.worker: json.dumps(gauges)}, 2 * _BUCKET_S + 10
        )

    async def _other_workers(self) -> list[dict[str, Any]]:
        now = time.time()
        bucket = int(now // _BUCKET_S)
        newest: dict[str, dict[str, Any]] = {}
        for key in (self._bucket_key(bucket - 1), self._bucket_key(bucket)):
            for worker, text in ((await self.broker.get_record(key)) or {}).items():
                if worker == self.worker:
                    continue
                try:
                    gauges = json.loads(text)
                except ValueError:
                    continue
                if (
                    isinstance(gauges, dict)
                    and now - float(gauges.get("t", 0)) <= 3 * self.interval_s
                ):
                    newest[worker] = gauges  # the newer bucket is read last and wins
        return list(newest.values())

    async def snapshot(self, local: dict[str, Any] | None = None) -> dict[str, Any]:
        """The application-wide numbers (``GET /api/v1/stats``); ``local``: this
        process's gauges if the caller has them already."""
        async with self._lock:
            shared = await self.broker.counters()
            for key, value in self.local_counters().items():
                shared[key] = shared.get(key, 0) + value - self._flushed.get(key, 0)
        if local is None:
            local = {**self.local_gauges(), "presence": await self.presence_gauges()}
        workers = [local, *await self._other_workers()]
        open_streams: Counter[str] = Counter(dict.fromkeys((*KINDS, STREAM_KIND), 0))
        subscribers: Counter[str] = Counter()
        for gauges in workers:
            open_streams.update(gauges.get("open_streams", {}))
            subscribers.update(gauges.get("subscribers", {}))
        jobs_by_status = {s: shared.get(f"jobs_finished:{s}", 0) for s in JOB_STATUSES}
        for key, value in shared.items():
            if key.startswith("jobs_finished:"):
                jobs_by_status[key.partition(":")[2]] = value
        closes: dict[str, int] = {
            r.value: shared.get(f"stream_closes:{r}", 0) for r in CLOSE_REASONS
        }
        for key, value in shared.items():
            if key.startswith("stream_closes:"):
                closes[key.partition(":")[2]] = value
        history = self.state.history
        return {
            "time": time.time(),
            "presence": presence_totals(workers),
            "workers": len(workers),
            "open_streams": dict(open_streams),
            "open_streams_total": sum(open_streams.values()),
            "running_jobs": sum(int(g.get("running_jobs", 0)) for g in workers),
            "jobs_finished": sum(jobs_by_status.values()),
            "jobs_by_status": jobs_by_status,
            "events_sent": shared.get("events_sent", 0),
            "page_views": shared.get("page_views", 0),
            "subscribers": {k: v for k, v in sorted(subscribers.items()) if v},
            "ticker_running": any(g.get("ticker_running") for g in workers),
            "stream_disconnects": closes,
            "subscriber_drops": closes.get("overflow", 0),
            "broker_reconnects": shared.get("broker_reconnects", 0),
            "tasks": sum(int(g.get("tasks", 0)) for g in workers),
            "history": {
                "backend": history.backend if history is not None else "none",
                "ready": bool(history is not None and history.ready),
                "queued": sum(int(g.get("history_queued", 0)) for g in workers),
                "written": shared.get("history_written", 0),
                "dropped": shared.get("history_dropped", 0),
                "failed": shared.get("history_failed", 0),
                "pruned": shared.get("history_pruned", 0),
            },
        }

    # -- the stats stream --------------------------------------------------------

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[Subscription]:
        """Live stats, preceded by the recent ones; a slow reader skips ahead."""
        sub = self.topic.attach(
            None, backlog=self.history_len, max_lag=self.history_len, overflow=Overflow.DROP_OLDEST
        )
        try:
            yield sub
        finally:
            sub.close(CloseReason.UNSUBSCRIBED)

    def feed(self) -> Feed:
        return Feed(self.subscribe(), kind=STREAM_KIND, on_open=self.joined)

    def joined(self, _sub: Subscription | None = None) -> None:
        # A newcomer with nothing to show gets a first event now, not in a second.
        if len(self.topic.history) == 0:
            self._wake.set()

    async def sample(self, local: dict[str, Any] | None = None) -> dict[str, Any]:
        """The totals now, with the rates the stream shows (events per second, jobs per minute)."""
        snapshot = await self.snapshot(local)
        now = snapshot["time"]
        events, jobs = snapshot["events_sent"], snapshot["jobs_finished"]
        events_per_s = 0.0
        if self._samples:
            then, events_then, _ = self._samples[-1]
            if now > then:
                events_per_s = max(0.0, (events - events_then) / (now - then))
        self._samples.append((now, events, jobs))
        window = [s for s in self._samples if now - s[0] <= 60.0 + self.interval_s / 2]
        jobs_per_min = max(0, jobs - window[0][2]) if window else 0
        return {**snapshot, "events_per_s": round(events_per_s, 3), "jobs_per_min": jobs_per_min}

    def publish_event(self, payload: dict[str, Any]) -> None:
        self._seq += 1
        # Ids unique across processes and restarts, so clients never mistake
        # one worker's events for another's; the stream is not resumable.
        message = make_message(self._seq, json.dumps(payload), None, f"{self._tag}.{self._seq}")
        self.topic.add([message])

    # -- the loop ----------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            try:
                await self.flush()
                gauges = self.local_gauges()
                gauges["presence"] = await self.presence_gauges()
                await self._publish_gauges(gauges)
                # Sampled even when nobody watches, so that "jobs in the last
                # minute" is right from a dashboard's first event.
                payload = await self.sample(gauges)
                if self.topic.subscribers:
                    self.publish_event(payload)
                elif len(self.topic.history):
                    # Nobody watches: forget, so a later dashboard does not
                    # start with a stale stretch.
                    self.topic = LocalTopic(STREAM_KIND, self.history_len, self._seq + 1)
            except BrokerUnavailable as error:
                self._warn(f"stats: broker unavailable: {error}")
            except Exception:
                log.exception("stats: tick failed")
            next_at += self.interval_s
            now = loop.time()
            if next_at < now:
                next_at = now + self.interval_s
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), next_at - now)
            except TimeoutError:
                pass

    def _warn(self, message: str) -> None:
        now = time.monotonic()
        if now - self._last_warning >= 60.0:
            self._last_warning = now
            log.warning(message)


# -- Prometheus ------------------------------------------------------------------


class _SnapshotCollector(Collector):
    def __init__(
        self, snapshot: dict[str, Any], broker_up: bool, delivery: Delivery | None = None
    ) -> None:
        self.snapshot = snapshot
        self.broker_up = broker_up
        self.delivery = delivery

    def collect(self) -> Iterator[Metric]:
        s = self.snapshot
        streams = GaugeMetricFamily(
            "quart_app_open_streams", "Open SSE streams, by kind.", labels=["kind"]
        )
        for kind, count in sorted(s["open_streams"].items()):
            streams.add_metric([kind], count)
        yield streams
        yield CounterMetricFamily(
            "quart_app_events_sent", "SSE events written to clients.", value=s["events_sent"]
        )
        yield CounterMetricFamily(
            "quart_app_subscriber_queue_drops",
            "Subscribers disconnected because they fell behind their queue bound "
            "(they resume with Last-Event-ID).",
            value=s["subscriber_drops"],
        )
        ends = CounterMetricFamily(
            "quart_app_stream_disconnects",
            "Streams ended, by reason: "
            + "; ".join(f"{reason} ({reason.meaning})" for reason in CLOSE_REASONS)
            + ".",
            labels=["reason"],
        )
        for reason, count in sorted(s["stream_disconnects"].items()):
            ends.add_metric([reason], count)
        yield ends
        yield GaugeMetricFamily(
            "quart_app_jobs_running", "Jobs running now.", value=s["running_jobs"]
        )
        finished = CounterMetricFamily(
            "quart_app_jobs_finished", "Jobs finished, by status.", labels=["status"]
        )
        for status, count in sorted(s["jobs_by_status"].items()):
            finished.add_metric([status], count)
        yield finished
        yield CounterMetricFamily(
            "quart_app_page_views", "HTML pages served.", value=s["page_views"]
        )
        yield CounterMetricFamily(
            "quart_app_broker_reconnects",
            "Times a broker connection was restored.",
            value=s["broker_reconnects"],
        )
        yield GaugeMetricFamily(
            "quart_app_broker_up", "1 if the broker answers.", value=int(self.broker_up)
        )
        delivery = self.delivery
        if delivery is not None:
            # This process's own (the worker that answers), not summed over workers.
            yield GaugeMetricFamily(
                "quart_app_delivery_up",
                "1 if this process's last canary came back through the broker in time.",
                value=int(delivery.ok),
            )
            yield GaugeMetricFamily(
                "quart_app_delivery_round_trip_seconds",
                "The last canary's way through the broker and back (publish, follow, fan-out).",
                value=delivery.round_trip_s if delivery.round_trip_s is not None else math.nan,
            )
            yield GaugeMetricFamily(
                "quart_app_delivery_waiting_seconds",
                "How long the oldest canary not yet back has waited: how far behind "
                "following is (0 when none waits).",
                value=delivery.waiting_s,
            )
        history = s["history"]
        yield GaugeMetricFamily(
            "quart_app_history_queue_depth",
            "Records waiting for the history writer.",
            value=history["queued"],
        )
        records = CounterMetricFamily(
            "quart_app_history_records", "History records, by outcome.", labels=["outcome"]
        )
        for outcome in ("written", "dropped", "failed", "pruned"):
            records.add_metric([outcome], history[outcome])
        yield records
        yield GaugeMetricFamily(
            "quart_app_workers", "Worker processes reporting.", value=s["workers"]
        )
        presence = s["presence"]
        yield GaugeMetricFamily(
            "quart_app_presence_members",
            "Members of presence channels and of the chat, each once per channel however "
            "many connections (summed over the busiest channels of each worker).",
            value=presence["members"],
        )
        yield GaugeMetricFamily(
            "quart_app_presence_connections",
            "Open presence connections (subscriptions of presence channels, and chat "
            "streams with presence), in every worker.",
            value=presence["connections"],
        )


def render_prometheus(
    snapshot: dict[str, Any], *, broker_up: bool, delivery: Delivery | None = None
) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SnapshotCollector(snapshot, broker_up, delivery))
    return generate_latest(registry)


def init_app(state: AppState, config: Any) -> Stats:
    stats = Stats(state, interval_s=config["STATS_INTERVAL_S"], history=config["STATS_HISTORY"])
    state.jobs.on_finish.append(stats.job_finished)
    return stats
