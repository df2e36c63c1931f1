"""CNI plugin ``tabby`` / ``tabby-ipam``: validate, find the node agent, forward, print its answer.

Why so small: a container runtime starts this process for every pod and waits for it, so its start
is on every pod's critical path. It imports only builtin and C modules (``sys``, ``posix``, ``_json``,
``_socket``: about 1 ms over a bare ``python -I -S``), not the ``json``/``socket``/``os`` packages,
which pull in ``re``, ``enum``, ``functools``, ``selectors`` and cost ~14 ms per pod on their own
(measured with ``-X importtime``). It answers VERSION and every malformed input itself, and leaves
IPAM and netlink work to the node agent, which already holds the datastore connection and caches.
Keep it that way: no project imports here, and nothing heavy at module level.

Finding the agent, in order: netconf ``agent_socket``; netconf ``nodename`` ->
``/run/tabby/<nodename>/agent.sock``; the network namespace the plugin runs in ->
``/run/tabby/by-netns/<inode of /proc/self/ns/net>.sock`` (a symlink the agent writes);
``/run/tabby/agent.sock``. No agent -> error code 11 ("try again later") naming the socket.

Errors are the spec's error JSON on stdout ({cniVersion, code, msg, details}) with exit code 1.
"""

import posix
import sys

try:  # CPython's C halves of json and socket, without their pure-Python wrappers
    import _json
    import _socket
except ImportError:  # another interpreter: the full modules (slower start, same behaviour)
    _json = None
    import socket as _socket


def _fsdecode(b):
    return b.decode("utf-8", "surrogateescape") if isinstance(b, bytes) else b


ENVIRON = {_fsdecode(k): _fsdecode(v) for k, v in posix.environ.items()}
# 0.3.0/0.3.1: Calico's stock conflist says 0.3.1; their results have the 0.4.0 shape ("version" per ip).
SUPPORTED_VERSIONS = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
COMMANDS = ("ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION")
RUN_ROOT = ENVIRON.get("TABBY_RUN_ROOT") or "/run/tabby"
DEFAULT_TIMEOUT = 30.0
_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")
_WS = " \t\n\r"


