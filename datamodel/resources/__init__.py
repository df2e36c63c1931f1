"""projectcalico.org/v3 resource models: users' calicoctl YAML, validated the way Calico does.

Public API (the CLI, IPAM and agent code use only these names):

- `parse_documents(text, source)` / `parse_resource(data, source, index)`: input -> models, raising
  `ResourceError` with one line per problem.
- `Resource` subclasses: `.to_dict()` (what etcd stores and -o yaml/json prints), `.ps_row()`,
  `.wide_row()`, `.name`, `.namespace`, ClassVars KIND / PLURAL / NAMESPACED / ALIASES.
- `kind_for_name(name)` / `all_kinds()`: calicoctl's resource-type names.
"""

from __future__ import annotations

from datamodel.resources.bgp import (
    BGPConfiguration,
    BGPConfigurationSpec,
    BGPFilter,
    BGPFilterRuleV4,
    BGPFilterRuleV6,
    BGPFilterSpec,
    BGPPassword,
    BGPPeer,
    BGPPeerSpec,
    Community,
    PrefixAdvertisement,
    SecretKeyRef,
    ServiceIPBlock,
    split_peer_ip,
)
from datamodel.resources.common import (
    API_VERSION,
    DEFAULT_AS_NUMBER,
    Metadata,
    Resource,
    parse_as_number,
    parse_duration,
)
from datamodel.resources.errors import ResourceError, format_validation_error
from datamodel.resources.ipamconfig import IPAMConfiguration, IPAMConfigurationSpec
from datamodel.resources.ippool import IPPool, IPPoolSpec, pool_overlaps
from datamodel.resources.node import Node, NodeAddress, NodeBGPSpec, NodeSpec, OrchRef
from datamodel.resources.parsing import parse_documents, parse_resource
from datamodel.resources.registry import all_kinds, kind_for_name

__all__ = [
    "API_VERSION",
    "DEFAULT_AS_NUMBER",
    "BGPConfiguration",
    "BGPConfigurationSpec",
    "BGPFilter",
    "BGPFilterRuleV4",
    "BGPFilterRuleV6",
    "BGPFilterSpec",
    "BGPPassword",
    "BGPPeer",
    "BGPPeerSpec",
    "Community",
    "IPAMConfiguration",
    "IPAMConfigurationSpec",
    "IPPool",
    "IPPoolSpec",
    "Metadata",
    "Node",
    "NodeAddress",
    "NodeBGPSpec",
    "NodeSpec",
    "OrchRef",
    "PrefixAdvertisement",
    "Resource",
    "ResourceError",
    "SecretKeyRef",
    "ServiceIPBlock",
    "all_kinds",
    "format_validation_error",
    "kind_for_name",
    "parse_as_number",
    "parse_documents",
    "parse_duration",
    "parse_resource",
    "pool_overlaps",
    "split_peer_ip",
]
