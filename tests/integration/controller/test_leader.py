"""Two controller processes on one real etcd: one acts, the other takes over when it is SIGKILLed.

A is started as ``tabby-controller`` (python -m controller.cluster), B as ``tabbyctl controller run``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from datastore import Datastore, EtcdConfig
from datastore.keys import CONTROLLER_LEADER
from ipam import IPAMClient
from tests.helpers.etcd import free_port

from .helpers import NETWORK, add_pool, allocate_pod

pytestmark = pytest.mark.slow
TTL = 2


def _leader(config: EtcdConfig) -> str | None:
    async def go() -> str | None:
        async with Datastore(config) as ds:
            kv = await ds.get(CONTROLLER_LEADER)
            return kv.json()["identity"] if kv is not None else None

    return asyncio.run(go())


def _wait_leader(config: EtcdConfig, want: str | None, timeout: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if _leader(config) == want:
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"leader is {_leader(config)!r}, wanted {want!r} within {timeout}s")


def _leak(config: EtcdConfig, cid: str) -> str:
    async def go() -> str:
        async with Datastore(config) as ds:
            return await allocate_pod(IPAMClient(ds), "n1", cid)

    return asyncio.run(go())


def _held(config: EtcdConfig, cid: str) -> list[str]:
    async def go() -> list[str]:
        async with Datastore(config) as ds:
            return await IPAMClient(ds).ips_by_handle(f"{NETWORK}.{cid}")

    return asyncio.run(go())


def _scrape(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _released_by(log: Path) -> list[str]:
    out = []
    for line in log.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("event") == "controller.gc_released":
            out.append(rec["handle"])
    return out


def test_one_leader_acts_standby_takes_over_within_ttl(
    etcd_config: EtcdConfig, etcd_env: dict[str, str], tmp_path: Path
) -> None:
    async def seed() -> None:
        async with Datastore(etcd_config) as ds:
            await add_pool(ds, "p", "10.70.0.0/16")

    asyncio.run(seed())
    env = {**etcd_env, "TABBY_LEADER_TTL": str(TTL), "TABBY_CONTROLLER_INTERVAL": "0.2",
           "TABBY_IPAM_GC_GRACE": "0.5", "TABBY_LOG_FORMAT": "json", "TABBY_LOG_LEVEL": "info"}
    logs = {n: tmp_path / f"{n}.log" for n in "AB"}
    argv = {"A": [sys.executable, "-m", "controller.cluster"],
            "B": [sys.executable, "-m", "controller.cli.main", "controller", "run"]}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    ports = {n: free_port() for n in "AB"}
    try:
        for name in "AB":
            with open(logs[name], "wb") as f:
                procs[name] = subprocess.Popen(argv[name], env={
                    **env, "TABBY_CONTROLLER_ID": name, "TABBY_CONTROLLER_PROMETHEUSMETRICSHOST": "127.0.0.1",
                    "TABBY_CONTROLLER_PROMETHEUSMETRICSPORT": str(ports[name])}, stderr=f, stdout=f,
                    start_new_session=True)
            if name == "A":
                _wait_leader(etcd_config, "A", 15)
        deadline = time.monotonic() + 30  # B up and standing by (it starts slowly on a loaded machine)
        while '"leader.standby"' not in logs["B"].read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert '"leader.standby"' in logs["B"].read_text()
        assert _leader(etcd_config) == "A"
        # A leaked address is freed once, by the leader only.
        _leak(etcd_config, "leak1")
        deadline = time.monotonic() + 10
        while _held(etcd_config, "leak1") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _held(etcd_config, "leak1") == []
        time.sleep(0.5)
        assert _released_by(logs["A"]) == [f"{NETWORK}.leak1"]
        assert _released_by(logs["B"]) == []
        metrics = {n: _scrape(ports[n], "/metrics") for n in "AB"}
        assert 'tabby_controller_leader{identity="A"} 1.0' in metrics["A"][1]
        assert 'tabby_controller_leader{identity="B"} 0.0' in metrics["B"][1]
        assert 'tabby_controller_actions_total{action="gc_released_workload"} 1.0' in metrics["A"][1]
        assert 'tabby_controller_actions_total{action="gc_released_workload"} 0.0' in metrics["B"][1]
        assert "tabby_etcd_retries_total" in metrics["A"][1]
        assert _scrape(ports["B"], "/readyz") == (200, "ok\n")  # a standby with etcd answering is ready
        assert _scrape(ports["A"], "/healthz") == (200, "ok\n")

        os.kill(procs["A"].pid, signal.SIGKILL)
        procs["A"].wait(5)
        took = _wait_leader(etcd_config, "B", TTL + 5)
        # The key expires at most TTL after A's last renewal; B polls every TTL/8 (load adds a little).
        assert took <= TTL + 1.0, f"takeover took {took:.2f}s with a {TTL}s lease"
        _leak(etcd_config, "leak2")
        deadline = time.monotonic() + 10
        while _held(etcd_config, "leak2") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _held(etcd_config, "leak2") == []
        assert _released_by(logs["B"]) == [f"{NETWORK}.leak2"]

        # A clean stop resigns: the key goes at once, not after the TTL.
        procs["B"].send_signal(signal.SIGTERM)
        assert procs["B"].wait(10) == 0
        assert _leader(etcd_config) is None
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait(5)


def test_bad_setting_is_one_line(etcd_env: dict[str, str]) -> None:
    res = subprocess.run([sys.executable, "-m", "controller.cluster"], env={**etcd_env, "TABBY_LEADER_TTL": "1"},
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "Error: TABBY_LEADER_TTL: must be a whole number of seconds, at least 2, got '1'"]