class _DecoderContext:
    """The attributes ``_json.make_scanner`` reads: json.JSONDecoder's defaults."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}.__getitem__


def json_loads(text):
    """``json.loads`` for a str; ValueError (json's JSONDecodeError) on bad input.

    Well-formed input takes the C scanner alone. Malformed input is parsed again by the json
    package, for its exact error message: the C scanner reports errors through
    ``json.decoder.JSONDecodeError``, which it only finds if that module is already imported.
    """
    if _json is not None:
        idx = len(text) - len(text.lstrip(_WS))
        try:
            obj, end = _json.make_scanner(_DecoderContext())(text, idx)
        except (StopIteration, ValueError, SystemError):
            pass
        else:
            if not text[end:].strip(_WS):
                return obj
    import json

    return json.loads(text)


def _not_serializable(obj):
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def json_dumps(obj):
    """``json.dumps(obj)`` (ASCII, default separators)."""
    if _json is None:
        import json

        return json.dumps(obj)
    encode = _json.make_encoder(None, _not_serializable, _json.encode_basestring_ascii, None, ": ", ", ",
                                False, False, True)
    return "".join(encode(obj, 0))


def _exists(path):
    try:
        posix.stat(path)
    except (OSError, ValueError):
        return False
    return True


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
        conf = json_loads(text)
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
        if command == "ADD" and mode == "tabby" and not _exists(netns):
            raise PluginError(3, f"CNI_NETNS {netns} does not exist")
    parse_args(env.get("CNI_ARGS", ""))
    if command == "CHECK" and "prevResult" in conf and not isinstance(conf["prevResult"], dict):
        raise PluginError(7, "'prevResult' must be an object")


def candidate_sockets(conf, env):
    if conf.get("agent_socket"):
        return [conf["agent_socket"]]
    if conf.get("nodename"):
        name = conf["nodename"]  # as os.path.join: an absolute nodename replaces the run root
        return [f"{name}/agent.sock" if name.startswith("/") else f"{RUN_ROOT}/{name}/agent.sock"]
    out = []
    try:
        inode = posix.stat("/proc/self/ns/net").st_ino
        out.append(f"{RUN_ROOT}/by-netns/{inode}.sock")
    except OSError:
        pass
    out.append(f"{RUN_ROOT}/agent.sock")
    return out


def call_agent(path_list, request, timeout):
    tried = []
    for path in path_list:
        if not _exists(path):
            tried.append(f"{path} (no such socket)")
            continue
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            try:
                sock.connect(path)
            except OSError as exc:
                tried.append(f"{path} ({exc.strerror or exc})")
                continue
            sock.sendall(json_dumps(request).encode() + b"\n")
            chunks = []
            size = 0
            while True:
                try:
                    data = sock.recv(65536)
                except _socket.timeout:  # noqa: UP041 - not TimeoutError before 3.10 (3.7+ supported)
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
                return json_loads(reply.decode("utf-8", "replace"))
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


def complete(command, conf, reply):
    """The agent's reply -> (exit code, JSON object to print or None); PluginError for an error reply."""
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


def conversation(mode, env, read):
    """The plugin's whole answer, as a generator so that both of its drivers share it.

    Yields ``(request, conf)`` once when the agent is needed and is sent the agent's reply (or
    thrown the PluginError of failing to reach it); returns ``(exit code, stdout text)``. Driven by
    :func:`main` (a unix socket to the agent) and by the agent itself for requests the forwarder
    (forward.c) passes on unparsed, so both give the same answer to the same input.
    """
    version = "1.0.0"
    try:
        command = env.get("CNI_COMMAND", "")
        text = read() if command not in ("VERSION", "") else ""
        if text:
            try:
                v = json_loads(text).get("cniVersion")
                if isinstance(v, str) and v in SUPPORTED_VERSIONS:
                    version = v
            except (ValueError, AttributeError):
                pass
        if not command:
            raise PluginError(4, "CNI_COMMAND is not set", "expected one of {}".format(", ".join(COMMANDS)))
        if command not in COMMANDS:
            raise PluginError(4, f"CNI_COMMAND {command!r} is not a CNI command",
                              "expected one of " + ", ".join(COMMANDS))
        if command == "VERSION":
            out = {"cniVersion": "1.1.0", "supportedVersions": SUPPORTED_VERSIONS}
        else:
            conf = read_config(text)
            validate(command, env, conf, mode)
            cni_env = {k: v for k, v in env.items() if k.startswith("CNI_") or k.startswith("K8S_")}
            reply = yield {"command": command, "env": cni_env, "config": conf, "mode": mode}, conf
            _, out = complete(command, conf, reply)
    except PluginError as exc:
        return 1, json_dumps({"cniVersion": version, "code": exc.code, "msg": exc.msg, "details": exc.details}) + "\n"
    except Exception as exc:  # a bug: still answer in the spec's format
        msg = f"tabby plugin internal error: {type(exc).__name__}: {exc}"
        return 1, json_dumps({"cniVersion": version, "code": 999, "msg": msg, "details": ""}) + "\n"
    return 0, "" if out is None else json_dumps(out) + "\n"


def main(mode="tabby", env=None, stdin=None, stdout=None):
    env = ENVIRON if env is None else env
    talk = conversation(mode, env, (stdin or sys.stdin).read)
    try:
        request, conf = next(talk)
        try:
            reply = call_agent(candidate_sockets(conf, env), request, float(conf.get("timeout", DEFAULT_TIMEOUT)))
        except PluginError as exc:
            talk.throw(exc)
        else:
            talk.send(reply)
    except StopIteration as stop:
        code, text = stop.value
    (stdout or sys.stdout).write(text)
    return code


def entry():
    """The executable's start: the mode from argv (``tabby`` | ``tabby-ipam``) or the program name."""
    mode = "tabby-ipam" if sys.argv[0].rpartition("/")[2].endswith("ipam") else "tabby"
    if len(sys.argv) > 1 and sys.argv[1] in ("tabby", "tabby-ipam"):
        mode = sys.argv[1]
    sys.exit(main(mode))


if __name__ == "__main__":
    entry()
