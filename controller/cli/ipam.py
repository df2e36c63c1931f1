"""``tabbyctl ipam``: show, check, release, configure (calicoctl's ipam commands).

Output follows calicoctl where scripts read it (the ``ipam show`` table, "IP ... is in use").
``check`` exits 1 when it finds a problem, so it can gate a CI job or a cron alert, and can
save a JSON report that ``release --from-report`` acts on later (re-checking every address
first, so an address handed to a new workload since the report is left alone).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click

from controller.cli import output
from controller.cli.context import UserError, datastore_options, state


async def live_in_use(ds: Any) -> Mapping[str, str] | None:
    """Addresses live workloads use (ip -> handle id): WorkloadEndpoints and Node tunnel addresses.

    Node agents record every workload they plumb as a WorkloadEndpoint carrying its IPAM handle,
    so an allocation that no endpoint or tunnel explains is a leak candidate.
    """
    from controller.node.inuse import live_allocations

    return await live_allocations(ds)


@click.group()
def ipam() -> None:
    """IP address management: usage, consistency check, release, configuration."""


# -- show ---------------------------------------------------------------------------------
@ipam.command()
@click.option("--ip", "ip", metavar="IP", help="Report whether this IP address is in use, and by whom.")
@click.option("--show-blocks", is_flag=True, help="Show each block as well as each pool.")
@click.option("--show-configuration", is_flag=True, help="Show the IPAM configuration.")
@datastore_options
def show(ip: str | None, show_blocks: bool, show_configuration: bool) -> None:
    """Show IP usage per pool (and block), or what IPAM knows about one IP."""
    if sum(map(bool, (ip, show_blocks, show_configuration))) > 1:
        raise UserError("give at most one of --ip, --show-blocks, --show-configuration")
    if ip:
        _show_ip(ip)
    elif show_configuration:
        _show_configuration()
    else:
        _show_usage(show_blocks)


def _show_usage(show_blocks: bool) -> None:
    from ipam.client import IPAMClient

    usage = state().run(lambda ds: IPAMClient(ds).get_utilisation())
    rows: list[list[str]] = []
    for pool in usage:
        rows.append(["IP Pool", pool.cidr, output.go_g5(pool.total), *_cells(pool.in_use, pool.total)])
        if show_blocks:
            for block in pool.blocks:
                rows.append(["Block", block.cidr, output.go_g5(block.total), *_cells(block.in_use, block.total)])
    click.echo(output.box_table(["GROUPING", "CIDR", "IPS TOTAL", "IPS IN USE", "IPS FREE"], rows), nl=False)


def _cells(in_use: int, total: int) -> list[str]:
    return [output.usage_cell(in_use, total), output.usage_cell(total - in_use, total)]


def _show_ip(ip: str) -> None:
    from ipam.client import IPAMClient

    info = state().run(lambda ds: IPAMClient(ds).ip_info(ip))
    if info is None or not info.allocated:
        click.echo(f"{info.ip if info else ip.strip()} is not assigned")
        if info is not None and info.block:
            owner = f", affine to {info.affinity}" if info.affinity else ""
            click.echo(f"Block: {info.block} (pool {info.pool or 'none'}{owner})")
        return
    click.echo(f"IP {info.ip} is in use")
    click.echo(f"Handle: {info.handle_id or '(none)'}")
    click.echo(f"Block: {info.block} (pool {info.pool or 'none'}, affinity {info.affinity or 'none'})")
    if info.attrs:
        click.echo("Attributes:")
        for key, value in sorted(info.attrs.items()):
            click.echo(f"  {key}: {value}")
    else:
        click.echo("No attributes defined")


def _show_configuration() -> None:
    from ipam.client import IPAMClient

    config = state().run(lambda ds: IPAMClient(ds).get_config())
    rows = [
        ["StrictAffinity", str(config.strict_affinity).lower()],
        ["AutoAllocateBlocks", str(config.auto_allocate_blocks).lower()],
        ["MaxBlocksPerHost", str(config.max_blocks_per_host)],
    ]
    click.echo(output.box_table(["PROPERTY", "VALUE"], rows), nl=False)


# -- check ---------------------------------------------------------------------------------
@ipam.command()
@click.option("-o", "--output", "report_file", metavar="FILE", help="Write the report as JSON to FILE.")
@click.option("--show-all-ips", is_flag=True, help="List every allocated IP with its handle and node.")
@datastore_options
def check(report_file: str | None, show_all_ips: bool) -> None:
    """Check blocks, handles and affinities for inconsistencies; exit 1 if any is found."""
    from ipam.client import IPAMClient

    async def body(ds: Any) -> tuple[Any, list[tuple[str, str, str]]]:
        report = await IPAMClient(ds).check(in_use=await live_in_use(ds))
        ips = await _allocated_ips(ds) if show_all_ips else []
        return report, ips

    click.echo("Checking IPAM for inconsistencies...")
    report, ips = state().run(body)
    s = report.summary()
    click.echo(
        f"Read {s['pools']} IP pool(s), {s['blocks']} block(s), {s['handles']} handle(s), "
        f"{s['affinities']} affinity(ies), {s['allocated_ips']} allocated IP(s) at revision {s['revision']}."
    )
    if not report.checked_in_use:
        click.echo("No record of live workloads yet: addresses allocated but not in use (leaks) were not judged.")
    if show_all_ips:
        click.echo("")
        click.echo(
            output.tabwriter([{"IP": ip, "HANDLE": h, "NODE": n} for ip, h, n in ips], ["IP", "HANDLE", "NODE"]),
            nl=False,
        )
    if report.problems:
        click.echo("")
        width = max(len(p.kind) for p in report.problems)
        for p in report.problems:
            click.echo(f"  {p.kind.ljust(width)}  {p.message}")
    if report_file:
        try:
            Path(report_file).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
        except OSError as exc:
            raise UserError(f"{report_file}: cannot write the report: {exc.strerror or exc}") from None
        click.echo(f"Report written to {report_file}")
    n = len(report.problems)
    click.echo(f"Check complete; found {n} problem{'' if n == 1 else 's'}.")
    if n:
        raise click.exceptions.Exit(1)


async def _allocated_ips(ds: Any) -> list[tuple[str, str, str]]:
    """(ip, handle, node) for every allocated address, for ``--show-all-ips``."""
    from datastore.keys import BLOCKS
    from ipam.block import Block, BlockFormatError

    kvs, _ = await ds.list(BLOCKS)
    out = []
    for kv in kvs:
        try:
            block = Block.from_json(kv.json())
        except (ValueError, BlockFormatError):
            continue  # reported by the check itself as an invalid block
        for o in block.allocated_ordinals():
            node = block.secondary_of(o).get("node") or block.node or ""
            out.append((block.ip(o), block.handle_of(o) or "", node))
    return out


# -- release -------------------------------------------------------------------------------
@ipam.command()
@click.option("--ip", "ips", multiple=True, metavar="IP", help="Address to release (repeatable).")
@click.option("--from-report", "report_file", metavar="FILE", help="Release the leaks listed by `ipam check -o`.")
@click.option(
    "--allow-in-use",
    is_flag=True,
    help="Release an --ip even though a live WorkloadEndpoint or Node tunnel holds it (a deliberate"
    " deviation from calicoctl, which frees it silently).",
)
@click.option(
    "--force",
    is_flag=True,
    help="With --from-report: release even though the datastore is not locked (calicoctl's --force).",
)
@datastore_options
def release(ips: tuple[str, ...], report_file: str | None, allow_in_use: bool, force: bool) -> None:
    """Release addresses by IP, or the leaked ones a check report lists."""
    from ipam.client import IPAMClient

    if bool(ips) == bool(report_file):
        raise UserError("give either --ip IP or --from-report FILE")
    if report_file:
        from controller.cluster_info import datastore_ready

        report = _read_report(report_file)
        listed = [p.get("ip") for p in report.get("problems") or [] if p.get("kind") == "allocated-not-in-use"]

        async def from_report(ds: Any) -> list[str]:
            # As calicoctl: a report is only safe to act on while nothing allocates (locked).
            if not force and await datastore_ready(ds):
                raise UserError(
                    "the datastore is not locked: run `tabbyctl datastore migrate lock` before `ipam check -o`"
                    " and this release (then unlock), or pass --force"
                )
            return await IPAMClient(ds).release_from_report(report)

        released = state().run(from_report)
        for ip in released:
            click.echo(f"Successfully released IP address {ip}")
        skipped = len(listed) - len(released)
        click.echo(
            f"Released {len(released)} of {len(listed)} leaked address(es) listed in {report_file}"
            + (f"; {skipped} changed since the report and were left alone" if skipped else "")
        )
        return
    async def body(ds: Any) -> list[str]:
        if not allow_in_use:
            live = await live_in_use(ds) or {}
            held = [ip.strip() for ip in ips if ip.strip() in live]
            if held:
                raise UserError(
                    [
                        f"IP address {ip} is in use by a live workload or tunnel (handle {live[ip]}); releasing it"
                        " would let IPAM hand it out twice. Pass --allow-in-use to release it anyway"
                        for ip in held
                    ]
                )
        return await IPAMClient(ds).release_ips(list(ips))

    not_released = state().run(body)
    failed = set(not_released)
    for ip in ips:
        if ip.strip() not in failed:
            click.echo(f"Successfully released IP address {ip.strip()}")
    if not_released:
        raise UserError([f"IP address {ip} is not assigned" for ip in not_released])


def _read_report(path: str) -> dict[str, Any]:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise UserError(f"{path}: {exc.strerror or exc}") from None
    try:
        report = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not a JSON report from `tabbyctl ipam check -o`: {exc.msg}") from None
    if not isinstance(report, dict) or not isinstance(report.get("problems"), list):
        raise UserError(f"{path}: not a report from `tabbyctl ipam check -o` (no problems list)")
    return report


# -- configure -----------------------------------------------------------------------------
@ipam.command()
@click.option("--strictaffinity", type=click.BOOL, metavar="true|false", help="Never borrow from other nodes' blocks.")
@click.option("--autoallocateblocks", type=click.BOOL, metavar="true|false", help="Claim new blocks when needed.")
@click.option("--max-blocks-per-host", type=click.IntRange(min=0), metavar="N", help="Blocks per node (0: no limit).")
@datastore_options
def configure(strictaffinity: bool | None, autoallocateblocks: bool | None, max_blocks_per_host: int | None) -> None:
    """Change the cluster's IPAM configuration."""
    from ipam.client import IPAMClient

    if strictaffinity is None and autoallocateblocks is None and max_blocks_per_host is None:
        raise UserError("nothing to configure: give --strictaffinity, --autoallocateblocks or --max-blocks-per-host")

    async def body(ds: Any) -> Any:
        return await IPAMClient(ds).set_config(
            strict_affinity=strictaffinity,
            auto_allocate_blocks=autoallocateblocks,
            max_blocks_per_host=max_blocks_per_host,
        )

    config = state().run(body)
    if strictaffinity is not None:
        click.echo(f"Successfully set StrictAffinity to: {str(config.strict_affinity).lower()}")
    if autoallocateblocks is not None:
        click.echo(f"Successfully set AutoAllocateBlocks to: {str(config.auto_allocate_blocks).lower()}")
    if max_blocks_per_host is not None:
        click.echo(f"Successfully set MaxBlocksPerHost to: {config.max_blocks_per_host}")
