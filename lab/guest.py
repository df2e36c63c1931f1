"""``tabbyctl lab deploy --kernel guest``: a whole lab inside Debian's own kernel under QEMU.

Why: the host kernel may lack what a topology needs (ipip, gre, vrf, bonding, 8021q, dummy as
modules); the guest kernel has them all. The guest is the one the guest-kernel tests boot
(tests/guest/qemu.py uses the pieces below): the kernel package unpacked by
scripts/guest-kernel.sh, an initramfs of busybox and the virtio/9p modules, the host's root
read-only over 9p, and a chroot into it, so the guest runs the host's own python, ``ip`` and lab
code. It has no network device at all: nothing of the lab can reach the host's networks.

Lifetime: ``deploy --kernel guest`` boots QEMU as a daemon (its own session; recorded in
``<lab dir>/guest.json`` with its start time) and starts, in the guest, ``lab.guest_agent``: one
process that imports the lab code once (tens of seconds under TCG) and then runs ``tabbyctl lab``
commands sent over a virtio-serial port (QEMU exposes it as a unix socket in the lab directory).
Every later ``tabbyctl lab`` command naming that lab is forwarded there (``forward``), and its
output and exit status come back; ``destroy`` is forwarded, then the guest powers off and QEMU is
killed. The guest's state (namespaces, lab state) lives in the guest's tmpfs and dies with it.

Limits: the guest's root is a chroot over 9p, which a node cannot pivot out of into an overlay
root, so the lab runs with ``TABBY_LAB_SHARED_ROOT=1``: plain ``linux`` nodes without binds
(``exec`` and ``cmd`` work; FRR/BIRD/GoBGP/etcd/tabby nodes need their own root and are refused,
naming the node). The guest sees the host's files read-only (the topology directory too); it
writes only to its own tmpfs and to ``<lab dir>/guest`` (console log, control socket).
"""

from __future__ import annotations

import contextlib
import json
import lzma
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lab.errors import LabError
from lab.state import LabState, lab_dir, process_start_time

REPO = Path(__file__).resolve().parents[1]
KERNEL_SCRIPT = REPO / "scripts" / "guest-kernel.sh"
#: Modules the initramfs loads itself, so it can mount the host's root (their dependencies come first).
BOOT_MODULES = ("virtio_pci", "9pnet_virtio", "9p", "virtio-rng")
HOST_TAG, WORK_TAG = "tabbyhost", "tabbywork"
#: The guest's view: where boot.sh finds the work share before chroot, and the host root.
WORK_MNT, HOST_MNT = "/work", "/host"
MSIZE = 512 * 1024
#: x86-64-v2 without AVX: what the host's binaries may need, and what TCG emulates fast.
CPU = "Nehalem"
EXIT_MARKER = "TABBY-GUEST-EXIT "
#: In the guest, on tmpfs: ``modprobe`` for this guest kernel, first on PATH.
GUEST_BIN = "/run/tabby-guest/bin"
#: The lab state directory inside the guest (its tmpfs), and the virtio-serial port's name.
GUEST_STATE_DIR = "/run/tabby-guest/lab"
PORT_NAME = "tabby.lab"
GUEST_RECORD = "guest.json"
#: Modules a lab commonly needs, loaded before the agent starts (the kernel autoloads the others).
LAB_MODULES = ("veth", "bridge", "ipip", "ip_gre", "8021q", "dummy", "vxlan", "vrf", "bonding", "virtio_console")
BOOT_TIMEOUT = 300.0
COMMAND_TIMEOUT = 600.0

INIT = f"""#!/bin/busybox sh
# initramfs init of the Tabby guest: load virtio + 9p, mount the shares, run the run's boot.sh.
/bin/busybox mkdir -p /proc /sys /dev /tmp {HOST_MNT} {WORK_MNT} /sbin
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
while read -r m; do insmod "/modules/$m" || echo "TABBY-GUEST insmod $m failed"; done < /modules/order
if mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize={MSIZE} {HOST_TAG} {HOST_MNT} \\
   && mount -t 9p -o trans=virtio,version=9p2000.L,msize={MSIZE} {WORK_TAG} {WORK_MNT}; then
    sh {WORK_MNT}/boot.sh
    echo "{EXIT_MARKER}$?"
else
    echo "{EXIT_MARKER}mount-failed"
fi
sync
poweroff -f
"""

#: The kernel's own module autoloading (request_module) runs /sbin/modprobe in the initramfs root:
#: hand it to the host's kmod in the chroot, reading the cached kernel's modules.
KMOD_HELPER = f"""#!/bin/sh
exec chroot {HOST_MNT} /sbin/modprobe -d "$(cat /modules/kdir)" "$@"
"""


