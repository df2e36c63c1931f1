"""containerd as a real CNI client of Tabby (design.md section 5's recipe).

Why: ``lab pod add`` calls the plugin the way we think a runtime does; this test lets a real
runtime do it. containerd runs inside lab node A's namespace with its own root, state and
socket under a temp dir; ``ctr run --rm --cni`` (under ``unshare -m``, with a private
``/etc/cni/net.d`` holding Tabby's conflist and a private ``/opt/cni/bin`` holding the installed
``tabby`` plugin and the reference ``loopback``) starts a busybox-only rootfs. The container must
get its address from Tabby (``ip addr`` inside it, the WorkloadEndpoint and IPAM outside), reach
a pod on node B, and leave nothing allocated after ``--rm`` (CNI DEL by containerd).

Nothing is pulled from a registry. Cleanup, also on failure: containerd and its shims killed,
any mount under the temp dir unmounted, the temp dir, the cgroups and the mount points this test
created removed, the lab destroyed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.topology.conftest import EXAMPLES
from tests.topology.tabby_support import TabbyLab, items, tabby_lab_fixture  # noqa: F401 - the tabby_lab fixture

pytestmark = pytest.mark.root

ROOT = Path(__file__).resolve().parents[3]
CONF_DIR = Path("/etc/cni/net.d")
BIN_DIR = Path("/opt/cni/bin")
LOOPBACK = Path("/usr/lib/cni/loopback")
BUSYBOX = Path("/bin/busybox")
NEEDED = ("containerd", "ctr", "runc", "containerd-shim-runc-v2", "nsenter", "unshare")


def _why_not() -> str | None:
    """The reason containerd cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (namespaces, containerd, mounts)"
    missing = [b for b in NEEDED if shutil.which(b) is None]
    if missing:
        return f"{', '.join(missing)} not installed (make setup installs containerd, runc)"
    if not LOOPBACK.exists():
        return f"{LOOPBACK} missing (Debian containernetworking-plugins)"
    if not _is_static(BUSYBOX):
        return f"{BUSYBOX} is missing or not a static busybox (Debian busybox-static)"
    return None


def _is_static(path: Path) -> bool:
    """The rootfs holds nothing but this binary: it must not need a dynamic loader."""
    try:
        head = path.read_bytes()[:8192]
    except OSError:
        return False
    return head.startswith(b"\x7fELF") and b"ld-linux" not in head and b"ld-musl" not in head


