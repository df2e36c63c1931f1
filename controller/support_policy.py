"""Support policy: which valid Calico fields Tabby honours, refuses at apply, or accepts with a warning.

Why a separate layer: validity is Calico's call (``datamodel.resources`` decides exactly as
Calico's validator does, and the agent's validation filter uses the same parser), but a valid
field Tabby cannot honour yet must never be accepted and silently ignored. Those fields are
refused here, at ``tabbyctl create/apply/replace`` only, with a message that says it is Tabby's
limitation, not a mistake in the document. The two layers never contradict each other: nothing
here refuses what Calico accepts *as invalid*; it refuses what Tabby would not do.

:data:`FIELDS` is the one table, keyed ``<Kind>.spec.<path>`` (list items have no index): every
field of every model appears exactly once (tests/unit/resources/test_field_policy.py walks the
models and checks it), as one of

- :class:`Consumed` -- Tabby acts on it; names the test of that behaviour;
- :class:`Refused` -- refused at apply when set to a value in ``when`` (``None`` = any value);
- :class:`Warned` -- accepted; apply prints the warning.

Updating the table when a field becomes supported = replacing its entry by ``Consumed(test)``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datamodel.resources import Resource


@dataclass(frozen=True)
class Consumed:
    """Tabby acts on the field; ``test`` is ``path::function`` of a test of that behaviour."""

    test: str


@dataclass(frozen=True)
class Refused:
    """Refused at apply when the value is in ``when`` (``None``: whenever set)."""

    message: str
    when: tuple[Any, ...] | None = None
    sample: Any = None  # a value that triggers the refusal (for the table test)


@dataclass(frozen=True)
class Warned:
    """Accepted, with ``message`` printed as a warning when set to a value in ``when``."""

    message: str
    when: tuple[Any, ...] | None = None
    sample: Any = None


Policy = Consumed | Refused | Warned

_PEERS = "tests/unit/bgp/test_peers.py::"
_ANNOUNCE = "tests/unit/bgp/test_announce.py::"
_FILTERS = "tests/unit/bgp/test_filters.py::"
_NOT_YET = "Tabby does not support this yet"

FIELDS: dict[str, Policy] = {
    # ---------------------------------------------------------------- IPPool
    "IPPool.spec.cidr": Consumed("tests/unit/ipam/test_ipam_model.py::test_pool_contains"),
    "IPPool.spec.vxlanMode": Consumed("tests/unit/node/test_node_units.py::test_mtu_from_encapsulation"),
    "IPPool.spec.ipipMode": Consumed("tests/unit/node/test_node_units.py::test_mtu_from_encapsulation"),
    "IPPool.spec.natOutgoing": Consumed("tests/unit/felix_like/test_nat_calc.py::test_sets_from_pools"),
    "IPPool.spec.disabled": Consumed(_ANNOUNCE + "test_disabled_pool_still_exports_its_blocks"),
    "IPPool.spec.disableBGPExport": Consumed(_ANNOUNCE + "test_blocks_and_borrowed_ips_of_exported_pools"),
    "IPPool.spec.blockSize": Consumed("tests/unit/ipam/test_ipam_block.py::test_problems_detects_broken_partition"),
    "IPPool.spec.nodeSelector": Consumed("tests/integration/ipam/test_ipam_allocation.py::test_node_selector_on_pools"),
    "IPPool.spec.allowedUses": Consumed(
        "tests/integration/ipam/test_ipam_allocation.py::test_tunnel_addresses_idempotent"
    ),
    "IPPool.spec.namespaceSelector": Refused(
        f"{_NOT_YET}: Tabby's IPAM does not choose pools by namespace", sample="team == 'a'"
    ),
    "IPPool.spec.assignmentMode": Refused(
        f"{_NOT_YET}: Tabby's IPAM assigns from every selected pool automatically (only Automatic is honoured)",
        when=("Manual",),
        sample="Manual",
    ),
    # ---------------------------------------------------------------- IPAMConfiguration
    "IPAMConfiguration.spec.strictAffinity": Consumed(
        "tests/integration/ipam/test_ipam_allocation.py::test_max_blocks_per_host_and_strict_affinity"
    ),
    "IPAMConfiguration.spec.autoAllocateBlocks": Consumed(
        "tests/integration/ipam/test_ipam_allocation.py::test_auto_allocate_blocks_false"
    ),
    "IPAMConfiguration.spec.maxBlocksPerHost": Consumed(
        "tests/integration/ipam/test_ipam_allocation.py::test_max_blocks_per_host_and_strict_affinity"
    ),
    # ---------------------------------------------------------------- Node (normally written by the agent)
    "Node.spec.bgp.asNumber": Consumed(_PEERS + "test_as_numbers_node_then_cluster_then_default"),
    "Node.spec.bgp.ipv4Address": Consumed(_PEERS + "test_global_peer_ip_applies_to_every_node"),
    "Node.spec.bgp.ipv6Address": Consumed(
        "tests/integration/bgp/test_agent_bgp_ipv6.py::test_ipv6_sessions_and_routes_between_nodes"
    ),
    "Node.spec.bgp.ipv4IPIPTunnelAddr": Consumed("tests/unit/node/test_node_units.py::test_live_allocations"),
    "Node.spec.bgp.routeReflectorClusterID": Consumed(
        "tests/integration/bgp/test_agent_bgp_rr.py::test_route_reflector"
    ),
    "Node.spec.ipv4VXLANTunnelAddr": Consumed("tests/integration/node/test_agent_cni.py::test_two_nodes_vxlan"),
    "Node.spec.vxlanTunnelMACAddr": Consumed("tests/integration/node/test_agent_cni.py::test_two_nodes_vxlan"),
    "Node.spec.ipv6VXLANTunnelAddr": Refused(f"{_NOT_YET}: Tabby runs no IPv6 VXLAN tunnel", sample="fd00::1"),
    "Node.spec.vxlanTunnelMACAddrV6": Refused(
        f"{_NOT_YET}: Tabby runs no IPv6 VXLAN tunnel", sample="66:d1:a5:2b:9c:02"
    ),
    "Node.spec.orchRefs.orchestrator": Warned("orchRefs is recorded only: Tabby does not read it", sample="k8s"),
    "Node.spec.orchRefs.nodeName": Warned("orchRefs is recorded only: Tabby does not read it", sample="n1"),
    "Node.spec.addresses.address": Warned(
        "spec.addresses is recorded only: Tabby takes node addresses from spec.bgp", sample="10.0.0.1"
    ),
    "Node.spec.addresses.type": Warned(
        "spec.addresses is recorded only: Tabby takes node addresses from spec.bgp", sample="InternalIP"
    ),
    "Node.spec.wireguard.interfaceIPv4Address": Refused(f"{_NOT_YET}: Tabby runs no WireGuard", sample="10.9.0.1"),
    "Node.spec.wireguard.interfaceIPv6Address": Refused(f"{_NOT_YET}: Tabby runs no WireGuard", sample="fd09::1"),
    # ---------------------------------------------------------------- BGPConfiguration
    "BGPConfiguration.spec.logSeverityScreen": Warned(
        "logSeverityScreen is not applied: Tabby's BGP speaker logs at the node agent's log level",
        when=("Trace", "Debug", "Warning", "Error", "Fatal"),
        sample="Debug",
    ),
    "BGPConfiguration.spec.nodeToNodeMeshEnabled": Consumed(_PEERS + "test_mesh_disabled"),
    "BGPConfiguration.spec.asNumber": Consumed(_PEERS + "test_as_numbers_node_then_cluster_then_default"),
    "BGPConfiguration.spec.serviceLoadBalancerIPs.cidr": Consumed(
        _ANNOUNCE + "test_service_cidrs_from_the_default_configuration"
    ),
    "BGPConfiguration.spec.serviceExternalIPs.cidr": Consumed(
        _ANNOUNCE + "test_service_cidrs_from_the_default_configuration"
    ),
    "BGPConfiguration.spec.serviceClusterIPs.cidr": Consumed(
        _ANNOUNCE + "test_service_cidrs_from_the_default_configuration"
    ),
    "BGPConfiguration.spec.communities.name": Consumed(
        _ANNOUNCE + "test_communities_most_specific_prefix_advertisement_wins"
    ),
    "BGPConfiguration.spec.communities.value": Consumed(
        _ANNOUNCE + "test_communities_most_specific_prefix_advertisement_wins"
    ),
    "BGPConfiguration.spec.prefixAdvertisements.cidr": Consumed(
        _ANNOUNCE + "test_communities_most_specific_prefix_advertisement_wins"
    ),
    "BGPConfiguration.spec.prefixAdvertisements.communities": Consumed(
        _ANNOUNCE + "test_communities_most_specific_prefix_advertisement_wins"
    ),
    "BGPConfiguration.spec.listenPort": Consumed(_PEERS + "test_mesh_settings_password_restart_time_listen_ports"),
    "BGPConfiguration.spec.nodeMeshPassword.secretKeyRef.name": Consumed(
        _PEERS + "test_mesh_settings_password_restart_time_listen_ports"
    ),
    "BGPConfiguration.spec.nodeMeshPassword.secretKeyRef.key": Consumed(
        _PEERS + "test_mesh_settings_password_restart_time_listen_ports"
    ),
    "BGPConfiguration.spec.nodeMeshPassword.secretKeyRef.optional": Consumed(
        _PEERS + "test_optional_secret_missing_means_no_password"
    ),
    "BGPConfiguration.spec.nodeMeshMaxRestartTime": Consumed(
        _PEERS + "test_mesh_settings_password_restart_time_listen_ports"
    ),
    "BGPConfiguration.spec.bindMode": Warned(
        "Tabby's BGP speaker always listens on the node IP only (bindMode NodeIP); None is accepted but not honoured",
        when=("None",),
        sample="None",
    ),
    "BGPConfiguration.spec.ignoredInterfaces": Warned(
        "ignoredInterfaces changes nothing in Tabby: it exports no interface routes", sample=["eth9"]
    ),
    "BGPConfiguration.spec.localWorkloadPeeringIPV4": Refused(
        f"{_NOT_YET}: Tabby has no local workload peering", sample="169.254.0.179"
    ),
    "BGPConfiguration.spec.localWorkloadPeeringIPV6": Refused(
        f"{_NOT_YET}: Tabby has no local workload peering", sample="fe80::179"
    ),
    "BGPConfiguration.spec.serviceLoadBalancerAggregation": Refused(
        f"{_NOT_YET}: Tabby always advertises LoadBalancer CIDRs aggregated (only Enabled is honoured)",
        when=("Disabled",),
        sample="Disabled",
    ),
    # ---------------------------------------------------------------- BGPPeer (helper `bgp` settles these)
    "BGPPeer.spec.node": Consumed(_PEERS + "test_node_peer_applies_to_that_node_only"),
    "BGPPeer.spec.nodeSelector": Consumed(_PEERS + "test_node_selector_is_evaluated_on_the_local_node"),
    "BGPPeer.spec.peerIP": Consumed(_PEERS + "test_global_peer_ip_applies_to_every_node"),
    "BGPPeer.spec.asNumber": Consumed(_PEERS + "test_global_peer_ip_applies_to_every_node"),
    "BGPPeer.spec.peerSelector": Consumed(_PEERS + "test_peer_selector_peers_are_the_selected_nodes_with_their_as"),
    "BGPPeer.spec.keepOriginalNextHop": Consumed(_PEERS + "test_bgp_peer_options"),
    "BGPPeer.spec.nextHopMode": Refused(
        f"{_NOT_YET}: reflected routes always keep their next hop (only Auto and Keep are honoured)",
        when=("Self",),
        sample="Self",
    ),
    "BGPPeer.spec.password.secretKeyRef.name": Consumed(_PEERS + "test_bgp_peer_options"),
    "BGPPeer.spec.password.secretKeyRef.key": Consumed(_PEERS + "test_bgp_peer_options"),
    "BGPPeer.spec.password.secretKeyRef.optional": Consumed(_PEERS + "test_optional_secret_missing_means_no_password"),
    "BGPPeer.spec.sourceAddress": Consumed(_PEERS + "test_bgp_peer_options"),
    "BGPPeer.spec.maxRestartTime": Consumed(_PEERS + "test_bgp_peer_options"),
    "BGPPeer.spec.ttlSecurity": Consumed(_PEERS + "test_bgp_peer_options"),
    "BGPPeer.spec.keepaliveTime": Consumed(_PEERS + "test_bgp_peer_options"),
    "BGPPeer.spec.failureDetectionMode": Consumed(
        "tests/integration/bgp/test_agent_bgp_ecmp.py::test_bfd_takes_a_blackholed_tor_out_of_the_multipath_route_at_once"
    ),
    "BGPPeer.spec.restartMode": Refused(
        f"{_NOT_YET}: Tabby offers graceful restart only",
        when=("LongLivedGracefulRestart",),
        sample="LongLivedGracefulRestart",
    ),
    "BGPPeer.spec.birdGatewayMode": Warned(
        "Tabby uses a BGP next hop only when it is directly connected (DirectIfDirectlyConnected): "
        "a multi-hop next hop is not resolved recursively, such paths are excluded",
        when=("Recursive",),
        sample="Recursive",
    ),
    "BGPPeer.spec.numAllowedLocalASNumbers": Consumed(
        "tests/unit/bgp/test_rib.py::test_num_allowed_local_as_numbers_lets_our_as_through_that_often"
    ),
    "BGPPeer.spec.reachableBy": Refused(f"{_NOT_YET}: Tabby installs no route towards the peer", sample="10.0.0.254"),
    "BGPPeer.spec.filters": Consumed("tests/integration/bgp/test_agent_bgp_filter.py::test_import_and_export_filters"),
    "BGPPeer.spec.localWorkloadSelector": Refused(f"{_NOT_YET}: Tabby has no local workload peering", sample="all()"),
    "BGPPeer.spec.reversePeering": Refused(
        f"{_NOT_YET}: Tabby always configures both ends automatically", when=("Manual",), sample="Manual"
    ),
    # ---------------------------------------------------------------- BGPFilter (bgp/filters.py, the RIB)
    **{
        f"BGPFilter.spec.{family}.{leaf}": policy
        for family in ("exportV4", "importV4", "exportV6", "importV6")
        for leaf, policy in (
            *((leaf, Consumed(_FILTERS + "test_prefix_length_bounds_and_first_match_wins"))
              for leaf in ("action", "cidr", "matchOperator", "prefixLength.min", "prefixLength.max")),
            ("source", Consumed(_FILTERS + "test_families_source_and_missing_filters")),
            ("interface", Warned("BGPFilter interface rules never match in Tabby: it exports no interface routes",
                                 sample="eth*")),
        )
    },
    # ---------------------------------------------------------------- WorkloadEndpoint (written by the agent)
    "WorkloadEndpoint.spec.orchestrator": Consumed("tests/unit/node/test_node_units.py::test_wep_names_and_veth_names"),
    "WorkloadEndpoint.spec.workload": Consumed(
        "tests/integration/cli/test_ipam.py::test_ipam_check_leaks_then_clean_then_broken"
    ),
    "WorkloadEndpoint.spec.node": Consumed("tests/unit/node/test_node_units.py::test_live_allocations"),
    "WorkloadEndpoint.spec.containerID": Consumed("tests/unit/node/test_node_units.py::test_live_allocations"),
    "WorkloadEndpoint.spec.pod": Consumed("tests/unit/node/test_node_units.py::test_wep_names_and_veth_names"),
    "WorkloadEndpoint.spec.endpoint": Consumed("tests/unit/node/test_node_units.py::test_wep_names_and_veth_names"),
    "WorkloadEndpoint.spec.ipNetworks": Consumed("tests/unit/node/test_node_units.py::test_live_allocations"),
    "WorkloadEndpoint.spec.interfaceName": Consumed(
        "tests/integration/node/test_agent_cni.py::test_single_node_add_check_del"
    ),
    "WorkloadEndpoint.spec.mac": Consumed(
        "tests/unit/node/test_node_units.py::test_workload_endpoint_model_round_trip"
    ),
    "WorkloadEndpoint.spec.serviceAccountName": Warned(
        "serviceAccountName is recorded only: Tabby has no policy to apply it to", sample="sa"
    ),
    "WorkloadEndpoint.spec.ipv4Gateway": Warned(
        "ipv4Gateway is recorded only: Tabby's pods route via 169.254.1.1", sample="169.254.1.1"
    ),
    "WorkloadEndpoint.spec.ipv6Gateway": Warned(
        "ipv6Gateway is recorded only: Tabby's pods route via the veth's link-local address", sample="fe80::1"
    ),
    "WorkloadEndpoint.spec.profiles": Consumed(
        "tests/unit/policy/test_calico_render.py::test_profiles_decide_after_the_tiers"),
    "WorkloadEndpoint.spec.ports.name": Warned("ports are recorded only: Tabby has no policy", sample="http"),
    "WorkloadEndpoint.spec.ports.protocol": Warned("ports are recorded only: Tabby has no policy", sample="TCP"),
    "WorkloadEndpoint.spec.ports.port": Warned("ports are recorded only: Tabby has no policy", sample=80),
    "WorkloadEndpoint.spec.ports.hostPort": Warned("ports are recorded only: Tabby has no policy", sample=8080),
    "WorkloadEndpoint.spec.ports.hostIP": Warned("ports are recorded only: Tabby has no policy", sample="10.0.0.1"),
}


# ---------------------------------------------------------------- FelixConfiguration
# The node agent reads FelixConfiguration (`default`, then `node.<name>`; environment variables win,
# as in Felix) and applies the consumed fields live (controller/node/felix_config.py). The rest is
# stored with a warning that says so, naming what does take effect where something does.
_FELIX_T = "tests/integration/node/test_agent_felixconfig.py::test_agent_follows_felix_configuration_live"
_FELIX_UNIT = "tests/unit/node/test_felix_config.py::"
_FELIX_VX = "tests/integration/node/test_agent_felix_tunnels.py::test_agents_follow_vxlan_mtu_and_vxlan_enabled_live"
_FELIX_IPIP = "tests/integration/node/test_agent_felix_tunnels.py::test_agents_follow_ipip_mtu_and_ipip_enabled_live"
_FELIX_STORED = "stored, but the node agent does not act on this field"
_FELIX_SAMPLES: dict[str, tuple[Any, str]] = {
    "logSeverityFile": ("Debug", "; the agent logs to stderr only (logSeverityScreen sets its level)"),
    "logSeveritySys": ("Debug", "; the agent logs to stderr only (logSeverityScreen sets its level)"),
    "reportingInterval": ("60s", "; liveness is the agent's etcd lease (TABBY_LIVENESS_TTL)"),
    "vxlanMTUV6": (1390, "; set TABBY_MTU on the agent"),
    "vxlanPort": (4790, "; Tabby's VXLAN device uses port 4789"),
    "vxlanVNI": (4097, "; Tabby's VXLAN device uses VNI 4096"),
    "healthEnabled": (True, "; /healthz and /readyz are served on the metrics port"),
    "healthHost": ("127.0.0.1", "; /healthz and /readyz are served on the metrics port"),
    "healthPort": (9098, "; /healthz and /readyz are served on the metrics port"),
    "failsafeInboundHostPorts.protocol": ("UDP", "; Tabby polices no host endpoints"),
    "failsafeInboundHostPorts.port": (22, "; Tabby polices no host endpoints"),
    "failsafeInboundHostPorts.net": ("10.0.0.0/8", "; Tabby polices no host endpoints"),
    "failsafeOutboundHostPorts.protocol": ("UDP", "; Tabby polices no host endpoints"),
    "failsafeOutboundHostPorts.port": (53, "; Tabby polices no host endpoints"),
    "failsafeOutboundHostPorts.net": ("10.0.0.0/8", "; Tabby polices no host endpoints"),
    "natOutgoingAddress": ("192.0.2.9", "; natOutgoing masquerades to the node's address"),
    "deviceRouteSourceAddress": ("10.0.0.1", ""),
    "deviceRouteSourceAddressIPv6": ("fd00::1", ""),
    "interfacePrefix": ("tab", "; Tabby's workload interfaces are named tab*"),
    "defaultEndpointToHostAction": ("Accept", "; pod-to-own-node traffic is always allowed"),
    "ipv6Support": (False, ""),
}
for _field, (_sample, _hint) in _FELIX_SAMPLES.items():
    FIELDS[f"FelixConfiguration.spec.{_field}"] = Warned(f"{_FELIX_STORED}{_hint}", sample=_sample)
FIELDS.update(
    {
        "FelixConfiguration.spec.logSeverityScreen": Consumed(_FELIX_T),
        "FelixConfiguration.spec.routeRefreshInterval": Consumed(_FELIX_T),
        "FelixConfiguration.spec.prometheusMetricsEnabled": Consumed(_FELIX_T),
        "FelixConfiguration.spec.prometheusMetricsPort": Consumed(_FELIX_T),
        "FelixConfiguration.spec.prometheusMetricsHost": Consumed(_FELIX_UNIT + "test_environment_wins_as_in_felix"),
        "FelixConfiguration.spec.vxlanEnabled": Consumed(_FELIX_VX),
        "FelixConfiguration.spec.vxlanMTU": Consumed(_FELIX_VX),
        "FelixConfiguration.spec.mtuIfacePattern": Consumed(_FELIX_VX),
        "FelixConfiguration.spec.ipipEnabled": Consumed(_FELIX_IPIP),
        "FelixConfiguration.spec.ipipMTU": Consumed(_FELIX_IPIP),
        "FelixConfiguration.spec.wireguardEnabled": Refused(
            f"{_NOT_YET}: Tabby has no WireGuard encryption", when=(True,), sample=True),
        "FelixConfiguration.spec.bpfEnabled": Refused(
            f"{_NOT_YET}: Tabby has no eBPF dataplane (its dataplane is netlink routes and nftables)",
            when=(True,), sample=True),
    }
)

# ---------------------------------------------------------------- ClusterInformation (written by Tabby)
FIELDS.update(
    {
        "ClusterInformation.spec.calicoVersion": Consumed(
            "tests/integration/cli/test_calicoctl_fidelity.py::test_cluster_information_written_once_and_version_shows_it"
        ),
        "ClusterInformation.spec.datastoreReady": Consumed(
            "tests/integration/cli/test_calicoctl_fidelity.py::test_cluster_information_written_once_and_version_shows_it"
        ),
        "ClusterInformation.spec.clusterGUID": Warned("clusterGUID is informational: Tabby writes it once", sample="x"),
        "ClusterInformation.spec.clusterType": Warned("clusterType is informational: Tabby writes it", sample="x"),
        "ClusterInformation.spec.variant": Warned("variant is informational: Tabby writes it", sample="x"),
    }
)


# ---------------------------------------------------------------- Kubernetes NetworkPolicy (networking.k8s.io/v1)
_KINDS_T = "tests/unit/resources/test_kubernetes_kinds.py::"
_RENDER = "tests/unit/policy/test_policy_render.py::"
_SELECTOR_T = _KINDS_T + "test_label_selector_means_what_kubernetes_says"
for _dir, _peer, _test in (("ingress", "from_", _RENDER + "test_ingress_rules_golden"),
                           ("egress", "to", _RENDER + "test_allow_all_isolate_and_egress_golden")):
    for _leaf in ("protocol", "port", "endPort"):
        FIELDS[f"NetworkPolicy.spec.{_dir}.ports.{_leaf}"] = Consumed(_test)
    for _sel in ("podSelector", "namespaceSelector"):
        FIELDS[f"NetworkPolicy.spec.{_dir}.{_peer}.{_sel}.matchLabels"] = Consumed(_SELECTOR_T)
        for _leaf in ("key", "operator", "values"):
            FIELDS[f"NetworkPolicy.spec.{_dir}.{_peer}.{_sel}.matchExpressions.{_leaf}"] = Consumed(_SELECTOR_T)
    for _leaf in ("cidr", "except_"):
        FIELDS[f"NetworkPolicy.spec.{_dir}.{_peer}.ipBlock.{_leaf}"] = Consumed(
            "tests/unit/policy/test_policy_incremental.py::test_incremental_equals_from_scratch")
FIELDS["NetworkPolicy.spec.podSelector.matchLabels"] = Consumed(_SELECTOR_T)
for _leaf in ("key", "operator", "values"):
    FIELDS[f"NetworkPolicy.spec.podSelector.matchExpressions.{_leaf}"] = Consumed(_SELECTOR_T)
FIELDS["NetworkPolicy.spec.policyTypes"] = Consumed(_KINDS_T + "test_policy_types_inferred_as_kubernetes_does")


# ---------------------------------------------------------------- Calico policy kinds (projectcalico.org/v3)
_CALICO_T = "tests/unit/policy/test_calico_render.py::"
_RULES_T = _CALICO_T + "test_rule_fields_golden"
_STAGED_T = "tests/unit/resources/test_calico_policy_kinds.py::test_staged_policies_are_validated_never_enforced"
_HOST_ONLY = ("a host-endpoint-only field: Tabby has no host endpoints, so the policy could not act as written"
              " (Tabby does not support this)")


def _rule_rows(prefix: str) -> dict[str, Policy]:
    rows: dict[str, Policy] = {}
    for d in ("ingress", "egress"):
        base = f"{prefix}.{d}"
        for leaf in ("action", "protocol", "notProtocol", "icmp.type", "icmp.code", "notICMP.type", "notICMP.code",
                     "ipVersion"):
            rows[f"{base}.{leaf}"] = Consumed(_RULES_T)
        for side in ("source", "destination"):
            for leaf in ("nets", "notNets", "selector", "notSelector", "namespaceSelector", "ports", "notPorts"):
                rows[f"{base}.{side}.{leaf}"] = Consumed(_RULES_T)
            for leaf, sample in (("names", ["sa"]), ("selector", "role == 'x'")):
                rows[f"{base}.{side}.serviceAccounts.{leaf}"] = Refused(
                    f"{_NOT_YET}: service-account matches (serviceAccounts) in policy rules", sample=sample)
            for leaf, sample in (("name", "svc"), ("namespace", "prod")):
                rows[f"{base}.{side}.services.{leaf}"] = Refused(
                    f"{_NOT_YET}: Kubernetes Service matches (services) in policy rules", sample=sample)
        rows[f"{base}.http.methods"] = Refused(f"{_NOT_YET}: HTTP matches (http) need an L7 proxy Tabby does not run",
                                               sample=["GET"])
        for leaf in ("exact", "prefix"):
            rows[f"{base}.http.paths.{leaf}"] = Refused(
                f"{_NOT_YET}: HTTP matches (http) need an L7 proxy Tabby does not run", sample="/x")
        rows[f"{base}.metadata.annotations"] = Warned(
            "rule metadata is stored with the policy; the dataplane does not use it (as in Calico)", sample={"a": "b"})
    return rows


for _kind in ("NetworkPolicy", "GlobalNetworkPolicy"):
    FIELDS.update(_rule_rows(f"{_kind}.spec"))
    FIELDS[f"{_kind}.spec.order"] = Consumed(_CALICO_T + "test_tier_and_policy_order_golden")
    FIELDS[f"{_kind}.spec.tier"] = Consumed(_CALICO_T + "test_tier_and_policy_order_golden")
    FIELDS[f"{_kind}.spec.selector"] = Consumed(_CALICO_T + "test_tier_and_policy_order_golden")
    FIELDS[f"{_kind}.spec.types"] = Consumed("tests/unit/resources/test_calico_policy_kinds.py::"
                                             "test_types_inferred_as_calico_does")
    FIELDS[f"{_kind}.spec.serviceAccountSelector"] = Refused(
        f"{_NOT_YET}: selecting endpoints by service account (serviceAccountSelector)", sample="role == 'x'")
    FIELDS[f"{_kind}.spec.performanceHints"] = Warned(
        "performanceHints are hints for Felix's calculation; Tabby's calculator does not need them",
        sample=["AssumeNeededOnEveryNode"])
FIELDS["GlobalNetworkPolicy.spec.namespaceSelector"] = Consumed(_CALICO_T + "test_global_policy_namespace_selector")
for _leaf in ("doNotTrack", "preDNAT", "applyOnForward"):
    FIELDS[f"GlobalNetworkPolicy.spec.{_leaf}"] = Refused(_HOST_ONLY, when=(True,), sample=True)
FIELDS["Tier.spec.order"] = Consumed(_CALICO_T + "test_tier_and_policy_order_golden")
FIELDS["Tier.spec.defaultAction"] = Consumed(_CALICO_T + "test_tier_and_policy_order_golden")
FIELDS.update(_rule_rows("Profile.spec"))
FIELDS["Profile.spec.labelsToApply"] = Refused(
    f"{_NOT_YET}: endpoints do not inherit a profile's labels (labelsToApply)", sample={"a": "b"})
FIELDS["NetworkSet.spec.nets"] = Consumed(_CALICO_T + "test_network_sets_are_selector_members")
FIELDS["GlobalNetworkSet.spec.nets"] = Consumed(_CALICO_T + "test_network_sets_are_selector_members")
def _kubernetes_path(path: str) -> bool:
    """A ``NetworkPolicy.spec.*`` row of the Kubernetes kind (the two kinds share the name)."""
    return any(x in path for x in (".ports.", ".from_.", ".to.", ".podSelector.")) or path.endswith(".policyTypes")


# Staged kinds: validated and stored, never enforced (Felix evaluates them for flow logs only): every
# field is consumed by validation, and the test shows nothing of them reaches the dataplane.
for _staged, _twin in (("StagedNetworkPolicy", "NetworkPolicy"), ("StagedGlobalNetworkPolicy", "GlobalNetworkPolicy")):
    for _path in [p for p in FIELDS if p.startswith(f"{_twin}.spec.") and not _kubernetes_path(p)]:
        FIELDS[_staged + _path[len(_twin):]] = Consumed(_STAGED_T)
    FIELDS[f"{_staged}.spec.stagedAction"] = Consumed(_STAGED_T)
for _path in [p for p in FIELDS if p.startswith("NetworkPolicy.spec.") and _kubernetes_path(p)]:
    FIELDS["StagedKubernetesNetworkPolicy" + _path[len("NetworkPolicy"):]] = Consumed(_STAGED_T)
FIELDS["StagedKubernetesNetworkPolicy.spec.stagedAction"] = Consumed(_STAGED_T)


# ---------------------------------------------------------------- issue 13: KubeControllersConfiguration,
# IPReservation, BlockAffinity, CalicoNodeStatus
_KCC_UNREAD = ("recorded only: Tabby's cluster controller (tabby-controller) reads reconcilerPeriod and "
               "leakGracePeriod of controllers.node and logSeverityScreen")
_KCC_SAMPLES: dict[str, tuple[Any, str]] = {
    "healthChecks": ("Disabled", ""),
    "etcdV3CompactionPeriod": ("10m", ""),
    "prometheusMetricsPort": (9094, "; TABBY_CONTROLLER_PROMETHEUSMETRICSPORT sets its metrics port"),
    "debugProfilePort": (6060, ""),
    "controllers.node.syncLabels": ("Disabled", ""),
    "controllers.policy.reconcilerPeriod": ("5m", ""),
    "controllers.workloadEndpoint.reconcilerPeriod": ("5m", ""),
    "controllers.serviceAccount.reconcilerPeriod": ("5m", ""),
    "controllers.namespace.reconcilerPeriod": ("5m", ""),
    "controllers.loadBalancer.assignIPs": ("AllServices", "; Tabby assigns no LoadBalancer addresses"),
    "controllers.node.hostEndpoint.createDefaultHostEndpoint": ("Disabled", ""),
}
for _field, (_sample, _hint) in _KCC_SAMPLES.items():
    FIELDS[f"KubeControllersConfiguration.spec.{_field}"] = Warned(f"{_KCC_UNREAD}{_hint}", sample=_sample)
for _field in ("logSeverityScreen", "controllers.node.reconcilerPeriod", "controllers.node.leakGracePeriod"):
    FIELDS[f"KubeControllersConfiguration.spec.{_field}"] = Consumed(
        "tests/integration/controller/test_kcc.py::test_kcc_sets_grace_period_cycle_and_log_level")
FIELDS["KubeControllersConfiguration.spec.controllers.node.hostEndpoint.autoCreate"] = Refused(
    f"{_NOT_YET}: Tabby has no host endpoints to create", when=("Enabled",), sample="Enabled"
)
_KINDS13 = "tests/integration/cli/test_calicoctl_kinds.py::"
FIELDS["IPReservation.spec.reservedCIDRs"] = Consumed(
    "tests/integration/ipam/test_ipam_reservations.py::test_reserved_addresses_are_never_auto_assigned"
)
for _leaf in ("state", "node", "cidr", "deleted", "type"):
    FIELDS[f"BlockAffinity.spec.{_leaf}"] = Consumed(_KINDS13 + "test_block_affinities_are_a_read_only_view_of_ipam")
for _leaf in ("node", "classes", "updatePeriodSeconds"):
    FIELDS[f"CalicoNodeStatus.spec.{_leaf}"] = Consumed(
        "tests/integration/node/test_node_status_report.py::test_agent_fills_calico_node_status"
    )


@dataclass
class PolicyReport:
    """What the support policy says about an input: refusals (apply fails) and warnings."""

    refused: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _values(value: Any, path: Sequence[str]) -> Iterator[tuple[str, Any]]:
    """(printable path, value) for every value found at ``path`` (lists are walked, unset skipped)."""
    if value is None:
        return
    if not path:  # a leaf (a list of scalars such as filters is reported as one field)
        yield "", value
        return
    if isinstance(value, list):
        for i, item in enumerate(value):
            for where, found in _values(item, path):
                yield f"[{i}]{where}", found
        return
    if isinstance(value, dict):
        yield from ((f".{path[0]}{w}", v) for w, v in _values(value.get(path[0]), path[1:]))


def _triggers(policy: Refused | Warned, value: Any) -> bool:
    return policy.when is None or value in policy.when


_BY_KIND: dict[str, list[tuple[list[str], Refused | Warned]]] = {}


def _policed_by_kind() -> dict[str, list[tuple[list[str], Refused | Warned]]]:
    """FIELDS' refused/warned entries grouped by kind, paths split (built once)."""
    if not _BY_KIND:
        for key, policy in FIELDS.items():
            if isinstance(policy, Consumed):
                continue
            kind, _, rest = key.partition(".")
            _BY_KIND.setdefault(kind, []).append((rest.split("."), policy))
    return _BY_KIND


