"""What a lab has made, on disk, written BEFORE each thing is made.

Why before: a deploy can die at any instant (kill -9, a crash, a reboot of the CLI's terminal).
``destroy --cleanup`` must then find every namespace, process and directory the lab made from
this file alone, so the record of a thing always exists before the thing itself. A record of
something never made is harmless (destroy tolerates "already gone").

Layout: ``/run/tabby/lab/<lab>/state.json`` plus ``nodes/<node>/`` (configs, logs, sockets,
data), and ``/run/tabby/lab/.locks/<lab>.lock`` (flock) so two commands never work on one lab at once.
``TABBY_LAB_STATE_DIR`` moves the root, for tests.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lab.errors import LabError

DEFAULT_ROOT = Path("/run/tabby/lab")
STATE_FILE = "state.json"


def state_root() -> Path:
    return Path(os.environ.get("TABBY_LAB_STATE_DIR", str(DEFAULT_ROOT)))


def lab_dir(lab: str) -> Path:
    return state_root() / lab


def process_start_time(pid: int) -> int | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), or None if it is gone.

    Recorded with each pid so destroy never kills an unrelated process that reused the number.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after the last ')'
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19])


@dataclass
class ProcessRecord:
    pid: int
    start_time: int | None
    node: str
    name: str
    argv: list[str]

    def alive(self) -> bool:
        """Same pid and same start time: the process we started, still there (zombies count as gone)."""
        now = process_start_time(self.pid)
        if now is None or (self.start_time is not None and now != self.start_time):
            return False
        try:
            state = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError:
            return False
        return state[state.rindex(")") + 2 :].split()[0] != "Z"


@dataclass
class LabState:
    """The on-disk record of one lab. Every mutation is saved at once (atomic rename)."""

    name: str
    topology: str
    status: str = "deploying"  # deploying -> deployed; destroy removes the file
    created: float = field(default_factory=time.time)
    deployer_pid: int = field(default_factory=os.getpid)
    netns: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    processes: list[ProcessRecord] = field(default_factory=list)
    #: per node, the process owning its mount namespace (``lab.mountns``): not one of the node's programs
    holders: list[ProcessRecord] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: pods made by ``lab pod add`` (see ``pods.PodRecord``): plain dicts so old state files still load
    pods: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ files
    @property
    def dir(self) -> Path:
        return lab_dir(self.name)

    @property
    def file(self) -> Path:
        return self.dir / STATE_FILE

    def node_dir(self, node: str) -> Path:
        return self.dir / "nodes" / node

    def save(self) -> None:
        data = {k: v for k, v in asdict(self).items() if not k.startswith("_")}
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.file.with_suffix(f".tmp{os.getpid()}.{threading.get_ident()}")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
        os.replace(tmp, self.file)

    @classmethod
    def load(cls, lab: str) -> LabState | None:
        """The recorded state, or None when the lab was never deployed (or fully destroyed).

        A corrupt file raises ``LabError``: ``destroy --cleanup`` works without it.
        """
        file = lab_dir(lab) / STATE_FILE
        try:
            data: dict[str, Any] = json.loads(file.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise LabError(f"lab {lab}: state file {file} is unreadable ({exc}); use destroy --cleanup") from None
        procs = [ProcessRecord(**p) for p in data.pop("processes", [])]
        holders = [ProcessRecord(**p) for p in data.pop("holders", [])]
        return cls(**data, processes=procs, holders=holders)

    # ------------------------------------------------------------------ records (save before acting)
    def record_netns(self, name: str) -> None:
        with self._lock:
            if name not in self.netns:
                self.netns.append(name)
                self.save()

    def record_path(self, path: Path | str) -> None:
        with self._lock:
            text = str(path)
            if text not in self.paths:
                self.paths.append(text)
                self.save()

    def record_process(self, record: ProcessRecord) -> None:
        with self._lock:
            self.processes.append(record)
            self.save()

    def record_holder(self, record: ProcessRecord) -> None:
        with self._lock:
            self.holders = [h for h in self.holders if h.node != record.node] + [record]
            self.save()

    def record_warning(self, message: str) -> None:
        with self._lock:
            self.warnings.append(message)
            self.save()

    def record_pod(self, pod: dict[str, Any]) -> None:
        """Add or replace the pod with the same ``key`` (callers hold ``lab_lock`` and reloaded the state)."""
        with self._lock:
            self.pods = [p for p in self.pods if p.get("key") != pod.get("key")] + [pod]
            self.save()

    def forget_pod(self, key: str) -> None:
        with self._lock:
            self.pods = [p for p in self.pods if p.get("key") != key]
            self.save()

    def set_status(self, status: str) -> None:
        with self._lock:
            self.status = status
            self.save()

    def node_processes(self, node: str) -> list[ProcessRecord]:
        return [p for p in self.processes if p.node == node]


@contextlib.contextmanager
def lab_lock(lab: str, timeout: float = 30.0) -> Iterator[None]:
    """Serialise commands on one lab; the kernel drops the lock when a crashed deploy dies."""
    locks = state_root() / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    path = locks / f"{lab}.lock"
    with open(path, "a+") as fh:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise LabError(f"lab {lab}: another tabbyctl lab command is working on it ({path})") from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
