"""The flow API with the etcd TLS material (trustme certificates), on loopback: records served to a client
with a certificate of the cluster CA, refused without one or over plain HTTP; the long-poll returns when a
record arrives. No namespaces (the collector is off: records are fed to the recorder by hand)."""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path

import pytest
import trustme

from controller.cli.flows import Target, fetch_records
from controller.node.flows import FlowPeers, FlowService, FlowSettings
from datastore import EtcdConfig
from felix_like.nflog import Headers, NflogPacket


class Ref:
    tier, kind, namespace, name, direction, index, action = ("default", "KubernetesNetworkPolicy", "prod", "web",
                                                             "ingress", 0, "allow")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_flow_api_mutual_tls_and_long_poll(tmp_path: Path) -> None:
    ca = trustme.CA()
    node_cert = ca.issue_cert("agent@example.test")  # an etcd client certificate: it names no address
    client_cert = ca.issue_cert("tabbyctl@example.test")
    files = {n: tmp_path / f"{n}.pem" for n in ("ca", "node", "node-key", "client", "client-key")}
    ca.cert_pem.write_to_path(str(files["ca"]))
    node_cert.cert_chain_pems[0].write_to_path(str(files["node"]))
    node_cert.private_key_pem.write_to_path(str(files["node-key"]))
    client_cert.cert_chain_pems[0].write_to_path(str(files["client"]))
    client_cert.private_key_pem.write_to_path(str(files["client-key"]))
    etcd = EtcdConfig(ca_cert_file=str(files["ca"]), cert_file=str(files["node"]), key_file=str(files["node-key"]))
    port = free_port()
    svc = FlowService("n1", None, FlowSettings(enabled=False, capacity=8, api_port=port, api_host="127.0.0.1"),
                      FlowPeers(), lambda: {"r1": Ref()}, etcd)
    target = Target("n1", "127.0.0.1", port)

    def client_ctx(with_cert: bool) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.load_verify_locations(str(files["ca"]))
        if with_cert:
            ctx.load_cert_chain(str(files["client"]), str(files["client-key"]))
        return ctx

    async def main() -> None:
        await svc.start()
        try:
            assert svc.tls and svc.port == port
            svc.recorder.packet(NflogPacket("tabby:r1", Headers(4, "10.0.0.1", "10.0.0.2", 6, 4000, 80, 2)))
            recs = await asyncio.to_thread(fetch_records, target, client_ctx(True), last=5)
            assert [(r["seq"], r["verdict"], r["rule"]["name"]) for r in recs] == [(1, "allowed", "web")]
            with pytest.raises((ssl.SSLError, OSError)):
                await asyncio.to_thread(fetch_records, target, client_ctx(False), last=5)
            with pytest.raises(OSError):
                await asyncio.to_thread(fetch_records, target, None, last=5)
            # long-poll: a record that arrives while the client waits ends the wait
            waiting = asyncio.ensure_future(asyncio.to_thread(fetch_records, target, client_ctx(True), after=1,
                                                              wait=10))
            await asyncio.sleep(0.5)
            assert not waiting.done()
            await asyncio.to_thread(svc.recorder.packet,
                                    NflogPacket("tabby:r1", Headers(4, "10.0.0.1", "10.0.0.2", 6, 4001, 80, 2)))
            got = await asyncio.wait_for(waiting, 5)
            assert [r["seq"] for r in got] == [2]
        finally:
            await svc.stop()

    asyncio.run(main())
