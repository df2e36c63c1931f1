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
@click.option("--show-borrowed", is_flag=True, help="Show the IPs a node took from a block another node owns.")
@click.option("--show-configuration", is_flag=True, help="Show the IPAM configuration.")
@datastore_options
def show(ip: str | None, show_blocks: bool, show_borrowed: bool, show_configuration: bool) -> None:
    """Show IP usage per pool (and block), or what IPAM knows about one IP."""
    if sum(map(bool, (ip, show_blocks, show_borrowed, show_configuration))) > 1:
        raise UserError("give at most one of --ip, --show-blocks, --show-borrowed, --show-configuration")
    if ip:
        _show_ip(ip)
    elif show_borrowed:
        _show_borrowed()
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


def borrowed_ips(blocks: list[Any]) -> tuple[list[list[str]], int]:
    """calicoctl's --show-borrowed rows (IP, BORROWING-NODE, BLOCK, BLOCK OWNER, TYPE, ALLOCATED-TO): an
    address whose allocating node (its ``node`` attribute) is not the block's affine node, or that lies in
    a block with no affinity; plus how many allocations carry no node attribute (cannot be classified)."""
    from ipam.block import affinity_node

    rows: list[list[str]] = []
    unclassified = 0
    for block in blocks:
        owner = affinity_node(block.affinity) or ""
        for o in block.allocated_ordinals():
            attrs = block.secondary_of(o)
            node = attrs.get("node")
            if node is None:
                unclassified += 1
                continue
            if node == owner:
                continue
            if "pod" in attrs:
                kind, to = "pod", f"{attrs.get('namespace', '')}/{attrs['pod']}"
            else:
                kind, to = attrs.get("type", ""), ""
            rows.append([block.ip(o), node, block.cidr, owner, kind, to])
    return rows, unclassified


def _show_borrowed() -> None:
    from datastore.keys import BLOCKS
    from ipam.block import Block, BlockFormatError

    async def body(ds: Any) -> list[Any]:
        kvs, _ = await ds.list(BLOCKS)
        out = []
        for kv in kvs:
            try:
                out.append(Block.from_json(kv.json()))
            except (ValueError, BlockFormatError):
                continue  # `ipam check` reports unreadable blocks
        return out

    rows, unclassified = borrowed_ips(state().run(body))
    headers = ["IP", "BORROWING-NODE", "BLOCK", "BLOCK OWNER", "TYPE", "ALLOCATED-TO"]
    click.echo(output.box_table(headers, rows, center_headers=False), nl=False)  # go-pretty: headers left
    if unclassified:
        click.echo(
            f"\nNote: found {unclassified} IP allocations without an explicit node association."
            " Unable to determine if they are borrowed."
        )


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
@click.option(
    "--show-problem-ips", is_flag=True, help="Print every IP that is leaked or not allocated properly (as calicoctl)."
)
@datastore_options
def check(report_file: str | None, show_all_ips: bool, show_problem_ips: bool) -> None:
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
    if show_problem_ips or show_all_ips:  # calicoctl: --show-all-ips implies --show-problem-ips
        click.echo("")
        for line in problem_ip_lines(report.problems):
            click.echo(line)
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


def problem_ip_lines(problems: list[Any]) -> list[str]:
    """calicoctl's --show-problem-ips sections, with its wording, from Tabby's check findings."""
    from ipam.check import LEAKED_IP, MISSING_HANDLE, NOT_ALLOCATED

    leaked = [p for p in problems if p.kind == LEAKED_IP]
    unallocated = [p for p in problems if p.kind == NOT_ALLOCATED]
    missing = sorted({p.handle_id or "" for p in problems if p.kind == MISSING_HANDLE and p.handle_id})
    lines = ["Scanning for IPs that are allocated but not actually in use..."]
    for p in leaked:
        attrs = ", ".join(f"{k}={v}" for k, v in (("handle", p.handle_id), ("node", p.node)) if v)
        lines.append(f"  {p.ip} leaked; attrs {attrs}")
    lines.append(f"Found {len(leaked)} IPs that are allocated in IPAM but not actually in use.")
    lines.append("Scanning for IPs that are in use by a workload or node but not allocated in IPAM...")
    for p in unallocated:
        lines.append(f"  {p.ip} in use by {p.handle_id} and in active IPAM pool but has no IPAM allocation.")
    lines.append(
        f"Found {len(unallocated)} in-use IPs that are in active IP pools but have no corresponding IPAM allocation."
    )
    lines.append("Scanning for IPs with missing handle...")
    lines += [f"  {h} is in use in a block but doesn't exist." for h in missing]
    lines.append(f"Found {len(missing)} handles mentioned in blocks with no matching handle resource.")
    return lines


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


