"""Calico-style IP address management: pools cut into blocks with node affinity, in etcd."""

from ipam.allocate import ExtraOps
from ipam.block import Block, ReleaseOutcome, block_search_order
from ipam.check import CheckReport, Problem
from ipam.client import IPAMClient
from ipam.errors import (
    HandleInUse,
    InvalidHandle,
    IPAlreadyAllocated,
    IPAMError,
    IPNotInPool,
    NoPoolsError,
    PoolsExhausted,
)
from ipam.model import AssignResult, BlockUtilisation, IPAMConfig, IPInfo, Pool, PoolUtilisation, ReleasedAffinities

__all__ = [
    "AssignResult",
    "Block",
    "BlockUtilisation",
    "CheckReport",
    "ExtraOps",
    "HandleInUse",
    "IPAMClient",
    "IPAMConfig",
    "IPAMError",
    "IPAlreadyAllocated",
    "IPInfo",
    "IPNotInPool",
    "InvalidHandle",
    "NoPoolsError",
    "Pool",
    "PoolUtilisation",
    "PoolsExhausted",
    "Problem",
    "ReleaseOutcome",
    "ReleasedAffinities",
    "block_search_order",
]
