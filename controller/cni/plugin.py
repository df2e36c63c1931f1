"""CNI plugin ``tabby`` / ``tabby-ipam``: validate, find the node agent, forward, print its answer.

Why so small: a container runtime starts this process for every pod and waits for it. It
imports only json, os, socket and sys (about 20 ms with ``python -I -S``), answers VERSION and
every malformed input itself, and leaves IPAM and netlink work to the node agent, which already
holds the datastore connection and caches. Keep it that way: no project imports here.

Finding the agent, in order: netconf ``agent_socket``; netconf ``nodename`` ->
``/run/tabby/<nodename>/agent.sock``; the network namespace the plugin runs in ->
``/run/tabby/by-netns/<inode of /proc/self/ns/net>.sock`` (a symlink the agent writes);
``/run/tabby/agent.sock``. No agent -> error code 11 ("try again later") naming the socket.

Errors are the spec's error JSON on stdout ({cniVersion, code, msg, details}) with exit code 1.
"""

import json
import os
import socket
import sys

# 0.3.0/0.3.1: Calico's stock conflist says 0.3.1; their results have the 0.4.0 shape ("version" per ip).
SUPPORTED_VERSIONS = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
COMMANDS = ("ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION")
RUN_ROOT = os.environ.get("TABBY_RUN_ROOT") or "/run/tabby"
DEFAULT_TIMEOUT = 30.0
_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


class PluginError(Exception):
    def __init__(self, code, msg, details=""):
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details


def _version_key(v):
    try:
        return tuple(int(p) for p in v.split("."))
    except ValueError:
        return None


def parse_args(raw):
    """CNI_ARGS ``K=V;K=V`` -> dict (code 4 when a part is not KEY=VALUE)."""
    out = {}
    for part in raw.split(";"):
        if not part:
            continue
        key, eq, value = part.partition("=")
        if not eq or not key:
            raise PluginError(4, f"CNI_ARGS: {part!r} is not KEY=VALUE", f"CNI_ARGS={raw!r}")
        out[key] = value
    return out


def read_config(text):
    if not text.strip():
        raise PluginError(6, "no network configuration on stdin", "the runtime must pass the netconf as JSON")
    try:
        conf = json.loads(text)
    except ValueError as exc:
        raise PluginError(6, f"network configuration on stdin is not valid JSON: {exc}") from None
    if not isinstance(conf, dict):
        raise PluginError(6, f"network configuration must be a JSON object, got {type(conf).__name__}")
    return conf


