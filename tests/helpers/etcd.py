"""Tests and benchmarks start etcd through the same launcher the demo uses."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from common.etcd_process import EtcdServer, free_port

__all__ = ["EtcdCluster", "EtcdServer", "free_port", "private_etcd"]


@contextlib.contextmanager
def private_etcd(workdir: Path) -> Iterator[EtcdServer]:
    """An etcd for one test alone: one it may SIGSTOP/SIGCONT without stalling anyone else's tests.

    On the way out it is continued first (a stopped process does not act on SIGTERM), then stopped.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    server = EtcdServer(workdir)
    server.start()
    try:
        yield server
    finally:
        if server.proc is not None and server.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(server.proc.pid, signal.SIGCONT)
        server.stop()


class EtcdCluster:
    """Three etcd members on loopback (free ports, short raft timers) for tests that need a member
    to lose its leader: SIGSTOP two of them and the third has none."""

    def __init__(self, workdir: Path, size: int = 3) -> None:
        self.workdir = workdir
        self.names = [f"m{i}" for i in range(size)]
        self.client_ports = [free_port() for _ in self.names]
        self.peer_ports = [free_port() for _ in self.names]
        self.procs: list[subprocess.Popen[bytes]] = []

    def endpoint(self, i: int) -> str:
        return f"http://127.0.0.1:{self.client_ports[i]}"

    def start(self, timeout: float = 30.0) -> None:
        cluster = ",".join(f"{n}=http://127.0.0.1:{p}" for n, p in zip(self.names, self.peer_ports, strict=True))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._argv: list[list[str]] = []
        for i, name in enumerate(self.names):
            self._argv.append(
                ["etcd", "--name", name, "--data-dir", str(self.workdir / name),
                 "--listen-client-urls", self.endpoint(i), "--advertise-client-urls", self.endpoint(i),
                 "--listen-peer-urls", f"http://127.0.0.1:{self.peer_ports[i]}",
                 "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.peer_ports[i]}",
                 "--initial-cluster", cluster, "--initial-cluster-state", "new",
                 "--heartbeat-interval", "50", "--election-timeout", "500", "--log-level", "warn"])
            self.procs.append(self._spawn(i))
        deadline = time.monotonic() + timeout
        while not all(self.healthy(i) for i in range(len(self.names))):
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"etcd cluster not healthy in {timeout}s; see {self.workdir}/*.log")
            time.sleep(0.1)

    def healthy(self, i: int) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoint(i)}/health", timeout=1) as resp:
                return b'"true"' in resp.read()
        except OSError:
            return False

    def _spawn(self, i: int) -> subprocess.Popen[bytes]:
        with open(self.workdir / f"{self.names[i]}.log", "ab") as logf:
            return subprocess.Popen(self._argv[i], stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)

    def signal(self, i: int, sig: int) -> None:
        os.kill(self.procs[i].pid, sig)

    def kill(self, i: int) -> None:
        """SIGKILL member ``i`` (its data directory stays: :meth:`restart` brings it back)."""
        self.procs[i].kill()
        self.procs[i].wait(timeout=10)

    def restart(self, i: int) -> None:
        """Start a killed member again on its data directory (it rejoins the cluster it knows)."""
        if self.procs[i].poll() is None:
            return
        self.procs[i] = self._spawn(i)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGCONT)
                proc.kill()
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        self.procs.clear()
