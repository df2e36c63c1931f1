"""Benchmark: `tabbyctl apply` of 10,000 mixed documents vs raw aetcd transactions of 128 operations.

ours: wall seconds of `tabbyctl apply -f FILE` (a subprocess, as a user runs it) of 10,000 mixed
documents (3 IPPools per BGPPeer; 2,000 with --quick) into an empty prefix of a private etcd.
baseline: the SAME keys and values (read back from ours) written from one process by raw aetcd
transactions of 128 puts each, into a fresh prefix, same etcd, same run, right after.
ratio = ours / baseline, target <= 3. Also reported: the seconds tabbyctl spends parsing and
validating (parse_documents + the support policy, measured in-process on the same text) and that
share of ours.

Usage: `.venv/bin/python tests/bench/apply.py [--quick]`. Progress on stderr; the last stdout line
is the JSON result. The private etcd is stopped at the end, also on error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from common.etcd_process import EtcdServer  # noqa: E402

TARGET_RATIO = 3.0


def progress(msg: str) -> None:
    print(f"[bench apply] {msg}", file=sys.stderr, flush=True)


def documents(n: int) -> str:
    docs = []
    for i in range(n):
        if i % 4 == 3:
            docs.append(
                f"apiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata:\n  name: peer-{i}\n"
                f"spec:\n  peerIP: 192.0.{i % 250}.{1 + i % 200}\n  asNumber: {64600 + i % 100}\n"
            )
        else:
            docs.append(
                f"apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: pool-{i}\n"
                f"spec:\n  cidr: 10.{i // 256 % 256}.{i % 256}.0/24\n  blockSize: 26\n  natOutgoing: true\n"
            )
    return "---\n".join(docs)


def tabbyctl() -> list[str]:
    script = Path(sys.executable).parent / "tabbyctl"
    return [str(script)] if script.exists() else [sys.executable, "-m", "controller.cli.main"]


async def read_back(endpoint: str, prefix: str) -> list[tuple[bytes, bytes]]:
    import aetcd

    host, port = endpoint.removeprefix("http://").split(":")
    async with aetcd.Client(host=host, port=int(port)) as client:
        result = await client.get_prefix((prefix + "resources/").encode())
        return [(kv.key[len(prefix) :], kv.value) for kv in result]


async def raw_write(endpoint: str, prefix: str, items: list[tuple[bytes, bytes]]) -> float:
    import aetcd

    host, port = endpoint.removeprefix("http://").split(":")
    async with aetcd.Client(host=host, port=int(port)) as client:
        started = time.perf_counter()
        for i in range(0, len(items), 128):
            ops = [client.transactions.put(prefix.encode() + k, v) for k, v in items[i : i + 128]]
            await client.transaction(compare=[], success=ops, failure=[])
        return time.perf_counter() - started


def parse_seconds(text: str) -> float:
    from controller import support_policy
    from datamodel.resources import parse_documents

    started = time.perf_counter()
    resources = parse_documents(text, "bench.yaml")
    support_policy.check(resources)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 documents instead of 10,000")
    args = parser.parse_args()
    n = 2000 if args.quick else 10_000
    with tempfile.TemporaryDirectory(prefix="tabby-bench-apply-") as tmp:
        server = EtcdServer(Path(tmp))
        server.start()
        try:
            text = documents(n)
            path = Path(tmp) / "docs.yaml"
            path.write_text(text)
            ours_prefix = f"/bench-{uuid.uuid4().hex[:8]}/"
            env = {**os.environ, "ETCD_ENDPOINTS": server.endpoint, "TABBY_ETCD_PREFIX": ours_prefix}
            env["TABBY_ETCD_TIMEOUT"] = "20"
            progress(f"tabbyctl apply of {n} documents")
            started = time.perf_counter()
            proc = subprocess.run(
                [*tabbyctl(), "apply", "-f", str(path)], env=env, capture_output=True, text=True, timeout=900
            )
            ours = time.perf_counter() - started
            if proc.returncode != 0:
                progress(f"tabbyctl failed: {proc.stderr.strip()}")
                return 1
            progress(f"tabbyctl: {ours:.2f} s ({proc.stdout.strip()})")
            items = asyncio.run(read_back(server.endpoint, ours_prefix))
            items = [(k, v) for k, v in items if not k.startswith(b"resources/v3/clusterinformations/")]
            progress(f"baseline: raw aetcd, {len(items)} keys in transactions of 128")
            baseline = asyncio.run(raw_write(server.endpoint, f"/base-{uuid.uuid4().hex[:8]}/", items))
            progress(f"baseline: {baseline:.2f} s")
            parsing = parse_seconds(text)
            progress(f"parse + validate + support policy in-process: {parsing:.2f} s")
        finally:
            server.stop()
    ratio = ours / baseline if baseline > 0 else float("inf")
    result: dict[str, Any] = {
        "bench": "apply",
        "documents": n,
        "ours": round(ours, 3),
        "baseline": round(baseline, 3),
        "unit": "s",
        "ratio": round(ratio, 2),
        "target": TARGET_RATIO,
        "pass": ratio <= TARGET_RATIO,
        "parse_validate_s": round(parsing, 3),
        "parse_validate_share": round(parsing / ours, 2) if ours else None,
        "keys": len(items),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
