"""Inside a lab's guest kernel (``lab.guest``): run ``tabbyctl lab`` commands sent over virtio-serial.

Why one long-lived process: importing the lab code costs tens of seconds under QEMU's TCG, so
each command runs in this process (the ``lab`` click group, its output captured) instead of a
fresh ``tabbyctl``. Protocol: one JSON object per line each way. A request is ``{"id", "argv"}``;
the reply ``{"id", "code", "stdout", "stderr"}``. ``["--hello"]`` answers ``{"hello": true}``
(the host waits for it after boot); ``["--poweroff"]`` destroys nothing itself (the host sends
``destroy`` first) and ends this process, after which the guest's init powers off.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import time
from pathlib import Path


def step(name: str) -> None:
    """A progress line on the guest's console (``<lab dir>/guest/console.log`` on the host)."""
    up = Path("/proc/uptime").read_text().split()[0]
    print(f"TABBY-GUEST-STEP {name} up={up}", flush=True)


def find_port(name: str, timeout: float = 60.0) -> Path:
    """``/dev/vportNpM`` of the virtio-serial port ``name`` (no udev here to make /dev/virtio-ports/)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in Path("/sys/class/virtio-ports").glob("*"):
            with contextlib.suppress(OSError):
                if (entry / "name").read_text().strip() == name and Path("/dev", entry.name).exists():
                    return Path("/dev", entry.name)
        time.sleep(0.2)
    raise SystemExit(f"guest agent: no virtio-serial port named {name}")


def run(argv: list[str]) -> tuple[int, str, str]:
    from lab.cli import lab  # imported once, on the first command (the slow part under TCG)

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            lab.main(args=argv, prog_name="tabbyctl lab", standalone_mode=True)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except Exception as exc:  # a bug must not kill the agent: the host gets it as a failed command
            code = 1
            print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
    return code, out.getvalue(), err.getvalue()


def main() -> int:
    port = find_port(sys.argv[1])
    step("port")
    import lab.cli  # noqa: F401  (pay the imports before saying hello)

    step("imported")

    fd = os.open(port, os.O_RDWR)
    reader = os.fdopen(fd, "rb", buffering=0)
    buffer = b""

    def reply(message: dict) -> None:
        os.write(fd, json.dumps(message).encode() + b"\n")

    while True:
        chunk = reader.read(65536)
        if not chunk:  # no host connected: virtio-serial reads return 0; wait for the next one
            time.sleep(0.1)
            continue
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            try:
                request = json.loads(line)
            except ValueError:
                continue
            argv = [str(a) for a in request.get("argv", [])]
            if argv == ["--hello"]:
                reply({"id": request.get("id"), "hello": True})
            elif argv == ["--poweroff"]:
                reply({"id": request.get("id"), "code": 0})
                return 0
            else:
                step(f"command {' '.join(argv[:1])}")
                code, out, err = run(argv)
                step(f"done {' '.join(argv[:1])} code={code}")
                reply({"id": request.get("id"), "code": code, "stdout": out, "stderr": err})


if __name__ == "__main__":
    sys.exit(main())
