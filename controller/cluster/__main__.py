"""``python -m controller.cluster`` / ``tabby-controller`` / ``tabbyctl controller run``.

Settings from the environment (docs/controller.md); a bad value prints one line and exits 2.
"""

from __future__ import annotations

import asyncio
import os
import sys

USAGE = """usage: tabby-controller

Runs the Tabby cluster controller: node liveness and cleanup, IPAM garbage collection, leader
election (run two for availability; one acts). Settings from the environment: ETCD_ENDPOINTS (and
ETCD_*), TABBY_CONTROLLER_INTERVAL (10 s), TABBY_LEADER_TTL (15 s), TABBY_IPAM_GC_GRACE (900 s),
TABBY_NODE_GRACE (0 = never expire Nodes), TABBY_NODE_CLEANUP_DELAY (30 s), TABBY_CONTROLLER_ID,
TABBY_CONTROLLER_PROMETHEUSMETRICSPORT (9094, 0 = off), TABBY_CONTROLLER_PROMETHEUSMETRICSHOST,
TABBY_LOG_LEVEL, TABBY_LOG_FORMAT; the Kubernetes sync: TABBY_KUBE_API (or in a Pod
KUBERNETES_SERVICE_HOST/PORT), TABBY_KUBE_TOKEN_FILE, TABBY_KUBE_CA_FILE, TABBY_KUBE_SYNC=off.
See docs/controller.md."""


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    if args:
        print(f"Error: tabby-controller takes no arguments (settings come from the environment), got {args[0]!r}",
              file=sys.stderr)
        return 2
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    from common import logs
    from controller.cluster.config import ControllerConfig, ControllerConfigError

    try:
        config = ControllerConfig.from_env()
    except ControllerConfigError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    logs.configure(level=config.log_level, fmt=config.log_format, adjustable=True)  # KCC logSeverityScreen
    from controller.cluster.service import run_controller

    try:
        asyncio.run(run_controller(config))
    except KeyboardInterrupt:
        return 130
    except OSError as exc:  # the metrics port is taken, or not ours to bind
        print(f"Error: TABBY_CONTROLLER_PROMETHEUSMETRICSPORT: cannot listen on port {config.metrics.port}: "
              f"{exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
