"""ExaBGP config rendering: golden output, validation by ExaBGP itself, and the reload/restart keys."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from bgp import exabgp_config
from bgp.types import GLOBAL, MESH, NODE_SPECIFIC, PeerSpec, SpeakerSpec

SPEAKER = SpeakerSpec(node="node-1", router_id="192.0.2.1", local_as=64512, address="192.0.2.1", listen_port=1790)
MESH_PEER = PeerSpec(
    address="192.0.2.3",
    peer_as=64512,
    local_as=64512,
    type=MESH,
    name="node-3",
    passive=True,
    local_address="192.0.2.1",
)
TOR = PeerSpec(
    address="198.51.100.7",
    peer_as=65001,
    local_as=64512,
    type=GLOBAL,
    name="tor",
    port=1179,
    password='pa ss;"word',
    ttl_security=2,
    graceful_restart=300,
    hold_time=30,
)
V6 = PeerSpec(
    address="2001:db8::2",
    peer_as=65002,
    local_as=64512,
    type=NODE_SPECIFIC,
    name="v6-rr",
    graceful_restart=None,
    local_address="2001:db8::1",
)
RUN = "/venv/bin/python -I -S /app/bgp/exabgp_api.py /run/tabby/api.sock"

GOLDEN = """\
# Rendered by tabby for node node-1; do not edit (rewritten on every change).

process tabby {
    run /venv/bin/python -I -S /app/bgp/exabgp_api.py /run/tabby/api.sock;
    encoder json;
}

neighbor 192.0.2.3 {
    description "node-to-node mesh: node-3";
    router-id 192.0.2.1;
    local-address 192.0.2.1;
    local-as 64512;
    peer-as 64512;
    hold-time 90;
    passive true;
    connect 179;
    group-updates true;
    adj-rib-in false;
    adj-rib-out true;
    manual-eor true;
    capability {
        route-refresh;
        extended-message disable;
        graceful-restart 120;
    }
    family {
        ipv4 unicast;
    }
    api {
        processes [ tabby ];
        neighbor-changes;
        receive {
            parsed;
            open;
            update;
            notification;
            refresh;
        }
    }
}

neighbor 198.51.100.7 {
    description "global: tor";
    router-id 192.0.2.1;
    local-address auto;
    local-as 64512;
    peer-as 65001;
    hold-time 30;
    passive false;
    connect 1179;
    md5-password cGEgc3M7IndvcmQ=;
    md5-base64 true;
    outgoing-ttl 255;
    incoming-ttl 254;
    group-updates true;
    adj-rib-in false;
    adj-rib-out true;
    manual-eor true;
    capability {
        route-refresh;
        extended-message disable;
        graceful-restart 300;
    }
    family {
        ipv4 unicast;
    }
    api {
        processes [ tabby ];
        neighbor-changes;
        receive {
            parsed;
            open;
            update;
            notification;
            refresh;
        }
    }
}

