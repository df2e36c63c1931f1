"""Progress where a person waits, and only there: `tabbyctl apply` of more documents than one
transaction draws a rich bar on a terminal (stderr a pty), and prints no progress at all when stderr
is a pipe (scripts, CI logs)."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess

from .conftest import Ctl, tabbyctl_command


def _pools(n: int) -> str:
    return "".join(f"---\napiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {{name: p{i}}}\n"
                   f"spec: {{cidr: 10.{i // 200}.{i % 200}.0/24, blockSize: 26}}\n" for i in range(n))


def test_apply_progress_on_a_terminal_only(ctl: Ctl, etcd_env: dict[str, str], write) -> None:  # type: ignore[no-untyped-def]
    path = write("many.yaml", _pools(300))
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen([*tabbyctl_command(), "apply", "-f", path], env={**etcd_env, "COLUMNS": "100"},
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave)
        os.close(slave)
        seen = b""
        while True:
            ready, _, _ = select.select([master], [], [], 60)
            if not ready:
                break
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the pty
                break
            if not chunk:
                break
            seen += chunk
        out, _ = proc.communicate(timeout=60)
    finally:
        os.close(master)
    assert proc.returncode == 0, seen.decode(errors="replace")
    assert b"Successfully applied 300" in out
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", seen.decode(errors="replace"))
    assert "applying resources" in text and "300/300" in text and "100%" in text, text[-500:]

    res = ctl("apply", "-f", path)  # stderr a pipe: no progress at all
    assert res.rc == 0 and "applying" not in res.err and "300/300" not in res.err, res.err
