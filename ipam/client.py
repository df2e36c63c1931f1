"""IPAMClient: Calico's block allocator over etcd.

Every state change is one etcd transaction that compares the mod_revision of every key it
writes, so concurrent allocators (one agent per node, the CLI, the garbage collector) never
lose an update: the loser re-reads and tries again (bounded, with jitter).

Why the client caches: a node agent allocates from blocks it owns, so the block it read last
time is almost always still current. The client keeps each block and handle it has read or
written together with its mod_revision and writes against that; if someone else wrote in
between, the compare fails and the client re-reads. That makes a warm allocation (the node
already has a block with room) exactly one transaction: block + handle, both compared, both
written. Pools, node labels and the IPAMConfiguration are cached for ``cache_ttl`` seconds
(default 2 s), so a long-lived agent honours a pool being disabled within that time; a fresh
client (every CLI command) always reads them fresh. The cache never decides correctness:
mod_revision compares do.

Key layout (relative to the datastore prefix, helpers in ``datastore.keys``):
``ipam/v2/block/<cidr>``, ``ipam/v2/affinity/<node>/<cidr>``, ``ipam/v2/handle/<id>``;
inputs at ``resources/v3/ippools/<name>``, ``resources/v3/nodes/<name>``,
``resources/v3/ipamconfigurations/default``. Formats: docs/ipam.md.
"""

from __future__ import annotations

from ipam.gc import GarbageCollection


class IPAMClient(GarbageCollection):
    """Allocate and release addresses from IP pools cut into node-affine blocks.

    The parts, one module each: ipam.cache (cached reads), ipam.config (configuration and pool selection),
    ipam.claim (affinities, block claims), ipam.release, ipam.allocate, ipam.batch (group commit of
    concurrent allocations), ipam.report, ipam.gc (the cluster controller's garbage-collection releases).
    """