def validate(command, env, conf, mode):
    """Everything checkable without the agent; raises PluginError with the spec's code."""
    version = conf.get("cniVersion")
    if not version:
        raise PluginError(7, "network configuration has no cniVersion", f"supported: {SUPPORTED_VERSIONS}")
    if not isinstance(version, str) or version not in SUPPORTED_VERSIONS:
        raise PluginError(1, f"cniVersion {version!r} is not supported", f"supported: {SUPPORTED_VERSIONS}")
    if command in ("GC", "STATUS") and _version_key(version) < (1, 1, 0):
        raise PluginError(1, f"{command} needs cniVersion 1.1.0, the configuration says {version}")
    if command == "CHECK" and _version_key(version) < (0, 4, 0):
        raise PluginError(1, f"CHECK needs cniVersion 0.4.0 or later, the configuration says {version}")
    name = conf.get("name")
    if not isinstance(name, str) or not name:
        raise PluginError(7, "network configuration has no 'name'")
    if mode == "tabby":
        if conf.get("type") != "tabby":
            got = conf.get("type")
            raise PluginError(7, f"network configuration 'type' is {got!r}, this plugin is 'tabby'")
    else:
        ipam = conf.get("ipam")
        if not isinstance(ipam, dict) or ipam.get("type") != "tabby-ipam":
            got = ipam.get("type") if isinstance(ipam, dict) else ipam
            raise PluginError(7, f"ipam.type is {got!r}, this plugin is 'tabby-ipam'")
    ipam = conf.get("ipam")
    if ipam is not None and not isinstance(ipam, dict):
        raise PluginError(7, "'ipam' must be an object")
    for field in ("labels", "runtimeConfig", "args", "dns"):
        ok = isinstance(conf.get(field), dict) or (field == "labels" and isinstance(conf.get(field), list))
        if field in conf and not ok:
            raise PluginError(7, f"{field!r} must be an object")
    for field in ("agent_socket", "nodename"):
        if field in conf and (not isinstance(conf[field], str) or not conf[field]):
            raise PluginError(7, f"{field!r} must be a non-empty string")
    timeout = conf.get("timeout", DEFAULT_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise PluginError(7, f"'timeout' must be a positive number of seconds, got {timeout!r}")
    if command in ("GC", "STATUS"):
        return
    cid = env.get("CNI_CONTAINERID", "")
    if not cid:
        raise PluginError(4, "CNI_CONTAINERID is not set")
    if not set(cid) <= _ID_CHARS or not cid[0].isalnum():
        raise PluginError(4, f"CNI_CONTAINERID {cid!r} has characters outside [A-Za-z0-9_.-]")
    ifname = env.get("CNI_IFNAME", "")
    if not ifname:
        raise PluginError(4, "CNI_IFNAME is not set")
    if len(ifname) > 15 or "/" in ifname or ifname in (".", "..") or any(c.isspace() or c == ":" for c in ifname):
        raise PluginError(
            4, f"CNI_IFNAME {ifname!r} is not a valid interface name (1-15 characters, no '/', ':' or spaces)"
        )
    if command in ("ADD", "CHECK"):
        netns = env.get("CNI_NETNS", "")
        if not netns:
            raise PluginError(4, f"CNI_NETNS is not set ({command} needs the container's network namespace)")
        if command == "ADD" and mode == "tabby" and not os.path.exists(netns):
            raise PluginError(3, f"CNI_NETNS {netns} does not exist")
    parse_args(env.get("CNI_ARGS", ""))
    if command == "CHECK" and "prevResult" in conf and not isinstance(conf["prevResult"], dict):
        raise PluginError(7, "'prevResult' must be an object")


def candidate_sockets(conf, env):
    if conf.get("agent_socket"):
        return [conf["agent_socket"]]
    if conf.get("nodename"):
        return [os.path.join(RUN_ROOT, conf["nodename"], "agent.sock")]
    out = []
    try:
        inode = os.stat("/proc/self/ns/net").st_ino
        out.append(os.path.join(RUN_ROOT, "by-netns", f"{inode}.sock"))
    except OSError:
        pass
    out.append(os.path.join(RUN_ROOT, "agent.sock"))
    return out


def call_agent(path_list, request, timeout):
    tried = []
    for path in path_list:
        if not os.path.exists(path):
            tried.append(f"{path} (no such socket)")
            continue
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            try:
                sock.connect(path)
            except OSError as exc:
                tried.append(f"{path} ({exc.strerror or exc})")
                continue
            sock.sendall(json.dumps(request).encode() + b"\n")
            chunks = []
            size = 0
            while True:
                try:
                    data = sock.recv(65536)
                except TimeoutError:
                    raise PluginError(11, f"the tabby node agent at {path} did not answer within {timeout:g}s",
                                      "try again later") from None
                if not data:
                    break
                chunks.append(data)
                size += len(data)
                if b"\n" in data or size > (16 << 20):
                    break
            reply = b"".join(chunks)
            try:
                return json.loads(reply)
            except ValueError:
                raise PluginError(11, f"the tabby node agent at {path} closed the connection without an answer",
                                  reply[:200].decode(errors="replace")) from None
        finally:
            sock.close()
    raise PluginError(11, "no tabby node agent reachable: tried {}".format(", ".join(tried)),
                      "is tabby-node running on this node? set 'nodename' or 'agent_socket' in the netconf")


def to_040(result):
    """A 1.0.0 result in 0.4.0 (and 0.3.x, the same shape) form: ips carry "version"."""
    for ip in result.get("ips") or []:
        ip.setdefault("version", "6" if ":" in ip.get("address", "") else "4")
    return result


def run(mode, env, stdin_text):
    """Returns (exit code, JSON object to print or None)."""
    command = env.get("CNI_COMMAND", "")
    if not command:
        raise PluginError(4, "CNI_COMMAND is not set", "expected one of {}".format(", ".join(COMMANDS)))
    if command not in COMMANDS:
        raise PluginError(4, f"CNI_COMMAND {command!r} is not a CNI command", "expected one of " + ", ".join(COMMANDS))
    if command == "VERSION":
        return 0, {"cniVersion": "1.1.0", "supportedVersions": SUPPORTED_VERSIONS}
    conf = read_config(stdin_text)
    validate(command, env, conf, mode)
    cni_env = {k: v for k, v in env.items() if k.startswith("CNI_") or k.startswith("K8S_")}
    request = {"command": command, "env": cni_env, "config": conf, "mode": mode}
    reply = call_agent(candidate_sockets(conf, env), request, float(conf.get("timeout", DEFAULT_TIMEOUT)))
    if not isinstance(reply, dict):
        raise PluginError(11, "the tabby node agent sent an unexpected answer", repr(reply)[:200])
    if "error" in reply:
        err = reply["error"] or {}
        raise PluginError(int(err.get("code", 999)), str(err.get("msg", "")), str(err.get("details", "")))
    result = reply.get("result") or {}
    if command in ("DEL", "CHECK", "GC", "STATUS"):
        return 0, None
    result["cniVersion"] = conf["cniVersion"]
    if conf["cniVersion"] in ("0.3.0", "0.3.1", "0.4.0"):
        result = to_040(result)
    return 0, result


def main(mode="tabby", env=None, stdin=None, stdout=None):
    env = os.environ if env is None else env
    stdout = stdout or sys.stdout
    version = "1.0.0"
    try:
        text = ""
        if env.get("CNI_COMMAND") not in ("VERSION", None, ""):
            text = (stdin or sys.stdin).read()
            try:
                v = json.loads(text).get("cniVersion")
                if isinstance(v, str) and v in SUPPORTED_VERSIONS:
                    version = v
            except (ValueError, AttributeError):
                pass
        code, out = run(mode, env, text)
    except PluginError as exc:
        json.dump({"cniVersion": version, "code": exc.code, "msg": exc.msg, "details": exc.details}, stdout)
        stdout.write("\n")
        return 1
    except Exception as exc:  # a bug: still answer in the spec's format
        msg = f"tabby plugin internal error: {type(exc).__name__}: {exc}"
        json.dump({"cniVersion": version, "code": 999, "msg": msg, "details": ""}, stdout)
        stdout.write("\n")
        return 1
    if out is not None:
        json.dump(out, stdout)
        stdout.write("\n")
    return code


if __name__ == "__main__":
    _mode = "tabby-ipam" if os.path.basename(sys.argv[0]).endswith("ipam") else "tabby"
    if len(sys.argv) > 1 and sys.argv[1] in ("tabby", "tabby-ipam"):
        _mode = sys.argv[1]
    sys.exit(main(_mode))
