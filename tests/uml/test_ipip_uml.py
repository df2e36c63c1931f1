"""IPIP end to end under User-Mode Linux: this host kernel has no ipip module, the UML kernel does.

The guest boots with the host's filesystem as a read-only-in-practice hostfs root (the init
script mounts tmpfs over /run and /tmp and writes nothing else), loads veth, then runs
tests/uml/ipip_guest.py with this same venv's Python. The guest reports one JSON line on its
console; this test asserts on it. The UML process group is killed in every case, and the
whole run is bounded (about 10 s here; 90 s at most).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.uml.boot import boot_guest, mount_tmp_keeping, needed_paths, uml_modules

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[2]
BOOT_TIMEOUT_S = 90
MARKER = "TABBY-UML-RESULT "

INIT = """#!/bin/sh
# init of the UML guest: the root is the HOST filesystem through hostfs, write only to tmpfs.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin  # the kernel starts init without PATH
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t tmpfs tmpfs /run
{mount_tmp}
mkdir -p /tmp/modroot/lib/modules
ln -s {modules} /tmp/modroot/lib/modules/{kver}
printf '#!/bin/sh\\nexec modprobe -d /tmp/modroot "$@"\\n' > /tmp/modprobe && chmod +x /tmp/modprobe
/tmp/modprobe veth
cd {repo} && PYTHONPATH={repo} {python} -I -c 'import sys; sys.path.insert(0, "{repo}"); \
import runpy; runpy.run_module("tests.uml.ipip_guest", run_name="__main__")' /tmp/modprobe
halt -f
"""


@pytest.fixture
def guest_result(tmp_path: Path) -> Iterator[dict]:
    if os.geteuid() != 0:
        pytest.skip("needs root (the guest runs the test as root on the host's filesystem)")
    modules, kver = uml_modules()
    if not shutil.which("modprobe"):
        pytest.skip("kmod (modprobe) is not installed")
    text, _ = boot_guest(
        INIT.format(modules=modules, kver=kver, repo=REPO, python=sys.executable,
                    mount_tmp=mount_tmp_keeping(needed_paths(REPO))),
        tmp_path, mem="512M", umid="tabbytest", timeout=BOOT_TIMEOUT_S,
    )
    lines = [line for line in text.splitlines() if line.startswith(MARKER)]
    assert lines, f"no result from the UML guest; console tail:\n{text[-3000:]}"
    result = json.loads(lines[-1][len(MARKER) :])
    assert result["error"] is None, result["error"]
    yield result


def test_ipip_between_workloads_on_different_subnets(guest_result: dict) -> None:
    r = guest_result
    assert r["missing_module_ok"], r["missing_module_error"]
    assert r["node-a_apply"]["ok"] and r["node-b_apply"]["ok"], r
    assert r["node-a_routes_ok"] and r["node-b_routes_ok"]
    assert r["tunl0"] == {"mtu": 1480, "up": True, "addrs": ["10.65.1.0/32"]}
    assert r["route"] == {"gateway": "192.168.20.2", "dev": "tunl0", "flags": ["onlink"]}
    assert r["ping"] is True
    assert r["tcp_peer"] == "10.65.1.5"
    assert r["tunl0_tx_a"] >= 6 and r["tunl0_rx_b"] >= 6, r
    assert sorted(r["repair_changes"]) == ["addr-del 10.99.0.1/24", "mtu 1300->1480"]
    assert r["noop_writes"] == 0
