"""The cluster controller (``tabby-controller``): node liveness and cleanup, IPAM garbage collection,
leader election. One acts at a time; see docs/controller.md."""