# -- split ---------------------------------------------------------------------------------
@ipam.command()
@click.argument("number", metavar="NUMBER")
@click.option("--cidr", metavar="CIDR", help="CIDR of the IP pool to split.")
@click.option("--name", "pool_name", metavar="POOL_NAME", help="Name of the IP pool to split.")
@datastore_options
def split(number: str, cidr: str | None, pool_name: str | None) -> None:
    """Split an IP pool into NUMBER (a power of 2) equal pools named split-<pool>-<i> (needs the lock).

    Unlike calicoctl (disable, create each child, delete the parent), the parent's removal and the
    children's creation are one transaction: all of it or nothing.
    """
    import ipaddress

    from controller.cluster_info import datastore_ready
    from controller.resource_store import ResourceStore
    from datamodel.resources import IPPool, ResourceError, parse_resource

    try:
        parts = int(number)
    except ValueError:
        raise UserError(f"error reading number to split IP pools into. {number} is not a valid number") from None
    if not cidr and not pool_name:
        raise UserError("no name or CIDR provided. Provide a name or CIDR to denote the IP pool to split")
    power = parts.bit_length() - 1
    if parts < 2 or parts != 1 << power:
        raise UserError(f"number to split CIDR into is not a valid power of 2: {parts}")

    async def body(ds: Any) -> tuple[str, list[tuple[str, str]]]:
        if await datastore_ready(ds):
            raise UserError(
                "datastore is not locked. Run the `tabbyctl datastore migrate lock` command in order split the IP pools"
            )
        store = ResourceStore(ds)
        pools, _ = await store.list(IPPool)
        old = next((p for p in pools if (pool_name and p.name == pool_name) or (not pool_name and p.spec.cidr == cidr)),
                   None)
        if old is None:
            raise UserError(f"unable to find IP pool {pool_name or ''} covering the specified CIDR {cidr or ''}")
        net = ipaddress.ip_network(old.spec.cidr)
        if net.prefixlen + power > net.max_prefixlen:
            raise UserError(f"the CIDR {old.spec.cidr} is not large enough to be split into {parts} parts")
        children = []
        problems: list[str] = []
        for i, sub in enumerate(net.subnets(prefixlen_diff=power)):
            doc = old.to_dict()
            md = {k: v for k, v in doc["metadata"].items() if k in ("labels", "annotations")}
            md["name"] = f"split-{old.name[:245]}-{i}"
            doc["metadata"] = md
            doc["spec"] = {**doc["spec"], "cidr": str(sub), "disabled": False}
            try:
                children.append(parse_resource(doc, f"split pool {md['name']}", 0))
            except ResourceError as exc:
                problems.extend(exc.problems)
        if problems:
            raise UserError([f"error splitting the CIDR {old.spec.cidr} into {parts} CIDRs: {p}" for p in problems])
        await store.split_pool(old, children)
        return old.name, [(c.name, c.spec.cidr) for c in children]

    name, made = state().run(body)
    click.echo(f"IP Pool {name} was successfully split into {parts} smaller pools.")
    for child, child_cidr in made:
        click.echo(f"Created {child} with CIDR {child_cidr}.")
    click.echo("Please refer to the documentation for final steps.")