neighbor 2001:db8::2 {
    description "node specific: v6-rr";
    router-id 192.0.2.1;
    local-address 2001:db8::1;
    local-as 64512;
    peer-as 65002;
    hold-time 90;
    passive false;
    connect 179;
    group-updates true;
    adj-rib-in false;
    adj-rib-out true;
    manual-eor true;
    capability {
        route-refresh;
        extended-message disable;
    }
    family {
        ipv6 unicast;
    }
    api {
        processes [ tabby ];
        neighbor-changes;
        receive {
            parsed;
            open;
            update;
            notification;
            refresh;
        }
    }
}
"""


def test_golden_config() -> None:
    assert exabgp_config.render(SPEAKER, [V6, TOR, MESH_PEER], run=RUN) == GOLDEN


def test_output_is_independent_of_peer_order() -> None:
    a = exabgp_config.render(SPEAKER, [MESH_PEER, TOR, V6], run=RUN)
    b = exabgp_config.render(SPEAKER, [V6, MESH_PEER, TOR], run=RUN)
    assert a == b


def test_env_has_the_settings_exabgp_needs() -> None:
    env = exabgp_config.render_env(SPEAKER, log_path="/run/tabby/exabgp.log")
    assert env["exabgp_daemon_user"] == "root"
    assert env["exabgp_api_cli"] == "false"
    assert env["exabgp_log_destination"] == "/run/tabby/exabgp.log"
    assert env["exabgp_tcp_bind"] == "192.0.2.1"
    assert env["exabgp_tcp_port"] == "1790"
    assert list(env) == sorted(env)
    no_bind = exabgp_config.render_env(replace(SPEAKER, address=None), log_path="/x")
    assert no_bind["exabgp_tcp_bind"] == ""


def test_rendered_config_is_accepted_by_exabgp(tmp_path: Path) -> None:
    """ExaBGP's own parser (`exabgp validate`) accepts what we render, MD5 with quotes and spaces included."""
    exabgp = Path(sys.executable).with_name("exabgp")
    if not exabgp.exists():
        pytest.skip("exabgp not installed next to this interpreter")
    helper = Path(exabgp_config.__file__).with_name("exabgp_api.py")
    run = exabgp_config.api_command(sys.executable, str(helper), str(tmp_path / "api.sock"))
    conf = tmp_path / "exabgp.conf"
    conf.write_text(exabgp_config.render(SPEAKER, [MESH_PEER, TOR, V6], run=run))
    out = subprocess.run([str(exabgp), "validate", str(conf)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_reload_and_restart_keys() -> None:
    run = RUN
    base = exabgp_config.build(SPEAKER, [MESH_PEER], run=run, log_path="/l")
    added = exabgp_config.build(SPEAKER, [MESH_PEER, TOR], run=run, log_path="/l")
    assert base.restart_key == added.restart_key, "adding a peer must not need a restart"
    assert base.peers[MESH_PEER.address] == added.peers[MESH_PEER.address]
    changed = exabgp_config.build(SPEAKER, [replace(MESH_PEER, password="x")], run=run, log_path="/l")
    assert changed.peers[MESH_PEER.address] != base.peers[MESH_PEER.address]
    for other in (
        replace(SPEAKER, router_id="192.0.2.9"),
        replace(SPEAKER, listen_port=179),
        replace(SPEAKER, address="192.0.2.2"),
    ):
        assert exabgp_config.build(other, [MESH_PEER], run=run, log_path="/l").restart_key != base.restart_key


@pytest.mark.parametrize(
    "peer",
    [
        replace(TOR, address="not-an-ip"),
        replace(TOR, peer_as=0),
        replace(TOR, port=70000),
        replace(TOR, hold_time=2),
        replace(TOR, ttl_security=0),
        replace(TOR, graceful_restart=5000),
        replace(TOR, local_address="nope"),
    ],
)
def test_invalid_peers_are_refused(peer: PeerSpec) -> None:
    with pytest.raises(ValueError):
        exabgp_config.render(SPEAKER, [peer], run=RUN)


def test_duplicate_addresses_and_unsafe_strings_are_refused() -> None:
    with pytest.raises(ValueError, match="two peers"):
        exabgp_config.render(SPEAKER, [TOR, replace(TOR, name="again")], run=RUN)
    with pytest.raises(ValueError):
        exabgp_config.render(SPEAKER, [TOR], run=RUN + "; evil")
    with pytest.raises(ValueError):
        exabgp_config.api_command("/usr/bin/py thon", "/x.py", "/s")
    text = exabgp_config.render(SPEAKER, [replace(TOR, name='a"b;c}')], run=RUN)
    assert 'description "global: a_b_c_";' in text


def test_dual_stack_families() -> None:
    assert exabgp_config.families_for(TOR) == ("ipv4 unicast",)
    assert exabgp_config.families_for(V6) == ("ipv6 unicast",)
    assert exabgp_config.families_for(TOR, dual_stack=True) == ("ipv4 unicast", "ipv6 unicast")
