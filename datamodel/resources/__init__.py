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
from datamodel.resources.clusterinfo import ClusterInformation, ClusterInformationSpec
from datamodel.resources.common import (
    API_VERSION,
    DEFAULT_AS_NUMBER,
    Metadata,
    Resource,
    parse_as_number,
    parse_duration,
)
from datamodel.resources.errors import ResourceError, format_validation_error
from datamodel.resources.felixconfig import (
    FELIX_DEFAULTS,
    FelixConfiguration,
    FelixConfigurationSpec,
    effective_felix_config,
)
from datamodel.resources.ipamconfig import IPAMConfiguration, IPAMConfigurationSpec
from datamodel.resources.ipamkinds import BlockAffinity, IPReservation, block_affinity_name
from datamodel.resources.ippool import IPPool, IPPoolSpec, pool_overlaps
from datamodel.resources.kubecontrollers import KubeControllersConfiguration
from datamodel.resources.node import Node, NodeAddress, NodeBGPSpec, NodeSpec, OrchRef
from datamodel.resources.nodestatus import CalicoNodeStatus
from datamodel.resources.parsing import parse_documents, parse_resource
from datamodel.resources.registry import UNSUPPORTED_CALICO_KINDS, all_kinds, kind_for_name, unsupported_kind

__all__ = [
    "API_VERSION",
    "DEFAULT_AS_NUMBER",
    "FELIX_DEFAULTS",
    "UNSUPPORTED_CALICO_KINDS",
    "BGPConfiguration",
    "BGPConfigurationSpec",
    "BGPFilter",
    "BGPFilterRuleV4",
    "BGPFilterRuleV6",
    "BGPFilterSpec",
    "BGPPassword",
    "BGPPeer",
    "BGPPeerSpec",
    "BlockAffinity",
    "CalicoNodeStatus",
    "ClusterInformation",
    "ClusterInformationSpec",
    "Community",
    "FelixConfiguration",
    "FelixConfigurationSpec",
    "IPAMConfiguration",
    "IPAMConfigurationSpec",
    "IPPool",
    "IPPoolSpec",
    "IPReservation",
    "KubeControllersConfiguration",
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
    "block_affinity_name",
    "effective_felix_config",
    "format_validation_error",
    "kind_for_name",
    "parse_as_number",
    "parse_documents",
    "parse_duration",
    "parse_resource",
    "pool_overlaps",
    "split_peer_ip",
    "unsupported_kind",
]
