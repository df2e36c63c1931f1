"""Tests and benchmarks start etcd through the same launcher the demo uses."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

from common.etcd_process import EtcdServer, free_port

__all__ = ["EtcdServer", "free_port", "private_etcd"]


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