@dataclass(frozen=True)
class Kernel:
    """An unpacked Debian kernel package: ``root`` holds boot/ and lib/modules/<version>/."""

    root: Path
    version: str

    @property
    def vmlinuz(self) -> Path:
        return self.root / "boot" / f"vmlinuz-{self.version}"

    @property
    def moddir(self) -> Path:
        return self.root / "lib" / "modules" / self.version

    def module_path(self, name: str) -> str:
        """modules.dep-relative path of module ``name`` (``-`` and ``_`` are the same, as for modprobe)."""
        want = name.replace("-", "_")
        for line in (self.moddir / "modules.dep").read_text().splitlines():
            path = line.split(":", 1)[0]
            base = Path(path).name.split(".ko", 1)[0]
            if base.replace("-", "_") == want:
                return path
        raise LookupError(f"module {name} is not in {self.moddir}/modules.dep")

    def load_order(self, names: Sequence[str]) -> list[str]:
        """modules.dep paths of ``names`` and their dependencies, each after what it needs."""
        deps: dict[str, list[str]] = {}
        for line in (self.moddir / "modules.dep").read_text().splitlines():
            path, _, rest = line.partition(":")
            deps[path] = rest.split()
        order: list[str] = []

        def visit(path: str) -> None:
            if path in order:
                return
            # modules.dep lists every (transitive) dependency, the deepest last: load those first.
            for dep in reversed(deps.get(path, [])):
                visit(dep)
            order.append(path)

        for name in names:
            visit(self.module_path(name))
        return order


def ensure_kernel() -> Kernel:
    """The cached kernel, fetched by scripts/guest-kernel.sh when missing (idempotent, locked)."""
    try:
        proc = subprocess.run(["bash", str(KERNEL_SCRIPT)], capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"{KERNEL_SCRIPT.name} took longer than {exc.timeout}s") from None
    if proc.returncode != 0:
        raise LabError(f"{KERNEL_SCRIPT.name} failed: {proc.stderr.strip()[-1000:]}")
    root = Path(proc.stdout.strip().splitlines()[-1])
    return Kernel(root, root.name)


def qemu_binary() -> str:
    found = shutil.which("qemu-system-x86_64")
    if not found:
        raise LabError("qemu-system-x86_64 is not installed (Debian qemu-system-x86; `make setup`)")
    return found


def build_initramfs(kernel: Kernel, dest: Path) -> Path:
    """An uncompressed newc cpio: busybox-static, the boot modules (decompressed), /init."""
    busybox = shutil.which("busybox") or "/bin/busybox"
    if not Path(busybox).exists():
        raise LabError("busybox is not installed (Debian busybox-static)")
    if not shutil.which("cpio"):
        raise LabError("cpio is not installed (Debian cpio)")
    tree = dest / "initramfs"
    shutil.rmtree(tree, ignore_errors=True)
    (tree / "bin").mkdir(parents=True)
    (tree / "modules").mkdir()
    (tree / "sbin").mkdir()
    shutil.copy2(busybox, tree / "bin" / "busybox")
    names = []
    for rel in kernel.load_order(BOOT_MODULES):
        src = kernel.moddir / rel
        name = Path(rel).name
        if name.endswith(".xz"):
            (tree / "modules" / name[:-3]).write_bytes(lzma.decompress(src.read_bytes()))
            name = name[:-3]
        elif name.endswith(".ko"):
            shutil.copy2(src, tree / "modules" / name)
        else:
            raise LabError(f"cannot unpack module {rel} (only .ko and .ko.xz)")
        names.append(name)
    (tree / "modules" / "order").write_text("\n".join(names) + "\n")
    (tree / "modules" / "kdir").write_text(f"{kernel.root}\n")
    for path, text in ((tree / "init", INIT), (tree / "sbin" / "modprobe", KMOD_HELPER)):
        path.write_text(text)
        path.chmod(0o755)
    out = dest / "initramfs.cpio"
    files = subprocess.run(["find", "."], cwd=tree, capture_output=True, check=True, timeout=30).stdout
    with out.open("wb") as fh:
        subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=tree, input=files, stdout=fh, check=True,
                       timeout=60)
    shutil.rmtree(tree)
    return out


def modprobe_wrapper(root: str, prefix: str = "") -> list[str]:
    """Shell lines writing ``GUEST_BIN/modprobe``: the host's kmod reading the modules under ``root``."""
    q = shlex.quote
    return [
        f"mkdir -p {prefix}{GUEST_BIN}",
        "printf '#!/bin/sh\\nexec /sbin/modprobe -d %s \"$@\"\\n' " + q(q(root)) + f" > {prefix}{GUEST_BIN}/modprobe",
        f"chmod +x {prefix}{GUEST_BIN}/modprobe",
    ]


def needed_paths(extra: Sequence[Path] = ()) -> list[Path]:
    """Host paths the guest must see through its fresh /tmp: the checkout, the venv, ``extra``."""
    venv = Path(sys.executable).parent.parent
    return sorted({REPO.resolve(), venv.resolve(), *(p.resolve() for p in extra)})


