"""``tabbyctl node run``: start the node agent in the foreground (same as ``tabby-node``)."""

from __future__ import annotations

import click


@click.group()
def node() -> None:
    """The node agent of this host."""


@node.command("run")
def run() -> None:
    """Run the Tabby node agent (settings from NODENAME, IP, IP_AUTODETECTION_METHOD, AS, ETCD_*)."""
    from controller.node.__main__ import main

    code = main([])
    if code:
        raise SystemExit(code)
