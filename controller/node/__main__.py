"""``python -m controller.node`` / ``tabby-node``: run the node agent, configured by the environment.

User mistakes (a bad variable) print one line and exit 2, never a traceback.
"""

from __future__ import annotations

import asyncio
import os
import sys


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("-h", "--help"):
        print(
            "usage: tabby-node\n\nRuns the Tabby node agent. Settings come from the environment: NODENAME, IP,\n"
            "IP_AUTODETECTION_METHOD, AS, ETCD_ENDPOINTS (and ETCD_*), TABBY_RUN_DIR, TABBY_NETNS,\n"
            "TABBY_RESYNC_INTERVAL, TABBY_MTU, VXLAN_TUNNEL_MAC, TABBY_LOG_LEVEL, TABBY_LOG_FORMAT.\n"
            "See docs/node-agent.md."
        )
        return 0
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    import structlog

    from common import logs
    from controller.metrics import agent_settings
    from controller.node.config import NodeConfig, NodeConfigError
    from controller.node.flows import FlowSettings
    from controller.node.identity import AgentLocked, acquire_lock, remember_nodename, resolve_nodename
    from controller.node.liveness import liveness_ttl

    # NODENAME as calico-node resolves it (env, HOSTNAME, the nodename file, the hostname): a restart
    # without NODENAME comes back as the same Node.
    name, source = resolve_nodename(os.environ)
    os.environ["NODENAME"] = name
    try:
        config = NodeConfig.from_env()
        liveness_ttl()  # checked here so a bad value stops the agent at once
        agent_settings(os.environ)
        FlowSettings.from_env(os.environ)
    except (NodeConfigError, ValueError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    logs.configure(level=config.log_level, fmt=config.log_format, adjustable=True)
    try:
        lock = acquire_lock(config.run_dir, config.nodename)
    except AgentLocked as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    except PermissionError as exc:
        print(f"Error: {exc.filename or ''}: {exc.strerror} (the node agent must run as root)", file=sys.stderr)
        return 1
    written = remember_nodename(os.environ, config.nodename)
    structlog.get_logger("tabby.node").info(
        "agent.nodename", node=config.nodename, source=source, file=str(written or ""))
    from controller.node.agent import run_agent

    try:
        asyncio.run(run_agent(config))
    except KeyboardInterrupt:
        return 130
    except PermissionError as exc:
        print(f"Error: {exc.filename or ''}: {exc.strerror} (the node agent must run as root)", file=sys.stderr)
        return 1
    finally:
        lock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
