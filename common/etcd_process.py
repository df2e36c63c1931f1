"""Run a local etcd member: for the demo, the tests and the benchmarks (loopback only)."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EtcdServer:
    """One etcd member on loopback, on free ports, with its data under ``workdir``.

    ``stop()`` + ``start()`` keeps the data (a restart, as in the fault tests); ``stop()``
    at the end kills the process. Ports stay the same across restarts so clients reconnect.
    """

    def __init__(self, workdir: Path) -> None:
        if shutil.which("etcd") is None:
            raise RuntimeError("etcd not installed: run `make setup` (Debian package etcd-server)")
        self.workdir = Path(workdir)
        self.data_dir = self.workdir / "data"
        self.client_port = free_port()
        self.peer_port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.client_port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.workdir / "etcd.log"

    def start(self, timeout: float = 20.0) -> None:
        logf = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child process
        try:
            self.proc = subprocess.Popen(
                [
                    "etcd",
                    "--name", "tabby-test",
                    "--data-dir", str(self.data_dir),
                    "--listen-client-urls", self.endpoint,
                    "--advertise-client-urls", self.endpoint,
                    "--listen-peer-urls", f"http://127.0.0.1:{self.peer_port}",
                    "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.peer_port}",
                    "--initial-cluster", f"tabby-test=http://127.0.0.1:{self.peer_port}",
                    "--log-level", "warn",
                    "--quota-backend-bytes", str(4 * 1024**3),
                ],
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            logf.close()  # the child holds its own copy
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited with {self.proc.returncode}; see {self.log_path}")
            try:
                with urllib.request.urlopen(f"{self.endpoint}/health", timeout=1) as resp:
                    if b"true" in resp.read():
                        return
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"etcd did not become healthy in {timeout}s; see {self.log_path}")

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None
