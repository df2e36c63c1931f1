"""The opt-in User-Mode Linux backend of the guest-kernel runner (``TABBY_GUEST=uml``).

Why opt-in: UML 6.1 panics at init on host CPUs with AMX (``ptrace set fp regs failed``), so the
default backend, and the only one CI runs, is QEMU (tests/guest/qemu.py). UML boots faster where
it works. :func:`run_uml` gives the same contract as the QEMU runner: ``script`` runs as root in
the host's filesystem, cwd the checkout, ``modprobe`` loading the UML kernel's modules, results
written to ``$TABBY_GUEST_OUT`` (the work directory).

The guest's root is the host's filesystem through hostfs, and the init script mounts a tmpfs
over /tmp so the guest writes nothing on the host. A checkout (and its virtualenv) may itself
live under the host's /tmp (CI clones anywhere): the tmpfs would hide it and the guest would
find no Python and no tests. So the host's /tmp is bind-mounted aside first, and the paths the
guest needs are bind-mounted back at their own names on the fresh tmpfs.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.guest.qemu import EXIT_MARKER, GUEST_BIN, GuestRun, modprobe_wrapper, needed_paths, write_run_script

HOST_TMP_ASIDE = "/run/host-tmp"


def mount_tmp_keeping(paths: list[Path]) -> str:
    """Shell lines: a tmpfs over /tmp that still shows ``paths`` (those under /tmp) at their own names."""
    lines = [f"mkdir -p {HOST_TMP_ASIDE} && mount --bind /tmp {HOST_TMP_ASIDE}", "mount -t tmpfs tmpfs /tmp"]
    for path in paths:
        try:
            rel = path.relative_to("/tmp")
        except ValueError:
            continue  # not under /tmp: the hostfs root shows it as it is
        target = shlex.quote(str(path))
        lines.append(f"mkdir -p {target} && mount --bind {shlex.quote(f'{HOST_TMP_ASIDE}/{rel}')} {target}")
    return "\n".join(lines)


def uml_binary() -> str:
    """linux.uml, installed from Debian when missing (CI installs it through the Makefile); else skip."""
    found = shutil.which("linux.uml")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "user-mode-linux", "kmod"],
            capture_output=True, timeout=300, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}, check=False,
        )
        found = shutil.which("linux.uml")
        if found:
            return found
    pytest.skip("linux.uml is not installed and `apt-get install user-mode-linux` was not possible")


UML_MODULES = Path("/usr/lib/uml/modules")


def uml_modules() -> tuple[Path, str]:
    """The UML kernel's module directory and version (skip when user-mode-linux ships none)."""
    uml_binary()  # installs user-mode-linux (and so its modules) when missing
    kvers = sorted(p.name for p in UML_MODULES.iterdir()) if UML_MODULES.is_dir() else []
    if not kvers:
        pytest.skip("user-mode-linux has no modules directory")
    return UML_MODULES / kvers[-1], kvers[-1]


def boot_guest(init_text: str, workdir: Path, *, mem: str, umid: str, timeout: float) -> tuple[str, bool]:
    """Boot UML with ``init_text`` as init on the host filesystem; return (console text, timed out).

    UML runs helper processes in its own session: the whole group is killed afterwards, running
    or not, so nothing outlives the guest.
    """
    init = workdir / "init.sh"
    init.write_text(init_text)
    init.chmod(0o755)
    cmd = [
        uml_binary(), f"mem={mem}", "root=/dev/root", "rootfstype=hostfs", "rootflags=/", "rw", f"init={init}",
        f"uml_dir={workdir}", f"umid={umid}", "con=null", "con0=fd:0,fd:1",
    ]
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    timed_out = False
    out = b""
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        if timed_out:
            with contextlib.suppress(subprocess.TimeoutExpired):
                out, _ = proc.communicate(timeout=10)
        proc.wait(timeout=10)
    return out.decode(errors="replace"), timed_out


UML_INIT = """#!/bin/sh
# init of the UML guest: the root is the HOST filesystem through hostfs, write only to tmpfs.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin  # the kernel starts init without PATH
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t tmpfs tmpfs /run
{mount_tmp}
mkdir -p /tmp/modroot/lib/modules
ln -s {modules} /tmp/modroot/lib/modules/{kver}
{modprobe}
echo {guest_bin}/modprobe > /proc/sys/kernel/modprobe
/bin/sh {run}
echo "{exit_marker}$?"
halt -f
"""


def run_uml(script: str, work: Path, *, timeout: float, env: dict[str, str], mem_mb: int,
            extra_paths: list[Path] | tuple[Path, ...] = ()) -> GuestRun:
    """tests/guest/runner.py's contract on User-Mode Linux (hostfs root; the work dir is written directly)."""
    modules, kver = uml_modules()
    work.mkdir(parents=True, exist_ok=True)
    run = write_run_script(work, script, env)
    init = UML_INIT.format(
        mount_tmp=mount_tmp_keeping(needed_paths([*extra_paths, work])), modules=modules, kver=kver,
        modprobe="\n".join(modprobe_wrapper("/tmp/modroot")), guest_bin=GUEST_BIN, run=shlex.quote(str(run)),
        exit_marker=EXIT_MARKER,
    )
    started = time.monotonic()
    text, timed_out = boot_guest(init, work, mem=f"{mem_mb}M", umid=f"tabby{os.getpid()}", timeout=timeout)
    (work / "console.log").write_text(text)
    status = None
    for line in text.splitlines():
        if line.startswith(EXIT_MARKER):
            status = line[len(EXIT_MARKER):].strip()
    return GuestRun(text, timed_out, work, time.monotonic() - started, status)
