"""The guest side of a guest-kernel test: progress steps and the JSON result the host asserts on.

Runs INSIDE the guest (QEMU or UML). ``$TABBY_GUEST_OUT`` is the host's work directory for this
run, writable from the guest; the result goes there as ``<name>.json`` and, as a fallback, on
the console after ``TABBY-GUEST-RESULT``. Steps go to the console so that a run that hangs still
tells the host test how far it got.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

START = time.monotonic()
RESULT_MARKER = "TABBY-GUEST-RESULT "
STEP_MARKER = "TABBY-GUEST-STEP "


def step(name: str) -> None:
    """``t`` is seconds since this process imported us, ``up`` the guest kernel's uptime."""
    try:
        up = Path("/proc/uptime").read_text().split()[0]
    except OSError:
        up = "?"
    print(f"{STEP_MARKER}{name} t={time.monotonic() - START:.1f} up={up}", flush=True)


def write_result(checks: dict[str, Any], name: str = "result") -> None:
    """Write ``checks`` where the host reads it (atomically: a half-written file is never read)."""
    checks.setdefault("elapsed_s", round(time.monotonic() - START, 1))
    text = json.dumps(checks)
    out = os.environ.get("TABBY_GUEST_OUT")
    if out:
        tmp = Path(out) / f".{name}.json.tmp"
        tmp.write_text(text)
        tmp.replace(Path(out) / f"{name}.json")
    print(RESULT_MARKER + text, flush=True)
