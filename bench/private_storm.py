"""A storm of unpaced subscribes to private channels with tokens, against the same
storm on public channels (issue 22): every subscribe served, and the worker's CPU per
subscribe of each, in one run on one server.

    python bench/private_storm.py [--n 10000] [--repeats 2] [--out FILE.json]

Each repeat runs both storms, in alternating order, each on a fresh server (the
product on Hypercorn, one worker pinned to one core, memory broker, limits lifted;
``QUART_JWT_KEY`` set for both, so the only difference is the token every private
subscribe sends and the server verifies).  Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import jwt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.scenarios import TOKEN, Bench, run_client, running
from harness.processes import raise_nofile

JWT_KEY = "bench-jwt-secret-not-for-production-0123456789abcdef"


def storm(bench: Bench, n: int, private: bool) -> dict[str, Any]:
    channel = "private-storm" if private else "storm"
    args = ["--n", str(n), "--mode", "distinct", "--publishes", "1", "--channel", channel]
    if private:
        token = jwt.encode(
            {"sub": "bench", "channels": {"subscribe": ["private-storm-*"]}}, JWT_KEY
        )
        args += ["--bearer", token]
    env = {"QUART_JWT_KEY": JWT_KEY, "QUART_MAX_CHANNELS": "100000"}
    with running(bench, "product", env=env) as srv:
        return run_client("storm", srv, channel, [*args, "--token", TOKEN], 600)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if not 1 <= args.n <= 15000 or not 1 <= args.repeats <= 5:
        parser.error("--n in 1..15000, --repeats in 1..5")
    raise_nofile(20000)
    runs: dict[str, list[dict[str, Any]]] = {"public": [], "private": []}
    with tempfile.TemporaryDirectory(prefix="quart-app-private-storm-") as workdir:
        bench = Bench(Path(workdir))
        for repeat in range(args.repeats):
            order = (False, True) if repeat % 2 == 0 else (True, False)
            for private in order:
                runs["private" if private else "public"].append(storm(bench, args.n, private))
    rows = {}
    for kind, results in runs.items():
        cpu = [r["cpu_storm"]["server_cpu_s"] for r in results]
        served = [r.get("served", r.get("ok")) for r in results]
        rows[kind] = {
            "served": served,
            "failures": [r.get("failures") for r in results],
            "cpu_per_subscribe_ms": [round(c * 1000 / args.n, 3) for c in cpu],
            "placed_s": [r.get("placed_s") for r in results],
        }
    ratio = statistics.median(rows["private"]["cpu_per_subscribe_ms"]) / statistics.median(
        rows["public"]["cpu_per_subscribe_ms"]
    )
    report = {"n": args.n, "repeats": args.repeats, "rows": rows, "ratio": round(ratio, 3)}
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.write_text(json.dumps({"report": report, "runs": runs}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
