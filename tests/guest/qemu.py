"""Boot Debian's own kernel under QEMU (TCG) with the host's root read-only over 9p, run a script.

Why: the kernels of CI hosts lack modules the dataplane tests need (ipip, gre, vrf, bonding,
8021q, dummy), and User-Mode Linux panics on CPUs with AMX. A full Debian kernel under QEMU's
TCG runs on every x86-64 host. The kernel comes from
scripts/guest-kernel.sh (``make setup`` runs it: the package ``linux-image-amd64`` depends on,
unpacked into /var/cache/tabby-guest); nothing is installed on the host.

Boot: a tiny initramfs (busybox-static plus the virtio, 9p and virtio-rng modules, insmod in
modules.dep order) mounts the host's root read-only (``readonly=on`` in QEMU itself) and the
run's work directory writable over a second 9p share, then runs ``boot.sh`` from that share.
boot.sh mounts fresh proc/sys/dev/cgroup2 and tmpfs /run and /tmp into the host root, binds back
the paths under the host's /tmp the guest needs (the checkout, its venv, the work directory),
and ``chroot``s to run the test script: the host's own python, venv, ip and etcd then run on the
guest kernel, writing only to tmpfs and the work directory. ``modprobe`` (through PATH and the
kernel's own module autoloading) is the host's kmod reading the cached kernel's modules.

Results come back in the work directory (the guest writes files there) and on the console
(``console.log`` there too). The QEMU process is killed in every case, the run is bounded, and a
guest that gives no result fails loudly with the console tail (tests/guest/runner.py, ``result_of``).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import lzma
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.guest.report import RESULT_MARKER, STEP_MARKER

REPO = Path(__file__).resolve().parents[2]
#: The checkout's packages, byte-compiled on the host before a boot (see :func:`precompile`).
PACKAGES = ("bgp", "common", "controller", "datamodel", "datastore", "felix_like", "ipam", "lab", "tests")
#: In the guest, on tmpfs: ``modprobe`` for this guest kernel, first on PATH.
GUEST_BIN = "/run/tabby-guest/bin"
KERNEL_SCRIPT = REPO / "scripts" / "guest-kernel.sh"
#: Modules the initramfs loads itself, so it can mount the host's root (their dependencies come first).
BOOT_MODULES = ("virtio_pci", "9pnet_virtio", "9p", "virtio-rng")
HOST_TAG, WORK_TAG = "tabbyhost", "tabbywork"
#: The guest's view: where boot.sh finds the work share before chroot, and the host root.
WORK_MNT, HOST_MNT = "/work", "/host"
MSIZE = 512 * 1024
#: x86-64-v2 without AVX: what the host's binaries may need, and what TCG emulates fast (with ``max``
#: glibc picks AVX2 string functions, which TCG runs markedly slower). /dev/kvm exists on this kind
#: of host but offers no VMX to the guest (a KVM guest never printed a line), so TCG always.
CPU = "Nehalem"
EXIT_MARKER = "TABBY-GUEST-EXIT "

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


class GuestUnavailable(RuntimeError):
    """QEMU or the kernel cannot be had on this machine (the message says what is missing)."""


def ensure_kernel() -> Kernel:
    """The cached kernel, fetched by scripts/guest-kernel.sh when missing (idempotent, locked)."""
    try:
        proc = subprocess.run(["bash", str(KERNEL_SCRIPT)], capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired as exc:
        raise GuestUnavailable(f"{KERNEL_SCRIPT.name} took longer than {exc.timeout}s") from exc
    if proc.returncode != 0:
        raise GuestUnavailable(f"{KERNEL_SCRIPT.name} failed: {proc.stderr.strip()[-1000:]}")
    root = Path(proc.stdout.strip().splitlines()[-1])
    return Kernel(root, root.name)


def qemu_binary() -> str:
    found = shutil.which("qemu-system-x86_64")
    if not found:
        raise GuestUnavailable("qemu-system-x86_64 is not installed (Debian qemu-system-x86; `make setup`)")
    return found


def build_initramfs(kernel: Kernel, dest: Path) -> Path:
    """An uncompressed newc cpio: busybox-static, the boot modules (decompressed), /init."""
    busybox = shutil.which("busybox") or "/bin/busybox"
    if not Path(busybox).exists():
        raise GuestUnavailable("busybox is not installed (Debian busybox-static)")
    if not shutil.which("cpio"):
        raise GuestUnavailable("cpio is not installed (Debian cpio)")
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
            raise GuestUnavailable(f"cannot unpack module {rel} (only .ko and .ko.xz)")
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


def needed_paths(extra: Sequence[Path] = ()) -> list[Path]:
    """Host paths the guest must see through its fresh /tmp: the checkout, the venv, ``extra``."""
    venv = Path(sys.executable).parent.parent
    return sorted({REPO.resolve(), venv.resolve(), *(p.resolve() for p in extra)})


def write_run_script(work: Path, script: str, env: dict[str, str]) -> Path:
    """``<work>/run.sh``: the environment every guest test gets, then ``script`` (cwd: the checkout)."""
    q = shlex.quote
    venv_bin = Path(sys.executable).parent
    path_var = f"{GUEST_BIN}:{venv_bin}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    exports = {"PATH": path_var, "HOME": "/tmp", "PYTHONPATH": str(REPO), "TABBY_GUEST_OUT": str(work),
               "PYTHONDONTWRITEBYTECODE": "1", "LANG": "C.UTF-8", **env}
    run = work / "run.sh"
    run.write_text("\n".join([*(f"export {k}={q(v)}" for k, v in exports.items()), f"cd {q(str(REPO))}",
                              f'echo "{STEP_MARKER}run.sh up=$(cut -d" " -f1 /proc/uptime)"', script, ""]))
    return run


def modprobe_wrapper(root: str, prefix: str = "") -> list[str]:
    """Shell lines writing ``GUEST_BIN/modprobe``: the host's kmod reading the modules under ``root``."""
    q = shlex.quote
    return [
        f"mkdir -p {prefix}{GUEST_BIN}",
        "printf '#!/bin/sh\\nexec /sbin/modprobe -d %s \"$@\"\\n' " + q(q(root)) + f" > {prefix}{GUEST_BIN}/modprobe",
        f"chmod +x {prefix}{GUEST_BIN}/modprobe",
    ]


