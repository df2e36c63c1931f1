#!/bin/sh
# Debian's frr and bird2 packages start their daemons in the root namespace on install.
# Tabby runs every router inside a lab namespace of its own, so the distribution services
# are stopped and disabled: they would only hold sockets and pid files the lab uses.
for svc in frr bird; do
    if command -v systemctl >/dev/null 2>&1 && systemctl is-enabled "$svc" >/dev/null 2>&1; then
        systemctl disable --now "$svc" >/dev/null 2>&1 || true
    fi
done
exit 0
