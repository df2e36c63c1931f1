"""The kubectl path end to end: a NetworkPolicy and pod labels that exist only in the Kubernetes API
end up enforced on the real kernel.

Nothing is applied with tabbyctl. The Kubernetes API is the recorded one served over real HTTP
(tests/integration/controller/kube_api_recording/e2e/: two Namespaces, four Pods with labels, one
NetworkPolicy, then watch steps). The real ``tabby-controller`` process mirrors it into the real
etcd; two real node agents in network namespaces get pods by a CNI ADD through the real plugin
with only what a runtime passes (pod name and namespace, no labels), so every label a policy
selects on comes from the controller's sync. Every verdict is a real TCP connect.

Policy ``shop/db-ingress``: pods ``app=db`` admit TCP 8080 from ``app=web`` pods of ``shop`` or
from any pod of a namespace labelled ``team=ops``. Then watch events: two pods relabelled, the
``ops`` namespace relabelled, the policy deleted; enforcement follows each.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.controller.kube_api_server import RECORDING, RecordedKubeAPI
from tests.integration.node.conftest import PYTHON, ROOT, NodeLab, Pod, apply_pool, in_ns, sh
from tests.integration.node.test_policy import Policies, expect

pytestmark = [pytest.mark.root, pytest.mark.slow]

TOKEN = "e2e.recorded.token"
PORT = 8080


@pytest.fixture
def kube(tmp_path: Path) -> Iterator[tuple[RecordedKubeAPI, Path]]:
    api = RecordedKubeAPI(TOKEN, RECORDING / "e2e").start()
    token = tmp_path / "kube-token"
    token.write_text(TOKEN + "\n")
    try:
        yield api, token
    finally:
        api.stop()


@pytest.fixture
def pol(node_lab: NodeLab, etcd_env: dict[str, str], tmp_path: Path) -> Iterator[Policies]:
    p = Policies(node_lab, etcd_env, tmp_path)
    try:
        yield p
    finally:
        p.stop()


def _controller(env: dict[str, str], url: str, token: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**env, "TABBY_KUBE_API": url, "TABBY_KUBE_TOKEN_FILE": str(token), "TABBY_CONTROLLER_INTERVAL": "0.5",
           "TABBY_LEADER_TTL": "3", "TABBY_CONTROLLER_ID": "e2e", "TABBY_CONTROLLER_PROMETHEUSMETRICSPORT": "0",
           "TABBY_LOG_FORMAT": "json", "PYTHONPATH": str(ROOT)}
    with open(log, "ab") as out:
        return subprocess.Popen([PYTHON, "-m", "controller.cluster"], env=env, stdout=out,
                                stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)


def _unlabelled_pod(lab: NodeLab, node: str, name: str, namespace: str) -> Pod:
    """A CNI ADD as a runtime does it: CNI_ARGS name the pod, nothing says its labels."""
    ns = f"tbp-{lab.tag}-{name}"
    sh("ip", "netns", "add", ns)
    pod = Pod(name, ns, node, f"c{lab.tag}{name}")
    lab.pods.append(pod)
    code, out = lab.plugin(node, "ADD", container_id=pod.container_id, netns=f"/run/netns/{ns}",
                           args=f"K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name}")
    assert code == 0, (out, lab.debug(node))
    pod.result = out
    in_ns(ns, "ip", "link", "set", "lo", "up")
    return pod


def _wait_labels(pol: Policies, pod: Pod, namespace: str, want: dict[str, str], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    labels: dict[str, Any] = {}
    while time.monotonic() < deadline:
        labels = pol.wep(pod, namespace)["metadata"].get("labels") or {}
        if all(labels.get(k) == v for k, v in want.items()):
            return
        time.sleep(0.2)
    raise AssertionError(f"{namespace}/{pod.name}'s endpoint labels {labels}, want {want}")


def test_kubectl_networkpolicy_and_labels_enforced_end_to_end(
    node_lab: NodeLab, etcd_env: dict[str, str], pol: Policies, kube: tuple[RecordedKubeAPI, Path], tmp_path: Path,
) -> None:
    server, token = kube
    apply_pool(etcd_env)
    node_lab.add_nodes(2)
    a, b = node_lab.nodes
    node_lab.set_address(a)
    node_lab.set_address(b)
    node_lab.start_agent(a)
    node_lab.start_agent(b)
    log = tmp_path / "controller.log"
    controller = _controller(etcd_env, server.url, token, log)
    try:
        db = _unlabelled_pod(node_lab, a, "db-0", "shop")
        batch = _unlabelled_pod(node_lab, a, "batch-1", "shop")
        web = _unlabelled_pod(node_lab, b, "web-1", "shop")
        mon = _unlabelled_pod(node_lab, b, "mon-0", "ops")
        pol.listen(db.netns, PORT)

        # The sync put the API's labels on the endpoints and mirrored the namespace and the policy.
        for pod, ns, app in ((db, "shop", "db"), (batch, "shop", "batch"), (web, "shop", "web"), (mon, "ops", "mon")):
            _wait_labels(pol, pod, ns, {"app": app, "projectcalico.org/namespace": ns})
        mirrored = json.loads(pol.ctl("get", "netpol", "db-ingress", "--namespace", "shop", "-o", "json"))
        assert mirrored["metadata"]["annotations"]["tabby.io/kube-sync"] == "mirror"
        ops = json.loads(pol.ctl("get", "namespace", "ops", "-o", "json"))
        assert ops["metadata"]["labels"]["team"] == "ops"

        expect(pol, [("web-1 (app=web, other node) -> db", web.netns, db.ip, PORT, True),
                     ("batch-1 (app=batch, same node) -> db", batch.netns, db.ip, PORT, False),
                     ("mon-0 (namespace team=ops) -> db", mon.netns, db.ip, PORT, True)], timeout=15)

        server.play("relabel")  # kubectl label pod batch-1 app=web; kubectl label pod web-1 app=legacy
        expect(pol, [("batch-1 (now app=web) -> db", batch.netns, db.ip, PORT, True),
                     ("web-1 (now app=legacy) -> db", web.netns, db.ip, PORT, False),
                     ("mon-0 -> db", mon.netns, db.ip, PORT, True)], timeout=10)

        server.play("ns-relabel")  # kubectl label namespace ops team=other --overwrite
        expect(pol, [("mon-0 (namespace no longer team=ops) -> db", mon.netns, db.ip, PORT, False),
                     ("batch-1 -> db", batch.netns, db.ip, PORT, True)], timeout=10)

        server.play("policy-deleted")  # kubectl delete networkpolicy db-ingress
        expect(pol, [("web-1 -> db (no policy)", web.netns, db.ip, PORT, True),
                     ("mon-0 -> db (no policy)", mon.netns, db.ip, PORT, True)], timeout=10)
        proc = subprocess.run([str(Path(PYTHON).parent / "tabbyctl"), "get", "netpol", "db-ingress",
                               "--namespace", "shop"], capture_output=True, text=True, env=etcd_env, timeout=30)
        assert proc.returncode != 0, "the deleted policy is still mirrored"
        assert controller.poll() is None, log.read_text()[-3000:]
    except AssertionError as exc:
        raise AssertionError(f"{exc}\ncontroller log tail:\n{log.read_text(errors='replace')[-2000:]}") from None
    finally:
        controller.terminate()
        try:
            controller.wait(timeout=10)
        except subprocess.TimeoutExpired:
            controller.kill()
            controller.wait(timeout=10)
