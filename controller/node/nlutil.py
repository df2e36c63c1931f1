"""Namespace-bound netlink access for the agent: re-exported from felix_like.netns (one implementation)."""

from felix_like.netns import NETNS_DIR, NetnsGone, iproute, netns_inode, netns_path

__all__ = ["NETNS_DIR", "NetnsGone", "iproute", "netns_inode", "netns_path"]
