"""Resolution of valid topology files: inheritance, naming, management addresses, link forms."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from lab.errors import TopologyError
from lab.topology import load_topology, netns_name, parse_topology

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


def parse(text: str, tmp_path: Path):
    path = tmp_path / "t.clab.yml"
    path.write_text(text)
    return load_topology(path)


INHERIT = """
name: inh
topology:
  defaults:
    kind: linux
    image: alpine:3
    exec: ["echo defaults"]
    binds: ["d.txt:/etc/d.txt"]
    env: {A: 1, B: defaults, FLAG: true}
    labels: {tier: any}
  kinds:
    linux:
      exec: ["echo kind"]
      env: {B: kind}
      cmd: sleep 1
  groups:
    routers:
      image: quay.io/frrouting/frr:8.4.1
      exec: ["echo group"]
      binds: ["g.txt:/etc/g.txt"]
      env: {C: group}
      labels: {tier: router}
  nodes:
    r1:
      group: routers
      exec: ["echo node"]
      env: {C: node}
      cmd: sleep 2
    h1:
"""


def test_single_values_node_over_group_over_kind_over_defaults(tmp_path: Path) -> None:
    (tmp_path / "d.txt").write_text("d")
    (tmp_path / "g.txt").write_text("g")
    topo = parse(INHERIT, tmp_path)
    r1, h1 = topo.nodes["r1"], topo.nodes["h1"]
    assert r1.image == "quay.io/frrouting/frr:8.4.1"  # group beats defaults
    assert h1.image == "alpine:3"
    assert r1.cmd == "sleep 2" and h1.cmd == "sleep 1"  # node beats kind
    assert r1.labels == {"tier": "router"}


def test_exec_and_binds_concatenate_defaults_first_and_maps_merge(tmp_path: Path) -> None:
    (tmp_path / "d.txt").write_text("d")
    (tmp_path / "g.txt").write_text("g")
    topo = parse(INHERIT, tmp_path)
    r1, h1 = topo.nodes["r1"], topo.nodes["h1"]
    assert r1.exec == ("echo defaults", "echo kind", "echo group", "echo node")
    assert h1.exec == ("echo defaults", "echo kind")
    assert [b.target for b in r1.binds] == ["/etc/d.txt", "/etc/g.txt"]
    assert r1.binds[0].source == (tmp_path / "d.txt").resolve()
    assert r1.env == {"A": "1", "B": "kind", "C": "node", "FLAG": "true", "CLAB_INTFS": "0"}


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [(None, "clab-lab1-r1"), ("", "r1"), ("__lab-name", "lab1-r1"), ("acme", "acme-lab1-r1")],
)
def test_namespace_names_follow_containerlab_prefix_rules(prefix: str | None, expected: str) -> None:
    assert netns_name(prefix, "lab1", "r1") == expected


def test_prefix_key_in_file(tmp_path: Path) -> None:
    topo = parse('name: p\nprefix: ""\ntopology:\n  nodes:\n    r1: {kind: linux, image: a}\n', tmp_path)
    assert topo.nodes["r1"].netns == "r1"
    assert topo.mgmt_netns == "tabby-mgmt-p"


def test_mgmt_addresses_pinned_first_then_file_order(tmp_path: Path) -> None:
    topo = parse("""
name: m
mgmt: {network: n, ipv4-subnet: 192.0.2.0/28}
topology:
  defaults: {kind: linux, image: a}
  nodes:
    a:
    b: {mgmt-ipv4: 192.0.2.2}
    c:
    d: {network-mode: none}
