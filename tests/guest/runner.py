"""The guest-kernel test runner the tests use: QEMU by default, User-Mode Linux as an opt-in.

``TABBY_GUEST=qemu`` (the default, and what CI runs) boots Debian's own kernel under QEMU/TCG
(tests/guest/qemu.py); ``TABBY_GUEST=uml`` boots User-Mode Linux instead (tests/uml/boot.py),
which is faster where it works but panics at init on CPUs with AMX, so no CI run depends on it.
Either way the guest runs a shell script as root in the host's filesystem, with the checkout as
its working directory, ``modprobe`` loading that guest kernel's modules, and ``$TABBY_GUEST_OUT``
(the test's work directory, the only place whose writes the host sees).

Failing loudly: under ``CI=true`` nothing here skips. A missing runner or kernel fails the test,
and a guest that gives no result fails with the console tail (:func:`result_of`). Outside CI a
user without root, or without QEMU, gets a skip that says what is missing.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.guest.qemu import GuestRun, GuestUnavailable
from tests.guest.qemu import run_guest as run_qemu
from tests.uml.boot import run_uml

BACKENDS = ("qemu", "uml")


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(reason: str) -> None:
    """Skip outside CI; fail under CI (a CI run that skips the guest suites proves nothing)."""
    if in_ci():
        pytest.fail(f"guest-kernel test cannot run under CI: {reason}", pytrace=False)
    pytest.skip(reason)


def backend() -> str:
    name = os.environ.get("TABBY_GUEST", "qemu") or "qemu"
    if name not in BACKENDS:
        pytest.fail(f"TABBY_GUEST={name!r}: expected one of {', '.join(BACKENDS)}", pytrace=False)
    return name


def run_in_guest(script: str, work: Path, *, timeout: float, env: dict[str, str] | None = None,
                 mem_mb: int = 1024, extra_paths: Sequence[Path] = ()) -> GuestRun:
    """Run ``script`` in a fresh guest kernel; bounded by ``timeout`` seconds, nothing outlives it."""
    if os.geteuid() != 0:
        unavailable("needs root (the guest runs the test as root on the host's filesystem)")
    try:
        if backend() == "uml":
            return run_uml(script, work, timeout=timeout, env=env or {}, mem_mb=mem_mb, extra_paths=extra_paths)
        return run_qemu(script, work, timeout=timeout, env=env, mem_mb=mem_mb, extra_paths=extra_paths)
    except GuestUnavailable as exc:
        unavailable(str(exc))
        raise  # unreachable: unavailable() skips or fails


def result_of(run: GuestRun, name: str = "result") -> dict:
    """The guest's JSON result ``name``, or a failure naming the last step with the console tail."""
    result = run.result(name)
    assert result is not None, f"no {name!r} result from the {backend()} guest {run.describe()}"
    assert result.get("error") is None, f"{result['error']}\nsteps: {run.steps()}"
    return result
