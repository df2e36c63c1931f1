"""Benchmark: the route programmer vs ``ip -batch`` programming 10,000 remote block routes.

Both write the identical routes (``<block>/26 via 192.0.2.12 dev eth0 proto 81``) into their
own fresh namespace, from empty, in the same run, alternating, several rounds; the medians are
compared (ratio = ours / ip-batch, target <= 1.5). Ours is timed from opening the programmer to
the last ACK, so socket set-up, the (empty) dump, the diff and the encoding are all included,
as ``ip``'s process start is in the baseline. Also reported: a no-op resync of the 10,000
(which must write nothing) and a 1,000-route delta (500 blocks gone, 500 new).

Usage (root): ``.venv/bin/python tests/bench/routes.py [--quick]``. Progress on stderr; the last
stdout line is the JSON result. Namespaces are deleted at the end, also on error.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import structlog

from felix_like.netlink import TABBY_RT_PROTO, Route
from felix_like.route_programmer import RouteProgrammer

N_ROUTES = 10_000
N_DELTA = 1_000
TARGET = 1.5
GATEWAY = "192.0.2.12"
SETTLE_S = 0.3


def progress(msg: str) -> None:
    print(f"[bench routes] {msg}", file=sys.stderr, flush=True)


def block(i: int) -> str:
    """The i-th /26 in 10.0.0.0/8 (10,000 of them fit in 10.0.0.0 - 10.9.195.255)."""
    a = (10 << 24) | (i << 6)
    return f"{a >> 24 & 255}.{a >> 16 & 255}.{a >> 8 & 255}.{a & 255}/26"


def make_ns(created: list[str]) -> str:
    name = f"tabbytest-bench-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
    created.append(name)
    for cmd in (
        "link set lo up",
        "link add eth0 type veth peer name eth0peer",
        "addr add 192.0.2.11/24 dev eth0",
        "link set eth0 up",
        "link set eth0peer up",
    ):
        subprocess.run(["ip", "-n", name, *cmd.split()], check=True, timeout=10)
    return name


def delete_ns(name: str, created: list[str]) -> None:
    """Flush synchronously, then delete: the kernel's deferred namespace clean-up of 10k routes
    would otherwise run during the next timed section and add noise to whichever side runs next."""
    subprocess.run(["ip", "-n", name, "route", "flush", "proto", str(TABBY_RT_PROTO)], check=False, timeout=30)
    subprocess.run(["ip", "netns", "del", name], check=False, timeout=30)
    if name in created:
        created.remove(name)
    time.sleep(SETTLE_S)


def count_proto_routes(ns: str) -> int:
    out = subprocess.run(
        ["ip", "-n", ns, "route", "show", "proto", str(TABBY_RT_PROTO)],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    return sum(1 for line in out.splitlines() if line.strip())


def run_baseline(batch_file: str, created: list[str]) -> float:
    ns = make_ns(created)
    try:
        start = time.perf_counter()
        subprocess.run(["ip", "-n", ns, "-batch", batch_file], check=True, timeout=120)
        elapsed = time.perf_counter() - start
        got = count_proto_routes(ns)
        if got != N_ROUTES:
            raise RuntimeError(f"ip -batch programmed {got} routes, expected {N_ROUTES}")
        return elapsed
    finally:
        delete_ns(ns, created)


def run_ours(routes: list[Route], delta_routes: list[Route], created: list[str]) -> dict[str, float]:
    ns = make_ns(created)
    try:
        start = time.perf_counter()
        prog = RouteProgrammer(ns)
        result = prog.full_resync(routes)
        elapsed = time.perf_counter() - start
        try:
            if not result.ok or result.added != N_ROUTES:
                raise RuntimeError(f"ours added {result.added}, failures {result.failures[:3]}")
            got = count_proto_routes(ns)
            if got != N_ROUTES:
                raise RuntimeError(f"ours programmed {got} routes, expected {N_ROUTES}")
            noop = prog.full_resync(routes)
            if noop.writes:
                raise RuntimeError(f"no-op resync wrote {noop.writes} messages")
            delta = prog.apply_delta(delta_routes)
            if not delta.ok or delta.writes != N_DELTA:
                raise RuntimeError(f"delta wrote {delta.writes}, failures {delta.failures[:3]}")
        finally:
            prog.close()
        return {"ours": elapsed, "noop": noop.seconds, "delta": delta.seconds}
    finally:
        delete_ns(ns, created)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (3 instead of 7)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    rounds = 3 if args.quick else 7
    routes = [Route(block(i), gateway=GATEWAY, oif="eth0") for i in range(N_ROUTES)]
    # delta: the first 500 blocks go away, 500 new ones appear
    half = N_DELTA // 2
    delta_routes = routes[half:] + [Route(block(N_ROUTES + i), gateway=GATEWAY, oif="eth0") for i in range(half)]
    created: list[str] = []
    ours: list[float] = []
    base: list[float] = []
    noop: list[float] = []
    delta: list[float] = []
    with tempfile.TemporaryDirectory(prefix="tabby-bench-routes-") as tmp:
        batch_file = os.path.join(tmp, "routes.batch")
        with open(batch_file, "w") as fh:
            for r in routes:
                fh.write(f"route add {r.dst} via {GATEWAY} dev eth0 proto {TABBY_RT_PROTO}\n")
        try:
            for i in range(rounds):
                # alternate who goes first so neither profits from a warm kernel
                if i % 2 == 0:
                    base.append(run_baseline(batch_file, created))
                    o = run_ours(routes, delta_routes, created)
                else:
                    o = run_ours(routes, delta_routes, created)
                    base.append(run_baseline(batch_file, created))
                ours.append(o["ours"])
                noop.append(o["noop"])
                delta.append(o["delta"])
                progress(
                    f"round {i + 1}/{rounds}: ours {o['ours']:.3f}s ip-batch {base[-1]:.3f}s "
                    f"noop {o['noop']:.3f}s delta {o['delta']:.3f}s"
                )
        finally:
            for name in list(created):
                delete_ns(name, created)
    ours_s = statistics.median(ours)
    base_s = statistics.median(base)
    ratio = ours_s / base_s
    out = {
        "bench": "routes",
        "routes": N_ROUTES,
        "ours": round(ours_s, 4),
        "baseline": round(base_s, 4),
        "baseline_tool": "ip -batch (iproute2)",
        "unit": "s",
        "ratio": round(ratio, 3),
        "target": TARGET,
        "pass": ratio <= TARGET,
        "noop_resync_s": round(statistics.median(noop), 4),
        "noop_resync_writes": 0,
        "delta_1000_s": round(statistics.median(delta), 4),
        "rounds": rounds,
        "ours_all": [round(x, 4) for x in ours],
        "baseline_all": [round(x, 4) for x in base],
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
