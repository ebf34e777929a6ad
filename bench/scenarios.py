"""The benchmark scenarios: which servers run, pinned where, and what the client does to them.

Every scenario runs the load client (``bench/client.py``, pinned to the client
CPU) against a fresh server process (pinned to the server CPU) started by the
shared process harness (``harness/``), and returns the client's JSON result
with the CPU that other processes used meanwhile.  ``run_all`` runs a :class:`Plan`.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis import RedisError

from harness import HOST, PRODUCT_APP, RedisCluster, RedisServer, ServerProcess, free_port
from harness.processes import cmdline, cpu_s, machine_busy_s

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
TOKEN = "bench-publish-token"
SECRET = "bench-secret-key-not-for-production-0123456789abcdef"
SERVER_CPU = "0"
CLIENT_CPU = "1"
BASELINE_APP = str(BENCH / "baseline_app.py") + ":app"
# The servers of the main table, all in one run: the product on each server the
# harness knows (Hypercorn, the default; Granian; uvicorn with uvloop and
# httptools, for reference) and the baseline, bare Quart on Hypercorn.
KINDS = ("product", "product-granian", "product-uvicorn", "baseline")
# What each kind serves, and on which server ("ceiling" is its own command).
SERVED = {
    "product": (PRODUCT_APP, "hypercorn"),
    "product-granian": (PRODUCT_APP, "granian"),
    "product-uvicorn": (PRODUCT_APP, "uvicorn"),
    "baseline": (BASELINE_APP, "hypercorn"),
    "ceiling": (BASELINE_APP, "hypercorn"),
}
SCENARIOS = ["hold", "fanout", "generate", "ceiling", "scaleout", "storm", "topics", "jobmem"]
# The brokers the storm and topic scenarios run on: the default, one
# redis-server, and a local 3-master Redis Cluster (``redis+cluster://``).
BROKERS = ("memory", "redis", "cluster")
QUIET_WAIT_S = 15.0
NICE = -10  # priority of servers and client (lower is more), when allowed; 0: leave it
# Every benchmark client comes from one address (127.0.0.1) and one session: lift
# the product's abuse limits (open streams per client address, jobs per session
# and per process), which are not capacity.
LIMITS_LIFTED = {
    "QUART_MAX_STREAMS_PER_CLIENT": "100000",
    "QUART_MAX_STREAMS": "100000",
    "QUART_MAX_JOBS": "512",
    "QUART_MAX_JOBS_PER_SESSION": "512",
}
# Storms and topics use up to 10,000 channels at once, the default MAX_CHANNELS.
CHANNELS_LIFTED = {"QUART_MAX_CHANNELS": "100000"}
# The topic scenario measures what a publish costs: heartbeats (a per-connection
# cost, measured by ``hold``) are spaced out so that they do not land in its window.
QUIET_STREAMS = {"QUART_SSE_HEARTBEAT_S": "600", "QUART_SSE_MAX_AGE_S": "3600"}
# A diagnostic run: the statistics gauges (subscribers per topic, every second by
# default) spaced out too.
STATS_SPACED = {"QUART_STATS_INTERVAL_S": "600"}


@dataclass
class Plan:
    hold_ns: list[int]
    hold_s: float
    fan_n: int
    publishes: int
    gen_n: int
    gen_amount: int
    gen_length: int
    scaleout_n: int
    # Storms: N subscribes in one burst (on N channels, and on one), then publishes.
    storm_n: int = 10000
    storm_one_publishes: int = 20
    storm_brokers: tuple[str, ...] = BROKERS
    # Topics: K channels with one subscriber each, P publishes at a steady rate.
    topic_ks: tuple[int, ...] = (10, 1000, 10000)
    topic_publishes: int = 2500
    topic_rate: float = 250.0
    # Each (K, broker) this many times (a block per broker each time); the median run.
    topic_repeats: int = 5
    topic_brokers: tuple[str, ...] = BROKERS
    # Jobs' memory (0: the product's MAX_JOBS, MAX_AMOUNT and MAX_LENGTH).
    jobmem_jobs: int = 0
    jobmem_amount: int = 0
    jobmem_length: int = 0
    quick: bool = False
    # Wait (at most this long) for a quiet machine before each run; 0: do not wait.
    quiet_wait_s: float = QUIET_WAIT_S
    scenarios: list[str] = field(default_factory=lambda: list(SCENARIOS))
    # The servers that hold, fan-out and generate run against (``bench/run --kind``).
    kinds: tuple[str, ...] = KINDS


FULL = Plan(
    hold_ns=[1000, 5000, 10000],
    hold_s=20.0,
    fan_n=5000,
    publishes=20,
    gen_n=100,
    gen_amount=2000,
    gen_length=32,
    scaleout_n=10000,
)
QUICK = Plan(
    hold_ns=[200, 1000],
    hold_s=5.0,
    fan_n=500,
    publishes=5,
    gen_n=20,
    gen_amount=500,
    gen_length=32,
    scaleout_n=1000,
    storm_n=2000,
    topic_ks=(10, 1000),
    topic_publishes=1000,
    topic_repeats=1,
    jobmem_jobs=8,
    jobmem_amount=20000,
    jobmem_length=256,
    quick=True,
)
# Every scenario at a tiny scale, without waiting for a quiet machine: proves the
# whole run works (servers, client, Redis, report, chart), measures nothing.
SMOKE = Plan(
    hold_ns=[20],
    hold_s=1.0,
    fan_n=20,
    publishes=2,
    gen_n=2,
    gen_amount=50,
    gen_length=8,
    scaleout_n=20,
    # The storm at the CI scale of the storm tests (a couple of thousand at once).
    storm_n=2000,
    storm_one_publishes=3,
    topic_ks=(10, 100),
    topic_publishes=60,
    topic_rate=100.0,
    topic_repeats=1,
    jobmem_jobs=2,
    jobmem_amount=500,
    jobmem_length=64,
    quick=True,
    quiet_wait_s=0.0,
)


@dataclass
class Bench:
    """Where a run works (``workdir``), and which product it serves: the working
    tree, or an export of one revision (``serve_root``, ``bench/run --at REV``)."""

    workdir: Path
    serve_root: Path = ROOT
    product_at: str = "working tree"

    def revision(self) -> str:
        """The commit the product was measured at, and whether its files had changes."""
        if self.product_at != "working tree":
            return self.product_at
        try:
            head = git("rev-parse", "--short", "HEAD")
            dirty = git("status", "--porcelain", "--", "quart_app", "hypercorn.toml")
        except (OSError, subprocess.CalledProcessError):
            return "unknown (not a git checkout)"
        return f"{head} (with uncommitted changes to the product)" if dirty else head


def git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# The machine: pinning, priority, quiet
# --------------------------------------------------------------------------


def nice_prefix() -> list[str]:
    """``nice -n NICE`` when this user may raise priority, so other processes on a
    shared machine disturb the measurements less; nothing otherwise."""
    if not NICE or shutil.which("nice") is None:
        return []
    probe = subprocess.run(["nice", "-n", str(NICE), "nice"], capture_output=True, text=True)
    if probe.returncode != 0 or probe.stderr or probe.stdout.strip() != str(NICE):
        return []
    return ["nice", "-n", str(NICE)]


_NICE_PREFIX: list[str] | None = None


def pinned(cpu: str, argv: list[str] | None = None) -> list[str]:
    """``argv`` pinned to ``cpu`` (``taskset``, when there are two cores or more)
    at raised priority (``nice``) when allowed.  Both exec in place."""
    global _NICE_PREFIX
    if _NICE_PREFIX is None:
        _NICE_PREFIX = nice_prefix()
    if shutil.which("taskset") and (os.cpu_count() or 1) >= 2:
        return [*_NICE_PREFIX, "taskset", "-c", cpu, *(argv or [])]
    return [*_NICE_PREFIX, *(argv or [])]


def wait_quiet(limit_s: float, threshold: float = 0.25) -> float:
    """Wait (at most ``limit_s``) until other processes use under ``threshold`` of a
    core; returns what they used in the last one-second sample."""
    if limit_s <= 0:
        return 0.0
    deadline = time.monotonic() + limit_s
    while True:
        before = machine_busy_s()
        time.sleep(1.0)
        busy = machine_busy_s() - before
        if busy < threshold or time.monotonic() >= deadline:
            if busy >= threshold:
                log(f"machine still busy ({busy:.2f} cores used by other processes): going on")
            return busy
        log(f"waiting for a quiet machine ({busy:.2f} cores busy elsewhere)")
        time.sleep(2.0)


# --------------------------------------------------------------------------
# Servers and the client
# --------------------------------------------------------------------------


def server(
    bench: Bench,
    kind: str,
    *,
    workers: int | None = None,
    env: dict[str, str] | None = None,
    server: str | None = None,
) -> ServerProcess:
    """A server of ``kind`` (one of ``SERVED``: product, product-granian,
    product-uvicorn, baseline or ceiling) pinned to the server CPU; ``server``
    (hypercorn, granian, uvicorn) overrides the one the kind names."""
    if kind not in SERVED:
        raise ValueError(f"unknown server kind {kind!r}")
    app, served_by = SERVED[kind]
    port = free_port()
    command = None
    if kind == "ceiling":
        command = [
            sys.executable,
            str(BENCH / "ceiling_server.py"),
            "--port",
            str(port),
            "--token",
            TOKEN,
        ]
    return ServerProcess(
        bench.workdir / f"instance-{port}",
        {"QUART_PUBLISH_TOKEN": TOKEN, "QUART_SECRET_KEY": SECRET, **LIMITS_LIFTED, **(env or {})},
        workers=workers,
        port=port,
        app=app,
        root=bench.serve_root,
        prefix=pinned(SERVER_CPU),
        command=command,
        log_path=bench.workdir / f"{kind}-{port}.log",
        server=server or served_by,
    )


_server = server  # for ``running``, whose ``server`` argument shadows it


def server_commands(bench: Bench, kinds: Sequence[str]) -> dict[str, str]:
    """How each kind of server is started (its command line, the port as ``PORT``,
    without the pinning prefix), for the report."""
    commands = {}
    for kind in kinds:
        srv = server(bench, kind)
        argv = srv.argv()[len(srv.prefix) :]
        port = str(srv.port)
        argv = ["PORT" if arg == port else arg.replace(f":{port}", ":PORT") for arg in argv]
        argv[0] = "python" if argv[0] == sys.executable else argv[0]
        commands[kind] = " ".join(arg.replace(str(ROOT) + "/", "") for arg in argv)
    return commands


@contextmanager
def running(
    bench: Bench,
    kind: str,
    *,
    workers: int | None = None,
    env: dict[str, str] | None = None,
    server: str | None = None,
) -> Iterator[ServerProcess]:
    """A started server of ``kind``, stopped (workers included) on the way out."""
    srv = _server(bench, kind, workers=workers, env=env, server=server)
    srv.start(timeout=30.0)  # stops it again if it does not come up
    try:
        srv.worker_pids()
        time.sleep(0.5)  # let start-up allocations settle before "RSS before"
        yield srv
    finally:
        srv.stop(grace=20.0)


def run_client(
    scenario: str,
    srv: ServerProcess,
    label: str,
    args: list[str],
    budget: float,
    measure: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Run one client scenario against ``srv``.  The client measures the CPU of
    the first worker (``cpu.server_cpu_s``) and, when there are several, of every
    worker (``cpu.named_cpu_s["worker-1"]``, ...), plus the ``measure`` processes
    (name -> pid), over the same window."""
    workers = srv.worker_pids()
    named = dict(measure or {})
    if len(workers) > 1:
        for index, pid in enumerate(workers, 1):
            named[f"worker-{index}"] = pid
    argv = [
        sys.executable,
        str(BENCH / "client.py"),
        scenario,
        "--port",
        str(srv.port),
        "--label",
        label,
        "--rss-pid",
        str(workers[0]),
        "--budget",
        str(budget),
        *[arg for name, pid in named.items() for arg in ("--cpu-pid", f"{name}={pid}")],
        *args,
    ]
    load = Path("/proc/loadavg").read_text().split()[0] if Path("/proc/loadavg").exists() else "?"
    log(f"{scenario} {label}: {' '.join(args)} (load {load})")
    busy_before = machine_busy_s()
    # The server's own processes: its workers and what it uses (redis-server).
    own_pids = set(workers) | set(named.values())
    server_before = sum(cpu_s(pid) or 0.0 for pid in own_pids)
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall_before = time.monotonic()
    try:
        done = subprocess.run(
            pinned(CLIENT_CPU, argv),
            cwd=ROOT,
            capture_output=True,
            timeout=budget + 30,
            env={**os.environ, "BENCH_PRODUCT_ROOT": str(srv.root)},
        )
    except subprocess.TimeoutExpired:
        return {"scenario": scenario, "label": label, "error": "client timed out"}
    wall = time.monotonic() - wall_before
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = (
        sum(cpu_s(pid) or 0.0 for pid in own_pids)
        - server_before
        + children_after.ru_utime
        + children_after.ru_stime
        - children_before.ru_utime
        - children_before.ru_stime
    )
    other = max(0.0, machine_busy_s() - busy_before - own)
    lines = [line for line in done.stdout.decode().splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        return {
            "scenario": scenario,
            "label": label,
            "error": f"client failed ({done.returncode}): {done.stderr.decode()[-2000:]}",
        }
    result: dict[str, Any] = json.loads(lines[-1])
    result["loadavg_before"] = load
    # CPU that processes other than this server and client used meanwhile
    # (in cores, averaged over the client's run): noise from a shared machine.
    result["other_cpu_cores"] = round(other / wall, 3) if wall > 0 else None
    result["server_workers"] = len(workers)
    log(f"  -> {headline(result)}")
    return result


def headline(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"ERROR {r['error'][:200]}"
    cpu = r.get("cpu", {})
    if r["scenario"] == "hold":
        return (
            f"connected {r['connected']}/{r['n']} all-ticks {r['streams_all_ticks']} "
            f"rss/stream {r['rss_per_stream_kib']} KiB p50 {r['latency']['p50_ms']} "
            f"p99 {r['latency']['p99_ms']} ms client cpu {cpu.get('client_cpu_util')}"
        )
    if r["scenario"] == "storm":
        return (
            f"served {r['served']}/{r['n']} ({r['mode']}) 5xx {r['status_5xx']} all served in "
            f"{r['all_served_s']} s, placed {r['placed']}; deliveries {r['deliveries']}/"
            f"{r['deliveries_expected']} client cpu {cpu.get('client_cpu_util')}"
        )
    if r["scenario"] == "jobmem":
        return (
            f"watched {r['watched']['complete']}/{r['n']} peak RSS "
            f"{r['rss_peak_watched_kib']} KiB, after {r['rss_after_watched_kib']} KiB; replayed "
            f"{r['replayed']['complete']}/{r['n']} at {r['replayed']['events_per_s']} events/s, "
            f"peak RSS {r['rss_peak_replayed_kib']} KiB"
        )
    if r["scenario"] == "topics":
        per = cpu.get("server_cpu_s")
        return (
            f"K={r['topics']} via {r['via']}: deliveries {r['deliveries']}/"
            f"{r['deliveries_expected']} server cpu {per} s "
            f"({None if per is None else round(1e6 * per / r['publishes'], 1)} µs/publish) "
            f"p99 {r['latency']['p99_ms']} ms"
        )
    if r["scenario"] in ("fanout", "scaleout"):
        return (
            f"deliveries {r['deliveries']}/{r['deliveries_expected']} p50 "
            f"{r['latency']['p50_ms']} p99 {r['latency']['p99_ms']} makespan p50 "
            f"{r['makespan']['p50_ms']} ms client cpu {cpu.get('client_cpu_util')}"
        )
    return (
        f"complete {r['complete']}/{r['n']} {r['events_per_s']} events/s "
        f"client cpu {cpu.get('client_cpu_util')}"
    )


# --------------------------------------------------------------------------
# Scenarios
# --------------------------------------------------------------------------


def hold_args(plan: Plan, n: int) -> list[str]:
    return ["--n", str(n), "--duration", str(plan.hold_s)]


def fanout_args(plan: Plan, n: int) -> list[str]:
    return ["--n", str(n), "--publishes", str(plan.publishes), "--token", TOKEN]


def generate_args(plan: Plan) -> list[str]:
    return [
        "--n",
        str(plan.gen_n),
        "--amount",
        str(plan.gen_amount),
        "--length",
        str(plan.gen_length),
    ]


def budget_for(plan: Plan, scenario: str, n: int = 0) -> float:
    if scenario == "hold":
        return plan.hold_s + 120 + n / 100
    if scenario in ("fanout", "scaleout"):
        return 60 + plan.publishes * 12 + n / 100
    return 240


def run_pair(
    bench: Bench,
    plan: Plan,
    scenario: str,
    args: list[str],
    budget: float,
    kinds: tuple[str, ...] = KINDS,
) -> dict[str, dict[str, Any]]:
    """One scenario against each kind of server, each on a fresh process."""
    out = {}
    for kind in kinds:
        wait_quiet(plan.quiet_wait_s)
        try:
            with running(bench, kind) as srv:
                out[kind] = run_client(scenario, srv, kind, args, budget)
        except RuntimeError as error:
            out[kind] = {"scenario": scenario, "label": kind, "error": str(error)[-2000:]}
            log(f"  -> {kind} server failed: {str(error)[:300]}")
    return out


def scaleout_available(bench: Bench) -> str | None:
    """Why the Redis scale-out scenario cannot run, or None when it can."""
    if shutil.which("redis-server") is None:
        return "redis-server is not installed"
    package = bench.serve_root / "quart_app"
    if (
        not (package / "brokers" / "redis.py").exists()
        and not (package / "redis_broker.py").exists()
    ):
        return "the product has no Redis broker"
    return None


def commandstats(redis: RedisServer) -> dict[str, dict[str, float]]:
    """``INFO commandstats`` since the last ``CONFIG RESETSTAT``: calls and µs per command."""
    stats: dict[str, dict[str, float]] = {}
    for key, values in redis.info("commandstats").items():
        if not key.startswith("cmdstat_") or not isinstance(values, dict):
            continue
        try:
            stats[key[len("cmdstat_") :]] = {
                "calls": int(values["calls"]),
                "usec": int(values["usec"]),
                "usec_per_call": float(values["usec_per_call"]),
            }
        except (KeyError, ValueError):
            continue
    return stats


def run_on_redis(
    bench: Bench,
    plan: Plan,
    redis: RedisServer,
    *,
    workers: int | None,
    n: int,
    label: str,
    scenario: str,
) -> dict[str, Any]:
    """The fan-out client against the product with ``QUART_BROKER_URL`` on the
    shared redis-server, flushed first; redis-server's CPU over the client's
    window (``cpu.named_cpu_s["redis-server"]``) and its command statistics over
    the whole run (``redis_commandstats``) go into the result."""
    wait_quiet(plan.quiet_wait_s)
    try:
        redis.flush()
        with redis.client() as client:
            client.config_resetstat()
        env = {"QUART_BROKER_URL": f"redis://{HOST}:{redis.port}/0"}
        with running(bench, "product", workers=workers, env=env) as srv:
            result = run_client(
                "fanout",
                srv,
                label,
                fanout_args(plan, n),
                budget_for(plan, scenario, n),
                measure={"redis-server": redis.pid},
            )
        result["redis_commandstats"] = commandstats(redis)
    except (RuntimeError, OSError, RedisError) as error:
        log(f"  -> {label} failed: {str(error)[:300]}")
        result = {"label": label, "error": str(error)[-2000:]}
    result["scenario"] = scenario
    return result


def run_scaleout(bench: Bench, plan: Plan) -> dict[str, Any]:
    """SCALE-OUT HOOK: product only (the baseline cannot fan out across processes),
    against one ``redis-server`` pinned to the server CPU, flushed before each run:

    * ``redis_1_worker``: the fan-out scenario (``fan_n`` subscribers, same
      publishes, same client) on ONE worker with ``QUART_BROKER_URL=redis://...``,
      to compare with the memory broker's fan-out of the same run;
    * ``redis_2_workers``: ``scaleout_n`` subscribers over 2 Hypercorn workers
      sharing the Redis broker.

    Skipped cleanly while ``redis-server`` or the product's Redis broker is missing."""
    missing = scaleout_available(bench)
    if missing:
        log(f"scaleout skipped: {missing}")
        return {"skipped": missing}
    redis = RedisServer(bench.workdir / "redis", prefix=pinned(SERVER_CPU))
    out: dict[str, Any] = {}
    try:
        redis.start()
        out["redis_server"] = {
            "version": str(redis.info("server").get("redis_version", "?")),
            "cpu": SERVER_CPU,
            "cmdline": cmdline(redis.pid).strip(),
        }
        out["redis_1_worker"] = run_on_redis(
            bench,
            plan,
            redis,
            workers=None,
            n=plan.fan_n,
            label="product-1-worker-redis",
            scenario="fanout",
        )
        out["redis_2_workers"] = run_on_redis(
            bench,
            plan,
            redis,
            workers=2,
            n=plan.scaleout_n,
            label="product-2-workers-redis",
            scenario="scaleout",
        )
    except (RuntimeError, OSError, RedisError) as error:
        log(f"  -> scaleout failed: {str(error)[:300]}")
        for key, scenario in (("redis_1_worker", "fanout"), ("redis_2_workers", "scaleout")):
            out.setdefault(key, {"scenario": scenario, "error": str(error)[-2000:]})
    finally:
        redis.stop()
    return out


# --------------------------------------------------------------------------
# Storms, topics and the cost per worker (brokers: memory, Redis, Redis Cluster)
# --------------------------------------------------------------------------


@dataclass
class Backend:
    """A broker for the product: its URL, the processes to measure, how to empty it."""

    kind: str
    url: str | None = None
    pids: dict[str, int] = field(default_factory=dict)
    redis: RedisServer | None = None
    cluster: RedisCluster | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        return {"QUART_BROKER_URL": self.url} if self.url else {}

    def flush(self) -> None:
        if self.redis is not None:
            self.redis.flush()
        if self.cluster is not None:
            self.cluster.flush()


@contextmanager
def backend(bench: Bench, kind: str) -> Iterator[Backend]:
    """The memory broker, one ``redis-server``, or a 3-master Redis Cluster; every
    redis-server pinned to the server CPU (it competes with the worker for it)."""
    if kind == "memory":
        yield Backend("memory")
        return
    if shutil.which("redis-server") is None:
        raise RuntimeError("redis-server is not installed")
    if kind == "redis":
        redis = RedisServer(bench.workdir / f"redis-{free_port()}", prefix=pinned(SERVER_CPU))
        try:
            redis.start()
            yield Backend(
                "redis",
                f"redis://{HOST}:{redis.port}/0",
                {"redis-server": redis.pid},
                redis=redis,
                info={"version": str(redis.info("server").get("redis_version", "?"))},
            )
        finally:
            redis.stop()
        return
    cluster = RedisCluster(bench.workdir / f"cluster-{free_port()}", masters=3)
    for node in cluster.nodes:
        node.prefix = pinned(SERVER_CPU)
    try:
        cluster.start()
        yield Backend(
            "cluster",
            "redis+cluster://" + ",".join(cluster.addresses),
            {f"redis-node-{i}": node.pid for i, node in enumerate(cluster.nodes, 1)},
            cluster=cluster,
            info={"masters": len(cluster.nodes)},
        )
    finally:
        cluster.stop()


def run_on_backend(
    bench: Bench,
    plan: Plan,
    back: Backend,
    scenario: str,
    label: str,
    args: list[str],
    budget: float,
    env: dict[str, str],
) -> dict[str, Any]:
    """One client run against a fresh one-worker product on ``back`` (emptied first)."""
    wait_quiet(plan.quiet_wait_s)
    try:
        back.flush()
        full_env = {**CHANNELS_LIFTED, **env, **back.env()}
        with running(bench, "product", env=full_env) as srv:
            result = run_client(scenario, srv, label, args, budget, measure=back.pids)
        result["server_warnings"] = warnings_of(srv.log_path)
    except (RuntimeError, OSError, RedisError) as error:
        log(f"  -> {label} failed: {str(error)[:300]}")
        result = {"scenario": scenario, "label": label, "error": str(error)[-2000:]}
    result["broker"] = back.kind
    return result


def warnings_of(log_path: Path, most: int = 8) -> list[str]:
    """The server's distinct WARNING and ERROR lines (timestamps off), the first few."""
    seen: dict[str, int] = {}
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    for line in lines:
        for level in (" WARNING ", " ERROR "):
            if level in line:
                text = level.strip() + " " + line.split(level, 1)[1].strip()[:300]
                seen[text] = seen.get(text, 0) + 1
    return [f"{text} (x{count})" for text, count in list(seen.items())[:most]]


def run_storm(bench: Bench, plan: Plan) -> dict[str, Any]:
    """``storm_n`` subscribes in one burst on each broker: on as many channels (then
    one publish to each), and all on one channel (then ``storm_one_publishes``)."""
    n = plan.storm_n
    out: dict[str, Any] = {
        "params": {"n": n, "one_publishes": plan.storm_one_publishes, "distinct_publishes": n}
    }
    for kind in plan.storm_brokers:
        runs: dict[str, Any] = {}
        try:
            with backend(bench, kind) as back:
                runs["backend"] = back.info
                for mode, publishes in (("distinct", n), ("one", plan.storm_one_publishes)):
                    args = [
                        "--n",
                        str(n),
                        "--mode",
                        mode,
                        "--publishes",
                        str(publishes),
                        "--token",
                        TOKEN,
                    ]
                    runs[mode] = run_on_backend(
                        bench, plan, back, "storm", f"storm-{mode}-{kind}", args, 600, {}
                    )
        except (RuntimeError, OSError, RedisError) as error:
            log(f"  -> storm on {kind} failed: {str(error)[:300]}")
            runs["error"] = str(error)[-2000:]
        out[kind] = runs
    return out


def median_run(repeats: list[dict[str, Any]]) -> dict[str, Any]:
    """One row for the repeats of a topic run: the run of median worker CPU per
    publish, with the median delivery p50/p99 of all runs, the fewest deliveries
    any run made, and every run's figures under ``repeats``."""
    ok = [r for r in repeats if "error" not in r and (r.get("cpu") or {}).get("server_cpu_s")]
    if not ok:
        return repeats[-1]

    def per_publish(r: dict[str, Any]) -> float:
        return float(r["cpu"]["server_cpu_s"]) / max(1, int(r.get("publishes") or 1))

    def middle(values: list[float]) -> float:
        ordered = sorted(values)
        half = len(ordered) // 2
        return ordered[half] if len(ordered) % 2 else (ordered[half - 1] + ordered[half]) / 2

    ordered = sorted(ok, key=per_publish)
    row = dict(ordered[(len(ordered) - 1) // 2])
    latency = dict(row.get("latency") or {})
    for key in ("p50_ms", "p99_ms"):
        values = [float(r["latency"][key]) for r in ok if (r.get("latency") or {}).get(key)]
        if values:
            latency[key] = round(middle(values), 3)
    row["latency"] = latency
    row["deliveries"] = min(int(r.get("deliveries") or 0) for r in ok)
    row["repeats"] = {
        "n": len(repeats),
        "failed": len(repeats) - len(ok),
        "cpu_per_publish_us": [round(1e6 * per_publish(r), 1) for r in ok],
        "p99_ms": [(r.get("latency") or {}).get("p99_ms") for r in ok],
    }
    if len(ok) < len(repeats):
        row["deliveries"] = 0  # a failed repeat fails the row
    return row


def topic_args(plan: Plan, k: int, publishes: int | None = None) -> list[str]:
    """The client's arguments for K channels and the plan's publishes (or ``publishes``)."""
    return [
        "--n",
        str(k),
        "--publishes",
        str(plan.topic_publishes if publishes is None else publishes),
        "--rate",
        str(plan.topic_rate),
        "--token",
        TOKEN,
    ]


def topic_order(ks: Sequence[int], rep: int) -> list[int]:
    """The Ks of repeat ``rep``, rotated (a Latin square): over as many repeats as Ks,
    every K runs once first, once second ... after its broker's servers start."""
    shift = rep % len(ks)
    return [*ks[shift:], *ks[:shift]]


def topic_budget(plan: Plan) -> float:
    """Seconds a topics client run may take: connects at the largest K, then publishes."""
    return 120 + max(plan.topic_ks) / 100 + plan.topic_publishes / plan.topic_rate


def topic_block(
    bench: Bench,
    plan: Plan,
    back: Backend,
    rep: int,
    repeats: dict[tuple[str, str], list[dict[str, Any]]],
) -> None:
    """One broker's block of one repeat: a discarded warm-up at the largest K, then
    every K in this repeat's order (and on Redis its read path), into ``repeats``."""
    budget = topic_budget(plan)
    top, kind = max(plan.topic_ks), back.kind
    warm_up = topic_args(plan, top, publishes=max(1, plan.topic_publishes // 10))
    label = f"topics-{kind}-{rep + 1}-warm-up"
    run_on_backend(bench, plan, back, "topics", label, warm_up, budget, QUIET_STREAMS)
    for k in topic_order(plan.topic_ks, rep):
        args, label = topic_args(plan, k), f"topics-{k}-{kind}-{rep + 1}"
        runs = [(str(k), label, args)]
        if back.url:
            runs.append((f"{k}-read", f"{label}-read-path", [*args, "--via-redis", back.url]))
        for key, name, argv in runs:
            result = run_on_backend(bench, plan, back, "topics", name, argv, budget, QUIET_STREAMS)
            repeats.setdefault((kind, key), []).append(result)


def topic_stats_spaced(bench: Bench, plan: Plan, back: Backend) -> dict[str, Any]:
    """The largest K again with the statistics gauges spaced out: a check that no
    per-second work grows with the number of topics (on Redis, its read path)."""
    top, kind = max(plan.topic_ks), back.kind
    via = ["--via-redis", back.url] if back.url else []
    key = f"{top}{'-read' if back.url else ''}-nostats"
    label = f"topics-{top}-{kind}-stats-600s"
    argv = [*topic_args(plan, top), *via]
    env = {**QUIET_STREAMS, **STATS_SPACED}
    return {key: run_on_backend(bench, plan, back, "topics", label, argv, topic_budget(plan), env)}


def run_topics(bench: Bench, plan: Plan) -> dict[str, Any]:
    """K channels with one subscriber each, for each K and broker: P publishes by
    POST; on Redis also P publishes made straight into Redis (the read path alone).

    Each repeat runs every broker in turn (memory, Redis, the cluster, then again),
    and a broker's redis-servers run only for its own block (``topic_block``):
    started, warmed by one discarded run at the largest K, its Ks in rotated order,
    stopped.  So no idle server of another broker shares the worker's core, a fresh
    server's first run is never measured, and a slow minute of a shared machine
    does not land on one broker only.  Each row is the median run."""
    out: dict[str, Any] = {
        "params": {
            "ks": list(plan.topic_ks),
            "publishes": plan.topic_publishes,
            "rate": plan.topic_rate,
            "repeats": plan.topic_repeats,
            "order": "blocks",
        }
    }
    repeats: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for rep in range(plan.topic_repeats):
        for kind in plan.topic_brokers:
            if "error" in out.get(kind, {}):
                continue
            try:
                with backend(bench, kind) as back:
                    out.setdefault(kind, {"backend": back.info})
                    topic_block(bench, plan, back, rep, repeats)
                    if rep == plan.topic_repeats - 1:
                        out[kind].update(topic_stats_spaced(bench, plan, back))
            except (RuntimeError, OSError, RedisError) as error:
                log(f"  -> topics on {kind} failed: {str(error)[:300]}")
                out[kind] = {"error": str(error)[-2000:]}
    for (kind, key), runs in repeats.items():
        if "error" not in out[kind]:
            out[kind][key] = median_run(runs)
    return out


def run_all(bench: Bench, plan: Plan) -> dict[str, Any]:
    results: dict[str, Any] = {"hold": {}, "fanout": {}, "generate": {}, "ceiling": {}}
    kinds = plan.kinds
    if "hold" in plan.scenarios:
        for n in plan.hold_ns:
            results["hold"][str(n)] = run_pair(
                bench, plan, "hold", hold_args(plan, n), budget_for(plan, "hold", n), kinds
            )
    fan_budget = budget_for(plan, "fanout", plan.fan_n)
    if "fanout" in plan.scenarios:
        results["fanout"] = run_pair(
            bench, plan, "fanout", fanout_args(plan, plan.fan_n), fan_budget, kinds
        )
    if "generate" in plan.scenarios:
        results["generate"] = run_pair(
            bench, plan, "generate", generate_args(plan), budget_for(plan, "generate"), kinds
        )
    if "ceiling" in plan.scenarios:
        n = max(plan.hold_ns)
        ceiling = results["ceiling"]
        only = ("ceiling",)
        ceiling["hold"] = run_pair(
            bench, plan, "hold", hold_args(plan, n), budget_for(plan, "hold", n), only
        )["ceiling"]
        ceiling["fanout"] = run_pair(
            bench, plan, "fanout", fanout_args(plan, plan.fan_n), fan_budget, only
        )["ceiling"]
        ceiling["generate"] = run_pair(
            bench, plan, "generate", generate_args(plan), budget_for(plan, "generate"), only
        )["ceiling"]
    if "scaleout" in plan.scenarios:
        results["scaleout"] = run_scaleout(bench, plan)
    if "storm" in plan.scenarios:
        results["storm"] = run_storm(bench, plan)
    if "topics" in plan.scenarios:
        results["topics"] = run_topics(bench, plan)
    if "jobmem" in plan.scenarios:
        results["jobmem"] = run_jobmem(bench, plan)
    return results


def run_profiles(bench: Bench, plan: Plan, outdir: Path, kind: str = "product") -> None:
    """One server kind (the product on Hypercorn unless told), one py-spy recording
    (speedscope + flame graph) per scenario."""
    if shutil.which("py-spy") is None:
        raise SystemExit("py-spy is not installed: pip install py-spy")
    outdir.mkdir(parents=True, exist_ok=True)
    top = max(plan.hold_ns)
    jobs = [
        ("hold", hold_args(plan, top), budget_for(plan, "hold", top)),
        ("fanout", fanout_args(plan, plan.fan_n), budget_for(plan, "fanout", plan.fan_n)),
        ("generate", generate_args(plan), budget_for(plan, "generate")),
    ]
    for scenario, args, budget in jobs:
        if scenario not in plan.scenarios:
            continue
        with running(bench, kind) as srv:
            worker = srv.worker_pids()[0]
            recorders = []
            for fmt, ext in (("speedscope", "json"), ("flamegraph", "svg")):
                target = outdir / f"{scenario}-{fmt}.{ext}"
                recorders.append(
                    subprocess.Popen(
                        pinned(
                            CLIENT_CPU,
                            [
                                "py-spy",
                                "record",
                                "--pid",
                                str(worker),
                                "--rate",
                                "200",
                                "--nonblocking",
                                "--format",
                                fmt,
                                "--output",
                                str(target),
                            ],
                        ),
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                )
            time.sleep(1.0)  # py-spy attaches
            result = run_client(scenario, srv, f"{kind}-profiled", args, budget)
            (outdir / f"{scenario}-result.json").write_text(json.dumps(result, indent=1))
            for recorder in recorders:
                recorder.send_signal(signal.SIGINT)
            for recorder in recorders:
                try:
                    recorder.wait(30)
                except subprocess.TimeoutExpired:
                    recorder.kill()
        log(f"profile of {scenario} written to {outdir}")


def mem_available_kib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1])
    return 0


def run_jobmem(bench: Bench, plan: Plan) -> dict[str, Any]:
    """One worker, memory broker: jobs of ``amount`` x ``length`` (the product's
    MAX_AMOUNT and MAX_LENGTH unless the plan says less) watched to the end, then
    replayed from their start.

    * ``storage``: MAX_JOBS of them on the product (replay from its journal);
    * ``pair``: the same load, with as many jobs as replay from memory can hold on
      this shared machine (all of them when they fit), on the product and on
      ``memory_replay_app.py`` (every event kept in memory), in the same run.
    """
    if not (bench.serve_root / "quart_app" / "journal.py").exists():
        return {"skipped": "the product has no job journal (replay is from memory only)"}
    defaults = default_config_of(bench)
    jobs = plan.jobmem_jobs or int(defaults["MAX_JOBS"])
    amount = plan.jobmem_amount or int(defaults["MAX_AMOUNT"])
    length = plan.jobmem_length or int(defaults["MAX_LENGTH"])
    # Replay from memory keeps every event: its frame, its data and a Message, about
    # twice the string plus 400 bytes.  Keep it under a third of what is available
    # and under 6 GiB: other people's processes share this machine.
    per_job_kib = amount * (2 * length + 400) // 1024 + 1
    budget_kib = min(6 * 1024 * 1024, mem_available_kib() // 3)
    paired = max(1, min(jobs, budget_kib // per_job_kib))
    out: dict[str, Any] = {
        "params": {"jobs": jobs, "amount": amount, "length": length, "paired_jobs": paired},
        "limits": {k: defaults[k] for k in ("MAX_JOBS", "MAX_AMOUNT", "MAX_LENGTH")},
    }
    # Every event in memory: a window larger than the job (JOB_WINDOW), or, for a
    # product where the window is not a setting, the launcher that enlarges it.
    if "JOB_WINDOW" in defaults:
        memory_app, memory_env = PRODUCT_APP, {"QUART_JOB_WINDOW": str(amount + 2)}
        out["memory_replay"] = f"JOB_WINDOW={amount + 2}"
    else:
        memory_app, memory_env = str(BENCH / "memory_replay_app.py") + ":create_app()", {}
        out["memory_replay"] = "bench/memory_replay_app.py"
    runs: list[tuple[str, int, str, dict[str, str]]] = [("storage", jobs, PRODUCT_APP, {})]
    if paired != jobs:
        runs.append(("pair-storage", paired, PRODUCT_APP, {}))
    runs.append(("pair-memory", paired, memory_app, memory_env))
    for name, count, app, extra in runs:
        env = {
            "QUART_MAX_JOBS": str(count),
            "QUART_MAX_JOBS_PER_SESSION": str(count),
            "QUART_JOB_TTL_S": "900",
            **extra,
        }
        args = ["--n", str(count), "--amount", str(amount), "--length", str(length)]
        wait_quiet(plan.quiet_wait_s)
        srv = server(bench, "product", env=env)
        srv.app = app
        try:
            srv.start(timeout=30.0)
            try:
                srv.worker_pids()
                time.sleep(0.5)
                out[name] = run_client("jobmem", srv, f"jobmem-{name}", args, 1800)
            finally:
                srv.stop(grace=20.0)
        except RuntimeError as error:
            out[name] = {"scenario": "jobmem", "label": name, "error": str(error)[-2000:]}
    if "pair-storage" not in out:
        out["pair-storage"] = out["storage"]
    return out


def default_config_of(bench: Bench) -> dict[str, Any]:
    """The measured product's defaults (``quart_app.config``), read in a subprocess
    so that an exported revision answers for itself."""
    code = (
        "import json; from quart_app.config import default_config; "
        "print(json.dumps({k: v for k, v in default_config().items() "
        "if k in ('MAX_JOBS', 'MAX_AMOUNT', 'MAX_LENGTH', 'JOB_TTL_S', 'JOB_WINDOW')}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=bench.serve_root, capture_output=True, text=True
    )
    return dict(json.loads(done.stdout))
