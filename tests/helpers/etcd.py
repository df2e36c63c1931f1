"""Tests and benchmarks start etcd through the same launcher the demo uses."""

from common.etcd_process import EtcdServer, free_port

__all__ = ["EtcdServer", "free_port"]
