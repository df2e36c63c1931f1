"""All-or-nothing at any size through tabbyctl: 10,000 documents, over 1.5 MiB, SIGKILL half-way.

etcd allows 128 operations and about 1.5 MiB per transaction; a larger apply goes through the
intent protocol of datastore/staged.py. These tests check the user-visible promise: it finishes
in seconds, and a tabbyctl killed in the middle leaves either everything or nothing visible
(and the next writer cleans up what it left).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from controller.resource_store import ResourceStore
from datamodel.resources import BGPPeer, IPPool
from datastore import staged
from datastore.keys import resource_prefix
from datastore.watch import WatchEvent, watch_prefix
from tests.integration.cli.conftest import tabbyctl_command

N = 10_000


def mixed_documents(n: int, tag: str = "", pad: int = 0) -> str:
    """n documents: 3 pools (/24, blockSize 26) for every BGPPeer; `pad` bytes of annotation each."""
    docs = []
    note = f"\n  annotations: {{note: {'x' * pad}}}" if pad else ""
    for i in range(n):
        if i % 4 == 3:
            docs.append(
                f"apiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata:\n  name: peer{tag}-{i}{note}\n"
                f"spec:\n  peerIP: 192.0.{i % 250}.{1 + i % 200}\n  asNumber: {64600 + i % 100}\n"
            )
        else:
            docs.append(
                f"apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: pool{tag}-{i}{note}\n"
                f"spec:\n  cidr: 10.{i // 256 % 256}.{i % 256}.0/24\n  blockSize: 26\n"
            )
    return "---\n".join(docs)


def visible(run_ds: Any) -> tuple[int, int]:
    async def body(ds: Any) -> tuple[int, int]:
        store = ResourceStore(ds)
        pools, _ = await store.list(IPPool)
        peers, _ = await store.list(BGPPeer)
        return len(pools), len(peers)

    return run_ds(body)


def raw_staged(run_ds: Any) -> int:
    async def body(ds: Any) -> int:
        total = 0
        for plural in ("ippools", "bgppeers"):
            kvs, _ = await ds.list(resource_prefix(plural))
            total += sum(staged.ENVELOPE.encode() in kv.value for kv in kvs)
        return total

    return run_ds(body)


def test_ten_thousand_documents_in_seconds_all_visible(ctl: Any, tmp_path: Path, run_ds: Any) -> None:
    path = tmp_path / "big.yaml"
    path.write_text(mixed_documents(N))
    started = time.monotonic()
    res = ctl("apply", "-f", str(path), timeout=300)
    elapsed = time.monotonic() - started
    assert res.rc == 0, res.err
    assert res.out.strip() == f"Successfully applied {N} resource(s)"
    assert visible(run_ds) == (N * 3 // 4, N // 4)
    assert raw_staged(run_ds) == 0
    assert elapsed < 120, elapsed  # seconds on an idle machine; generous bound for a loaded CI box
    started = time.monotonic()
    res = ctl("delete", "-f", str(path), timeout=300)
    assert res.rc == 0, res.err
    assert visible(run_ds) == (0, 0)
    assert time.monotonic() - started < 120


def test_request_over_one_and_a_half_mebibytes_is_atomic(ctl: Any, tmp_path: Path, run_ds: Any) -> None:
    path = tmp_path / "fat.yaml"
    path.write_text(mixed_documents(400, pad=8000))  # ~3.2 MB of values
    assert path.stat().st_size > 1.5 * 1024 * 1024
    res = ctl("apply", "-f", str(path), timeout=300)
    assert res.rc == 0, res.err
    assert visible(run_ds) == (300, 100)
    # One bad document among them: nothing of the other 400 is written.
    bad = mixed_documents(400, tag="b", pad=8000) + "---\napiVersion: projectcalico.org/v3\nkind: IPPool\n"
    bad += "metadata: {name: clash}\nspec: {cidr: 10.0.0.0/8}\n"
    path.write_text(bad)
    res = ctl("apply", "-f", str(path), timeout=300)
    assert res.rc == 1 and "overlaps IPPool" in res.err
    assert visible(run_ds) == (300, 100)


def test_sigkill_in_the_middle_leaves_all_or_none(etcd_env: dict[str, str], tmp_path: Path, run_ds: Any) -> None:
    path = tmp_path / "big.yaml"
    path.write_text(mixed_documents(N))

    async def kill_mid_staging(ds: Any) -> int:
        """Start the apply and SIGKILL it once 500 staged values have landed, seen through a watch:
        staging takes a fraction of a second now, so polling the whole collection (100 ms a look)
        could miss it; a watch event arrives within milliseconds of the write."""
        start = await ds.revision() + 1
        proc = subprocess.Popen(
            [*tabbyctl_command(), "apply", "-f", str(path)],
            env=etcd_env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        seen = 0
        try:
            async with asyncio.timeout(180):
                async for item in watch_prefix(ds, "resources/v3/", start):
                    put = isinstance(item, WatchEvent) and item.kind == "put"
                    if put and staged.ENVELOPE.encode() in item.kv.value:
                        seen += 1
                        if seen >= 500:
                            os.kill(proc.pid, signal.SIGKILL)
                            break
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        return seen

    kill_mid_staging_seen = run_ds(kill_mid_staging)
    assert kill_mid_staging_seen >= 500, "tabbyctl finished before it could be killed mid-apply"
    killed_at = raw_staged(run_ds)
    print(f"killed after {kill_mid_staging_seen} staged values seen; {killed_at} staged in etcd")
    assert 0 < killed_at < N
    seen = visible(run_ds)
    assert seen in ((0, 0), (N * 3 // 4, N // 4)), seen  # all or none, never half
    # The next writer rolls the dead intent back (or completes it) once the owner's lease expires.
    time.sleep(staged.OWNER_TTL + 2)
    res = subprocess.run(
        [*tabbyctl_command(), "apply", "-f", "-"],
        input="apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: after}\nspec: {cidr: 10.200.0.0/16}\n",
        env=etcd_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert raw_staged(run_ds) == 0
    assert visible(run_ds) in ((1, 0), (N * 3 // 4 + 1, N // 4))

    async def records(ds: Any) -> int:
        return len((await ds.list(staged.INTENTS))[0])

    assert run_ds(records) == 0
