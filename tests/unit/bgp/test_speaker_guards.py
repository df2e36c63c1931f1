"""Speaker guards found in lab runs: no reload signal before ExaBGP can take it; no adopting a foreign ExaBGP."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from bgp.exabgp_codec import Hello
from bgp.speaker import Speaker, same_netns


def test_deferred_reload_is_sent_when_the_relay_says_hello(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sp = Speaker(None, tmp_path)
    sent: list[int] = []
    monkeypatch.setattr(sp, "_signal", sent.append)

    async def resync(_hello: Hello) -> None:
        return None

    monkeypatch.setattr(sp, "_resync", resync)
    sp._reload_pending = True  # apply() saw a config change while ExaBGP was still starting
    asyncio.run(sp._handle(Hello(helper_pid=1, exabgp_pid=2, dropped=0, routes=(), replay=0)))
    assert sent == [signal.SIGUSR1]
    assert sp._relay_ready and not sp._reload_pending
    asyncio.run(sp._handle(Hello(helper_pid=1, exabgp_pid=2, dropped=0, routes=(), replay=0)))
    assert sent == [signal.SIGUSR1]  # nothing pending: a reconnect sends no second reload


def test_same_netns_of_own_process() -> None:
    assert same_netns(os.getpid(), None)
    assert not same_netns(2**22 + 12345, None)  # no such pid


@pytest.mark.root
def test_exabgp_in_another_namespace_is_not_adopted(tmp_path: Path) -> None:
    """Two labs with the same node names share a run dir name: the pid file may name another lab's ExaBGP."""
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    ns = f"tabbytest-adopt-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    proc = None
    try:
        conf = tmp_path / "exabgp.conf"
        # A stand-in whose command line looks like our ExaBGP (argv holds "exabgp" and our config path).
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-c", "import time; time.sleep(60)", "exabgp", str(conf)]
        )
        pid = _child_pid(proc.pid)
        (tmp_path / "exabgp.pid").write_text(f"{pid}\n")
        assert not Speaker(None, tmp_path)._adopt()
        assert Speaker(ns, tmp_path)._adopt()
    finally:
        if proc is not None:
            proc.kill()
            proc.wait(timeout=10)
        subprocess.run(["ip", "netns", "del", ns], check=False)


def _child_pid(pid: int) -> int:
    """``ip netns exec`` execs in place, so the pid is the python's once its cmdline has switched."""
    import time

    # ``ip``'s own argv already names "exabgp": wait until the exec'd python (inside the namespace) runs.
    for _ in range(500):
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
        if b"python" in argv0:
            return pid
        time.sleep(0.02)
    raise AssertionError("stand-in process did not start")
