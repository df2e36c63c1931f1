"""A lab node's own mount namespace, as a container has: an overlay root with the node's binds.

Why: files written for containerlab bind directories (``config/spine1:/etc/frr``) and scripts
(``setup.sh:/setup.sh``) and expect ``cmd``, ``exec`` and the daemons to see them at those paths.
Mounting them in the host would change the host; so each node gets a mount namespace whose root
is an overlay (lower: the host's ``/``, upper: a tmpfs private to the node, mounted under the
node's run directory), with the binds mounted at their container paths. Whatever a node writes
outside its binds, and every bind target that does not exist on the host, lands in that tmpfs
and disappears with the node. The lab's run root (``/run/tabby``, the state directory) is bound
back in, so sockets, logs and pods stay where host-side tools look.

The namespace is owned by a holder: this file run as a script (stdlib only, so it starts in a
few milliseconds) inside ``ip netns exec NS``, which already gives it a fresh mount namespace
with slave propagation (host mounts such as new ``/run/netns/<pod>`` files still arrive). It
builds the root, pivots into it, prints ``ready`` and sleeps; the node's processes join it with
``nsenter -t <holder> -m -n -u`` (the holder also owns the node's UTS namespace: its hostname
is the node's name, as a container's is). Crash safety: nothing is mounted in the host's namespace; the
holder lives in the node's network namespace, so destroy's sweep of that namespace's processes
kills it, and the kernel drops every mount of the namespace with its last process.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MNT_DETACH = 2
CLONE_NEWUTS = 0x04000000
SYS_PIVOT_ROOT = 155  # x86_64
OLD_ROOT = ".tabby-oldroot"

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mount(source: str, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(_libc.mount(source.encode(), target.encode(), fstype.encode() if fstype else None, flags,
                       data.encode() if data else None), f"mount {source} on {target}")


def umount(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(target.encode(), flags), f"umount {target}")


def pivot_root(new: str, old: str) -> None:
    _check(_libc.syscall(SYS_PIVOT_ROOT, new.encode(), old.encode()), f"pivot_root {new}")


def _top_level_mounts(exclude: list[str]) -> list[str]:
    """Mount points whose parent is the root mount (proc, sys, dev, /run/netns, ...), skipping ours.

    They are bound into the node's root as they are (recursively), except ``/run`` when it is a
    mount of its own (usual on systemd hosts): see ``build``."""
    rows = [line.split() for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    root_ids = {r[0] for r in rows if r[4] == "/"}
    points: list[str] = []
    for r in rows:
        point = r[4].replace("\\040", " ")
        if r[1] in root_ids and point != "/" and point not in points:
            if any(point == e or point.startswith(e.rstrip("/") + "/") for e in exclude):
                continue
            points.append(point)
    return points


def _make_target(path: Path, is_dir: bool) -> None:
    if path.exists() or path.is_symlink():
        return
    if is_dir:
        path.mkdir(parents=True, exist_ok=True)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()


def build(spec: dict[str, Any]) -> None:
    """Build the node's root from ``spec`` and pivot this process (and its namespace) into it."""
    if spec.get("hostname"):  # a container's own UTS namespace: hostname = the node's name
        _check(_libc.unshare(CLONE_NEWUTS), "unshare UTS")
        name = spec["hostname"].encode()
        _check(_libc.sethostname(name, len(name)), "sethostname")
    base = spec["base"]  # an empty directory under the node's run directory (host side)
    shared: list[str] = spec.get("shared", [])
    mount("tmpfs", base, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
    for sub in ("upper", "work", "merged"):
        os.mkdir(os.path.join(base, sub))
    merged = os.path.join(base, "merged")
    mount("overlay", merged, "overlay", 0,
          f"lowerdir=/,upperdir={base}/upper,workdir={base}/work")
    for point in _top_level_mounts([base, *shared]):
        target = merged + point
        if not os.path.isdir(target):
            continue
        if point == "/run":
            # a container's /run is its own (FRR's /run/frr must not be shared between nodes): a fresh
            # tmpfs, with the host's /run/netns back in (pods' namespace files) and the shared paths below
            mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
            if os.path.isdir("/run/netns"):
                os.makedirs(target + "/netns", exist_ok=True)
                mount("/run/netns", target + "/netns", None, MS_BIND | MS_REC)
            continue
        mount(point, target, None, MS_BIND | MS_REC)
    for path in shared:
        target = Path(merged + path)
        _make_target(target, True)
        mount(path, str(target), None, MS_BIND)
    os.chdir(merged)
    os.mkdir(OLD_ROOT)
    pivot_root(".", OLD_ROOT)
    os.chdir("/")
    old = "/" + OLD_ROOT
    for bind in spec.get("binds", []):
        source = old + bind["source"]
        target = Path(bind["target"])
        _make_target(target, os.path.isdir(source))
        mount(source, str(target), None, MS_BIND | MS_REC)
        if bind.get("ro"):
            mount("none", str(target), None, MS_BIND | MS_REMOUNT | MS_RDONLY)
    for entry in spec.get("dirs", []):
        directory = Path(entry["path"])
        directory.mkdir(parents=True, exist_ok=True)
        os.chown(directory, entry.get("uid", 0), entry.get("gid", 0))
    mount("none", old, None, MS_PRIVATE | MS_REC)
    umount(old, MNT_DETACH)
    os.rmdir(old)


def main() -> int:
    spec = json.loads(sys.argv[1])
    try:
        build(spec)
    except OSError as exc:
        print(f"error: {exc.strerror or exc}", flush=True)
        return 1
    print("ready", flush=True)
    sys.stdout.close()
    os.close(1)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        signal.pause()


if __name__ == "__main__":
    sys.exit(main())