""", tmp_path)
    ips = {n: str(node.mgmt_ipv4) if node.mgmt_ipv4 else None for n, node in topo.nodes.items()}
    assert ips == {"a": "192.0.2.3/28", "b": "192.0.2.2/28", "c": "192.0.2.4/28", "d": None}
    assert topo.mgmt.gateway == ipaddress.IPv4Interface("192.0.2.1/28")


def test_default_mgmt_is_containerlabs(tmp_path: Path) -> None:
    topo = load_topology(EXAMPLES / "line3.clab.yml")
    assert str(topo.mgmt.subnet) == "172.20.20.0/24"
    assert [str(n.mgmt_ipv4) for n in topo.nodes.values()] == ["172.20.20.2/24", "172.20.20.3/24", "172.20.20.4/24"]
    assert [n.netns for n in topo.nodes.values()] == ["clab-line3-n1", "clab-line3-n2", "clab-line3-n3"]


def test_brief_and_extended_links(tmp_path: Path) -> None:
    topo = parse("""
name: l
topology:
  defaults: {kind: linux, image: a}
  nodes: {a: , b: }
  links:
    - endpoints: ["a:eth1", "b:eth1"]
    - type: veth
      mtu: 9000
      endpoints:
        - {node: a, interface: e2, mac: "02:00:00:00:00:01"}
        - {node: b, interface: e2}
""", tmp_path)
    first, second = topo.links
    assert str(first) == "a:eth1 -- b:eth1" and first.mtu is None
    assert second.mtu == 9000 and second.a.mac == "02:00:00:00:00:01" and second.b.interface == "e2"


def test_inline_startup_config_and_relative_file(tmp_path: Path) -> None:
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "r2.conf").write_text("hostname r2\n")
    topo = parse("""
name: s
topology:
  defaults: {kind: linux, image: frr}
  nodes:
    r1:
      startup-config: |
        hostname r1
        router bgp 65001
    r2: {startup-config: cfg/r2.conf}
""", tmp_path)
    assert topo.nodes["r1"].startup_config.read().startswith("hostname r1\n")
    assert topo.nodes["r2"].startup_config.read() == "hostname r2\n"


def test_ignored_containerlab_keys_warn(tmp_path: Path) -> None:
    topo = parse("name: w\ntopology:\n  defaults: {cpu: 2}\n  nodes:\n"
                 "    r1: {kind: linux, image: a, ports: ['80:80']}\n"
                 "    r2: {kind: linux, image: a, ports: ['81:80']}\n", tmp_path)
    assert topo.warnings == (  # once per key, naming the nodes
        "key 'ports' is ignored (nothing observable depends on it without a container runtime): nodes r1, r2",
        "key 'cpu' is ignored (nothing observable depends on it without a container runtime): nodes r1, r2")


def test_every_containerlab_node_key_is_accepted(tmp_path: Path) -> None:
    (tmp_path / "vars.env").write_text("# comment\nFROM_FILE=1\nBOTH=file\n")
    topo = parse("""
name: keys
settings: {certificate-authority: {key-size: 2048}}
mgmt: {ipv4-range: 172.20.20.128/25}
topology:
  nodes:
    a:
      kind: linux
      image: alpine
      healthcheck: {test: [CMD-SHELL, "test -e /tmp/up"], interval: 1, retries: 5, start-period: 2}
      startup-delay: 1
    b:
      kind: linux
      image: alpine
      env-files: [vars.env]
      env: {BOTH: env}
      stages:
        create: {wait-for: [{node: a, stage: healthy}]}
        configure: {exec: {on-enter: ["echo enter"], on-exit: ["echo exit"]}}
      image-pull-policy: IfNotPresent
      aliases: [b.example]
      cap-add: [NET_ADMIN]
      shm-size: 1g
      devices: [/dev/net/tun]
      dns: {servers: [1.1.1.1]}
      certificate: {issue: true}
      restart-policy: always
      runtime: docker
      cpu-set: 0-1
      memory: 1Gb
    c: {kind: linux, image: alpine, wait-for: [b]}
