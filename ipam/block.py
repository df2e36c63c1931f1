"""One allocation block, as pure data and logic: no I/O, so every rule here is unit-testable.

A block is a power-of-two slice of an IP pool (default /26 for IPv4, /122 for IPv6) that one
node usually owns ("affinity"). It is stored as one JSON object under ``block_key(cidr)``
with Calico's field names, so anyone who knows Calico's AllocationBlock can read it:

``allocations``  one entry per ordinal: index into ``attributes`` or null (free).
``unallocated``  the free list. Allocate from the head, release to the tail, so the address
                 that has been free the longest is handed out first (a just-released address
                 is not reused at once while stale routes or conntrack entries may linger).
``attributes``   ``{"handle_id", "secondary"}`` records shared by the ordinals that point at
                 them; unreferenced entries are dropped on release.
``sequenceNumber`` bumped on every write. ``sequenceNumberForAllocation[ordinal]`` keeps the
                 value at allocation time: a release that carries the number seen when the IP
                 was allocated is refused if the IP has been released and reused since, which
                 keeps a slow garbage collector from freeing somebody else's address.
"""

from __future__ import annotations

import hashlib
import ipaddress
import random
from collections.abc import Iterable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import Any

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: Secondary attribute naming the node an address was allocated for (tells the dataplane
#: where a borrowed address lives) and the kind of address (tunnel addresses).
ATTR_NODE = "node"
ATTR_TYPE = "type"

AFFINITY_HOST = "host:"


class BlockFormatError(ValueError):
    """Stored block JSON that cannot be a block: the message says which field is wrong."""


class OrdinalInUse(ValueError):
    """A specific ordinal was requested but it is allocated already."""


def host_affinity(node: str) -> str:
    return AFFINITY_HOST + node


def affinity_node(affinity: str | None) -> str | None:
    """``host:node1`` -> ``node1``; anything else (null, other kinds) -> None."""
    if affinity and affinity.startswith(AFFINITY_HOST):
        return affinity[len(AFFINITY_HOST) :]
    return None


@dataclass
class ReleaseOutcome:
    """What a release did, ordinal by ordinal."""

    released: list[int] = field(default_factory=list)
    not_allocated: list[int] = field(default_factory=list)
    #: Allocated, but to another handle than the one given, or reused since the given
    #: sequence number: left alone.
    refused: list[int] = field(default_factory=list)


@dataclass
class Block:
    cidr: str
    allocations: list[int | None]
    unallocated: list[int]
    attributes: list[dict[str, Any]] = field(default_factory=list)
    affinity: str | None = None
    strict_affinity: bool = False
    sequence_number: int = 0
    seq_for_alloc: dict[int, int] = field(default_factory=dict)
    deleted: bool = False

    # -- construction -------------------------------------------------------------------
    @classmethod
    def new(cls, cidr: str, affinity: str | None = None, strict_affinity: bool = False) -> Block:
        net = ipaddress.ip_network(cidr)
        return cls(
            cidr=str(net),
            allocations=[None] * net.num_addresses,
            unallocated=list(range(net.num_addresses)),
            affinity=affinity,
            strict_affinity=strict_affinity,
        )

    def copy(self) -> Block:
        """An independent copy: callers mutate a copy and keep the original until the write lands."""
        b = self._copy()
        if "network" in self.__dict__:
            b.__dict__["network"] = self.__dict__["network"]  # parsed once per block, not per write
        return b

    def _copy(self) -> Block:
        return Block(
            cidr=self.cidr,
            allocations=list(self.allocations),
            unallocated=list(self.unallocated),
            attributes=[{"handle_id": a.get("handle_id"), "secondary": dict(a.get("secondary") or {})}
                        for a in self.attributes],
            affinity=self.affinity,
            strict_affinity=self.strict_affinity,
            sequence_number=self.sequence_number,
            seq_for_alloc=dict(self.seq_for_alloc),
            deleted=self.deleted,
        )

    # -- addressing ---------------------------------------------------------------------
    @cached_property
    def network(self) -> IPNetwork:
        return ipaddress.ip_network(self.cidr)

    @property
    def size(self) -> int:
        return len(self.allocations)

    def ip(self, ordinal: int) -> str:
        return _ip_str(self.cidr, ordinal)

    def ordinals_within(self, nets: Sequence[IPNetwork]) -> frozenset[int]:
        """Ordinals of this block inside any of ``nets`` (reserved ranges), computed by overlap, not by
        walking every reserved address."""
        mine = self.network
        base = int(mine.network_address)
        out: set[int] = set()
        for net in nets:
            if net.version != mine.version or not net.overlaps(mine):  # type: ignore[arg-type]
                continue
            lo = max(int(net.network_address), base) - base
            hi = min(int(net.broadcast_address), int(mine.broadcast_address)) - base
            out.update(range(lo, hi + 1))
        return frozenset(out)

    def ordinal(self, ip: str | IPAddress) -> int:
        addr = ipaddress.ip_address(ip)
        net = self.network
        if addr.version != net.version or addr not in net:
            raise ValueError(f"{addr} is not in block {self.cidr}")
        return int(addr) - int(net.network_address)

    def contains(self, ip: str | IPAddress) -> bool:
        addr = ipaddress.ip_address(ip)
        net = self.network
        return addr.version == net.version and addr in net

    # -- state --------------------------------------------------------------------------
    @property
    def in_use(self) -> int:
        return self.size - len(self.unallocated)

    @property
    def free(self) -> int:
        return len(self.unallocated)

    @property
    def is_empty(self) -> bool:
        return len(self.unallocated) == self.size

    @property
    def node(self) -> str | None:
        return affinity_node(self.affinity)

    def handle_of(self, ordinal: int) -> str | None:
        idx = self.allocations[ordinal]
        return None if idx is None else self.attributes[idx].get("handle_id")

    def secondary_of(self, ordinal: int) -> dict[str, str]:
        idx = self.allocations[ordinal]
        return {} if idx is None else dict(self.attributes[idx].get("secondary") or {})

    def allocated_ordinals(self) -> list[int]:
        return [o for o, idx in enumerate(self.allocations) if idx is not None]

    def ordinals_for_handle(self, handle_id: str) -> list[int]:
        wanted = {i for i, a in enumerate(self.attributes) if a.get("handle_id") == handle_id}
        return [o for o, idx in enumerate(self.allocations) if idx in wanted]

    def handle_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for idx in self.allocations:
            if idx is not None:
                h = self.attributes[idx].get("handle_id")
                if h is not None:
                    counts[h] = counts.get(h, 0) + 1
        return counts

    # -- mutations (each is one "write": the sequence number moves) -----------------------
    def touch(self) -> None:
        """Record a write that changes no allocation (affinity, deletion flag)."""
        self.sequence_number += 1

    def _attr_index(self, handle_id: str | None, secondary: Mapping[str, str] | None) -> int:
        sec = dict(secondary or {})
        for i, a in enumerate(self.attributes):
            if a.get("handle_id") == handle_id and (a.get("secondary") or {}) == sec:
                return i
        self.attributes.append({"handle_id": handle_id, "secondary": sec})
        return len(self.attributes) - 1

    def allocate(
        self,
        num: int,
        handle_id: str | None,
        secondary: Mapping[str, str] | None = None,
        skip: AbstractSet[int] = frozenset(),
    ) -> list[int]:
        """Take up to ``num`` ordinals from the head of the free list, passing over ``skip`` (the
        ordinals an IPReservation holds back, as Calico's autoAssign does); returns those taken."""
        if num <= 0 or not self.unallocated:
            return []
        if skip:
            taken = [o for o in self.unallocated if o not in skip][:num]
            if not taken:
                return []
            chosen = set(taken)
            self.unallocated = [o for o in self.unallocated if o not in chosen]
        else:
            taken = self.unallocated[:num]
            del self.unallocated[: len(taken)]
        self.sequence_number += 1
        idx = self._attr_index(handle_id, secondary)
        for o in taken:
            self.allocations[o] = idx
            self.seq_for_alloc[o] = self.sequence_number
        return taken

    def assign(self, ordinal: int, handle_id: str | None, secondary: Mapping[str, str] | None = None) -> None:
        """Allocate one specific ordinal (``assign_ip``); OrdinalInUse if it is taken."""
        if not 0 <= ordinal < self.size:
            raise ValueError(f"ordinal {ordinal} outside block {self.cidr}")
        if self.allocations[ordinal] is not None:
            raise OrdinalInUse(f"{self.ip(ordinal)} is already allocated")
        self.unallocated.remove(ordinal)
        self.sequence_number += 1
        self.allocations[ordinal] = self._attr_index(handle_id, secondary)
        self.seq_for_alloc[ordinal] = self.sequence_number

    def release(
        self,
        ordinals: Iterable[int],
        *,
        handle_id: str | None = None,
        sequence_numbers: Mapping[int, int] | None = None,
    ) -> ReleaseOutcome:
        """Free ordinals to the tail of the free list.

        With ``handle_id`` only ordinals held by that handle are freed; with
        ``sequence_numbers`` an ordinal is freed only if it still carries the sequence number
        recorded at its allocation (otherwise it was released and reused since).
        """
        out = ReleaseOutcome()
        seen: set[int] = set()
        for o in ordinals:
            if o in seen:
                continue
            seen.add(o)
            idx = self.allocations[o]
            if idx is None:
                out.not_allocated.append(o)
                continue
            if handle_id is not None and self.attributes[idx].get("handle_id") != handle_id:
                out.refused.append(o)
                continue
            if sequence_numbers is not None and o in sequence_numbers and \
                    self.seq_for_alloc.get(o) != sequence_numbers[o]:
                out.refused.append(o)
                continue
            self.allocations[o] = None
            self.unallocated.append(o)
            self.seq_for_alloc.pop(o, None)
            out.released.append(o)
        if out.released:
            self.sequence_number += 1
            self._prune_attributes()
        return out

    def _prune_attributes(self) -> None:
        """Drop attribute records no ordinal points at and renumber the rest."""
        used = sorted({idx for idx in self.allocations if idx is not None})
        if len(used) == len(self.attributes):
            return
        remap = {old: new for new, old in enumerate(used)}
        self.attributes = [self.attributes[i] for i in used]
        self.allocations = [None if idx is None else remap[idx] for idx in self.allocations]

    # -- (de)serialisation ----------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "cidr": self.cidr,
            "affinity": self.affinity,
            "strictAffinity": self.strict_affinity,
            "allocations": self.allocations,
            "unallocated": self.unallocated,
            "attributes": self.attributes,
            "deleted": self.deleted,
            "sequenceNumber": self.sequence_number,
            "sequenceNumberForAllocation": {str(k): v for k, v in sorted(self.seq_for_alloc.items())},
        }

    @classmethod
    def from_json(cls, data: Any) -> Block:
        """Parse stored JSON; BlockFormatError names the first field that is wrong."""
        if not isinstance(data, dict):
            raise BlockFormatError("block is not a JSON object")
        try:
            net = ipaddress.ip_network(data["cidr"])
        except (KeyError, ValueError, TypeError) as exc:
            raise BlockFormatError(f"cidr: {exc}") from exc
        allocs = data.get("allocations")
        free = data.get("unallocated")
        attrs = data.get("attributes") or []
        if not isinstance(allocs, list) or not all(a is None or (isinstance(a, int) and a >= 0) for a in allocs):
            raise BlockFormatError("allocations: must be a list of attribute indexes or null")
        if not isinstance(free, list) or not all(isinstance(o, int) for o in free):
            raise BlockFormatError("unallocated: must be a list of ordinals")
        if not isinstance(attrs, list) or not all(isinstance(a, dict) for a in attrs):
            raise BlockFormatError("attributes: must be a list of objects")
        seqs = data.get("sequenceNumberForAllocation") or {}
        try:
            seq_for_alloc = {int(k): int(v) for k, v in seqs.items()}
            seq = int(data.get("sequenceNumber") or 0)
        except (AttributeError, ValueError, TypeError) as exc:
            raise BlockFormatError(f"sequenceNumber: {exc}") from exc
        return cls(
            cidr=str(net),
            allocations=list(allocs),
            unallocated=list(free),
            attributes=[{"handle_id": a.get("handle_id"), "secondary": dict(a.get("secondary") or {})}
                        for a in attrs],
            affinity=data.get("affinity"),
            strict_affinity=bool(data.get("strictAffinity", False)),
            sequence_number=seq,
            seq_for_alloc=seq_for_alloc,
            deleted=bool(data.get("deleted", False)),
        )

    def problems(self, expected_prefixlen: int | None = None) -> list[str]:
        """Invariant violations (empty list = valid): what ``ipam check`` calls an invalid block."""
        out: list[str] = []
        net = self.network
        if expected_prefixlen is not None and net.prefixlen != expected_prefixlen:
            out.append(f"block is /{net.prefixlen} but its pool's blockSize is {expected_prefixlen}")
        if len(self.allocations) != net.num_addresses:
            out.append(f"allocations has {len(self.allocations)} entries for {net.num_addresses} addresses")
        n = len(self.allocations)
        if len(set(self.unallocated)) != len(self.unallocated):
            out.append("unallocated lists an ordinal twice")
        bad = [o for o in self.unallocated if not 0 <= o < n]
        if bad:
            out.append(f"unallocated holds ordinals outside the block: {bad[:5]}")
        free = set(self.unallocated)
        allocated = {o for o, idx in enumerate(self.allocations) if idx is not None}
        both = free & allocated
        if both:
            out.append(f"ordinals both free and allocated: {sorted(both)[:5]}")
        missing = set(range(n)) - free - allocated
        if missing:
            out.append(f"ordinals neither free nor allocated: {sorted(missing)[:5]}")
        bad_idx = sorted({idx for idx in self.allocations if idx is not None and idx >= len(self.attributes)})
        if bad_idx:
            out.append(f"allocations point at missing attributes {bad_idx[:5]}")
        return out


