"""Netlink sockets bound to a network namespace, without forking and without O_CREAT.

Why not ``IPRoute(netns=...)``: pyroute2 forks a helper process per socket. In an agent that
also runs gRPC (etcd) threads, that fork can crash the child (SIGSEGV seen here: "child process
is dead, status: -11"), and pyroute2 opens the namespace with O_CREAT, so it would *create* a
namespace for a pod whose netns is already gone. Here a short-lived thread ``setns``-es into the
namespace file (opened read-only: a missing namespace is an error), creates the netlink socket
there and ends: sockets stay bound to the namespace they were made in, and no long-lived thread
of the agent ever changes namespace.
"""

from __future__ import annotations

import errno
import os
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from pyroute2 import IPRoute
from pyroute2.netns import setns

NETNS_DIR = "/run/netns"
T = TypeVar("T")


class NetnsGone(FileNotFoundError):
    """The namespace file does not exist (any more)."""


def netns_path(netns: str) -> str:
    """A name under /run/netns or a path (/proc/PID/ns/net, /var/run/netns/x) -> path."""
    return netns if "/" in netns else f"{NETNS_DIR}/{netns}"


def run_in_netns(netns: str | None, fn: Callable[[], T], *, timeout: float = 30.0) -> T:
    """Run ``fn`` in a fresh thread that entered ``netns`` (None: this namespace); return its result.

    ``setns`` applies to the calling thread only, and sockets stay bound to the namespace they
    were created in, so the thread simply ends afterwards: no thread of the caller ever changes
    namespace. A missing namespace raises :class:`NetnsGone`; ``fn`` not finishing within
    ``timeout`` raises :class:`TimeoutError`.
    """
    box: dict[str, object] = {}

    def run() -> None:
        try:
            if netns is not None:
                path = netns_path(netns)
                try:
                    fd = os.open(path, os.O_RDONLY)
                except FileNotFoundError:
                    raise NetnsGone(2, f"network namespace {path} does not exist") from None
                try:
                    setns(fd)  # os.setns exists only from Python 3.12
                finally:
                    os.close(fd)
            box["result"] = fn()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=run, name=f"netns-{netns}", daemon=True)
    thread.start()
    thread.join(timeout)
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    if "result" not in box:
        raise TimeoutError(errno.ETIMEDOUT, f"work in network namespace {netns} did not finish within {timeout:g}s")
    return box["result"]  # type: ignore[return-value]


def netlink_socket_in(netns: str, *, proto: int = 0, timeout: float = 10.0) -> socket.socket:
    """A raw netlink socket (``proto``, default NETLINK_ROUTE) created inside ``netns``."""
    return run_in_netns(
        netns, lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, proto), timeout=timeout
    )


def iproute_in(netns: str | None) -> IPRoute:
    """An IPRoute whose socket lives in ``netns`` (None: the caller's namespace). Caller closes it."""
    if netns is None:
        return IPRoute()
    sock = netlink_socket_in(netns)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    return IPRoute(use_socket=sock)


@contextmanager
def iproute(netns: str | None) -> Iterator[IPRoute]:
    """:func:`iproute_in` as a context manager: always closed after."""
    ipr = iproute_in(netns)
    try:
        yield ipr
    finally:
        ipr.close()


def netns_inode(netns: str | None) -> int:
    """The namespace's inode number (what the CNI plugin compares with /proc/self/ns/net)."""
    return os.stat(netns_path(netns) if netns else "/proc/self/ns/net").st_ino
