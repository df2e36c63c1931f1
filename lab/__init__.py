"""``tabbyctl lab``: containerlab topology files built on network namespaces, no Docker.

Python API (tests and later issues)::

    lab = deploy("examples/line3.clab.yml")     # -> Lab, waits until daemons answer
    lab.node_netns("n1"); lab.mgmt_ipv4("n1"); lab.exec("n1", ["ip", "-br", "addr"])
    destroy("examples/line3.clab.yml", cleanup=True)

Images map to host programs through ``register_image(pattern, handler)`` (see ``kinds``).
"""

from lab import node_image  # noqa: F401  (registers the tabby/node image handler)
from lab.deploy import Lab, deploy, destroy, inspect, load
from lab.errors import LabError, TopologyError
from lab.kinds import ImageHandler, NodeContext, handler_for, register_image, unregister_image
from lab.topology import Topology, load_topology

__all__ = [
    "ImageHandler",
    "Lab",
    "LabError",
    "NodeContext",
    "Topology",
    "TopologyError",
    "deploy",
    "destroy",
    "handler_for",
    "inspect",
    "load",
    "load_topology",
    "register_image",
    "unregister_image",
]
