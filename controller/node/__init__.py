"""The Tabby node agent (``tabby-node`` / ``tabbyctl node run``): one asyncio daemon per node.

It registers the node, keeps a cache of the datastore, calculates the node's desired dataplane
from it (pure functions in felix_like), reconciles the kernel, and serves the CNI plugin over a
unix socket. See docs/node-agent.md.
"""