def root_setup_lines(kernel: Kernel, work: Path, extra_paths: Sequence[Path]) -> list[str]:
    """boot.sh's first part (in the initramfs): fresh proc/sys/dev/run/tmp in the host root, the
    needed paths under the host's /tmp bound back, the work share at its own path, modprobe."""
    q = shlex.quote
    lines = [
        "set -u",
        f"H={HOST_MNT}",
        "mount -t proc proc $H/proc",
        "mount -t sysfs sys $H/sys",
        "mount -t cgroup2 cgroup2 $H/sys/fs/cgroup 2>/dev/null || true",
        "mount -t devtmpfs dev $H/dev",
        "mkdir -p $H/dev/pts $H/dev/shm",
        "mount -t devpts devpts $H/dev/pts",
        "mount -t tmpfs tmpfs $H/dev/shm",
        "mount -t tmpfs -o mode=0755 tmpfs $H/run",
        # the host's /tmp moves aside; a tmpfs takes its place; the paths needed come back at their names
        "mkdir -p $H/run/host-tmp && mount --bind $H/tmp $H/run/host-tmp",
        "mount -t tmpfs -o mode=1777 tmpfs $H/tmp",
    ]
    for path in needed_paths([*extra_paths, kernel.root]):
        if path == work.resolve():
            continue  # the writable share is mounted there below
        try:
            rel = path.relative_to("/tmp")
        except ValueError:
            continue  # outside /tmp: the read-only root shows it as it is
        lines.append(f"mkdir -p $H{q(str(path))} && mount --bind $H/run/host-tmp/{q(str(rel))} $H{q(str(path))}")
    lines += [
        f"mkdir -p $H{q(str(work))} 2>/dev/null; mount --bind {WORK_MNT} $H{q(str(work))} || exit 90",
        *modprobe_wrapper(str(kernel.root), prefix="$H"),
        "echo /sbin/modprobe > /proc/sys/kernel/modprobe",
    ]
    return lines


def qemu_argv(qemu: str, kernel: Kernel, initrd: Path, work: Path, console: Path, *, mem_mb: int, cpus: int,
              extra: Sequence[str] = ()) -> list[str]:
    """The QEMU command line: TCG, no network device, the host root read-only and ``work`` writable."""
    return [
        qemu, "-accel", "tcg,thread=multi", "-machine", "pc", "-cpu", CPU, "-m", str(mem_mb),
        "-smp", str(cpus), "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-serial", f"file:{console}", "-monitor", "none",
        "-kernel", str(kernel.vmlinuz), "-initrd", str(initrd),
        "-append", "console=ttyS0 panic=-1 quiet loglevel=3 mitigations=off random.trust_cpu=on",
        "-virtfs", f"local,path=/,mount_tag={HOST_TAG},security_model=passthrough,readonly=on,multidevs=remap",
        "-virtfs", f"local,path={work},mount_tag={WORK_TAG},security_model=passthrough,multidevs=remap",
        "-device", "virtio-rng-pci", *extra,
    ]


# --------------------------------------------------------------------------- a lab in a guest


def _alive(pid: int, start_time: int | None) -> bool:
    """``pid`` is still the process recorded (same start time) and not a zombie."""
    if start_time is None or process_start_time(pid) != start_time:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2:].split()[0] != "Z"


def record_path(lab: str) -> Path:
    return lab_dir(lab) / GUEST_RECORD


def guest_record(lab: str) -> dict | None:
    """The running guest of ``lab`` (``None`` when there is none, or its QEMU is gone)."""
    path = record_path(lab)
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if _alive(int(record["pid"]), record.get("start_time")) else None