def precompile() -> None:
    """Byte-compile the checkout on the host first: the guest's root is read-only, and compiling
    every module again in every guest process costs seconds each under TCG."""
    packages = [str(REPO / p) for p in PACKAGES if (REPO / p).is_dir()]
    subprocess.run([sys.executable, "-m", "compileall", "-q", "-j0", *packages], capture_output=True, timeout=120,
                   check=False)


def boot_script(kernel: Kernel, work: Path, script: str, *, env: dict[str, str], extra_paths: Sequence[Path]) -> str:
    """boot.sh: runs in the initramfs, prepares the host root, chroots into it to run ``script``."""
    h = HOST_MNT
    q = shlex.quote
    lines = [
        "set -u",
        f"H={h}",
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
        # modprobe on PATH: the host's kmod reading the cached kernel's modules
        *modprobe_wrapper(str(kernel.root), prefix="$H"),
        "echo /sbin/modprobe > /proc/sys/kernel/modprobe",
    ]
    run = write_run_script(work, script, env)
    lines.append(f"exec chroot $H /bin/sh {q(str(run))}")
    return "\n".join(lines) + "\n"


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL QEMU when the test process dies (even by SIGKILL)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


PR_SET_PDEATHSIG = 1


@dataclass
class GuestRun:
    """What a guest run left: the console text, whether it was killed at the timeout, its work dir."""

    console: str
    timed_out: bool
    work: Path
    elapsed_s: float
    exit_status: str | None

    def steps(self) -> list[str]:
        return [line[len(STEP_MARKER):] for line in self.console.splitlines() if line.startswith(STEP_MARKER)]

    def result(self, name: str = "result") -> dict | None:
        """The JSON the guest wrote to ``<work>/<name>.json`` (or printed after the result marker)."""
        path = self.work / f"{name}.json"
        if path.exists():
            with contextlib.suppress(ValueError):
                return json.loads(path.read_text())
        for line in reversed(self.console.splitlines()):
            if line.startswith(RESULT_MARKER):
                with contextlib.suppress(ValueError):
                    return json.loads(line[len(RESULT_MARKER):])
        return None

    def describe(self) -> str:
        """One paragraph for a failure message: time, timeout, exit status, last step, console tail."""
        steps = self.steps()
        return (f"after {self.elapsed_s:.0f}s (timed out: {self.timed_out}; exit: {self.exit_status}); last step:"
                f" {steps[-1] if steps else 'none (boot)'}; console tail:\n{self.console[-3000:]}")


def run_guest(script: str, work: Path, *, timeout: float, env: dict[str, str] | None = None, mem_mb: int = 1024,
              cpus: int = 2, extra_paths: Sequence[Path] = ()) -> GuestRun:
    """Boot the guest, run the shell ``script`` in the host root as root (cwd: the checkout), power off.

    ``work`` (a directory on the host, typically the test's tmp_path) is the only place the guest
    can write that the host sees, at its own path. QEMU is killed at ``timeout`` and in every
    other case; nothing of the guest outlives this call.
    """
    qemu = qemu_binary()
    kernel = ensure_kernel()
    work.mkdir(parents=True, exist_ok=True)
    initrd = build_initramfs(kernel, work)
    precompile()
    (work / "boot.sh").write_text(boot_script(kernel, work, script, env=env or {}, extra_paths=extra_paths))
    console = work / "console.log"
    console.unlink(missing_ok=True)
    cmd = [
        qemu, "-accel", "tcg,thread=multi", "-machine", "pc", "-cpu", CPU, "-m", str(mem_mb),
        "-smp", str(cpus), "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-serial", f"file:{console}", "-monitor", "none",
        "-kernel", str(kernel.vmlinuz), "-initrd", str(initrd),
        "-append", "console=ttyS0 panic=-1 quiet loglevel=3 mitigations=off random.trust_cpu=on",
        "-virtfs", f"local,path=/,mount_tag={HOST_TAG},security_model=passthrough,readonly=on,multidevs=remap",
        "-virtfs", f"local,path={work},mount_tag={WORK_TAG},security_model=passthrough,multidevs=remap",
        "-device", "virtio-rng-pci",
    ]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, preexec_fn=_die_with_parent)
    timed_out = False
    qemu_out = b""
    try:
        qemu_out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            more, _ = proc.communicate(timeout=10)
            qemu_out += more or b""
        proc.wait(timeout=10)
    elapsed = time.monotonic() - started
    text = console.read_text(errors="replace") if console.exists() else ""
    if qemu_out.strip():
        text += "\n[qemu] " + qemu_out.decode(errors="replace")
    status = None
    for line in text.splitlines():
        if line.startswith(EXIT_MARKER):
            status = line[len(EXIT_MARKER):].strip()
    initrd.unlink(missing_ok=True)
    return GuestRun(text, timed_out, work, elapsed, status)
