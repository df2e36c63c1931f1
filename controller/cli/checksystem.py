"""``tabbyctl node checksystem``: can this host (this network namespace) run Tabby? (calicoctl's checksystem)

Checks, each one line ``OK`` / ``WARNING`` / ``ERROR``; exit 1 when any is an error:

* IPv4 forwarding on (``net.ipv4.ip_forward``), as the agent sets it;
* ``nft`` present (NAT outgoing and the FORWARD accepts use it);
* every nftables base chain on the forward hook with policy DROP (Docker's ``ip filter FORWARD``):
  an accept in Tabby's own table cannot override it, so the agent inserts ``iifname/oifname
  "tab*" accept`` there (felix_like/forward.py); an error when those are missing;
* a FORWARD DROP of the legacy iptables backend (invisible to nft; not fixed by Tabby): a warning;
* the vxlan and ipip kernel modules (needed only by pools that use them): warnings.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import click


def _module_available(name: str) -> bool:
    if Path(f"/sys/module/{name}").exists():
        return True
    try:
        return subprocess.run(["modinfo", name], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def run_checks() -> list[tuple[str, str]]:
    from felix_like.forward import WORKLOAD_GLOB, ForwardAccepts, dropping_chains, missing_rules

    out: list[tuple[str, str]] = []
    try:
        forwarding = Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() == "1"
    except OSError:
        forwarding = False
    out.append(("OK", "IPv4 forwarding is on") if forwarding else
               ("WARNING", "IPv4 forwarding is off (net.ipv4.ip_forward=0); the agent turns it on when it starts"))
    if shutil.which("nft") is None:
        out.append(("ERROR", "nft not found: install nftables (NAT outgoing and FORWARD accepts need it)"))
    else:
        out.append(("OK", "nft is installed"))
        try:
            listing = ForwardAccepts(None).ruleset()
        except (OSError, RuntimeError, ValueError, subprocess.TimeoutExpired) as exc:
            out.append(("ERROR", f"cannot read the nftables ruleset: {exc}"))
            listing = {}
        for chain in dropping_chains(listing):
            missing = missing_rules(listing, chain)
            if missing:
                out.append(("ERROR", f"{chain} drops forwarded traffic (policy drop) and has no Tabby accept for "
                                     f"{', '.join(missing)} {WORKLOAD_GLOB}: pods cannot talk; the agent inserts them "
                                     "(is it running?)"))
            else:
                out.append(("OK", f"{chain} has policy drop; Tabby's accepts for {WORKLOAD_GLOB} are in place"))
    if shutil.which("iptables-legacy"):
        try:
            legacy = subprocess.run(["iptables-legacy", "-S", "FORWARD"], capture_output=True, text=True, timeout=10)
            if "-P FORWARD DROP" in legacy.stdout:
                out.append(("WARNING", "iptables-legacy has FORWARD policy DROP: Tabby cannot see or fix legacy "
                                       "rules; use iptables-nft or add accepts for tab+ interfaces"))
        except (OSError, subprocess.TimeoutExpired):
            pass
    for module in ("vxlan", "ipip"):
        if _module_available(module):
            out.append(("OK", f"kernel module {module} is available"))
        else:
            out.append(("WARNING", f"kernel module {module} not found (needed only by pools with "
                                   f"{'vxlanMode' if module == 'vxlan' else 'ipipMode'})"))
    return out


@click.command("checksystem")
def checksystem() -> None:
    """Check that this host (network namespace) can run Tabby; exit 1 on an error."""
    results = run_checks()
    for level, message in results:
        click.echo(f"{level:<8} {message}")
    if any(level == "ERROR" for level, _ in results):
        sys.exit(1)