class Containerd:
    """One containerd in a node's namespace, everything under ``base``; ``stop`` leaves nothing."""

    def __init__(self, base: Path, node_netns: str) -> None:
        self.base = base
        self.node_netns = node_netns
        self.address = base / "containerd.sock"
        self.log = base / "containerd.log"
        self.cgroup_parent = f"tabby-ctr-{uuid.uuid4().hex[:8]}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.made_dirs: list[Path] = []
        self.run_containerd_existed = Path("/run/containerd").exists()

    def start(self) -> None:
        for sub in ("root", "state", "conf", "bin", "rootfs/bin", "fifo", "runc", "signal"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        config = self.base / "config.toml"
        config.write_text(
            "version = 2\n"
            f'root = "{self.base / "root"}"\nstate = "{self.base / "state"}"\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs",'
            ' "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.aufs",'
            ' "io.containerd.snapshotter.v1.devmapper"]\n'
            f'[grpc]\n  address = "{self.address}"\n'
        )
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                ["nsenter", f"--net=/run/netns/{self.node_netns}", "containerd", "--config", str(config),
                 "--root", str(self.base / "root"), "--state", str(self.base / "state"),
                 "--address", str(self.address)],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 20
        while not self._answers():
            assert self.proc.poll() is None, f"containerd exited: {self.log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"containerd not answering: {self.log.read_text()[-2000:]}"
            time.sleep(0.1)

    def _answers(self) -> bool:
        if not self.address.exists():
            return False
        return subprocess.run(["ctr", "--address", str(self.address), "version"], capture_output=True,
                              timeout=10, check=False).returncode == 0

    def mount_points(self) -> None:
        """/etc/cni/net.d and /opt/cni/bin must exist to bind over them; made here if missing, removed after."""
        for path in (CONF_DIR, BIN_DIR):
            missing = [p for p in (path, *path.parents) if not p.exists()]
            path.mkdir(parents=True, exist_ok=True)
            self.made_dirs += missing  # deepest first: rmdir order

    def run_argv(self, container_id: str, script: str) -> list[str]:
        """ctr run in a private mount namespace (private CNI dirs) and in the node's network namespace."""
        ctr = ["ctr", "--address", str(self.address), "run", "--rm", "--cni", "--fifo-dir", str(self.base / "fifo"),
               "--runc-root", str(self.base / "runc"), "--cgroup", f"/{self.cgroup_parent}/{container_id}",
               "--mount", f"type=bind,src={self.base / 'signal'},dst=/signal,options=rbind:ro",
               "--rootfs", str(self.base / "rootfs"), container_id, "/bin/busybox", "sh", "-c", script]
        inner = (f"mount --bind {self.base / 'conf'} {CONF_DIR} && mount --bind {self.base / 'bin'} {BIN_DIR} && "
                 f"exec nsenter --net=/run/netns/{self.node_netns} \"$@\"")
        return ["unshare", "-m", "--propagation", "private", "sh", "-c", inner, "ctr-run", *ctr]

    def stop(self) -> list[str]:
        """Kill containerd and its shims, unmount, remove every trace; returns what could not be removed."""
        problems: list[str] = []
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        for pid in self.shims():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while self.shims() and time.monotonic() < deadline:
            time.sleep(0.1)
        problems += [f"process {pid} still running" for pid in self.shims()]
        for mount in sorted(self.mounts(), key=len, reverse=True):
            subprocess.run(["umount", "-l", mount], capture_output=True, check=False)
        shutil.rmtree(self.base, ignore_errors=True)
        for controller in Path("/sys/fs/cgroup").iterdir():
            group = controller / self.cgroup_parent
            if group.is_dir():
                for child in sorted(group.iterdir()):
                    if child.is_dir():
                        with contextlib.suppress(OSError):
                            child.rmdir()
                with contextlib.suppress(OSError):
                    group.rmdir()
                if group.exists():
                    problems.append(f"cgroup {group}")
        for path in self.made_dirs:
            with contextlib.suppress(OSError):
                path.rmdir()
        if not self.run_containerd_existed:
            shutil.rmtree("/run/containerd", ignore_errors=True)  # ctr's shim socket dir, created by this test
        if self.base.exists():
            problems.append(f"path {self.base}")
        return problems

    def shims(self) -> list[int]:
        found = []
        for proc_dir in Path("/proc").iterdir():
            if proc_dir.name.isdigit():
                with contextlib.suppress(OSError):
                    cmdline = (proc_dir / "cmdline").read_bytes()
                    if str(self.base).encode() in cmdline and int(proc_dir.name) != os.getpid():
                        found.append(int(proc_dir.name))
        return found

    def mounts(self) -> list[str]:
        text = Path("/proc/self/mountinfo").read_text()
        return [line.split()[4] for line in text.splitlines() if line.split()[4].startswith(str(self.base))]


@pytest.fixture
def containerd_in(tmp_path: Path) -> Iterator[Callable[[str], Containerd]]:
    why = _why_not()
    if why:
        pytest.skip(f"containerd cannot run here: {why}")
    started: list[Containerd] = []

    def start(node_netns: str) -> Containerd:
        # short path: containerd's sockets live under it (unix socket paths are limited to 108 bytes)
        runtime = Containerd(Path(tempfile.mkdtemp(prefix="tabby-ctr-", dir="/tmp")), node_netns)
        started.append(runtime)
        runtime.mount_points()
        runtime.start()
        return runtime

    try:
        yield start
    finally:
        problems = [p for runtime in started for p in runtime.stop()]
        assert not problems, f"left behind: {problems}"


def test_ctr_run_with_tabby_cni(tabby_lab: Callable[..., TabbyLab], containerd_in: Callable[[str], Containerd]) -> None:
    lab = tabby_lab(EXAMPLES / "two-node-native.clab.yml")
    lab.add_pod("native2", "target")
    target_ip = lab.pod_ip("target")
    runtime = containerd_in(lab.netns("native1"))

    # the installed plugin (manifests/cni/install.sh), Tabby's conflist with nodename, loopback
    install = subprocess.run(["sh", str(ROOT / "manifests/cni/install.sh"), "--bin-dir", str(runtime.base / "bin"),
                              "--no-conf"], capture_output=True, text=True, timeout=60, check=False)
    assert install.returncode == 0, install.stderr
    shutil.copy2(LOOPBACK, runtime.base / "bin" / "loopback")
    conflist = json.loads((ROOT / "manifests/cni/10-tabby.conflist").read_text())
    conflist["plugins"][0]["nodename"] = "native1"
    (runtime.base / "conf" / "10-tabby.conflist").write_text(json.dumps(conflist, indent=2))
    shutil.copy2(BUSYBOX, runtime.base / "rootfs" / "bin" / "busybox")

    container_id = f"ctr-{uuid.uuid4().hex[:8]}"
    script = ("ip -4 -o addr show eth0; ip route; "
              f"if ping -c 2 -W 2 {target_ip} >/dev/null; then echo PING-OK; else echo PING-FAILED; fi; "
              "i=0; while [ ! -e /signal/done ] && [ $i -lt 150 ]; do sleep 0.1; i=$((i+1)); done")
    env = {**os.environ, "TABBY_RUN_ROOT": str(lab.run_root)}  # passed on to the plugins by ctr
    started = time.monotonic()
    ctr = subprocess.Popen(runtime.run_argv(container_id, script), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, env=env, start_new_session=True)
    try:
        # while it runs: the WorkloadEndpoint of the container, on native1, with its address
        deadline = time.monotonic() + 20
        wep: dict = {}
        while not wep and time.monotonic() < deadline and ctr.poll() is None:
            weps = items(lab.tabbyctl_json("native1", "get", "workloadendpoints", "-A"))
            wep = next((w for w in weps if container_id in (w["spec"].get("containerID") or "")), {})
            time.sleep(0.2)
        (runtime.base / "signal" / "done").touch()
        out, err = ctr.communicate(timeout=60)
    finally:
        if ctr.poll() is None:
            os.killpg(ctr.pid, signal.SIGKILL)
            ctr.wait(timeout=10)
    print(f"ctr run took {time.monotonic() - started:.1f}s")
    assert ctr.returncode == 0, f"ctr run failed: {err}\n{out}\n{runtime.log.read_text()[-3000:]}"
    assert wep, f"no WorkloadEndpoint for {container_id} while it ran: {out} {err}"
    (address,) = wep["spec"]["ipNetworks"]
    assert wep["spec"]["node"] == "native1"

    # inside the container: Tabby's /32 on eth0, the 169.254.1.1 gateway, and the ping to node B's pod
    assert f"inet {address} " in out, out
    assert "default via 169.254.1.1 dev eth0" in out, out
    assert "PING-OK" in out, out

    # after --rm containerd called DEL: no WorkloadEndpoint, the address is free, IPAM is consistent
    weps = items(lab.tabbyctl_json("native1", "get", "workloadendpoints", "-A"))
    assert [w["metadata"]["name"] for w in weps if w["spec"].get("node") == "native1"] == [], weps
    ip = address.split("/")[0]
    show = lab.exec("native1", "tabbyctl", "ipam", "show", "--ip", ip)
    assert show.returncode == 0 and show.stdout.splitlines()[0] == f"{ip} is not assigned", show.stdout
    check = lab.exec("native1", "tabbyctl", "ipam", "check")
    assert check.returncode == 0, check.stdout + check.stderr
