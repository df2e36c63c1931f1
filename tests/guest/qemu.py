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

The kernel, initramfs, boot mounts and QEMU command line are lab/guest.py's (``tabbyctl lab deploy
--kernel guest`` boots the same guest); this module adds the test's run script and the run itself.

Results come back in the work directory (the guest writes files there) and on the console
(``console.log`` there too). The QEMU process is killed in every case, the run is bounded, and a
guest that gives no result fails loudly with the console tail (tests/guest/runner.py, ``result_of``).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lab import guest as lab_guest
from lab.errors import LabError
from lab.guest import (  # the boot pieces are shared with ``tabbyctl lab deploy --kernel guest``
    BOOT_MODULES,
    CPU,
    EXIT_MARKER,
    GUEST_BIN,
    HOST_MNT,
    HOST_TAG,
    INIT,
    KMOD_HELPER,
    MSIZE,
    WORK_MNT,
    WORK_TAG,
    Kernel,
    modprobe_wrapper,
    needed_paths,
)
from tests.guest.report import RESULT_MARKER, STEP_MARKER

__all__ = ["BOOT_MODULES", "CPU", "EXIT_MARKER", "GUEST_BIN", "HOST_MNT", "HOST_TAG", "INIT", "KMOD_HELPER",
           "MSIZE", "WORK_MNT", "WORK_TAG", "GuestRun", "GuestUnavailable", "Kernel", "boot_script",
           "build_initramfs", "ensure_kernel", "modprobe_wrapper", "needed_paths", "qemu_binary", "run_guest",
           "write_run_script"]

REPO = Path(__file__).resolve().parents[2]
#: The checkout's packages, byte-compiled on the host before a boot (see :func:`precompile`).
PACKAGES = ("bgp", "common", "controller", "datamodel", "datastore", "felix_like", "ipam", "lab", "tests")


class GuestUnavailable(RuntimeError):
    """QEMU or the kernel cannot be had on this machine (the message says what is missing)."""


def ensure_kernel() -> Kernel:
    """The cached kernel, fetched by scripts/guest-kernel.sh when missing (idempotent, locked)."""
    try:
        return lab_guest.ensure_kernel()
    except LabError as exc:
        raise GuestUnavailable(str(exc)) from None


def qemu_binary() -> str:
    try:
        return lab_guest.qemu_binary()
    except LabError as exc:
        raise GuestUnavailable(str(exc)) from None


def build_initramfs(kernel: Kernel, dest: Path) -> Path:
    """An uncompressed newc cpio: busybox-static, the boot modules (decompressed), /init."""
    try:
        return lab_guest.build_initramfs(kernel, dest)
    except LabError as exc:
        raise GuestUnavailable(str(exc)) from None


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


def precompile() -> None:
    """Byte-compile the checkout on the host first: the guest's root is read-only, and compiling
    every module again in every guest process costs seconds each under TCG."""
    packages = [str(REPO / p) for p in PACKAGES if (REPO / p).is_dir()]
    subprocess.run([sys.executable, "-m", "compileall", "-q", "-j0", *packages], capture_output=True, timeout=120,
                   check=False)


def boot_script(kernel: Kernel, work: Path, script: str, *, env: dict[str, str], extra_paths: Sequence[Path]) -> str:
    """boot.sh: runs in the initramfs, prepares the host root, chroots into it to run ``script``."""
    lines = lab_guest.root_setup_lines(kernel, work, extra_paths)
    run = write_run_script(work, script, env)
    lines.append(f"exec chroot $H /bin/sh {shlex.quote(str(run))}")
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
    cmd = lab_guest.qemu_argv(qemu, kernel, initrd, work, console, mem_mb=mem_mb, cpus=cpus)
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