def boot(lab: str, topology: Path, *, mem_mb: int = 1536, cpus: int = 2, timeout: float = BOOT_TIMEOUT) -> dict:
    """Boot the lab's guest and start its agent; returns the record once the agent said hello."""
    if guest_record(lab) is not None:
        raise LabError(f"lab {lab}: its guest kernel is already running (tabbyctl lab destroy -t {topology})")
    if LabState.load(lab) is not None:
        raise LabError(f"lab {lab} is already deployed on this host; destroy it first (tabbyctl lab destroy -t "
                       f"{topology})")
    qemu = qemu_binary()
    kernel = ensure_kernel()
    work = lab_dir(lab) / "guest"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    initrd = build_initramfs(kernel, work)
    sock = work / "control.sock"
    q = shlex.quote
    topo_dir = topology.resolve().parent
    venv_bin = Path(sys.executable).parent
    env = {
        "PATH": f"{GUEST_BIN}:{venv_bin}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/tmp", "PYTHONPATH": str(REPO), "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1",
        "TABBY_LAB_STATE_DIR": GUEST_STATE_DIR, "TABBY_LAB_SHARED_ROOT": "1", "TABBY_LAB_IN_GUEST": "1",
    }
    run = work / "run.sh"
    run.write_text("\n".join([
        *(f"export {k}={q(v)}" for k, v in env.items()),
        'echo "TABBY-GUEST-STEP chroot up=$(cut -d" " -f1 /proc/uptime)"',
        f"modprobe -a {' '.join(LAB_MODULES)} 2>/dev/null || true",
        'echo "TABBY-GUEST-STEP modules up=$(cut -d" " -f1 /proc/uptime)"',
        "mount --make-rshared / 2>/dev/null || true",
        f"cd {q(str(topo_dir))}",
        f"exec {q(sys.executable)} -m lab.guest_agent {q(PORT_NAME)}",
        "",
    ]))
    lines = root_setup_lines(kernel, work, [topo_dir])
    lines.append(f"exec chroot $H /bin/sh {q(str(run))}")
    (work / "boot.sh").write_text("\n".join(lines) + "\n")
    console = work / "console.log"
    argv = qemu_argv(qemu, kernel, initrd, work, console, mem_mb=mem_mb, cpus=cpus, extra=[
        "-chardev", f"socket,id=ctl,path={sock},server=on,wait=off",
        "-device", "virtio-serial-pci", "-device", f"virtserialport,chardev=ctl,name={PORT_NAME}",
    ])
    subprocess.run([sys.executable, "-m", "compileall", "-q", "-j0", str(REPO / "lab"), str(REPO / "common")],
                   capture_output=True, timeout=120, check=False)  # the guest's root is read-only: compile here
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    record = {"pid": proc.pid, "start_time": process_start_time(proc.pid), "socket": str(sock),
              "console": str(console), "topology": str(topology.resolve())}
    record_path(lab).write_text(json.dumps(record))
    deadline = time.monotonic() + timeout
    try:
        while True:
            if proc.poll() is not None:
                raise LabError(f"lab {lab}: the guest kernel stopped while booting: {console_tail(console)}")
            if time.monotonic() > deadline:
                raise LabError(f"lab {lab}: the guest's agent did not answer within {timeout:.0f}s: "
                               f"{console_tail(console)}")
            if sock.exists():
                # short tries: a line sent before the guest opened its port may be dropped, so ask again
                with contextlib.suppress(OSError, LabError):
                    reply = _request(sock, {"argv": ["--hello"]}, timeout=2.0)
                    if reply.get("hello"):
                        return record
            time.sleep(0.2)
    except BaseException:
        stop(lab)
        raise


def console_tail(console: Path, lines: int = 8) -> str:
    try:
        text = console.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no console output)"
    return " | ".join(text[-lines:]) or "(no console output)"


def _request(sock: Path, message: dict, *, timeout: float) -> dict:
    """One request over the guest's control socket: a JSON line out, the first JSON reply line back."""
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout)
        conn.connect(str(sock))
        conn.sendall(json.dumps(message).encode() + b"\n")
        buffer = b""
        while time.monotonic() < deadline:
            conn.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                chunk = conn.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                with contextlib.suppress(ValueError):
                    reply = json.loads(line)
                    if isinstance(reply, dict) and reply.get("id") == message.get("id"):
                        return reply
    raise LabError(f"no answer from the guest on {sock} within {timeout:.0f}s")


def forward(lab: str, argv: list[str], *, timeout: float = COMMAND_TIMEOUT) -> tuple[int, str, str]:
    """Run ``tabbyctl lab ARGV`` in the lab's guest: (exit status, stdout, stderr)."""
    record = guest_record(lab)
    if record is None:
        raise LabError(f"lab {lab}: its guest kernel is not running")
    message = {"id": os.urandom(6).hex(), "argv": argv}
    reply = _request(Path(record["socket"]), message, timeout=timeout)
    return int(reply.get("code", 1)), str(reply.get("stdout", "")), str(reply.get("stderr", ""))


def stop(lab: str, *, grace: float = 20.0) -> bool:
    """Power the guest off (its agent exits, init powers off), then kill QEMU; idempotent."""
    record = guest_record(lab)
    if record is None:
        record_path(lab).unlink(missing_ok=True)
        return False
    pid = int(record["pid"])
    with contextlib.suppress(OSError, LabError):
        _request(Path(record["socket"]), {"id": "poweroff", "argv": ["--poweroff"]}, timeout=5)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _alive(pid, record.get("start_time")):
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)  # our own child when this process booted it
        time.sleep(0.2)
    if _alive(pid, record.get("start_time")):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
    record_path(lab).unlink(missing_ok=True)
    for leftover in ("initramfs.cpio", "control.sock"):  # the console log stays, as a node's logs do
        (lab_dir(lab) / "guest" / leftover).unlink(missing_ok=True)
    return True
