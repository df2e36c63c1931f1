"""``tabbyctl lab logs``: a node's process logs (``<lab dir>/nodes/<node>/<process>.log``, written by
``NodeContext.spawn``), printed once or followed as ``tail -f`` does.

The files outlive the lab: ``lab destroy`` and ``lab destroy --cleanup`` keep them, ``--purge``
removes them.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TextIO

from lab.errors import LabError


def log_files(node_dir: Path, process: str | None = None) -> list[Path]:
    files = sorted(node_dir.glob("*.log"))
    if process is not None:
        files = [f for f in files if f.stem == process]
        if not files:
            names = ", ".join(f.stem for f in sorted(node_dir.glob("*.log"))) or "none"
            raise LabError(f"no log for process {process!r} (logs: {names})")
    return files


def show(node_dir: Path, node: str, *, process: str | None = None, follow: bool = False,
         out: TextIO | None = None, poll: float = 0.2, max_seconds: float | None = None) -> None:
    """Print the node's logs (prefixed by process name when there are several), then follow."""
    out = out or sys.stdout
    if not node_dir.is_dir():
        raise LabError(f"node {node} has no logs (directory {node_dir} does not exist)")
    files = log_files(node_dir, process)
    if not files and not follow:
        raise LabError(f"node {node} has no logs in {node_dir}")
    prefix = len(files) > 1 or (process is None and follow)
    offsets: dict[Path, int] = {}
    partial: dict[Path, bytes] = {}

    def pump() -> None:
        for path in log_files(node_dir, process) if follow else files:
            try:
                with open(path, "rb") as f:
                    f.seek(offsets.get(path, 0))
                    data = f.read()
                    offsets[path] = f.tell()
            except OSError:
                continue
            if not data:
                continue
            data = partial.pop(path, b"") + data
            lines = data.split(b"\n")
            if follow and lines[-1]:
                partial[path] = lines[-1]
            body = lines[:-1] if (follow or not lines[-1]) else lines
            for line in body:
                text = line.decode(errors="replace")
                out.write(f"{path.stem} | {text}\n" if prefix else f"{text}\n")
        out.flush()

    pump()
    start = time.monotonic()
    while follow and (max_seconds is None or time.monotonic() - start < max_seconds):
        time.sleep(poll)
        pump()