""", tmp_path)
    a, b, c = topo.nodes["a"], topo.nodes["b"], topo.nodes["c"]
    assert a.healthcheck is not None and a.healthcheck.argv == ("sh", "-c", "test -e /tmp/up")
    assert (a.healthcheck.retries, a.healthcheck.start_period, a.startup_delay) == (5, 2.0, 1.0)
    assert b.wait_for == ("a",) and c.wait_for == ("b",)
    assert [(e.stage, e.phase, e.command) for e in b.stage_execs] == [
        ("configure", "on-enter", "echo enter"), ("configure", "on-exit", "echo exit")]
    assert [(w.stage, w.node, w.other_stage) for w in b.stage_waits] == [("create", "a", "healthy")]
    assert b.env["FROM_FILE"] == "1" and b.env["BOTH"] == "env"
    assert any("'cap-add' is ignored" in w for w in topo.warnings)


def test_directory_lookup_finds_the_single_file(tmp_path: Path) -> None:
    (tmp_path / "only.clab.yml").write_text("name: d\ntopology:\n  nodes:\n    r1: {kind: linux, image: a}\n")
    assert load_topology(tmp_path).name == "d"


@pytest.mark.parametrize("example", sorted(EXAMPLES.glob("*.clab.yml")), ids=lambda p: p.name)
def test_examples_are_valid(example: Path) -> None:
    topo = load_topology(example)
    assert topo.nodes and topo.links


def test_parse_topology_resolves_relative_to_given_path() -> None:
    text = (EXAMPLES / "triangle.clab.yml").read_text().replace("name: triangle", "name: other")
    topo = parse_topology(text, EXAMPLES / "triangle.clab.yml")
    assert topo.name == "other"
    assert topo.nodes["frr"].netns == "clab-other-frr"
    assert topo.nodes["bird"].startup_config.path == EXAMPLES / "triangle" / "bird.conf"


def test_undeclared_group_is_accepted_and_contributes_nothing(tmp_path: Path) -> None:
    """containerlab accepts ``group: spines`` without topology.groups.spines (it is only a label)."""
    topo = parse("""
name: g
topology:
  defaults: {kind: linux, image: alpine}
  groups:
    leaves: {image: frr}
  nodes:
    s1: {group: spines}
""", tmp_path)
    assert topo.nodes["s1"].group == "spines"
    assert topo.nodes["s1"].image == "alpine"


def test_env_expansion_as_containerlab_does() -> None:
    from lab.topology import expand_env

    env = {"SET": "v", "EMPTY": ""}
    assert expand_env("${SET} ${UNSET} ${UNSET:=d} ${UNSET}", env) == "v  d d"  # := assigns
    assert expand_env("${EMPTY:-d}|${EMPTY-d}|${EMPTY:=e}|${NOPE-x}", env) == "d||e|x"
    assert expand_env("echo $HOME ${SET:=other}", env) == "echo $HOME v"  # bare $VAR is the node's


def test_env_and_magic_variables_in_a_file(tmp_path: Path) -> None:
    from lab.state import lab_dir

    (tmp_path / "r1.conf").write_text("hostname r1\n")
    topo = parse_topology("""
name: ${LAB_NAME:=magic}
topology:
  nodes:
    r1:
      kind: linux
      image: ${IMAGE:=quay.io/frrouting/frr:8.4.1}
      binds:
        - __clabNodeName__.conf:/etc/frr/frr.conf
        - __clabNodeDir__/data:/data
      exec: ["echo __clabNodeName__ in __clabDir__"]
""", tmp_path / "t.clab.yml", environ={})
    r1 = topo.nodes["r1"]
    assert topo.name == "magic" and r1.image == "quay.io/frrouting/frr:8.4.1"
    assert [b.source for b in r1.binds] == [tmp_path / "r1.conf", lab_dir("magic") / "nodes" / "r1" / "data"]
    assert r1.exec == (f"echo r1 in {lab_dir('magic')}",)


def test_network_mode_container_joins_the_owners_namespace(tmp_path: Path) -> None:
    topo = parse("""
