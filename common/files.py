"""Files that may hold a secret are written 0600 from the first byte, atomically.

Why a helper: ``Path.write_text`` creates a file with the umask's mode (0644 as root), so a BGP
password in an ExaBGP or FRR configuration, or an etcd password in a saved environment, would be
world-readable until a later chmod, and forever if the chmod is forgotten. Here the temporary
file is created with ``O_EXCL`` and mode 0600, filled, then renamed over the target: a reader sees
the old file or the new one, never a half-written or readable one.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

PRIVATE = 0o600


def write_private(path: Path | str, text: str | bytes, *, mode: int = PRIVATE) -> None:
    """Write ``text`` to ``path`` with ``mode`` (0600), replacing it atomically."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    data = text.encode() if isinstance(text, str) else text
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have taken bits off; never adds any
        with os.fdopen(fd, "wb") as f:
            fd = -1
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
