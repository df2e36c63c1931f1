"""One node's allocator for the concurrency test: allocate and release in a bounded loop.

Run as a subprocess (ETCD_ENDPOINTS / TABBY_ETCD_PREFIX in the environment). Rides through
etcd going away: a DatastoreError is followed by a pause and a reconciliation that asks etcd
what the handle really holds (the write may have landed even though the reply was lost).
Writes a JSON result with the addresses it holds at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

import structlog

from datastore import Datastore, DatastoreError, EtcdConfig
from ipam import IPAMClient, IPAMError, PoolsExhausted


async def settle(what: str, fn, deadline: float, stats: dict[str, int]):  # type: ignore[no-untyped-def]
    """Retry an idempotent call until etcd answers (bounded by ``deadline``)."""
    while True:
        try:
            return await fn()
        except DatastoreError:
            stats["datastore_errors"] += 1
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def main(args: argparse.Namespace) -> None:
    config = EtcdConfig.load()
    config = EtcdConfig(endpoints=config.endpoints, prefix=config.prefix, rpc_timeout=2.0, connect_timeout=3.0)
    rnd = random.Random(args.node)
    held: dict[str, list[str]] = {}
    stats = {"allocs": 0, "releases": 0, "datastore_errors": 0, "exhausted": 0, "reconciled": 0}
    start = time.monotonic()
    hard_deadline = start + args.seconds + 40
    async with Datastore(config) as ds:
        c = IPAMClient(ds)
        # Connected: tell the test (which kills etcd only once every worker runs), start the clock.
        Path(args.out).with_suffix(".ready").touch()
        start = time.monotonic()
        hard_deadline = start + args.seconds + 40

        async def loop(task: int) -> None:
            # With --concurrency > 1 the tasks share one client: their allocations on this node
            # meet in the group commit (ipam/batch.py), several handles in one transaction.
            i = 0
            while i < args.ops and time.monotonic() - start < args.seconds:
                i += 1
                handle = f"{args.node}.t{task}c{i}"
                try:
                    r = await c.auto_assign(node=args.node, handle_id=handle, num_v4=1,
                                            num_v6=1 if i % 7 == 0 else 0)
                    held[handle] = r.v4 + r.v6
                    stats["allocs"] += 1
                except PoolsExhausted:
                    stats["exhausted"] += 1
                except DatastoreError:
                    stats["datastore_errors"] += 1
                    await asyncio.sleep(0.3)
                    ips = await settle("reconcile", lambda h=handle: c.ips_by_handle(h), hard_deadline, stats)
                    if ips:
                        held[handle] = ips
                        stats["reconciled"] += 1
                if held and (len(held) >= args.max_held or rnd.random() < 0.45):
                    victim = rnd.choice(sorted(held))
                    ips = held.pop(victim)  # before the await: another task must not pick it too
                    if rnd.random() < 0.5:
                        await settle("release", lambda v=victim: c.release_by_handle(v), hard_deadline, stats)
                    else:
                        await settle("release", lambda v=victim, ips=ips: c.release_ips(ips, handle_id=v),
                                     hard_deadline, stats)
                        # release_ips leaves nothing behind: the handle goes when its last IP does.
                    stats["releases"] += 1

        await asyncio.gather(*(loop(k) for k in range(args.concurrency)))
        stats["grouped"] = c.grouped_requests
    Path(args.out).write_text(json.dumps({"node": args.node, "held": held, "stats": stats,
                                          "elapsed": time.monotonic() - start}))


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--node", required=True)
    p.add_argument("--ops", type=int, default=400)
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--max-held", type=int, default=24)
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--out", required=True)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    try:
        asyncio.run(main(p.parse_args()))
    except IPAMError as exc:
        print(f"worker failed: {exc}", file=sys.stderr)
        sys.exit(2)
