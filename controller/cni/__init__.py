"""The CNI plugin executables ``tabby`` and ``tabby-ipam`` (thin clients of the node agent)."""
