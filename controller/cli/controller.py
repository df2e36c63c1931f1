"""``tabbyctl controller run``: the cluster controller in the foreground (same as ``tabby-controller``)."""

from __future__ import annotations

import click


@click.group("controller")
def controller() -> None:
    """The cluster controller (node cleanup, IPAM garbage collection, leader election)."""


@controller.command("run")
def run() -> None:
    """Run the cluster controller (settings from ETCD_*, TABBY_CONTROLLER_INTERVAL, TABBY_LEADER_TTL,
    TABBY_IPAM_GC_GRACE, TABBY_NODE_GRACE, TABBY_NODE_CLEANUP_DELAY; see docs/controller.md)."""
    from controller.cluster.__main__ import main

    code = main([])
    if code:
        raise SystemExit(code)
