"""The benchmark report: the results table against the targets, the chart, and
``docs/BENCHMARKS.md`` with the raw results it can be rendered again from."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import resource
import shutil
from pathlib import Path
from typing import Any, cast

from bench.scenarios import FULL, NICE, SERVER_CPU, Plan, log, nice_prefix

# Targets (one worker, server on one core, ratios against the baseline in the same run).
TARGET_RSS_RATIO = 1.1
TARGET_TICK_P99_MS = 300.0
TARGET_MAKESPAN_RATIO = 0.75
TARGET_DELIVERY_P99_RATIO = 0.5
TARGET_EVENTS_RATIO = 3.0
# The product on Granian (issue 21): the same ratios, tighter.
GRANIAN_TARGET_RSS_RATIO = 1.1
GRANIAN_TARGET_TICK_P99_MS = 150.0
GRANIAN_TARGET_MAKESPAN_RATIO = 0.4
GRANIAN_TARGET_DELIVERY_P99_RATIO = 0.2
# Scale-out: the Redis broker on one worker against the memory broker on one worker
# (fan-out makespan p50, same run), and everyone served over 2 workers.
TARGET_REDIS_MAKESPAN_RATIO = 1.3


def get(result: dict[str, Any] | None, *path: str) -> Any:
    value: Any = result
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def ratio(product: Any, baseline: Any) -> float | None:
    numbers = (int, float)
    if not isinstance(product, numbers) or not isinstance(baseline, numbers) or not baseline:
        return None
    return product / baseline


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def fmt_ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}x"


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**yes**" if ok else "**NO**")


def pct(part: Any, whole: Any) -> float | None:
    if not isinstance(part, int) or not isinstance(whole, int) or not whole:
        return None
    return 100.0 * part / whole


# The servers of the main table, in its column order (results key -> heading).  Each
# scenario runs against every one of them in the same run; every ratio is against
# ``baseline`` (bare Quart on Hypercorn) of that run.
SERVER_COLUMNS = {
    "product": "product on Hypercorn",
    "product-granian": "product on Granian",
    "product-uvicorn": "product on uvicorn (reference)",
    "baseline": "bare Quart on Hypercorn",
}
SERVER_NAMES = {
    "product": "Hypercorn",
    "product-granian": "Granian",
    "product-uvicorn": "uvicorn",
    "baseline": "bare Quart",
}
PRODUCTS = ("product", "product-granian", "product-uvicorn")
# Targets per server (issue 21 sets Granian's); uvicorn is a reference, without targets.
TARGETS: dict[str, dict[str, float]] = {
    "product": {
        "rss": TARGET_RSS_RATIO,
        "tick_p99_ms": TARGET_TICK_P99_MS,
        "makespan": TARGET_MAKESPAN_RATIO,
        "delivery_p99": TARGET_DELIVERY_P99_RATIO,
        "events": TARGET_EVENTS_RATIO,
    },
    "product-granian": {
        "rss": GRANIAN_TARGET_RSS_RATIO,
        "tick_p99_ms": GRANIAN_TARGET_TICK_P99_MS,
        "makespan": GRANIAN_TARGET_MAKESPAN_RATIO,
        "delivery_p99": GRANIAN_TARGET_DELIVERY_P99_RATIO,
    },
}


def server_kinds(results: dict[str, Any]) -> list[str]:
    """The servers of the main table that this run measured (the product on
    Hypercorn and the baseline always: reports before issue 21 have only them)."""
    seen = {"product", "baseline"}
    for pair in [*results.get("hold", {}).values(), results.get("fanout"), results.get("generate")]:
        if isinstance(pair, dict):
            seen.update(pair)
    return [kind for kind in SERVER_COLUMNS if kind in seen]


def main_header(results: dict[str, Any]) -> list[str]:
    return ["metric", *(SERVER_COLUMNS[k] for k in server_kinds(results)), "target", "met?"]


def build_rows(results: dict[str, Any], plan: Plan) -> tuple[list[list[str]], list[dict[str, Any]]]:
    """The main table: one row per metric, one column per server (``main_header``);
    a product's cell carries its ratio to the baseline of the same run."""
    rows: list[list[str]] = []
    targets: list[dict[str, Any]] = []
    kinds = server_kinds(results)
    products = [k for k in kinds if k in PRODUCTS]

    def add(
        label: str,
        runs: dict[str, Any],
        path: tuple[str, ...] | Any,
        digits: int = 1,
        check: Any = None,
        show_ratio: bool = True,
    ) -> None:
        """``path``: where the figure is in a run, or a function of the run.  ``check``:
        kind -> (target text, met) for the servers that have a target here."""
        values = {
            k: (path(runs.get(k)) if callable(path) else get(runs.get(k), *path)) for k in kinds
        }
        base = values.get("baseline")
        cells = []
        for kind in kinds:
            value = values[kind]
            r = ratio(value, base) if show_ratio and kind != "baseline" else None
            cells.append(fmt(value, digits) + (f" ({fmt_ratio(r)})" if r is not None else ""))
        checks = {k: check(k, values[k], ratio(values[k], base)) for k in products} if check else {}
        checks = {k: c for k, c in checks.items() if c is not None}
        rows.append(
            [
                label,
                *cells,
                "; ".join(f"{SERVER_NAMES[k]} {text}" for k, (text, _) in checks.items()),
                "; ".join(f"{SERVER_NAMES[k]} {verdict(ok)}" for k, (_, ok) in checks.items()),
            ]
        )
        for kind, (text, ok) in checks.items():
            targets.append(
                {
                    "metric": f"{label}, {SERVER_COLUMNS[kind]}",
                    "product": values[kind],
                    "baseline": base,
                    "ratio": ratio(values[kind], base),
                    "target": text,
                    "met": ok,
                }
            )

    def within(key: str, text: str, higher: bool = False) -> Any:
        """A check of a ratio against each server's target ``key``."""

        def check(kind: str, _value: Any, r: float | None) -> tuple[str, bool | None] | None:
            goal = TARGETS.get(kind, {}).get(key)
            if goal is None:
                return None
            return text.format(goal=goal), None if r is None else (
                r >= goal if higher else r <= goal
            )

        return check

    top = str(max(plan.hold_ns))
    for n in plan.hold_ns:
        runs = results["hold"].get(str(n), {})
        is_top = str(n) == top

        def every_tick(kind: str, _v: Any, _r: Any, n: int = n, runs: Any = runs) -> Any:
            if kind not in TARGETS:
                return None
            conn = pct(get(runs.get(kind), "connected"), n)
            tick = pct(get(runs.get(kind), "streams_all_ticks"), n)
            ok = None if conn is None or tick is None else (conn == 100.0 and tick == 100.0)
            return "100% connected and ticking", ok

        def tick_p99(kind: str, value: Any, _r: Any) -> Any:
            goal = TARGETS.get(kind, {}).get("tick_p99_ms")
            if goal is None:
                return None
            return f"<= {goal:g} ms", None if value is None else value <= goal

        add(
            f"hold {n:,}: connected (%)",
            runs,
            lambda r, n=n: pct(get(r, "connected"), n),
            show_ratio=False,
        )
        add(
            f"hold {n:,}: got every tick (%)",
            runs,
            lambda r, n=n: pct(get(r, "streams_all_ticks"), n),
            check=every_tick if is_top else None,
            show_ratio=False,
        )
        add(
            f"hold {n:,}: server RSS per stream (KiB)",
            runs,
            ("rss_per_stream_kib",),
            check=within("rss", "<= {goal:g}x baseline") if is_top else None,
        )
        add(f"hold {n:,}: tick delivery p50 (ms)", runs, ("latency", "p50_ms"))
        add(
            f"hold {n:,}: tick delivery p99 (ms)",
            runs,
            ("latency", "p99_ms"),
            check=tick_p99 if is_top else None,
        )
        add(
            f"hold {n:,}: server CPU (% of its core)",
            runs,
            lambda r: _pct(get(r, "cpu", "server_cpu_util")),
        )
        add(
            f"hold {n:,}: server CPU per tick delivery (µs)",
            runs,
            lambda r: _per(get(r, "cpu", "server_cpu_s"), get(r, "latency", "samples")),
        )
    n = plan.fan_n
    runs = results["fanout"]
    add(
        f"fan-out {n:,}: deliveries (of {n * plan.publishes:,})",
        runs,
        ("deliveries",),
        show_ratio=False,
    )
    add(f"fan-out {n:,}: delivery p50 (ms)", runs, ("latency", "p50_ms"))
    add(
        f"fan-out {n:,}: delivery p99 (ms)",
        runs,
        ("latency", "p99_ms"),
        check=within("delivery_p99", "<= {goal:g}x baseline"),
    )
    add(
        f"fan-out {n:,}: makespan p50 (ms)",
        runs,
        ("makespan", "p50_ms"),
        check=within("makespan", "<= {goal:g}x baseline"),
    )
    add(f"fan-out {n:,}: makespan max (ms)", runs, ("makespan", "max_ms"))
    add(
        f"fan-out {n:,}: server CPU per delivery (µs)",
        runs,
        lambda r: _per(get(r, "cpu", "server_cpu_s"), get(r, "deliveries")),
    )
    label = f"generate {plan.gen_n}x{plan.gen_amount:,}"
    runs = results["generate"]

    def events(kind: str, _value: Any, r: float | None) -> Any:
        goal = TARGETS.get(kind, {}).get("events")
        if goal is None:
            return None
        complete = get(runs.get(kind), "complete") == plan.gen_n
        return f">= {goal:g}x baseline", None if r is None else (r >= goal and complete)

    add(
        f"{label}: complete streams (with `done`)",
        runs,
        ("complete",),
        show_ratio=False,
    )
    add(f"{label}: events/s", runs, ("events_per_s",), 0, check=events)
    add(
        f"{label}: server CPU per event (µs)",
        runs,
        lambda r: _per(get(r, "cpu", "server_cpu_s"), get(r, "events")),
        2,
    )
    add(f"{label}: time to first byte p50 (ms)", runs, ("first_byte", "p50_ms"))

    # Scale-out: the product on Hypercorn only.  Its column holds "Redis / memory"
    # and that ratio; the other columns are empty.
    others = ["—"] * (len(kinds) - 1)

    def add_vs(
        label: str, a: Any, b: Any, digits: int = 1, target: str = "", ok: bool | None = None
    ) -> None:
        r = ratio(a, b)
        cell = f"{fmt(a, digits)} / {fmt(b, digits)}" + (f" ({fmt_ratio(r)})" if r else "")
        rows.append([label, cell, *others, target, verdict(ok) if target else ""])
        if target:
            targets.append(
                {
                    "metric": label,
                    "product": a,
                    "baseline": b,
                    "ratio": r,
                    "target": target,
                    "met": ok,
                }
            )

    one, two = scale_runs(results)
    memory = scale_memory(results)
    n = plan.fan_n
    expected = n * plan.publishes
    earlier = ((results.get("scaleout") or {}).get("run") or {}).get("started")
    # Scale-out rows of an earlier run than the table's say so.
    when = f" (run of {earlier})" if earlier else ""
    add_vs(
        f"fan-out {n:,} one worker: Redis / memory deliveries (of {expected:,}){when}",
        get(one, "deliveries"),
        get(memory, "deliveries"),
        0,
    )
    r = ratio(get(one, "makespan", "p50_ms"), get(memory, "makespan", "p50_ms"))
    add_vs(
        f"fan-out {n:,} one worker: Redis makespan p50 / memory makespan p50 (ms){when}",
        get(one, "makespan", "p50_ms"),
        get(memory, "makespan", "p50_ms"),
        1,
        f"<= {TARGET_REDIS_MAKESPAN_RATIO:g}x, Redis serving everyone",
        None if r is None else (r <= TARGET_REDIS_MAKESPAN_RATIO and served(one, n, plan)),
    )
    add_vs(
        f"fan-out {n:,} one worker: Redis delivery p99 / memory delivery p99 (ms){when}",
        get(one, "latency", "p99_ms"),
        get(memory, "latency", "p99_ms"),
    )
    add_vs(
        f"fan-out {n:,} one worker: server CPU per delivery, Redis / memory (µs){when}",
        _per(workers_cpu_s(one), get(one, "deliveries")),
        _per(workers_cpu_s(memory), get(memory, "deliveries")),
    )
    n2 = plan.scaleout_n
    ok = served(two, n2, plan)
    rows.append(
        [
            f"scale-out {n2:,} over 2 workers, Redis: deliveries "
            f"(of {n2 * plan.publishes:,}){when}",
            fmt(get(two, "deliveries")),
            *others,
            "everyone served",
            verdict(ok),
        ]
    )
    targets.append(
        {
            "metric": f"scale-out {n2:,} over 2 workers, Redis: everyone served{when}",
            "product": get(two, "deliveries"),
            "baseline": None,
            "ratio": None,
            "target": "everyone served",
            "met": ok,
        }
    )
    for key, name in (("latency", "delivery p99"), ("makespan", "makespan p50")):
        q = "p99_ms" if key == "latency" else "p50_ms"
        rows.append(
            [
                f"scale-out {n2:,} over 2 workers, Redis: {name} (ms){when}",
                fmt(get(two, key, q)),
                *others,
                "",
                "",
            ]
        )
    return rows, targets


