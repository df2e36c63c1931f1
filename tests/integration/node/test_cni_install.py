"""The installed CNI plugin is self-contained: installed into a temporary host root, it serves a real
ADD/CHECK/DEL with the checkout and its virtualenv hidden (a private mount namespace with a tmpfs over
the checkout), run by the system's python3; without python3 it answers a CNI error saying so."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

from .conftest import ROOT, NodeLab, apply_pool, sh

SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def hidden_checkout(argv: list[str], env: dict[str, str], stdin: str) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` where the checkout (and so .venv) is an empty tmpfs; checks that it really is."""
    script = ('mount -t tmpfs tmpfs "$1" && shift && test ! -e "$0/controller/cni/plugin.py" && '
              'test ! -e "$0/.venv" && exec "$@"')
    return subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script, str(ROOT), str(ROOT),
                           *argv], input=stdin, env=env, capture_output=True, text=True, timeout=60)


def test_installed_plugin_works_without_the_checkout(node_lab: NodeLab, etcd_env: dict[str, str],
                                                     tmp_path: Path) -> None:
    host = tmp_path / "host"
    bin_dir, conf_dir = host / "opt/cni/bin", host / "etc/cni/net.d"
    inst = subprocess.run(["sh", str(ROOT / "manifests/cni/install.sh"), "--bin-dir", str(bin_dir),
                           "--conf-dir", str(conf_dir)], capture_output=True, text=True, timeout=60)
    assert inst.returncode == 0, inst.stderr
    for name in ("tabby", "tabby-ipam", "tabby-py", "tabby-cni.py", "tabby_cni.py"):
        data = (bin_dir / name).read_bytes()
        assert str(ROOT).encode() not in data and b".venv" not in data, f"{name} names the checkout"
    assert (bin_dir / "tabby").read_bytes()[:4] == b"\x7fELF", "no native forwarder installed (a C compiler?)"
    # Precompiled: a pod's start reads byte-code, it does not compile the plugin.
    assert list((bin_dir / "__pycache__").glob("tabby_cni.cpython-*.pyc")), "tabby_cni.py not precompiled"
    assert json.loads((conf_dir / "10-tabby.conflist").read_text())["plugins"][0]["type"] == "tabby"

    apply_pool(etcd_env)
    node_lab.add_nodes(2)
    a = next(iter(node_lab.nodes))
    node_lab.set_address(a)
    node_lab.start_agent(a)
    pod_ns = f"tbp-{node_lab.tag}-inst"
    sh("ip", "netns", "add", pod_ns)
    node_lab.extra_ns.append(pod_ns)
    conflist = json.loads((conf_dir / "10-tabby.conflist").read_text())
    conf = {"cniVersion": conflist["cniVersion"], "name": conflist["name"], **conflist["plugins"][0],
            "nodename": a}
    cid = uuid.uuid4().hex
    base = {"PATH": SYSTEM_PATH, "CNI_CONTAINERID": cid, "CNI_NETNS": f"/run/netns/{pod_ns}", "CNI_IFNAME": "eth0",
            "CNI_ARGS": "K8S_POD_NAMESPACE=default;K8S_POD_NAME=inst", "CNI_PATH": str(bin_dir),
            "TABBY_RUN_ROOT": str(node_lab.run_root)}
    plugin = ["ip", "netns", "exec", node_lab.nodes[a], str(bin_dir / "tabby")]

    add = hidden_checkout(plugin, {**base, "CNI_COMMAND": "ADD"}, json.dumps(conf))
    assert add.returncode == 0, (add.stdout, add.stderr)
    assert add.stderr == ""
    result = json.loads(add.stdout)
    ip = result["ips"][0]["address"].split("/")[0]
    assert subprocess.run(["ip", "netns", "exec", pod_ns, "ping", "-c", "1", "-W", "2", node_lab.node_ip(a)],
                          capture_output=True, timeout=15).returncode == 0
    check = hidden_checkout(plugin, {**base, "CNI_COMMAND": "CHECK"}, json.dumps({**conf, "prevResult": result}))
    assert check.returncode == 0, (check.stdout, check.stderr)
    dele = hidden_checkout(plugin, {**base, "CNI_COMMAND": "DEL"}, json.dumps(conf))
    assert dele.returncode == 0, (dele.stdout, dele.stderr)
    assert f"{ip} dev " not in sh("ip", "-n", node_lab.nodes[a], "route").stdout

    # A node without python3: one CNI error in the spec's format, not an exec failure.
    nopy = hidden_checkout([str(bin_dir / "tabby-ipam")], {**base, "CNI_COMMAND": "VERSION",
                                                           "TABBY_CNI_PYTHON": "/nonexistent/python3"}, "{}")
    assert nopy.returncode == 1
    err = json.loads(nopy.stdout)
    assert err["code"] == 999 and "needs python3" in err["msg"]
    assert os.access(bin_dir / "tabby", os.X_OK)
