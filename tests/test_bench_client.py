"""The benchmark client's own SSE parser and chunked decoder (bench/client.py).

Table-driven: each case is fed whole, split at every byte position, and byte
by byte, and must give the same events every time.  A property test checks it
against the tests' strict parser on arbitrary streams and arbitrary splits.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from .sse_parser import StrictParser

_PATH = Path(__file__).resolve().parent.parent / "bench" / "client.py"
_spec = importlib.util.spec_from_file_location("bench_client", _PATH)
assert _spec is not None and _spec.loader is not None
client = importlib.util.module_from_spec(_spec)
sys.modules["bench_client"] = client
_spec.loader.exec_module(client)

E = client.Event

# (name, stream bytes, expected events, expected comment count, expected retry)
CASES = [
    ("one event, LF", b"data: hello\n\n", [E("message", "hello", None)], 0, None),
    ("one event, CRLF", b"data: hello\r\n\r\n", [E("message", "hello", None)], 0, None),
    ("one event, CR", b"data: hello\r\r", [E("message", "hello", None)], 0, None),
    (
        "typed event with id",
        b'id: 7\nevent: newnumber\ndata: {"n": 1}\n\n',
        [E("newnumber", '{"n": 1}', "7")],
        0,
        None,
    ),
    (
        "multi-line data, mixed line endings",
        b"data: a\r\ndata: b\rdata: c\n\n",
        [E("message", "a\nb\nc", None)],
        0,
        None,
    ),
    (
        "comments are skipped and counted",
        b": keep-alive\n\n:\n\ndata: x\n\n",
        [E("message", "x", None)],
        2,
        None,
    ),
    ("retry only", b"retry: 3000\n\n", [], 0, 3000),
    ("retry not digits is ignored", b"retry: 3s\ndata: x\n\n", [E("message", "x", None)], 0, None),
    (
        "no data: nothing dispatched, type reset",
        b"event: a\n\ndata: x\n\n",
        [E("message", "x", None)],
        0,
        None,
    ),
    ("empty data line dispatches empty data", b"data:\n\n", [E("message", "", None)], 0, None),
    ("field without colon", b"data\ndata\n\n", [E("message", "\n", None)], 0, None),
    ("no space after colon", b"data:x\n\n", [E("message", "x", None)], 0, None),
    ("only one leading space removed", b"data:  x\n\n", [E("message", " x", None)], 0, None),
    ("colon in value kept", b"data: a: b\n\n", [E("message", "a: b", None)], 0, None),
    (
        "id persists across events",
        b"id: 1\ndata: a\n\ndata: b\n\n",
        [E("message", "a", "1"), E("message", "b", "1")],
        0,
        None,
    ),
    (
        "id with NUL is ignored",
        b"id: 1\ndata: a\n\nid: 2\x003\ndata: b\n\n",
        [E("message", "a", "1"), E("message", "b", "1")],
        0,
        None,
    ),
    (
        "empty id resets",
        b"id: 1\ndata: a\n\nid\ndata: b\n\n",
        [E("message", "a", "1"), E("message", "b", "")],
        0,
        None,
    ),
    ("unknown field ignored", b"foo: bar\ndata: x\n\n", [E("message", "x", None)], 0, None),
    (
        "unterminated event is not dispatched",
        b"data: a\n\ndata: b\n",
        [E("message", "a", None)],
        0,
        None,
    ),
    ("leading BOM skipped", b"\xef\xbb\xbfdata: x\n\n", [E("message", "x", None)], 0, None),
    ("UTF-8 data", "data: żółw ✓\n\n".encode(), [E("message", "żółw ✓", None)], 0, None),
    (
        "job stream with done",
        b"retry: 3000\n\nid: j:1\ndata: {}\n\nid: j:done\nevent: done\ndata: {}\n\n",
        [E("message", "{}", "j:1"), E("done", "{}", "j:done")],
        0,
        3000,
    ),
    ("CR then CRLF: two line ends", b"data: a\r\r\n", [E("message", "a", None)], 0, None),
]


def _feed(pieces: list[bytes]) -> tuple[list[Any], Any]:
    parser = client.SSEParser()
    events: list[Any] = []
    for piece in pieces:
        events.extend(parser.feed(piece))
    return events, parser


@pytest.mark.parametrize(
    ("raw", "expected", "comments", "retry"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_parser_table(raw: bytes, expected: list, comments: int, retry: int | None) -> None:
    splits = [[raw], [raw[i : i + 1] for i in range(len(raw))]]
    splits += [[raw[:cut], raw[cut:]] for cut in range(1, len(raw))]
    for pieces in splits:
        events, parser = _feed(pieces)
        assert events == expected, pieces
        assert parser.comments == comments, pieces
        assert parser.retry == retry, pieces


def test_empty_piece_keeps_pending_cr() -> None:
    events, _ = _feed([b"data: a\r", b"", b"\n\n"])
    assert events == [E("message", "a", None)]


def _chunked(payloads: list[bytes]) -> bytes:
    return (
        b"".join(
            b"%x;ext=1\r\n%s\r\n" % (len(p), p) if i % 2 else b"%X\r\n%s\r\n" % (len(p), p)
            for i, p in enumerate(payloads)
        )
        + b"0\r\n\r\n"
    )


@pytest.mark.parametrize(
    "payloads",
    [[b"a"], [b"retry: 3000\n\n", b"data: x\n\n" * 40], [bytes(range(256)) * 3, b"\r\n" * 9]],
)
def test_chunked_decoder_any_split(payloads: list[bytes]) -> None:
    raw = _chunked(payloads)
    for step in (1, 2, 3, 7, 64, len(raw)):
        decoder = client.ChunkedDecoder()
        out = b"".join(b"".join(decoder.feed(raw[i : i + step])) for i in range(0, len(raw), step))
        assert out == b"".join(payloads)
        assert decoder.done


def test_chunked_decoder_rejects_missing_crlf() -> None:
    with pytest.raises(ValueError):
        client.ChunkedDecoder().feed(b"3\r\nabcXY")


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert client.percentile(values, 0.5) == 50.0
    assert client.percentile(values, 0.99) == 99.0
    assert client.percentile([], 0.5) is None


def test_cpu_pid_option() -> None:
    args = client.build_parser().parse_args(
        ["fanout", "--port", "1", "--cpu-pid", "redis=12", "--cpu-pid", "worker-2=34"]
    )
    assert args.cpu_pid == [("redis", 12), ("worker-2", 34)]
    assert client.build_parser().parse_args(["fanout", "--port", "1"]).cpu_pid == []
    for bad in ("12", "=12", "redis=", "redis=x", "redis=0"):
        with pytest.raises(SystemExit):
            client.build_parser().parse_args(["fanout", "--port", "1", "--cpu-pid", bad])


def test_cpu_meter_named_processes() -> None:
    import os

    meter = client.CpuMeter(os.getpid(), [("me", os.getpid()), ("gone", 2**22 + 1)])
    cpu = meter.stop()
    assert cpu["named_cpu_s"]["me"] is not None and cpu["named_cpu_s"]["me"] >= 0
    assert cpu["named_cpu_s"]["gone"] is None
    assert "named_cpu_s" not in client.CpuMeter(None).stop()


_text = st.lists(
    st.sampled_from(
        [
            "data: a",
            "data:b",
            "data",
            "event: t",
            "id: 5",
            "id: x\x00",
            ": c",
            "retry: 10",
            "x: y",
            "",
            "data: é",
        ]
    ),
    max_size=12,
)


@settings(max_examples=150, deadline=None)
@given(
    lines=_text,
    endings=st.lists(st.sampled_from(["\n", "\r\n", "\r"]), min_size=1, max_size=12),
    cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=6),
)
def test_matches_strict_parser(lines: list[str], endings: list[str], cuts: list[int]) -> None:
    text = "".join(line + endings[i % len(endings)] for i, line in enumerate(lines))
    raw = text.encode()
    strict = StrictParser()
    strict.feed(text)
    if strict.result.incomplete.endswith("\r"):
        strict.feed("\n")  # our parser ends a line at CR at once; the strict one waits
        raw += b"\n"
    points = sorted({min(c, len(raw)) for c in cuts})
    pieces = [raw[a:b] for a, b in zip([0, *points], [*points, len(raw)], strict=True)]
    events, parser = _feed(pieces)
    assert [(e.type, e.data, e.id or "") for e in events] == [
        (e.type, e.data, e.last_event_id) for e in strict.result.events
    ]
    assert parser.comments == len(strict.result.comments)


def test_topic_repeats_report_the_median_run_and_never_hide_a_failure() -> None:
    from bench.scenarios import median_run

    def run(cpu_s: float, p99: float, deliveries: int = 100) -> dict[str, Any]:
        return {
            "publishes": 100,
            "deliveries": deliveries,
            "cpu": {"server_cpu_s": cpu_s},
            "latency": {"p50_ms": p99 / 2, "p99_ms": p99},
        }

    row = median_run([run(0.3, 9.0), run(0.1, 1.0), run(0.2, 2.0, deliveries=99)])
    assert row["cpu"]["server_cpu_s"] == 0.2  # the run of median CPU
    assert row["latency"]["p99_ms"] == 2.0  # the median p99 of all runs
    assert row["deliveries"] == 99  # the fewest any run made
    assert row["repeats"]["cpu_per_publish_us"] == [3000.0, 1000.0, 2000.0]
    failed = median_run([run(0.1, 1.0), {"error": "server did not start"}])
    assert failed["deliveries"] == 0 and failed["repeats"]["failed"] == 1


def test_topic_runs_rotate_the_ks_so_each_k_runs_first_once() -> None:
    from bench.scenarios import topic_order

    ks = [10, 1000, 10000]
    orders = [topic_order(ks, rep) for rep in range(len(ks))]
    assert all(sorted(order) == ks for order in orders)  # every K in every repeat
    for place in range(len(ks)):  # and in every place once
        assert sorted(order[place] for order in orders) == ks
    assert topic_order(ks, len(ks)) == ks


def _main_results(kinds: tuple[str, ...]) -> dict[str, Any]:
    """Main-table results of a tiny plan (hold 10, fan-out 10 x 2, generate 1 x 10)."""

    def hold(rss: float, p99: float) -> dict[str, Any]:
        return {
            "scenario": "hold",
            "connected": 10,
            "streams_all_ticks": 10,
            "rss_per_stream_kib": rss,
            "latency": {"p50_ms": p99 / 2, "p99_ms": p99, "samples": 100},
            "cpu": {"server_cpu_s": 0.01, "server_cpu_util": 0.1},
        }

    def fanout(makespan: float, p99: float) -> dict[str, Any]:
        return {
            "scenario": "fanout",
            "deliveries": 20,
            "latency": {"p50_ms": p99 / 2, "p99_ms": p99},
            "makespan": {"p50_ms": makespan, "max_ms": makespan},
            "cpu": {"server_cpu_s": 0.001},
        }

    def generate(rate: float) -> dict[str, Any]:
        return {"scenario": "generate", "complete": 1, "events_per_s": rate, "events": 10}

    figures = {
        "product": (30.0, 200.0, 60.0, 90.0, 400.0),
        "product-granian": (40.0, 100.0, 30.0, 15.0, 500.0),
        "product-uvicorn": (20.0, 120.0, 35.0, 20.0, 450.0),
        "baseline": (32.0, 800.0, 100.0, 100.0, 100.0),
    }
    return {
        "hold": {"10": {k: hold(*figures[k][:2]) for k in kinds}},
        "fanout": {k: fanout(*figures[k][2:4]) for k in kinds},
        "generate": {k: generate(figures[k][4]) for k in kinds},
        "ceiling": {},
    }


def _tiny_plan() -> Any:
    from bench.scenarios import Plan

    return Plan(
        hold_ns=[10],
        hold_s=1.0,
        fan_n=10,
        publishes=2,
        gen_n=1,
        gen_amount=10,
        gen_length=8,
        scaleout_n=10,
    )


def test_main_table_has_a_column_per_server_and_ratios_to_bare_quart() -> None:
    from bench import report

    results = _main_results(("product", "product-granian", "product-uvicorn", "baseline"))
    rows, targets = report.build_rows(results, _tiny_plan())
    assert report.main_header(results) == [
        "metric",
        "product on Hypercorn",
        "product on Granian",
        "product on uvicorn (reference)",
        "bare Quart on Hypercorn",
        "target",
        "met?",
    ]
    by_label = {row[0]: row for row in rows}
    makespan = by_label["fan-out 10: makespan p50 (ms)"]
    assert makespan[1:5] == ["60.0 (0.600x)", "30.0 (0.300x)", "35.0 (0.350x)", "100.0"]
    # Each server its own target: Hypercorn's 0.75x, Granian's 0.4x; uvicorn none.
    assert makespan[5] == "Hypercorn <= 0.75x baseline; Granian <= 0.4x baseline"
    met = {t["metric"]: t["met"] for t in targets}
    assert met["fan-out 10: makespan p50 (ms), product on Granian"] is True
    assert met["hold 10: server RSS per stream (KiB), product on Granian"] is False  # 1.25x
    assert met["hold 10: tick delivery p99 (ms), product on Hypercorn"] is True  # <= 300 ms
    assert met["hold 10: tick delivery p99 (ms), product on Granian"] is True  # <= 150 ms
    assert not any("uvicorn" in metric for metric in met)
    page = report.markdown(results, _tiny_plan(), None)
    assert "## Servers side by side" in page
    assert "| fan-out 10: makespan p50 (ms) | 60.0 (0.600x) | 30.0 (0.300x) |" in page


def test_reports_from_before_the_servers_render_with_their_two_columns() -> None:
    from bench import report

    results = _main_results(("product", "baseline"))
    rows, _ = report.build_rows(results, _tiny_plan())
    assert report.main_header(results)[1:3] == ["product on Hypercorn", "bare Quart on Hypercorn"]
    assert all(len(row) == 5 for row in rows)
    assert "## Servers side by side" not in report.markdown(results, _tiny_plan(), None)
    # The before/after section reads a product cell's figure without its ratio.
    assert report._number("31.6 (0.938x)") == 31.6
    assert report._number("164.8 / 145.8 (1.130x)") == 164.8
    assert report._number("1,247.8") == 1247.8


def test_a_new_main_run_leaves_the_scaleout_rows_their_own_memory_fanout() -> None:
    from bench import report

    old_fanout = {"scenario": "fanout", "makespan": {"p50_ms": 145.8}}
    previous: dict[str, Any] = {
        "fanout": {"product": old_fanout},
        "scaleout": {"redis_1_worker": {"scenario": "fanout"}},
        "meta": {"started": "then", "revision": "abc"},
    }
    new = {"fanout": {"product": {"scenario": "fanout", "makespan": {"p50_ms": 99.0}}}}
    report.keep_scaleout_baseline(previous, new, ["hold", "fanout"])
    assert previous["scaleout"]["memory_1_worker"] is old_fanout
    assert previous["scaleout"]["run"] == {"started": "then", "revision": "abc"}
    previous["fanout"] = new["fanout"]  # as bench/run --into merges it
    assert report.scale_memory(previous) is old_fanout
    # Run together, the scale-out compares with the fan-out of the same run.
    same: dict[str, Any] = {"fanout": new["fanout"], "scaleout": {"redis_1_worker": {}}}
    report.keep_scaleout_baseline(same, new, ["fanout", "scaleout"])
    assert "memory_1_worker" not in same["scaleout"]
    assert report.scale_memory(same) is new["fanout"]["product"]


@pytest.mark.parametrize(
    ("kind", "server", "app"),
    [
        ("product", "hypercorn", "quart_app:create_app()"),
        ("product-granian", "granian", "quart_app:create_app"),
        ("product-uvicorn", "uvicorn", "quart_app:create_app"),
        ("baseline", "hypercorn", "baseline_app.py:app"),
    ],
)
def test_each_kind_of_server_runs_its_app_on_its_server(
    tmp_path: Path, kind: str, server: str, app: str
) -> None:
    from bench.scenarios import SERVER_CPU, Bench, server_commands
    from bench.scenarios import server as bench_server

    srv = bench_server(Bench(tmp_path), kind)
    assert srv.server == server
    argv = srv.argv()
    assert argv[argv.index("-m") + 1] == server  # started as ``python -m <server>``
    assert argv[-1].endswith(app)
    if "taskset" in argv:
        assert argv[argv.index("taskset") + 2] == SERVER_CPU  # pinned to the server's core
    command = server_commands(Bench(tmp_path), [kind])[kind]
    assert command.startswith(f"python -m {server} ") and str(srv.port) not in command