def keep_scaleout_baseline(
    previous: dict[str, Any], results: dict[str, Any], scenarios_run: list[str]
) -> None:
    """The Redis scale-out rows compare with the memory broker's fan-out of their own
    run: when the main scenarios run again without them, that fan-out (and when it
    ran) stays with them in ``previous``."""
    scale = previous.get("scaleout")
    if (
        not results.get("fanout")
        or "scaleout" in scenarios_run
        or not isinstance(scale, dict)
        or "redis_1_worker" not in scale
        or "memory_1_worker" in scale
    ):
        return
    scale["memory_1_worker"] = (previous.get("fanout") or {}).get("product")
    meta = previous.get("meta") or {}
    scale["run"] = {
        k: meta[k] for k in ("started", "minutes", "quick", "smoke", "revision") if k in meta
    }


def scale_memory(results: dict[str, Any]) -> dict[str, Any] | None:
    """The memory broker's fan-out that the Redis scale-out runs compare with: the one
    of their own run (kept with them when the main scenarios ran again without them),
    else the main table's."""
    scale = results.get("scaleout") or {}
    kept = scale.get("memory_1_worker") if isinstance(scale, dict) else None
    return kept if isinstance(kept, dict) else results["fanout"].get("product")


def scale_runs(
    results: dict[str, Any],
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The scale-out runs: (Redis on one worker, Redis over two workers).  Reports
    written before the one-worker comparison hold the two-worker run directly."""
    scale = results.get("scaleout") or {}
    if "scenario" in scale:
        return None, (None if "skipped" in scale else scale)
    return scale.get("redis_1_worker"), scale.get("redis_2_workers")


def served(r: dict[str, Any] | None, n: int, plan: Plan) -> bool | None:
    """Every one of ``n`` subscribers connected and got every publish."""
    if r is None or "error" in r or get(r, "deliveries") is None:
        return None
    return bool(get(r, "connected") == n and get(r, "deliveries") == n * plan.publishes)


def workers_cpu_s(r: dict[str, Any] | None) -> float | None:
    """Server CPU over the measurement window, summed over every worker."""
    named = get(r, "cpu", "named_cpu_s") or {}
    per_worker = [v for k, v in named.items() if k.startswith("worker-")]
    if per_worker:
        return None if None in per_worker else float(sum(per_worker))
    if (get(r, "server_workers") or 1) > 1:
        return None  # an older result: only the first worker was measured
    return cast(float | None, get(r, "cpu", "server_cpu_s"))


def _pct(value: Any) -> float | None:
    return None if value is None else 100.0 * value


def _per(cpu_s: Any, count: Any) -> float | None:
    """Microseconds of server CPU per unit of work."""
    if not isinstance(cpu_s, int | float) or not isinstance(count, int) or not count:
        return None
    return 1e6 * cpu_s / count


def client_rows(results: dict[str, Any], plan: Plan) -> list[list[str]]:
    """The client's own CPU (% of its core) in every run, and its ceiling."""
    rows = []
    runs: list[tuple[str, dict[str, Any] | None]] = []
    kinds = [(kind, SERVER_COLUMNS[kind]) for kind in server_kinds(results)]
    for n in plan.hold_ns:
        for kind, name in kinds:
            runs.append((f"hold {n:,} vs {name}", results["hold"].get(str(n), {}).get(kind)))
    for kind, name in kinds:
        runs.append((f"fan-out {plan.fan_n:,} vs {name}", results["fanout"].get(kind)))
    for kind, name in kinds:
        runs.append((f"generate vs {name}", results["generate"].get(kind)))
    ceiling = results.get("ceiling", {})
    runs.append((f"hold {max(plan.hold_ns):,} vs ceiling server", ceiling.get("hold")))
    runs.append((f"fan-out {plan.fan_n:,} vs ceiling server", ceiling.get("fanout")))
    runs.append(("generate vs ceiling server", ceiling.get("generate")))
    one, two = scale_runs(results)
    runs.append((f"fan-out {plan.fan_n:,} vs product, Redis broker, 1 worker", one))
    runs.append((f"fan-out {plan.scaleout_n:,} vs product, Redis broker, 2 workers", two))
    for name, r in runs:
        if r is None:
            continue
        if "error" in r:
            rows.append([name, "error", "", "", "", ""])
            continue
        cpu = r.get("cpu", {})
        if r["scenario"] == "hold":
            figure = f"tick p99 {fmt(get(r, 'latency', 'p99_ms'))} ms"
        elif r["scenario"] in ("fanout", "scaleout"):
            figure = (
                f"delivery p99 {fmt(get(r, 'latency', 'p99_ms'))} ms, makespan p50 "
                f"{fmt(get(r, 'makespan', 'p50_ms'))} ms"
            )
        else:
            figure = f"{fmt(r.get('events_per_s'), 0)} events/s"
        rows.append(
            [
                name,
                fmt(cpu.get("client_cpu_s"), 2),
                fmt(cpu.get("wall_s"), 1),
                fmt(_pct(cpu.get("client_cpu_util")), 1),
                figure,
                fmt(r.get("other_cpu_cores"), 2),
            ]
        )
    return rows


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def machine(revision: str) -> dict[str, str]:
    """The machine, the versions that matter, and the product revision measured."""
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info["cores"] = str(os.cpu_count())
    try:
        kib = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
        info["memory"] = f"{kib / 1024 / 1024:.1f} GiB"
    except (OSError, IndexError, ValueError):
        pass
    info["os"] = f"{platform.system()} {platform.release()}"
    info["python"] = platform.python_version()
    for package in (
        "quart",
        "hypercorn",
        "h11",
        "werkzeug",
        "uvloop",
        "granian",
        "uvicorn",
        "httptools",
    ):
        try:
            info[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            info[package] = "not installed"
    info["product revision"] = revision
    info["nofile"] = str(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    info["pinning"] = "taskset: server CPU 0, client CPU 1" if shutil.which("taskset") else "none"
    info["priority"] = f"nice {NICE}" if nice_prefix() else "default (could not raise it)"
    return info


COLORS = {
    "product": "#1f77b4",
    "product-granian": "#2ca02c",
    "product-uvicorn": "#9467bd",
    "baseline": "#ff7f0e",
    "ceiling": "#7f7f7f",
    "redis": "#17becf",
}


def chart(results: dict[str, Any], plan: Plan, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is missing: no chart")
        return False
    kinds = server_kinds(results)
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    ns = plan.hold_ns
    labels = [f"{n:,}" for n in ns]
    width = 0.8 / len(kinds)
    xs = range(len(ns))
    for ax, key, title, ylabel in (
        (axes[0][0], ("rss_per_stream_kib",), "hold: server RSS per stream", "KiB"),
        (axes[0][1], ("latency", "p99_ms"), "hold: tick delivery p99", "ms"),
    ):
        for index, kind in enumerate(kinds):
            offset = (index - (len(kinds) - 1) / 2) * width
            values = [get(results["hold"].get(str(n), {}).get(kind), *key) or 0 for n in ns]
            ax.bar(
                [x + offset for x in xs],
                values,
                width,
                label=SERVER_COLUMNS[kind],
                color=COLORS[kind],
            )
        ax.set_xticks(list(xs), labels)
        ax.set_xlabel("concurrent streams")
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.margins(y=0.4)
        ax.legend(loc="upper left", fontsize=8)
    for goal, name in (
        (TARGET_TICK_P99_MS, "target (Hypercorn)"),
        (GRANIAN_TARGET_TICK_P99_MS, "target (Granian)"),
    ):
        if "product-granian" not in kinds and goal == GRANIAN_TARGET_TICK_P99_MS:
            continue
        axes[0][1].axhline(goal, color="red", linestyle="--", linewidth=1)
        axes[0][1].annotate(
            name,
            (len(ns) - 0.6, goal),
            color="red",
            fontsize=8,
            textcoords="offset points",
            xytext=(0, 3),
            ha="right",
        )
    ax = axes[1][0]
    metrics = [
        ("latency", "p50_ms", "delivery p50"),
        ("latency", "p99_ms", "delivery p99"),
        ("makespan", "p50_ms", "makespan p50"),
    ]
    mx = range(len(metrics))
    series = [(SERVER_COLUMNS[k], results["fanout"].get(k), COLORS[k]) for k in kinds]
    redis_one, _ = scale_runs(results)
    if (
        redis_one is not None
        and "error" not in redis_one
        and not (results.get("scaleout") or {}).get("run")
    ):
        series.insert(1, ("product on Hypercorn, Redis broker", redis_one, COLORS["redis"]))
    bar_w = 0.8 / len(series)
    for index, (name, r, color) in enumerate(series):
        offset = (index - (len(series) - 1) / 2) * bar_w
        ax.bar(
            [x + offset for x in mx],
            [get(r, a, b) or 0 for a, b, _ in metrics],
            bar_w,
            label=name,
            color=color,
        )
    ax.set_xticks(list(mx), [m[2] for m in metrics])
    ax.set_title(f"fan-out: {plan.fan_n:,} subscribers, {plan.publishes} publishes")
    ax.set_ylabel("ms")
    ax.margins(y=0.3)
    ax.legend(loc="upper left", fontsize=8)
    ax = axes[1][1]
    bars_of = [*kinds, "ceiling"]
    values = [
        get(
            results["generate"].get(k)
            if k != "ceiling"
            else results.get("ceiling", {}).get("generate"),
            "events_per_s",
        )
        or 0
        for k in bars_of
    ]
    names = {**SERVER_COLUMNS, "ceiling": "client ceiling (trivial server)"}
    bars = ax.bar(
        [names[k].replace(" on ", "\non ").replace(" (", "\n(") for k in bars_of],
        values,
        color=[COLORS[k] for k in bars_of],
    )
    for bar, value in zip(bars, values, strict=True):
        ax.annotate(
            f"{value:,.0f}",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.tick_params(axis="x", labelsize=7)
    ax.set_title(f"generate: {plan.gen_n} x {plan.gen_amount:,} strings, aggregate")
    ax.set_ylabel("events/s")
    fig.suptitle("quart_app on three servers vs bare Quart SSE (one worker on one core)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# The main table's rows that the servers section shows (by label, with the plan's N).
HEADLINE = (
    "fan-out {fan}: makespan p50 (ms)",
    "fan-out {fan}: delivery p99 (ms)",
    "fan-out {fan}: server CPU per delivery (µs)",
    "hold {hold}: tick delivery p99 (ms)",
    "hold {hold}: server CPU (% of its core)",
    "hold {hold}: server CPU per tick delivery (µs)",
    "hold {hold}: server RSS per stream (KiB)",
    "{gen}: events/s",
    "{gen}: server CPU per event (µs)",
)


def servers_section(results: dict[str, Any], plan: Plan, rows: list[list[str]]) -> list[str]:
    """The headline figures of every server side by side (rows of the main table),
    and how each server was started."""
    kinds = server_kinds(results)
    if len(kinds) <= 2:
        return []
    names = {
        line.format(
            fan=f"{plan.fan_n:,}",
            hold=f"{max(plan.hold_ns):,}",
            gen=f"generate {plan.gen_n}x{plan.gen_amount:,}",
        )
        for line in HEADLINE
    }
    chosen = [row[: 1 + len(kinds)] for row in rows if row[0] in names]
    commands = (results.get("meta") or {}).get("servers") or {}
    parts = [
        "## Servers side by side",
        "",
        "The headline rows of the table below: the same product on each server, one worker "
        "pinned to one core, against bare Quart on Hypercorn, all in this run (ratios to "
        "bare Quart in brackets; lower is better but for events/s).",
        "",
        table(["", *(SERVER_COLUMNS[k] for k in kinds)], chosen),
        "",
    ]
    if commands:
        parts += [
            "How each server was started (`PORT`: a free port; each pinned with `taskset`, "
            "see *Machine and versions*):",
            "",
            *(f"* {SERVER_COLUMNS.get(k, k)}: `{c}`" for k, c in commands.items()),
            "",
        ]
    return parts


def markdown(
    results: dict[str, Any], plan: Plan, png_name: str | None, scale_png_name: str | None = None
) -> str:
    """The whole report page (``docs/BENCHMARKS.md``)."""
    rows, targets = build_rows(results, plan)
    extra, extra_targets = extra_sections(results)
    met = sum(1 for t in targets if t["met"])
    extra_met = sum(1 for t in extra_targets if t["met"])
    meta = results.get("meta", {})
    started = meta.get("started", "?")
    minutes = meta.get("minutes", 0.0)
    info = meta.get("machine") or machine("unknown")
    parts = [
        "# Benchmarks",
        "",
        "quart_app (`quart_app:create_app()`) against a baseline written the plain way on "
        "bare Quart (`bench/baseline_app.py`: an async generator per request, one "
        "`asyncio.Queue` per subscriber, `/generate` yielding one frame per string), "
        "same URLs, same frames, same Hypercorn settings (`hypercorn.toml`, one worker). "
        + (
            "The product also runs on Granian and, for reference, on uvicorn (uvloop and "
            "httptools), in the same run, one worker each; every ratio is against bare "
            "Quart on Hypercorn of that run. "
            if len(server_kinds(results)) > 2
            else ""
        )
        + "Regenerate this page with `bench/run` (a smoke run: `bench/run --quick`); the "
        "storm, topic, cost and jobs' memory sections alone with `bench/run --at HEAD "
        "--only storm --only topics --only jobmem --into docs/BENCHMARKS.md`, which keeps "
        "the other sections' raw results.",
        "",
        f"Run: {started}, {minutes:.1f} minutes"
        + (f", product {meta['revision']}" if meta.get("revision") else "")
        + (" — **quick smoke run: figures are indicative only**" if plan.quick else "")
        + ".",
        "",
        f"**Targets met: {met} of {len(targets)}** in the table below; "
        f"**{extra_met} of {len(extra_targets)}** in the storm, topic and cost sections "
        "(their own runs, dated in each section).",
        "",
        *servers_section(results, plan, rows),
        "## Results",
        "",
        "Each product cell carries its ratio to bare Quart on Hypercorn (same run).",
        "",
        table(main_header(results), rows),
        "",
    ]
    if png_name:
        parts += [f"![benchmark chart]({png_name})", ""]
    parts += [
        "## Is the client the bottleneck?",
        "",
        "CPU time of the load client over each measurement window, as a share of its own "
        "core, and what the same client reaches against `bench/ceiling_server.py` (a raw "
        "uvloop server that writes pre-built frames and does nothing else). A client well "
        "under 100% of its core, and a ceiling well above the figures measured against the "
        "apps, means the figures are the servers'.",
        "",
        table(
            [
                "run",
                "client CPU (s)",
                "window (s)",
                "client CPU (% of core)",
                "figure",
                "other processes (cores)",
            ],
            client_rows(results, plan),
        ),
        "",
        "*Other processes*: CPU that processes other than the server and the client used "
        "during the run, in cores, averaged (from `/proc/stat`); above about 0.3 the machine "
        "was shared and wall-clock figures (latency, events/s) of that run are inflated. "
        "CPU-time figures (server CPU per delivery or per event) are much less affected.",
        "",
        "## Scale-out (Redis)",
        "",
        *scaleout_section(results, plan),
        *extra,
    ]
    if scale_png_name:
        parts += [f"![storms and topics]({scale_png_name})", ""]
    parts += [
        *campaign_section(),
        "## How to read it",
        "",
        "* **Ratios** are product / baseline (bare Quart on Hypercorn), from the same run "
        "on the same machine, whichever server the product runs on. For latency and "
        "memory lower is better; for events/s higher is better.",
        "* **Servers**: the product on Hypercorn (`hypercorn.toml`, the default serve "
        "command), on Granian (`granian --interface asgi --factory` with the options the "
        "README recommends) and on uvicorn with uvloop and httptools (a reference: the "
        "product is not tested on it); bare Quart on Hypercorn only. Each is a fresh "
        "process per scenario, one worker. Hypercorn and Granian serve from a worker "
        "child process (Granian forks it with the parent's command line), uvicorn "
        "in its own process: the process measured is the one that serves.",
        "* **hold N**: N idle `GET /numbers` streams (1 tick per second) for "
        f"{plan.hold_s:g} s after all are connected. *Connected*: HTTP 200 and the first "
        "bytes received. *Got every tick*: the stream received every tick stamped inside "
        "the window. *RSS per stream*: (VmRSS of the serving process once all streams are "
        "connected - VmRSS before the first connect) / N. `hypercorn` with its default of "
        "one worker spawns the worker as a child process (beside a multiprocessing "
        "resource tracker); that child is the process measured. *Tick delivery*: the "
        "client's receive time minus the `t` the server put in the event, over every "
        "(subscriber, tick) pair in the window.",
        f"* **fan-out**: {plan.fan_n:,} subscribers of one channel; {plan.publishes} "
        "`POST /channels/bench` one after another (each after the previous one reached "
        "everyone, plus 0.25 s), the data carrying the client's send time. *Delivery*: "
        "receive time - send time, over every (subscriber, publish) pair. *Makespan*: "
        "from the send until the last subscriber has it; the table gives the median over "
        "the publishes.",
        f"* **generate**: {plan.gen_n} concurrent `GET /generate?amount={plan.gen_amount}"
        f"&length={plan.gen_length}`; events/s = all string events received / time from "
        "the first request to the last `done`. A stream is *complete* when it got all "
        f"{plan.gen_amount:,} events with ids `<job>:1..{plan.gen_amount}` in order and then "
        "`done`.",
        "* All the load comes from one address and one session, so the product runs with its "
        "abuse limits lifted: `QUART_MAX_STREAMS_PER_CLIENT` and `QUART_MAX_STREAMS` (open "
        "streams per client address and per process) and `QUART_MAX_JOBS` and "
        "`QUART_MAX_JOBS_PER_SESSION` (running jobs). With the defaults it would answer most "
        "of the 10 000 streams, and 100 concurrent jobs, with `429`/`503` by design. "
        "Everything else is the default configuration.",
        "* The client (`bench/client.py`) is one uvloop process with raw asyncio protocols "
        "and its own SSE parser. For hold and fan-out it only timestamps and stores bytes "
        "while measuring and parses afterwards, so the 10 000th socket read in a burst is "
        "stamped microseconds, not a full parse each, after the first. Its GC is off while "
        "measuring.",
        "* Every event costs the server one write per subscriber, so a tick or a publish "
        "reaches its last subscriber no sooner than N x (server CPU per delivery) after it "
        "was sent: at 10 000 streams and 50 µs per delivery that is 0.5 s. The *server CPU "
        "per delivery* rows show that cost; they depend little on other load on the machine.",
        "* **Scale-out rows** (product only, no baseline): the product column holds "
        "*Redis / memory*, the product with `QUART_BROKER_URL=redis://...` against the "
        "product with its default memory broker, both on one worker in the same run, and "
        "the ratio column their ratio. *Everyone served*: every subscriber connected and "
        "got every publish.",
        "* Client and servers share one clock: every process runs on 127.0.0.1.",
        "* Percentiles are nearest-rank. A figure of `n/a` means the run failed; the "
        "raw results below say why.",
        "",
        "## Machine and versions",
        "",
        table(["", ""], [[k, v] for k, v in info.items()]),
        "",
        "## Raw results",
        "",
        "<details><summary>one JSON object per run, as printed by bench/client.py</summary>",
        "",
        "```json",
        raw_json(results),
        "```",
        "",
        "</details>",
        "",
    ]
    return "\n".join(parts)


def scaleout_section(results: dict[str, Any], plan: Plan) -> list[str]:
    """The scale-out section: what ran, a table of the three fan-outs (memory and
    Redis on one worker, Redis over two workers), and the costs per process."""
    scale = results.get("scaleout") or {}
    if not scale:
        return ["Not run.", ""]
    if "skipped" in scale:
        return [
            f"Skipped: {scale['skipped']}. When both exist, `bench/run` runs the fan-out "
            f"scenario ({plan.fan_n:,} subscribers) against the product on one worker with "
            "`QUART_BROKER_URL=redis://...`, and "
            f"{plan.scaleout_n:,} subscribers of one channel over two Hypercorn workers "
            "sharing that Redis broker (product only: the baseline cannot fan out across "
            "processes).",
            "",
        ]
    memory = scale_memory(results)
    one, two = scale_runs(results)
    cores = (results.get("meta", {}).get("machine") or {}).get("cores") or str(os.cpu_count())
    redis_cpu = get(scale, "redis_server", "cpu") or SERVER_CPU
    stamp = one_stamp(scale.get("run") or {})
    parts = [
        *(
            [
                f"{stamp} Not run since: its rows compare with the memory-broker fan-out "
                "of that run (kept with them), not with the main table's.",
                "",
            ]
            if stamp
            else []
        ),
        "Product only (the baseline cannot fan out across processes). `bench/run` starts "
        "one `redis-server` (no persistence) and, flushing it (`FLUSHALL`) before each "
        f"run, runs the fan-out client against the product (a) on ONE worker with "
        f"`QUART_BROKER_URL=redis://...`: the fan-out scenario above, {plan.fan_n:,} "
        f"subscribers and {plan.publishes} publishes, to compare with the memory broker's "
        f"fan-out from the same run; (b) with {plan.scaleout_n:,} subscribers over two "
        "Hypercorn workers sharing that broker.",
        "",
        f"**`redis-server` runs on CPU {redis_cpu}, the server's core**, pinned like the "
        f"workers: this machine has {cores} cores and the client needs one of them, so "
        "`redis-server` competes with the worker(s) for one core, and the Redis figures "
        "include its CPU. The two workers share that core too, so (b) shows that "
        "cross-process fan-out works and serves everyone, and what it costs, **not a "
        "speed-up**: worker scaling cannot be shown on this machine. The costs per "
        "process below are CPU time, which depends little on the sharing, and give the "
        "capacity of more workers on more cores.",
        "",
    ]
    runs = [
        ("memory broker, 1 worker", memory, plan.fan_n),
        ("Redis broker, 1 worker", one, plan.fan_n),
        ("Redis broker, 2 workers", two, plan.scaleout_n),
    ]
    failed = [(name, r) for name, r, _ in runs if r is not None and "error" in r]
    for name, r in failed:
        parts += [f"{name} failed: `{str(r['error'])[:500]}`", ""]

    def column(r: dict[str, Any] | None, n: int, redis: bool) -> list[str]:
        named = get(r, "cpu", "named_cpu_s") or {}
        workers = [
            f"{v:.2f}" if v is not None else "n/a"
            for k, v in named.items()
            if k.startswith("worker-")
        ]
        if not workers and workers_cpu_s(r) is not None:
            workers = [f"{get(r, 'cpu', 'server_cpu_s'):.2f}"]
        redis_s = named.get("redis-server")
        stats = get(r, "redis_commandstats") or {}
        return [
            fmt(n),
            f"{fmt(get(r, 'deliveries'))} of {fmt(n * plan.publishes)}",
            fmt(get(r, "latency", "p50_ms")),
            fmt(get(r, "latency", "p99_ms")),
            fmt(get(r, "makespan", "p50_ms")),
            " + ".join(workers) or "n/a",
            fmt(_per(workers_cpu_s(r), get(r, "deliveries")), 1),
            fmt(redis_s, 2) if redis else "—",
            fmt(_ms_per(redis_s, get(r, "publishes")), 2) if redis else "—",
            _cmdstat(stats, "xadd") if redis else "—",
            _cmdstat(stats, "xread") if redis else "—",
            _cmdstat_total(stats) if redis else "—",
        ]

    names = [
        "subscribers",
        "deliveries",
        "delivery p50 (ms)",
        "delivery p99 (ms)",
        "makespan p50 (ms)",
        "worker CPU over the window (s, per worker)",
        "server CPU per delivery, all workers (µs)",
        "redis-server CPU over the window (s)",
        "redis-server CPU per publish (ms)",
        "XADD in Redis: calls, µs per call",
        "XREAD in Redis: calls, µs per call",
        "all commands in Redis: calls, ms",
    ]
    columns = [column(r, n, name.startswith("Redis")) for name, r, n in runs]
    parts += [
        table(
            ["", *[name for name, _, _ in runs]],
            [[label, *[c[i] for c in columns]] for i, label in enumerate(names)],
        ),
        "",
    ]
    c_mem = _per(workers_cpu_s(memory), get(memory, "deliveries"))
    c_redis = _per(workers_cpu_s(one), get(one, "deliveries"))
    c_two = _per(workers_cpu_s(two), get(two, "deliveries"))
    r1 = _ms_per(get(one, "cpu", "named_cpu_s", "redis-server"), get(one, "publishes"))
    r2 = _ms_per(get(two, "cpu", "named_cpu_s", "redis-server"), get(two, "publishes"))
    xread = get(one, "redis_commandstats", "xread", "usec_per_call")
    xadd = get(one, "redis_commandstats", "xadd", "usec_per_call")
    if c_mem is not None and c_redis is not None:
        extra_ms = (c_redis - c_mem) * plan.fan_n / 1000
        parts += [
            "*Per worker*: a publish costs a worker (its subscribers) x (server CPU per "
            f"delivery): {fmt(c_mem, 1)} µs with the memory broker, {fmt(c_redis, 1)} µs "
            f"with Redis on one worker ({fmt(c_two, 1)} µs over two workers). The Redis "
            "read path (one reader task per process XREADs the topic and appends to the "
            "same local history the memory broker uses) costs once per publish per "
            f"process, not per subscriber: here {fmt(extra_ms, 1)} ms of worker CPU per "
            f"publish at {plan.fan_n:,} subscribers (the difference of the two per-delivery "
            "figures times the subscribers; it is within noise when small or negative).",
            "",
            "*Redis*: the publishing worker's XADD"
            + (f" ({fmt(xadd, 1)} µs in Redis)" if xadd is not None else "")
            + " and one XREAD per worker process"
            + (f" ({fmt(xread, 1)} µs each in Redis)" if xread is not None else "")
            + "; `redis-server`'s own CPU over the window (from `/proc/<pid>/stat`, 10 ms "
            "ticks; it includes its housekeeping, the once-a-second ticker and network "
            f"I/O, so it is an upper bound) was {fmt(r1, 2)} ms per publish with one worker "
            f"and {fmt(r2, 2)} ms with two. Command times are from `INFO commandstats` over "
            "each whole run (reset before it), so they also count the ticker's and the "
            "start-up's commands; *all commands* is every command of the run, the "
            "subscribers' connects included, which is Redis's share of the whole run.",
            "",
            "*Capacity for W workers on W cores* (N subscribers spread evenly): each "
            f"worker spends about N / W x {fmt(c_redis, 1)} µs per publish, which bounds "
            "the makespan; `redis-server` spends about one XADD plus W XREADs per publish "
            "and needs a core of its own beyond a few workers. Connection counts per "
            "worker are not controlled (the kernel spreads accepts), so the busier worker "
            "sets the makespan; the per-worker CPU column shows the split.",
            "",
        ]
    return parts


def _ms_per(cpu_s: Any, count: Any) -> float | None:
    if not isinstance(cpu_s, int | float) or not isinstance(count, int) or not count:
        return None
    return 1e3 * cpu_s / count


def _cmdstat(stats: dict[str, Any], name: str) -> str:
    entry = stats.get(name)
    if not entry:
        return "n/a"
    return f"{entry['calls']:,}, {entry['usec_per_call']:.1f}"


def _cmdstat_total(stats: dict[str, Any]) -> str:
    if not stats:
        return "n/a"
    calls = sum(entry["calls"] for entry in stats.values())
    usec = sum(entry["usec"] for entry in stats.values())
    return f"{calls:,}, {usec / 1000:.1f}"


def all_runs(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every run's result (a dict with a ``scenario``) anywhere in ``results``."""
    found: list[dict[str, Any]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "scenario" in node:
                found.append(node)
            else:
                for value in node.values():
                    walk(value)

    walk(results)
    return found


# --------------------------------------------------------------------------
# Storms, topics, cost per worker (Redis scale-out), jobs' memory
# --------------------------------------------------------------------------

TARGET_STORM_SERVED_PCT = 100.0
TARGET_TOPIC_RATIO = 1.5
TARGET_REDIS_COST_RATIO = 1.3
BROKER_NAMES = {
    "memory": "memory broker",
    "redis": "one Redis",
    "cluster": "Redis Cluster (3 masters)",
}


def redis_cpu_s(r: dict[str, Any] | None) -> float | None:
    """CPU of every redis-server (one, or each cluster node) over the window."""
    named = get(r, "cpu", "named_cpu_s") or {}
    values = [v for k, v in named.items() if k.startswith("redis-")]
    if not values or None in values:
        return None
    return float(sum(values))


def per_publish_us(r: dict[str, Any] | None, net: bool = False) -> float | None:
    """Worker CPU per publish (µs) over the publish window; ``net`` takes off what
    the worker spent meanwhile at its idle rate (measured just before)."""
    cpu = get(r, "cpu", "server_cpu_s")
    count = get(r, "publishes")
    if not isinstance(cpu, int | float) or not isinstance(count, int) or not count:
        return None
    if net:
        idle, idle_wall = get(r, "cpu_idle", "server_cpu_s"), get(r, "cpu_idle", "wall_s")
        wall = get(r, "cpu", "wall_s")
        if not isinstance(idle, int | float) or not idle_wall or not isinstance(wall, float):
            return None
        cpu = max(0.0, cpu - idle / idle_wall * wall)
    return 1e6 * float(cpu) / count


def first_publish_us(r: dict[str, Any] | None) -> float | None:
    """Worker CPU per channel for the first publishes made before the window."""
    return _per(get(r, "cpu_first", "server_cpu_s"), get(r, "first_publishes"))


def spread(values: list[float | None]) -> float | None:
    """Largest / smallest (None when any is missing)."""
    if not values or any(v is None or v <= 0 for v in values):
        return None
    numbers = [float(v) for v in values if v is not None]
    return max(numbers) / min(numbers)


def run_stamp(section: dict[str, Any]) -> str:
    """When the section ran; per broker when its brokers ran at different times."""
    by_run: dict[str, list[str]] = {}
    for kind, name in BROKER_NAMES.items():
        run = (section.get(kind) or {}).get("run")
        if run:
            by_run.setdefault(one_stamp(run), []).append(name)
    if len(by_run) > 1:
        return " ".join(f"{', '.join(names)}: {stamp}" for stamp, names in by_run.items())
    return one_stamp(section.get("run") or {})


def one_stamp(run: dict[str, Any]) -> str:
    if not run:
        return ""
    return (
        f"Run: {run.get('started', '?')}, {run.get('minutes', 0):.1f} minutes, product "
        f"{run.get('revision', '?')}"
        + (" — **smoke run: indicative only**" if run.get("smoke") else "")
        + "."
    )


def noise(r: dict[str, Any] | None) -> str:
    """Machine load next to a figure: load average before, other processes' CPU during."""
    if r is None:
        return "n/a"
    return f"{r.get('loadavg_before', '?')} / {fmt(r.get('other_cpu_cores'), 2)}"


def storm_section(results: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    storm = results.get("storm") or {}
    if not storm or "params" not in storm:
        return ["Not run (`bench/run --only storm`).", ""], []
    n = storm["params"]["n"]
    targets: list[dict[str, Any]] = []
    rows = []
    for kind, name in BROKER_NAMES.items():
        runs = storm.get(kind)
        if runs is None:
            continue
        if "error" in runs and not any(m in runs for m in ("distinct", "one")):
            rows.append([name, "all", "error: " + str(runs["error"])[:200], *[""] * 10])
            continue
        for mode in ("distinct", "one"):
            r = runs.get(mode)
            if r is None:
                continue
            label = f"{n:,} on {n:,} channels" if mode == "distinct" else f"{n:,} on one channel"
            if "error" in r:
                rows.append([name, label, "error: " + str(r["error"])[:200], *[""] * 10])
                ok = None
            else:
                ok = bool(
                    r.get("served") == r.get("n")
                    and r.get("status_5xx") == 0
                    and r.get("deliveries") == r.get("deliveries_expected")
                )
                rows.append(
                    [
                        name,
                        label,
                        f"{fmt(r.get('served_pct'), 1)} ({fmt(r.get('served'))})",
                        fmt(r.get("status_5xx")),
                        fmt(r.get("all_served_s"), 2),
                        fmt(get(r, "first_frame", "p50_ms"), 0),
                        fmt(r.get("placed_s"), 2) + ("" if r.get("placed") else " (not all)"),
                        f"{fmt(r.get('deliveries'))} of {fmt(r.get('deliveries_expected'))}",
                        fmt(get(r, "latency", "p99_ms"), 1),
                        fmt(get(r, "cpu_storm", "server_cpu_s"), 2)
                        + f" ({fmt(_per(get(r, 'cpu_storm', 'server_cpu_s'), r.get('n')), 0)} µs)",
                        fmt(redis_cpu_s({"cpu": r.get("cpu_storm")}), 2)
                        if kind != "memory"
                        else "—",
                        fmt(_pct(get(r, "cpu_storm", "client_cpu_util")), 0),
                        noise(r),
                    ]
                )
            targets.append(
                {
                    "metric": f"storm {label}, {name}: 100% served, 0 x 5xx, every delivery",
                    "product": get(r, "served_pct"),
                    "baseline": None,
                    "ratio": None,
                    "target": "100% served, 0 x 5xx",
                    "met": ok,
                }
            )
    met = sum(1 for t in targets if t["met"])
    logs: list[str] = []
    for kind, name in BROKER_NAMES.items():
        for mode in ("distinct", "one"):
            r = get(storm, kind, mode)
            if r is None or not r.get("server_warnings"):
                continue
            failed = "error" in r or r.get("deliveries") != r.get("deliveries_expected")
            if failed or not r.get("placed"):
                where = "many channels" if mode == "distinct" else "one channel"
                logs.append(f"* {name}, storm on {where}:")
                logs += [f"  * `{line}`" for line in r["server_warnings"]]
    parts = [
        run_stamp(storm),
        "",
        f"One asyncio client opens **{n:,} streams at once**: {n:,} tasks, each connecting "
        "as soon as one `asyncio.Event` is set (no pacing, no semaphore), then waits for the "
        "`200` and the first frame (`retry:`) of each. *Served*: both arrived. Then it waits "
        "until the server reports every stream as a placed subscriber (`/api/v1/stats`), "
        f"publishes (one publish to each of the {n:,} channels, or "
        f"{storm['params']['one_publishes']} to the one channel, each once the previous "
        "reached everyone) and counts the deliveries after parsing every stream. One worker, "
        "pinned to CPU 0 with every redis-server; the client on CPU 1. "
        f"**Targets: 100% served and 0 x 5xx in every storm (met: {met} of {len(targets)}).**",
        "",
        f"File descriptors: each connection costs one descriptor in the client and one in "
        f"the server; the two are separate processes, each under the hard limit of this "
        f"machine ({results.get('meta', {}).get('machine', {}).get('nofile', '?')} here), "
        f"so {n:,} fit (the storm needs about {n + 100:,} in each).",
        "",
        table(
            [
                "broker",
                "storm",
                "served (%)",
                "5xx",
                "all served in (s)",
                "first frame p50 (ms)",
                "all placed in (s)",
                "deliveries",
                "delivery p99 (ms)",
                "worker CPU, storm (s; per subscribe)",
                "redis CPU, storm (s)",
                "client CPU, storm (% core)",
                "load avg / other processes (cores)",
            ],
            rows,
        ),
        "",
        "*All served in*: from the start of the burst to the last stream's first frame. "
        "The burst waits in the kernel's accept queue (`backlog` 4096 in `hypercorn.toml`) "
        "and in SYN retries while one worker accepts and answers the streams one after "
        "another: *worker CPU, storm* (its CPU from the burst until all are placed, divided "
        "by N: the CPU one subscribe costs) bounds how fast that can go on one core, and "
        "other processes on that core stretch it further. *All placed in*: until the "
        "server counts every stream as a subscriber that follows its topic. *Load avg / "
        "other processes*: the 1-minute load average before the run, and the CPU that "
        "processes other than the server, Redis and the client used during it, in cores "
        "(other engineers' tests share these 2 cores; above about 0.3 the wall-clock "
        "figures of that run are inflated).",
        "",
    ]
    if logs:
        parts += [
            "What the server logged in the storms that missed their target (distinct "
            "warnings, with their counts):",
            "",
            *logs,
            "",
        ]
    return parts, targets


def with_range(cell: str, r: dict[str, Any] | None, key: str, digits: int) -> str:
    """``cell`` plus the range over the repeats it is the median of: "1,212 (1,064 to 1,300)"."""
    values = [v for v in (get(r, "repeats", key) or []) if isinstance(v, int | float)]
    if len(values) < 2:
        return cell
    return f"{cell} ({fmt(min(values), digits)} to {fmt(max(values), digits)})"


def topic_row(name: str, via: str, k: int, r: dict[str, Any], kind: str) -> list[str]:
    """One row of the topics table (a median of repeats shows their range)."""
    return [
        name,
        via,
        fmt(k),
        f"{fmt(r.get('deliveries'))} of {fmt(r.get('deliveries_expected'))}",
        with_range(fmt(per_publish_us(r), 0), r, "cpu_per_publish_us", 0),
        fmt(per_publish_us(r, net=True), 0),
        fmt(first_publish_us(r), 0),
        fmt(_per(redis_cpu_s(r), r.get("publishes")), 0) if kind != "memory" else "—",
        fmt(get(r, "latency", "p50_ms"), 2),
        with_range(fmt(get(r, "latency", "p99_ms"), 2), r, "p99_ms", 2),
        fmt(_pct(get(r, "cpu", "client_cpu_util")), 0),
        noise(r),
    ]


def repeats_sentence(params: dict[str, Any]) -> str:
    """How the repeats of each topic cell were run and reduced to one row."""
    repeats = int(params.get("repeats") or 1)
    if repeats < 2:
        return ""
    if params.get("order") == "blocks":
        how = (
            "A repeat runs every broker in turn, and a broker's redis-servers run only for "
            "its own block: started, warmed by one discarded run at the largest K, then its "
            "Ks in an order rotated from repeat to repeat, then stopped; so no idle server "
            "of another broker shares the worker's core, and no fresh server's first run is "
            "measured. "
        )
    else:  # the results of runs made before the blocks
        how = (
            "They were interleaved (every broker at one K, then the next K, then again), "
            "with every broker's servers up for the whole run. "
        )
    return (
        f"Each (K, broker) ran {repeats} times. {how}Each row is the run of median worker "
        "CPU with the median p50 and p99 of all runs; the range over the runs is in "
        "brackets, and the deliveries are the fewest any run made. "
    )


def topic_runs(results: dict[str, Any], kind: str, suffix: str = "") -> list[Any]:
    topics = results.get("topics") or {}
    runs = topics.get(kind) or {}
    return [runs.get(f"{k}{suffix}") for k in (topics.get("params") or {}).get("ks", [])]


def topics_section(results: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    topics = results.get("topics") or {}
    if not topics or "params" not in topics:
        return ["Not run (`bench/run --only topics`).", ""], []
    params = topics["params"]
    ks = params["ks"]
    targets: list[dict[str, Any]] = []
    rows = []
    for kind, name in BROKER_NAMES.items():
        if kind not in topics:
            continue
        if "error" in topics[kind] and not any(str(k) in topics[kind] for k in ks):
            rows.append([name, "all", "error: " + str(topics[kind]["error"])[:200], *[""] * 9])
            continue
        for suffix, via in (("", "POST"), ("-read", "into Redis")):
            runs = topic_runs(results, kind, suffix)
            if kind == "memory" and suffix:
                continue
            for k, r in zip(ks, runs, strict=True):
                if r is None:
                    continue
                if "error" in r:
                    rows.append([name, via, fmt(k), "error: " + str(r["error"])[:200], *[""] * 8])
                    continue
                rows.append(topic_row(name, via, k, r, kind))
            top = ks[-1] if ks else 0
            diag = (topics.get(kind) or {}).get(f"{top}{suffix}-nostats")
            if diag is not None and "error" not in diag:
                rows.append(topic_row(name, f"{via}, statistics every 600 s", top, diag, kind))
            if suffix:
                continue
            cpu_spread = spread([per_publish_us(r) for r in runs])
            p99_spread = spread([get(r, "latency", "p99_ms") for r in runs])
            complete = all(
                r is not None
                and "error" not in r
                and r.get("deliveries") == r.get("deliveries_expected")
                for r in runs
            )
            for metric, value in (
                ("server CPU per publish", cpu_spread),
                ("delivery p99", p99_spread),
            ):
                targets.append(
                    {
                        "metric": f"topics K={'/'.join(f'{k:,}' for k in ks)}, {name}: "
                        f"{metric}, largest / smallest",
                        "product": value,
                        "baseline": None,
                        "ratio": value,
                        "target": f"<= {TARGET_TOPIC_RATIO}x",
                        "met": None
                        if value is None
                        else (value <= TARGET_TOPIC_RATIO and complete),
                    }
                )
    ratio_rows = [
        [t["metric"], fmt_ratio(t["ratio"]), t["target"], verdict(t["met"])] for t in targets
    ]
    met = sum(1 for t in targets if t["met"])
    parts = [
        run_stamp(topics),
        "",
        f"K channels with one subscriber each (K = {', '.join(f'{k:,}' for k in ks)}), on one "
        f"worker; then {params['publishes']:,} publishes spread round-robin over the K "
        f"channels at a steady {params['rate']:g} per second (by `POST /channels/<name>` "
        "over 4 keep-alive connections), each carrying its send time. *Worker CPU per "
        "publish*: the worker's CPU (`/proc/<pid>/stat`) from the first publish until every "
        "delivery arrived, divided by the publishes; *net* takes off what the worker spent "
        "at idle over the same time (measured for 3 s just before, with the K streams "
        "open). The channels are *active*: before the window each got one publish "
        "(unpaced), so the window measures publishing to channels that exist; those first "
        "publishes, which also take the channel's `MAX_CHANNELS` slot (one more round trip "
        "on Redis), are *first publish to a channel*. "
        "*Delivery*: client receive time - send time. On Redis the same load also "
        "ran with the publishes made straight into Redis by the client (the product's own "
        "broker code, on the client's core): the worker then only reads notifications and "
        "delivers, which is **the Redis read path's cost per process**. Heartbeats are set "
        "to 600 s in these runs (a per-connection cost, measured by *hold*), so that they "
        "do not land in the window. "
        + repeats_sentence(params)
        + f"**Target: largest / smallest within {TARGET_TOPIC_RATIO:g}x over K (met: {met} of "
        f"{len(targets)}).**",
        "",
        table(
            [
                "broker",
                "publishes",
                "K",
                "deliveries",
                "worker CPU per publish (µs)",
                "net of idle (µs)",
                "first publish to a channel (µs)",
                "redis CPU per publish (µs)",
                "delivery p50 (ms)",
                "delivery p99 (ms)",
                "client CPU (% core)",
                "load avg / other processes (cores)",
            ],
            rows,
        ),
        "",
        table(["ratio over K", "largest / smallest", "target", "met?"], ratio_rows),
        "",
        "*Statistics every 600 s* (a diagnostic, not a target): the largest K again with "
        "`QUART_STATS_INTERVAL_S=600`. Every STATS_INTERVAL_S (1 s by default) each "
        "process builds its gauges (subscribers of the 100 busiest topics by name, the "
        "rest summed per kind) and on Redis sends them to Redis. They are read from a "
        "tally kept as subscribers join and leave, and nothing else that runs once a "
        "second (topic expiry, the follower's linger sweep) walks every topic, so these "
        "rows should match the default ones: a check that no per-second work grows with "
        "K. Before (0.2.0) the walk held the loop for about 20 ms a second at K = 10,000, "
        "which reached the delivery p99.",
        "",
    ]
    return parts, targets


def cost_section(results: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    """Redis against memory on one worker, the read path per process, and capacity."""
    topics = results.get("topics") or {}
    storm = results.get("storm") or {}
    params = topics.get("params") or {}
    ks = params.get("ks") or []
    if not ks:
        return ["Not run (needs `bench/run --only topics`).", ""], []
    targets: list[dict[str, Any]] = []
    rows = []
    memory = topic_runs(results, "memory")
    for kind in ("redis", "cluster"):
        if kind not in topics:
            continue
        for k, mem, red in zip(ks, memory, topic_runs(results, kind), strict=True):
            a, b = per_publish_us(red), per_publish_us(mem)
            r = ratio(a, b)
            label = f"K={k:,}: worker CPU per publish, {BROKER_NAMES[kind]} / memory (µs)"
            rows.append([label, f"{fmt(a, 0)} / {fmt(b, 0)}", fmt_ratio(r)])
            targets.append(
                {
                    "metric": label,
                    "product": a,
                    "baseline": b,
                    "ratio": r,
                    "target": f"<= {TARGET_REDIS_COST_RATIO}x",
                    "met": None if r is None else r <= TARGET_REDIS_COST_RATIO,
                }
            )
    fan: dict[str, float | None] = {}
    for kind in BROKER_NAMES:
        r = get(storm, kind, "one")
        fan[kind] = _per(get(r, "cpu", "server_cpu_s"), get(r, "deliveries"))
    n = get(storm, "params", "n") or 0
    for kind in ("redis", "cluster"):
        if fan.get(kind) is None:
            continue
        r = ratio(fan[kind], fan["memory"])
        label = (
            f"fan-out {n:,} subscribers of one channel: worker CPU per delivery, "
            f"{BROKER_NAMES[kind]} / memory (µs)"
        )
        rows.append([label, f"{fmt(fan[kind], 1)} / {fmt(fan['memory'], 1)}", fmt_ratio(r)])
        targets.append(
            {
                "metric": label,
                "product": fan[kind],
                "baseline": fan["memory"],
                "ratio": r,
                "target": f"<= {TARGET_REDIS_COST_RATIO}x",
                "met": None if r is None else r <= TARGET_REDIS_COST_RATIO,
            }
        )
    met = sum(1 for t in targets if t["met"])
    # The per-process figures behind the capacity argument, at the middle K.
    mid = ks[len(ks) // 2]
    index = ks.index(mid)
    post_mem = per_publish_us(memory[index])
    post_redis = per_publish_us(topic_runs(results, "redis")[index])
    read = per_publish_us(topic_runs(results, "redis", "-read")[index])
    redis_pub = _per(redis_cpu_s(topic_runs(results, "redis")[index]), params.get("publishes"))
    deliver = fan.get("redis") or fan.get("memory")
    parts = [
        "Redis against memory on one worker for the same load (the topic runs above, and the "
        "one-channel storm's publishes), and what the Redis read path costs each process. "
        f"**Target: Redis within {TARGET_REDIS_COST_RATIO:g}x of memory (met: {met} of "
        f"{len(targets)}).**",
        "",
        table(["cost on one worker", "Redis / memory", "ratio"], rows),
        "",
    ]
    if None in (post_redis, read, redis_pub, deliver):
        return [*parts, "Capacity: not computed (a run is missing).", ""], targets
    assert post_redis is not None and read is not None and redis_pub is not None
    assert deliver is not None
    write = max(0.0, post_redis - read)
    parts += [
        f"**Per-process costs** (one Redis, K = {mid:,}; CPU time, so they depend little on "
        "the sharing of this machine's 2 cores):",
        "",
        f"* *accepting a publish* (`POST`, validation, the publish script's round trip): "
        f"about **{write:,.0f} µs** in the worker that receives it "
        f"({post_redis:,.0f} µs per publish in total, less the read path below; the memory "
        f"broker's whole publish is {fmt(post_mem, 0)} µs);",
        f"* *the read path*: **{read:,.0f} µs** per publish in **every process that follows "
        "the topic** (one notification read on the shard's pub/sub connection, appended to "
        "the local history, plus its one delivery), whatever the number of topics (table "
        "above);",
        f"* *each further local subscriber*: **{deliver:,.1f} µs** per delivery (the "
        "one-channel storm's fan-out);",
        f"* *Redis*: **{redis_pub:,.0f} µs** of redis-server CPU per publish (the script's "
        "XADD and SPUBLISH, the notification to each following process, and its network "
        "I/O; an upper bound: it includes Redis's housekeeping).",
        "",
        "*Capacity for W workers on W cores* (a worker saturates at 1 core-second per "
        "second; Redis is single-threaded per shard):",
        "",
        f"* *Many topics, each followed by one process* (chat rooms, per-user channels): a "
        f"publish costs ({write:,.0f} + {read:,.0f}) µs of some worker, so W workers take "
        f"about W x {1e6 / (write + read):,.0f} publishes/s; one Redis takes about "
        f"{1e6 / redis_pub:,.0f} publishes/s of its core, so past "
        f"W = {max(1, round((write + read) / redis_pub))} workers Redis is the limit, and a "
        f"cluster of S masters multiplies it by about S (topics spread by hash slot).",
        f"* *One topic followed by every process with N subscribers in all* (a broadcast): "
        f"each publish costs every worker {read:,.0f} µs + N / W x {deliver:,.1f} µs; at "
        f"N = 10,000 and W = 1, 2, 4, 8 that is "
        + ", ".join(f"{(read + 10_000 / w * deliver) / 1000:,.1f}" for w in (1, 2, 4, 8))
        + " ms of CPU per worker per publish, which is both the makespan of one publish "
        "and the inverse of the publish rate a worker sustains; Redis sends W notifications "
        "per publish, so its cost grows with W, not with N.",
        "* Hosts: the same per-process figures hold on every host, since a process talks to "
        "Redis only; loopback hides the network's latency, not its CPU.",
        "",
        "This machine has 2 cores, one for the client: more than one worker would share "
        "CPU 0 with each other and with Redis, so the scaling is computed from these "
        "per-process costs rather than shown.",
        "",
    ]
    return parts, targets


# The fault campaigns' figures (``bench/campaign.py --record-into``): their own runs.
CAMPAIGNS = Path(__file__).resolve().parents[1] / "docs" / "campaigns.json"


def _words(kind: Any) -> str:
    return str(kind or "?").replace("_", " ")


def campaign_section(path: Path = CAMPAIGNS) -> list[str]:
    """The fault campaigns (issue 23), from the figures each run recorded."""
    try:
        runs = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    if not runs:
        return []
    rows = []
    for run in runs:
        f = run["figures"]
        faults = ", ".join(f"{_words(kind)} {count}" for kind, count in sorted(f["faults"].items()))
        slowest = f.get("slowest_recovery") or {}
        alone = f.get("slowest_recovery_alone") or {}
        rows.append(
            [
                f"{run['topology']}{' + partitions' if run.get('partitions') else ''}, "
                f"{run['minutes']:g} min, seed {run['seed']} ({run['revision']})",
                f"{sum(f['faults'].values())}: {faults}",
                f"{f['channel_events_checked']:,} ({f['gaps_received']:,} gaps; "
                f"{f['retried_publishes']:,} retried publishes, "
                f"{f.get('republished_after_data_loss', 0)} copied across a data loss)",
                f"{f['jobs_accepted']} ({f['job_indices_checked']:,}); ends "
                + ", ".join(f"{k} {v}" for k, v in sorted(f["jobs"].items())),
                f"**{run['violations']}**",
                f"{slowest.get('seconds', '?')} s ({_words(slowest.get('kind'))}; its "
                f"window {slowest.get('window_s', '?')} s); a fault alone: "
                f"{alone.get('seconds', '?')} s ({_words(alone.get('kind'))})",
            ]
        )
    return [
        "## Fault campaigns (issue 23)",
        "",
        "`bench/campaign.py`: two hosts (two workers each) on one Redis topology under "
        "steady load (publishers that retry with idempotency keys, subscribers that resume "
        "on the other host, a watched 300-string job every ~5 s), faults injected at random "
        "(seeded; a process fault and a link fault may overlap), and a checker of the whole "
        "history: every acknowledged publish delivered once and in order or covered by a "
        "`gap`, every job index once with the result equal on every host to what was "
        "streamed, no `5xx` outside the fault windows and never a `500` "
        "(`docs/RELIABILITY.md` §10). Each run is its own, on this 2-core machine, three "
        "runs at a time; *recovery* is from the end of a fault to `/healthz` 200 on every "
        "worker and a publish on each host reaching a subscriber on the other.",
        "",
        table(
            [
                "run",
                "faults",
                "channel events checked",
                "jobs (indices)",
                "violations",
                "slowest recovery",
            ],
            rows,
        ),
        "",
        *(
            f"* {run['topology']}, seed {run['seed']}: {run['found']}"
            for run in runs
            if run.get("found")
        ),
        "",
    ]


def extra_sections(results: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    storm, t1 = storm_section(results)
    topics, t2 = topics_section(results)
    cost, t3 = cost_section(results)
    jobmem, t4 = jobmem_section(results)
    parts = [
        *redesign_section(results),
        "## Storms (Redis scale-out, issue 12)",
        "",
        *storm,
        "## Cost as topics grow",
        "",
        *topics,
        "## Cost per worker, and capacity",
        "",
        *cost,
        "## Jobs' memory and replay from storage (issue 11)",
        "",
        *jobmem,
    ]
    return parts, [*t1, *t2, *t3, *t4]


def raw_json(results: dict[str, Any]) -> str:
    """The raw results, one key a line deep; the before/after runs one line per run."""
    redesign = results.get("redesign")
    if not isinstance(redesign, dict):
        return json.dumps(results, indent=1)
    marker = "@@redesign@@"
    text = json.dumps({**results, "redesign": marker}, indent=1)
    sides = {
        name: {
            **{k: v for k, v in side.items() if k != "runs"},
            "runs": [json.dumps(run, separators=(",", ":")) for run in side.get("runs", [])],
        }
        for name, side in redesign.items()
        if isinstance(side, dict)
    }
    lines = ["{"]
    items = [(k, v) for k, v in redesign.items() if not isinstance(v, dict)]
    for key, value in items:
        lines.append(f"  {json.dumps(key)}: {json.dumps(value)},")
    for index, (name, side) in enumerate(sides.items()):
        lines.append(f"  {json.dumps(name)}: {{")
        for key, value in side.items():
            if key != "runs":
                lines.append(f"   {json.dumps(key)}: {json.dumps(value)},")
        lines.append('   "runs": [')
        lines.append(",\n".join(f"    {run}" for run in side["runs"]))
        lines.append("   ]")
        lines.append("  }" + ("," if index < len(sides) - 1 else ""))
    lines.append(" }")
    return text.replace(json.dumps(marker), "\n".join(lines))


def _number(cell: str) -> float | None:
    """A table cell's number (of ``a / b``, the first: the row's own figure; without
    the ratio in brackets that follows it)."""
    try:
        return float(cell.split(" / ", 1)[0].split(" (", 1)[0].replace(",", "").rstrip("x"))
    except ValueError:
        return None


def redesign_section(results: dict[str, Any]) -> list[str]:
    """Runs of the main table before and after a change, on the same machine (``redesign``).

    ``results["redesign"]``: ``{"title", "about", "before": {"rev", "runs": [...]},
    "after": {...}}``, each run the raw results of some of the main scenarios (a
    scenario run more often has more runs).  Noise is the larger relative spread
    between the runs of one side; a metric is worse only past that noise.
    """
    section = results.get("redesign")
    if not isinstance(section, dict):
        return []
    sides = [section.get("before") or {}, section.get("after") or {}]
    if not all(side.get("runs") for side in sides):
        return []
    # Per side, per metric (the main table's label), the product's figure of each run.
    figures: list[dict[str, list[float]]] = []
    labels: list[str] = []
    for side in sides:
        by_label: dict[str, list[float]] = {}
        for run in side["runs"]:
            for row in build_rows(run, FULL)[0]:
                value = _number(row[1])
                if value is None or "(%)" in row[0] or "deliveries" in row[0]:
                    continue
                by_label.setdefault(row[0], []).append(value)
                if row[0] not in labels:
                    labels.append(row[0])
        figures.append(by_label)
    header = [
        "metric (product)",
        f"before ({sides[0].get('rev', '?')}), each run",
        f"after ({sides[1].get('rev', '?')}), each run",
        "noise (larger spread)",
        "after / before (means)",
        "worse past noise?",
    ]
    rows: list[list[str]] = []
    worse = 0
    for label in labels:
        before, after = (side.get(label) or [] for side in figures)
        if len(before) < 2 or len(after) < 2:
            continue
        mean_before, mean_after = sum(before) / len(before), sum(after) / len(after)
        spreads = [
            (max(v) - min(v)) / (sum(v) / len(v)) if sum(v) else 0.0 for v in (before, after)
        ]
        noise_ratio = max(spreads)
        change = mean_after / mean_before if mean_before else None
        # Higher is better only for throughput; everything else is a latency or a cost.
        higher_is_better = "events/s" in label
        verdict_cell = ""
        if change is not None:
            loss = (1 / change - 1) if higher_is_better else (change - 1)
            verdict_cell = "**yes**" if loss > noise_ratio else "no"
            worse += verdict_cell == "**yes**"
        rows.append(
            [
                label,
                ", ".join(fmt(v) for v in before),
                ", ".join(fmt(v) for v in after),
                f"{noise_ratio:.0%}",
                fmt_ratio(change),
                verdict_cell,
            ]
        )
    return [
        f"## {section.get('title', 'Before and after')}",
        "",
        str(section.get("about", "")),
        "",
        table(header, rows),
        "",
        f"Metrics worse after than before by more than the noise: **{worse} of {len(rows)}**.",
        "",
    ]


def jobmem_section(results: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    jobmem = results.get("jobmem") or {}
    if not jobmem or "skipped" in jobmem:
        reason = jobmem.get("skipped") if jobmem else "not run (`bench/run --only jobmem`)"
        return [f"{reason}.", ""], []
    params = jobmem.get("params") or {}
    jobs, amount, length = params.get("jobs"), params.get("amount"), params.get("length")
    paired = params.get("paired_jobs")
    limits = jobmem.get("limits") or {}

    def mib(value: Any) -> str:
        return "n/a" if not isinstance(value, int) else f"{value / 1024:,.0f}"

    rows = []
    for name, count, label in (
        ("storage", jobs, "product: replay from storage (journal)"),
        ("pair-storage", paired, "product: replay from storage (journal)"),
        ("pair-memory", paired, "every event kept in memory (replay as before the journal)"),
    ):
        r = jobmem.get(name)
        if r is None or (name == "pair-storage" and paired == jobs):
            continue
        if "error" in r:
            rows.append([label, fmt(count), "error: " + str(r["error"])[:300], *[""] * 10])
            continue
        rows.append(
            [
                label,
                fmt(count),
                f"{fmt(get(r, 'watched', 'complete'))} / {fmt(get(r, 'replayed', 'complete'))}",
                mib(r.get("rss_before_kib")),
                mib(r.get("rss_peak_watched_kib")),
                mib(r.get("rss_after_watched_kib")),
                mib(r.get("rss_peak_replayed_kib")),
                fmt(get(r, "watched", "events_per_s"), 0),
                fmt(get(r, "replayed", "events_per_s"), 0),
                fmt(_per(get(r, "cpu", "server_cpu_s"), get(r, "replayed", "events")), 2),
                fmt(_pct(get(r, "cpu", "server_cpu_util")), 0),
                fmt(_pct(get(r, "cpu", "client_cpu_util")), 0),
                noise(r),
            ]
        )
    storage, memory = jobmem.get("pair-storage"), jobmem.get("pair-memory")
    cpu_ratio = ratio(
        _per(get(storage, "cpu", "server_cpu_s"), get(storage, "replayed", "events")),
        _per(get(memory, "cpu", "server_cpu_s"), get(memory, "replayed", "events")),
    )
    client_bound = [
        name
        for name, r in (("storage", storage), ("memory", memory))
        if (get(r, "cpu", "client_cpu_util") or 0) >= 0.8
    ]
    rate = ratio(get(storage, "replayed", "events_per_s"), get(memory, "replayed", "events_per_s"))
    held = ratio(get(storage, "rss_after_watched_kib"), get(memory, "rss_after_watched_kib"))
    full = (
        jobs == limits.get("MAX_JOBS")
        and amount == limits.get("MAX_AMOUNT")
        and length == limits.get("MAX_LENGTH")
    )
    parts = [
        run_stamp(jobmem),
        "",
        f"One worker, memory broker: jobs of **{fmt(amount)} strings x {fmt(length)} "
        "characters** started at once by `GET /generate` and watched to their `done`, then "
        "each replayed from its start (`GET /jobs/<id>/events`, all at once); "
        f"**{fmt(jobs)} jobs** on the product"
        + (
            " (MAX_JOBS x MAX_AMOUNT x MAX_LENGTH: the product's limits). "
            if full
            else f" (the product's limits are {fmt(limits.get('MAX_JOBS'))} x "
            f"{fmt(limits.get('MAX_AMOUNT'))} x {fmt(limits.get('MAX_LENGTH'))}; this run "
            "is smaller). "
        )
        + "The worker's VmRSS is sampled every 0.25 s. In the same run, "
        f"{fmt(paired)} jobs of that size are served by the product and by the product "
        f"with every event of a job kept in its topic until the job's TTL "
        f"(`{jobmem.get('memory_replay', 'bench/memory_replay_app.py')}`), which is how "
        "jobs were replayed before the journal"
        + (
            "."
            if paired == jobs
            else f" ({fmt(paired)}, not {fmt(jobs)}: keeping every event of {fmt(jobs)} "
            "jobs in memory would take more than this shared machine can give)."
        ),
        "",
        table(
            [
                "server",
                "jobs",
                "complete: watched / replayed",
                "RSS before (MiB)",
                "RSS peak, watched (MiB)",
                "RSS after the jobs ended (MiB)",
                "RSS peak, replayed (MiB)",
                "events/s, watched",
                "events/s, replayed",
                "server CPU per replayed event (µs)",
                "server CPU, replay (% core)",
                "client CPU, replay (% core)",
                "load avg / other processes (cores)",
            ],
            rows,
        ),
        "",
        f"*Replay rate, storage / memory* ({fmt(paired)} jobs each): **{fmt_ratio(rate)}**"
        + (
            f" (the {' and '.join(client_bound)} replay kept the client's core busy: "
            "there the rate is the client's, and the server could go faster)"
            if client_bound
            else ""
        )
        + f"; *server CPU per replayed event, storage / memory*: **{fmt_ratio(cpu_ratio)}**. "
        f"*RSS after the jobs ended, storage / memory*: **{fmt_ratio(held)}** (what a worker "
        "keeps while finished jobs wait for their TTL).",
        "",
    ]
    return parts, []


def scale_chart(results: dict[str, Any], path: Path) -> bool:
    """Storms (time until all served) and topics (CPU per publish, p99) per broker."""
    storm, topics = results.get("storm") or {}, results.get("topics") or {}
    if "params" not in storm and "params" not in topics:
        return False
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is missing: no chart")
        return False
    colors = {"memory": "#1f77b4", "redis": "#d62728", "cluster": "#2ca02c"}
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.4))
    ax = axes[0]
    kinds = [k for k in BROKER_NAMES if k in storm]
    width = 0.8 / max(1, len(kinds))
    for index, kind in enumerate(kinds):
        values = [get(storm, kind, mode, "all_served_s") or 0 for mode in ("distinct", "one")]
        offset = (index - (len(kinds) - 1) / 2) * width
        bars = ax.bar(
            [x + offset for x in (0, 1)],
            values,
            width,
            label=BROKER_NAMES[kind],
            color=colors[kind],
        )
        for bar, mode in zip(bars, ("distinct", "one"), strict=True):
            r = get(storm, kind, mode) or {}
            ax.annotate(
                f"{fmt(r.get('served_pct'), 0)}%\n{fmt(r.get('status_5xx'))}x5xx",
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=7,
            )
    n = get(storm, "params", "n") or 0
    ax.set_xticks([0, 1], [f"{n:,} channels", "one channel"])
    ax.set_title(f"storm: {n:,} subscribes at once\n(time until all served; % served, 5xx)")
    ax.set_ylabel("s")
    ax.margins(y=0.25)
    ax.legend(loc="upper left", fontsize=8)
    ks = get(topics, "params", "ks") or []
    for ax, title, value in (
        (axes[1], "topics: worker CPU per publish", lambda r: per_publish_us(r)),
        (axes[2], "topics: delivery p99", lambda r: get(r, "latency", "p99_ms")),
    ):
        for kind in BROKER_NAMES:
            if kind not in topics:
                continue
            ys = [value(r) for r in topic_runs(results, kind)]
            ax.plot(
                [f"{k:,}" for k in ks],
                [y if y is not None else float("nan") for y in ys],
                marker="o",
                label=BROKER_NAMES[kind],
                color=colors[kind],
            )
            if kind != "memory" and title.endswith("per publish"):
                reads = [per_publish_us(r) for r in topic_runs(results, kind, "-read")]
                ax.plot(
                    [f"{k:,}" for k in ks],
                    [y if y is not None else float("nan") for y in reads],
                    marker="x",
                    linestyle="--",
                    label=f"{BROKER_NAMES[kind]}: read path only",
                    color=colors[kind],
                )
        ax.set_xlabel("active topics K (one subscriber each)")
        ax.set_ylabel("µs" if title.endswith("per publish") else "ms")
        ax.set_title(title)
        ax.set_ylim(bottom=0)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="lower right")
    fig.suptitle("Redis scale-out: storms and many topics (one worker on one core)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