name: share
topology:
  nodes:
    s: {kind: linux, image: alpine, network-mode: "container:a", stages: {configure: {wait-for: [{node: b}]}}}
    a: {kind: linux, image: alpine}
    b: {kind: linux, image: alpine}
  links:
    - endpoints: ["a:eth1", "b:eth1"]
""", tmp_path)
    s, a = topo.nodes["s"], topo.nodes["a"]
    assert s.netns == a.netns and s.mgmt_ipv4 is None and a.mgmt_ipv4 is not None
    assert topo.netns_names() == [a.netns, topo.nodes["b"].netns, topo.mgmt_netns]
    assert [(w.stage, w.node, w.other_stage) for w in s.stage_waits] == [
        ("configure", "b", "create"), ("create", "a", "create")]  # the implicit wait for its owner's create
    assert s.env["CLAB_INTFS"] == "0" and a.env["CLAB_INTFS"] == "1"


@pytest.mark.parametrize(("mode", "expect"), [
    ("container:s", "a node cannot share its own namespace"),
    ("container:t", "t itself shares the namespace of a; name that node"),
    ("container:", "names no node"),
])
def test_network_mode_container_problems(tmp_path: Path, mode: str, expect: str) -> None:
    with pytest.raises(TopologyError) as info:
        parse(f"""
name: share
topology:
  nodes:
    a: {{kind: linux, image: alpine}}
    t: {{kind: linux, image: alpine, network-mode: "container:a"}}
    s: {{kind: linux, image: alpine, network-mode: "{mode}"}}
""", tmp_path)
    assert any(expect in p for p in info.value.problems), info.value.problems


def test_stage_exec_list_form_and_exit_waits(tmp_path: Path) -> None:
    topo = parse("""
name: st
topology:
  nodes:
    job: {kind: linux, image: alpine, cmd: "true"}
    a:
      kind: linux
      image: alpine
      stages:
        create: {wait-for: [{node: job, stage: exit}]}
        create-links:
          exec:
            - command: ls /sys/class/net
            - {command: ip link, phase: on-exit}
            - plain string
        exit: {exec: [echo bye]}
""", tmp_path)
    a = topo.nodes["a"]
    assert [(w.stage, w.node, w.other_stage) for w in a.stage_waits] == [("create", "job", "exit")]
    assert [(e.stage, e.phase, e.command) for e in a.stage_execs] == [
        ("create-links", "on-enter", "ls /sys/class/net"), ("create-links", "on-exit", "ip link"),
        ("create-links", "on-enter", "plain string")]
    assert any("stages.exit" in w for w in topo.warnings)


def test_stages_merge_across_levels(tmp_path: Path) -> None:
    # a kind-level wait-for on db makes db (a linux node too) wait for itself: refused
    with pytest.raises(TopologyError) as info:
        parse("""
name: merge
topology:
  kinds:
    linux: {stages: {create: {wait-for: [{node: db, stage: healthy}]}}}
  nodes:
    db: {kind: linux, image: alpine}
""", tmp_path)
    assert any("cannot wait for itself" in p for p in info.value.problems)
    topo = parse("""
name: merge
topology:
  defaults:
    stages: {configure: {exec: [echo defaults]}}
  groups:
    web: {stages: {create: {wait-for: [{node: db, stage: healthy}]}}}
  nodes:
    db: {kind: linux, image: alpine}
    cache: {kind: linux, image: alpine}
    app:
      kind: linux
      image: alpine
      group: web
      stages: {create: {wait-for: [{node: db, stage: healthy}, {node: cache}]}, configure: {exec: [echo node]}}
""", tmp_path)
    app = topo.nodes["app"]
    assert [(w.stage, w.node, w.other_stage) for w in app.stage_waits] == [
        ("create", "db", "healthy"), ("create", "cache", "create")]
    assert [e.command for e in app.stage_execs] == ["echo defaults", "echo node"]
    assert [e.command for e in topo.nodes["db"].stage_execs] == ["echo defaults"]