def check(resources: Sequence[Resource]) -> PolicyReport:
    """Apply the table to the documents of one input (as ``to_dict()`` stores them)."""
    report = PolicyReport()
    by_kind = _policed_by_kind()
    for res in resources:
        policed = by_kind.get(res.KIND, ())
        doc = res.to_dict() if policed else {}
        label = f"{res.KIND} {res.name}"
        for parts, policy in policed:
            for where, value in _values(doc.get(parts[0]), parts[1:]):
                if not _triggers(policy, value):
                    continue
                line = f"{label}: {parts[0]}{where}: {policy.message}"
                (report.refused if isinstance(policy, Refused) else report.warnings).append(line)
        report.refused.extend(_combination_refusals(res, label))
    report.warnings = list(dict.fromkeys(report.warnings))
    return report


def _combination_refusals(res: Resource, label: str) -> list[str]:
    """Valid Calico combinations of fields that Tabby cannot honour (not tied to one field)."""
    if res.KIND == "FelixConfiguration":
        return [
            f"{label}: spec.{key}: a FelixConfiguration field Tabby does not model; Tabby cannot check or honour it"
            for key in res.spec.model_extra or {}
        ]
    if res.KIND == "BGPPeer":
        spec = res.spec
        if spec.peerIP and spec.asNumber is None:
            return [
                f"{label}: spec.asNumber: {_NOT_YET}: a peerIP without asNumber (Calico takes the AS of the node"
                " with that address); give the peer's asNumber"
            ]
    return []