@lru_cache(maxsize=65536)
def _ip_str(cidr: str, ordinal: int) -> str:
    """Address ``ordinal`` of block ``cidr`` as text; cached: a node hands out the same few addresses."""
    return str(ipaddress.ip_network(cidr).network_address + ordinal)


# -- where blocks come from ------------------------------------------------------------------
def node_seed(node: str) -> int:
    """A stable (process- and run-independent) number for a node name."""
    return int.from_bytes(hashlib.sha256(node.encode()).digest()[:8], "big")


def block_search_order(pool_cidr: str, block_prefixlen: int, node: str) -> Iterator[str]:
    """Every block CIDR of a pool, starting at a node-specific place and wrapping around.

    Seeding by the node name keeps different nodes apart (fewer claim races) and makes a
    node's retries visit the same blocks in the same order, as Calico's block generator does.
    """
    pool = ipaddress.ip_network(pool_cidr)
    if block_prefixlen < pool.prefixlen:
        raise ValueError(f"blockSize /{block_prefixlen} is larger than pool {pool}")
    count = 1 << (block_prefixlen - pool.prefixlen)
    step = 1 << (pool.max_prefixlen - block_prefixlen)
    start = random.Random(node_seed(node)).randrange(count)
    base = int(pool.network_address)
    cls = type(pool)
    for i in range(count):
        idx = (start + i) % count
        yield str(cls((base + idx * step, block_prefixlen)))


def block_cidr_for(ip: str | IPAddress, block_prefixlen: int) -> str:
    """The CIDR of the block (of the given size) that holds ``ip``."""
    addr = ipaddress.ip_address(ip)
    return str(ipaddress.ip_network(f"{addr}/{block_prefixlen}", strict=False))
