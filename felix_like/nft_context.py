"""libnftables in-process for the managers that speak nft JSON (NAT, the FORWARD accepts).

Why not ``ip netns exec nft``: every call forked two processes (10-20 ms each on a busy node), and the
kernel reported their commits under the comm ``nft``, so the policy manager's commit monitor
(:mod:`felix_like.nft_monitor`) took each NAT or FORWARD change for a foreign edit and rebuilt the
whole policy table. A commit made in-process from the dataplane thread carries that thread's name.
The context is created inside the namespace (its netlink socket stays bound there) on first use.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from felix_like.netns import run_in_netns


class NftUnavailable(RuntimeError):
    """libnftables could not be loaded or its context not made in the namespace."""


class NftContext:
    """One libnftables context in one namespace, JSON in and out; safe to share between threads."""

    def __init__(self, netns: str | None) -> None:
        self.netns = netns
        self._nft: Any = None
        self._lock = threading.Lock()

    def _context(self) -> Any:
        if self._nft is None:
            try:
                import nftables  # Debian python3-nftables (a ctypes binding of libnftables)
            except ImportError as exc:
                raise NftUnavailable(f"python3-nftables is not installed: {exc}") from exc
            try:
                nft = run_in_netns(self.netns, nftables.Nftables)
            except OSError as exc:
                raise NftUnavailable(f"libnftables in namespace {self.netns or '(this one)'}: {exc}") from exc
            nft.set_json_output(True)
            self._nft = nft
        return self._nft

    def list_json(self, what: str) -> tuple[int, dict[str, Any], str]:
        """``nft -j list <what>``: (return code, the parsed listing or {}, error text)."""
        with self._lock:
            rc, out, err = self._context().cmd(f"list {what}")
        return rc, (json.loads(out) if rc == 0 and out else {}), err

    def transact(self, cmds: list[dict[str, Any]]) -> tuple[int, str]:
        """``nft -j -f -`` of ``{"nftables": cmds}``, one transaction: (return code, error text)."""
        with self._lock:
            rc, _out, err = self._context().cmd(json.dumps({"nftables": cmds}))
        return rc, err
