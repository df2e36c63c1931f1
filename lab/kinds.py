"""What runs inside a lab node: the image name picks a program installed on the host.

No images are pulled (there is no container engine); ``frrouting/frr:8.4`` means "the host's
FRR, started in this node's namespace with this node's config". The contract (design.md
section 4): ``*frr*`` FRR (zebra, bgpd, staticd + whatever a bound ``daemons`` file enables),
``*bird*`` BIRD 2, ``*gobgp*`` gobgpd, ``*etcd*`` etcd on 2379 at the management address and
127.0.0.1, ``tabby/node`` the node agent (a plain namespace until that issue registers its
handler), anything else a plain namespace where ``cmd`` and ``exec`` run.

Why a registry: later issues add images (``tabby/node``) with ``register_image`` from their own
package, without editing the lab core. Registered patterns are tried before the built-in ones,
most recent first. The project's own ``tabby/node`` handler (``lab.node_image``) is imported by
``lab/__init__``; a separate CLI process finds out-of-tree handlers through ``TABBY_LAB_PLUGINS``
(modules a user names, imported for their ``register_image`` side effect).
"""

from __future__ import annotations

import fnmatch
import importlib
import os
import pwd
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from common.files import write_private
from lab import netns
from lab.errors import LabError
from lab.state import LabState, ProcessRecord, process_start_time
from lab.topology import Bind, Node, Topology

log = structlog.get_logger(__name__)

SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# The project's own programs (tabbyctl, tabby-node) sit beside the interpreter in its virtualenv;
# a node sees them on PATH as it would inside a tabby image.
_PROJECT_BIN = str(Path(sys.executable).parent)
BASE_ENV = {
    "PATH": SYSTEM_PATH if _PROJECT_BIN in SYSTEM_PATH.split(":") else f"{SYSTEM_PATH}:{_PROJECT_BIN}",
    "HOME": "/root",
    "LANG": "C.UTF-8",
}
FRR_BIN = Path("/usr/lib/frr")
FRR_ETC = Path("/etc/frr")
FRR_RUN = Path("/var/run/frr")
FRR_DEFAULT_DAEMONS = ("zebra", "bgpd", "staticd")
FRR_KNOWN_DAEMONS = ("zebra", "bgpd", "ospfd", "ospf6d", "ripd", "ripngd", "isisd", "pimd", "ldpd", "nhrpd",
                     "eigrpd", "babeld", "sharpd", "pbrd", "bfdd", "fabricd", "vrrpd", "pathd", "staticd")
GOBGP_API = "127.0.0.1:50051"
CMD_GRACE = 0.5  # seconds a plain node's cmd gets to show it does not exit at once
ETCD_CLIENT_PORT = 2379
ETCD_PEER_PORT = 2380


@dataclass
class NodeContext:
    """Everything a handler needs about one node, and the only way it starts processes.

    ``spawn`` records the pid (with its start time) in the lab state as soon as the process
    exists, and starts it in a new session so it outlives the deploy command.
    """

    topology: Topology
    node: Node
    state: LabState
    popens: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    #: problems that do not stop the node (e.g. configuration lines FRR rejected); deploy reports them
    warnings: list[str] = field(default_factory=list)

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    @property
    def netns(self) -> str:
        return self.node.netns

    @property
    def workdir(self) -> Path:
        return self.state.node_dir(self.node.name)

    @property
    def env(self) -> dict[str, str]:
        """A container's environment: a minimal base plus the node's ``env``, never the caller's."""
        return node_env(self.node)

    def argv(self, argv: Sequence[str], cwd: Path | None = None) -> list[str]:
        """``argv`` as it runs in this node: its network and mount namespaces (``node_argv``)."""
        return node_argv(self.node, self.state, argv, cwd=cwd)

    def path(self, path: str) -> Path:
        """A path as this node sees it, read from the host (through its holder's root)."""
        return node_path(self.node, self.state, path)

    def spawn(self, name: str, argv: Sequence[str], *, env: dict[str, str] | None = None,
              after_restart: Sequence[str] = ()) -> ProcessRecord:
        """Start one of the node's programs. With a ``restart-policy`` other than ``no`` (and unless the
        program is already a supervisor: the tabby/node image supervises its agent itself), it runs
        under lab/supervise.py with Docker's semantics: restarted after 100 ms, doubling to 60 s
        for quick repeated failures (Docker's backoff), reset after 10 s up; ``after_restart`` is run
        after each restart (what the image does at start that the program needs again)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        policy = self.node.restart_policy
        if policy != "no" and list(argv[1:3]) != ["-m", "lab.supervise"]:
            argv = [sys.executable, "-m", "lab.supervise", "--state", str(self.workdir / f"{name}.supervise.json"),
                    "--policy", policy, "--backoff", "0.1", "--max-backoff", "60", "--reset-after", "10",
                    *(["--max-retries", str(self.node.restart_max_retries)] if self.node.restart_max_retries else []),
                    *(["--after-restart", shlex.join(after_restart)] if after_restart else []), "--", *argv]
        log_path = self.workdir / f"{name}.log"
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(
                self.argv(argv, cwd=self.workdir),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env if env is not None else self.env,
                cwd=self.workdir,
            )
        record = ProcessRecord(pid=proc.pid, start_time=process_start_time(proc.pid), node=self.node.name,
                               name=name, argv=list(argv))
        self.state.record_process(record)
        self.popens[name] = proc
        log.debug("process started", lab=self.topology.name, node=self.node.name, process=name, pid=proc.pid)
        return record

    def run(self, argv: Sequence[str], *, timeout: float = 30.0,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        return netns.run(self.argv(argv, cwd=self.workdir), timeout=timeout, check=check)

    def probe(self, argv: Sequence[str], *, timeout: float = 5.0) -> subprocess.CompletedProcess[str] | None:
        """A readiness probe: a command that hangs past ``timeout`` means "not yet", not a failed deploy.

        A CLI started while its daemon is still coming up can block on the connection (``gobgp global``
        did, for over 5 s, on a loaded machine); ``wait_until`` asks again within its own deadline."""
        try:
            return subprocess.run(self.argv(argv, cwd=self.workdir), capture_output=True, text=True,
                                  timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            log.info("lab.probe_timeout", node=self.node.name, argv=list(argv), timeout_s=timeout)
            return None
        except FileNotFoundError:
            raise LabError(f"{argv[0]}: not installed (run `make setup`)") from None

    def log_tail(self, name: str, lines: int = 3) -> str:
        try:
            text = (self.workdir / f"{name}.log").read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(text[-lines:])

    def check_alive(self) -> None:
        """Raise if a process this node started has exited (with the tail of its log)."""
        for name, proc in self.popens.items():
            code = proc.poll()
            if code is not None:
                tail = self.log_tail(name)
                raise LabError(f"node {self.node.name}: {name} exited with code {code}"
                               + (f": {tail}" if tail else f" (log {self.workdir / f'{name}.log'})"))

    def wait_until(self, what: str, ready: Callable[[], bool], timeout: float, interval: float = 0.05) -> None:
        """Poll ``ready`` (bounded in time), failing early when a process of the node died."""
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            if ready():
                return
            if time.monotonic() > deadline:
                raise LabError(f"node {self.node.name}: {what} not ready after {timeout:.0f}s "
                               f"(logs in {self.workdir})")
            time.sleep(interval)
            interval = min(interval * 1.5, 0.5)


def node_env(node: Node) -> dict[str, str]:
    return {**BASE_ENV, **node.env}


MOUNTNS_PROCESS = "mountns"


def holder(node: Node, state: LabState | None) -> ProcessRecord | None:
    """The process owning ``node``'s mount namespace (``lab.mountns``), if one was started."""
    records = [p for p in (state.holders if state else []) if p.node == node.name]
    return records[-1] if records else None


def node_argv(node: Node, state: LabState | None, argv: Sequence[str], *, cwd: Path | None = None) -> list[str]:
    """``argv`` run in ``node``: its network namespace and, once deployed, its mount namespace.

    ``nsenter`` joins the holder's namespaces (mount, with the root it pivoted into, and UTS), then changes
    to ``cwd`` as the node sees it (default: the caller's directory, which the node's overlay
    shows as on the host). Before the holder exists (or for a lab deployed without one), plain
    ``ip netns exec``. A holder that died means the node is gone: that is an error, never a
    silent run against the host's filesystem.
    """
    record = holder(node, state)
    if record is not None and not record.alive() and state is not None:
        # the lab may have been redeployed since ``state`` was read (deploy --reconfigure)
        record = holder(node, LabState.load(state.name))
    if record is None:
        return netns.netns_argv(node.netns, argv)
    if not record.alive():
        raise LabError(f"node {node.name}: its mount namespace is gone (holder pid {record.pid} exited); "
                       "redeploy the lab")
    wd = str(cwd) if cwd is not None else os.getcwd()
    if not (Path(f"/proc/{record.pid}/root") / os.path.realpath(wd).lstrip("/")).is_dir():
        wd = "/"  # the caller's directory is not in the node's root (e.g. under a host-only /run): as docker exec
    # not nsenter --wd: it opens the directory before entering, leaving the process a cwd outside its root.
    # /usr/bin/env by path: coreutils' (``-C``), never a busybox env that comes first on PATH (a guest's).
    return ["nsenter", "-t", str(record.pid), "-m", "-n", "-u", "--", "/usr/bin/env", "-C", wd, "--", *argv]


def node_path(node: Node, state: LabState | None, path: str) -> Path:
    """``path`` as ``node`` sees it, from the host: ``/proc/<holder>/root/<path>``."""
    record = holder(node, state)
    if record is None:
        return Path(path)
    # absolute symlinks (/var/run -> /run) would resolve against the host's root under /proc/PID/root:
    # resolve them first (the node's overlay has the host's symlinks)
    return Path(f"/proc/{record.pid}/root") / os.path.realpath(path).lstrip("/")


def covering_bind(node: Node, target: str) -> Bind | None:
    """The bind through which ``target`` (a container path) reaches the host, if any (longest wins)."""
    best: Bind | None = None
    for bind in node.binds:
        root = bind.target.rstrip("/") or "/"
        inside = target == root or target.startswith(root.rstrip("/") + "/")
        if inside and (best is None or len(root) >= len(best.target.rstrip("/"))):
            best = bind
    return best


def bound_host_path(node: Node, target: str) -> Path | None:
    """The host file behind container path ``target`` (a file bind, or a file in a bound directory)."""
    bind = covering_bind(node, target)
    if bind is None:
        return None
    rest = target[len(bind.target.rstrip("/")):].lstrip("/")
    return bind.source / rest if rest else bind.source


class ImageHandler:
    """A plain namespace: runs ``cmd`` (if any) as the node's main process.

    Subclasses override ``start`` / ``wait_ready`` / ``exec_argv`` / ``host_paths``.
    """

    name = "linux"
    binaries: tuple[str, ...] = ()

    def check(self, node: Node) -> None:
        """Refuse before anything is created when the host lacks the program (one clear line)."""
        for binary in self.binaries:
            if shutil.which(binary) is None and not Path(binary).exists():
                raise LabError(f"node {node.name}: image {node.image} needs {binary}, which is not installed "
                               "(run `make setup`)")

    def host_paths(self, node: Node) -> list[Path]:
        """Directories outside the lab directory this handler creates (destroy --cleanup sweeps them)."""
        return []

    def root_setup(self, ctx: NodeContext) -> tuple[list[Bind], list[dict[str, int | str]]]:
        """What the image itself would hold: extra binds (files the lab writes, e.g. a startup
        config) and directories (``{"path", "uid", "gid"}``) made in the node's root."""
        return [], []

    def start(self, ctx: NodeContext) -> None:
        if ctx.node.cmd:
            ctx.spawn("cmd", shlex.split(ctx.node.cmd))

    def wait_ready(self, ctx: NodeContext, timeout: float) -> None:
        """A plain node is up once its ``cmd`` started; one that exits at once is reported.

        containerlab deploys a ``linux`` node whose main process exits (the container is left
        ``exited``, deploy still succeeds), so this is a warning, not a failure: deploy returns 0,
        says which node, the exit code and the last lines of its output (kept in
        ``nodes/<node>/cmd.log``), and inspect shows the node ``exited``.
        """
        proc = ctx.popens.get("cmd")
        if proc is None:
            ctx.check_alive()
            return
        try:
            code = proc.wait(timeout=CMD_GRACE)
        except subprocess.TimeoutExpired:
            return
        tail = ctx.log_tail("cmd")
        ctx.warn(f"node {ctx.node.name}: cmd {ctx.node.cmd!r} exited with code {code} at once, the node is "
                 f"stopped as its container would be (output in {ctx.workdir / 'cmd.log'})"
                 + (f": {tail}" if tail else ""))

    def exec_argv(self, node: Node, workdir: Path, argv: list[str]) -> list[str]:
        """Rewrite an ``exec`` command line so it reaches this node's daemon (e.g. ``vtysh -N``)."""
        return argv


def bound_config(node: Node, *targets: str) -> Path | None:
    """The host file a bind (of the file, or of its directory) maps onto one of the daemon's config paths."""
    for target in targets:
        path = bound_host_path(node, target)
        if path is not None and path.is_file():
            return path
    return None


def config_text(node: Node, *targets: str) -> str | None:
    """``startup-config`` wins; otherwise the containerlab-style bind of the config file."""
    if node.startup_config is not None:
        return node.startup_config.read()
    path = bound_config(node, *targets)
    return path.read_text() if path is not None else None


class FrrHandler(ImageHandler):
    """FRR as its image runs it: ``/etc/frr`` and ``/var/run/frr`` of the node's own root.

    The node's mount namespace gives every FRR node its own ``/etc/frr`` (the file's binds:
    ``frr.conf``, ``daemons``, or the whole directory) and ``/var/run/frr`` (sockets, pid files,
    in the node's overlay), so no pathspace (``-N``) is needed and ``vtysh`` works unchanged.
    The daemons run in the foreground (their pids are ours to record) with no TCP vty and log to
    stdout (``nodes/<node>/<daemon>.log``). Like the image's ``vtysh -b``, the configuration is
    applied once all daemons answer; lines FRR rejects are warnings, the rest is applied.
    """

    name = "frr"
    binaries = ("/usr/lib/frr/zebra", "/usr/lib/frr/bgpd", "/usr/lib/frr/staticd", "vtysh")

    def daemons(self, node: Node) -> list[str]:
        """zebra, bgpd, staticd, plus what the node's ``/etc/frr/daemons`` (a bind) switches on."""
        chosen = list(FRR_DEFAULT_DAEMONS)
        path = bound_config(node, "/etc/frr/daemons")
        if path is not None:
            for line in path.read_text().splitlines():
                key, _, value = line.strip().partition("=")
                if key in FRR_KNOWN_DAEMONS and value.strip().strip('"') == "yes" and key not in chosen:
                    chosen.append(key)
        return chosen

    def root_setup(self, ctx: NodeContext) -> tuple[list[Bind], list[dict[str, int | str]]]:
        frr = pwd.getpwnam("frr")
        binds: list[Bind] = []
        node = ctx.node
        text = node.startup_config.read() if node.startup_config is not None else None
        if text is None and covering_bind(node, "/etc/frr/frr.conf") is None:
            text = f"hostname {node.name}\n"  # the image's own frr.conf, not the host's
        if text is not None:
            conf = ctx.workdir / "frr.conf"
            write_private(conf, text)  # may hold `neighbor X password`; vtysh (root) reads it
            binds.append(Bind(source=conf, target="/etc/frr/frr.conf"))
        if covering_bind(node, "/etc/frr") is None:
            vtysh = ctx.workdir / "vtysh.conf"
            vtysh.write_text("service integrated-vtysh-config\n")
            binds.append(Bind(source=vtysh, target="/etc/frr/vtysh.conf"))
        return binds, [{"path": str(FRR_RUN), "uid": frr.pw_uid, "gid": frr.pw_gid}]

    def start(self, ctx: NodeContext) -> None:
        for daemon in self.daemons(ctx.node):
            binary = FRR_BIN / daemon
            if not binary.exists():
                raise LabError(f"node {ctx.node.name}: FRR daemon {daemon} is not installed")
            # A restarted daemon has no configuration: once its vty answers, re-apply frr.conf, as the
            # image's start does (the supervisor retries the command until it succeeds, bounded).
            conf = f"{FRR_ETC}/frr.conf"
            again = ["sh", "-c", f"vtysh -d {daemon} -c 'show version' >/dev/null 2>&1 && vtysh -f {conf}"]
            ctx.spawn(daemon, [str(binary), "-P", "0", "--log", "stdout"],
                      after_restart=again if ctx.path(conf).is_file() else ())

    def wait_ready(self, ctx: NodeContext, timeout: float) -> None:
        daemons = self.daemons(ctx.node)
        ctx.wait_until("FRR vty sockets",
                       lambda: all(ctx.path(f"{FRR_RUN}/{d}.vty").exists() for d in daemons), timeout)
        if not ctx.path(f"{FRR_ETC}/frr.conf").is_file():
            return
        proc = ctx.run(["vtysh", "-f", f"{FRR_ETC}/frr.conf"], check=False, timeout=timeout)
        if proc.returncode != 0:
            for problem in frr_rejected_lines(proc.stdout + proc.stderr):
                ctx.warn(f"node {ctx.node.name}: FRR rejected {problem}")


def frr_rejected_lines(output: str) -> list[str]:
    """vtysh's report of a configuration file as one line per rejected command.

    vtysh prints ``line N: % Unknown command[N]: <text>`` (or another ``%`` message) per line it
    could not apply and carries on with the rest, as the image's ``vtysh -b`` does at start.
    """
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    found = [ln for ln in lines if ln.startswith("line ") or ln.startswith("%")]
    return found or lines[:4] or ["(no message)"]


class BirdHandler(ImageHandler):
    """BIRD 2 in the foreground with its control socket in the node's directory."""

    name = "bird"
    binaries = ("bird", "birdc")

    @staticmethod
    def socket(workdir: Path) -> Path:
        return workdir / "bird.ctl"

    def start(self, ctx: NodeContext) -> None:
        text = config_text(ctx.node, "/etc/bird/bird.conf", "/etc/bird.conf", "/usr/local/etc/bird.conf")
        if text is None:
            raise LabError(f"node {ctx.node.name}: image {ctx.node.image} runs BIRD and needs a startup-config "
                           "(or a bind to /etc/bird/bird.conf)")
        ctx.workdir.mkdir(parents=True, exist_ok=True)
        for bind in ctx.node.binds:
            if bind.target.startswith("/etc/bird/") and bind.source.is_file():
                shutil.copyfile(bind.source, ctx.workdir / Path(bind.target).name)
        conf = ctx.workdir / "bird.conf"
        write_private(conf, text)  # may hold `password "..."`
        ctx.spawn("bird", ["bird", "-f", "-c", str(conf), "-s", str(self.socket(ctx.workdir)),
                           "-P", str(ctx.workdir / "bird.pid")])

    def wait_ready(self, ctx: NodeContext, timeout: float) -> None:
        sock = self.socket(ctx.workdir)

        def up() -> bool:
            if not sock.exists():
                return False
            proc = ctx.probe(["birdc", "-s", str(sock), "show", "status"])
            return proc is not None and proc.returncode == 0

        ctx.wait_until("BIRD control socket", up, timeout)

    def exec_argv(self, node: Node, workdir: Path, argv: list[str]) -> list[str]:
        if argv and Path(argv[0]).name in ("birdc", "birdcl") and "-s" not in argv:
            return [argv[0], "-s", str(self.socket(workdir)), *argv[1:]]
        return argv


class GobgpHandler(ImageHandler):
    """gobgpd with its gRPC API on the namespace's own 127.0.0.1:50051 (so plain ``gobgp`` works)."""

    name = "gobgp"
    binaries = ("gobgpd", "gobgp")

    def start(self, ctx: NodeContext) -> None:
        node = ctx.node
        text = config_text(node, *(f"/etc/gobgp/gobgpd.{ext}" for ext in ("toml", "yml", "yaml", "json", "conf")),
                           *(f"/etc/gobgp/gobgp.{ext}" for ext in ("toml", "yml", "yaml", "json", "conf")))
        if text is None:
            raise LabError(f"node {node.name}: image {node.image} runs gobgpd and needs a startup-config "
                           "(or a bind to /etc/gobgp/gobgpd.toml)")
        source = node.startup_config.path if node.startup_config and node.startup_config.path else None
        if source is None:
            source = bound_config(node, *(b.target for b in node.binds if b.target.startswith("/etc/gobgp/")))
        ext = source.suffix.lstrip(".") if source is not None else "toml"
        fmt = {"yml": "yaml", "yaml": "yaml", "json": "json"}.get(ext, "toml")
        ctx.workdir.mkdir(parents=True, exist_ok=True)
        conf = ctx.workdir / f"gobgpd.{fmt}"
        write_private(conf, text)  # may hold auth-password
        ctx.spawn("gobgpd", ["gobgpd", "-f", str(conf), "-t", fmt, "--api-hosts", GOBGP_API, "--pprof-disable",
                             "--log-plain"])

    def wait_ready(self, ctx: NodeContext, timeout: float) -> None:
        host, port = GOBGP_API.split(":")

        def up() -> bool:
            proc = ctx.probe(["gobgp", "-u", host, "-p", port, "global"])
            return proc is not None and proc.returncode == 0 and "AS" in proc.stdout

        ctx.wait_until("gobgpd API", up, timeout)


class EtcdHandler(ImageHandler):
    """An etcd member, clients on <mgmt ip>:2379 and 127.0.0.1:2379, data in the node's directory: alone, or a
    member of the cluster its env ``ETCD_INITIAL_CLUSTER`` names (peers on <mgmt ip>:2380)."""

    name = "etcd"
    binaries = ("etcd", "etcdctl")

    def start(self, ctx: NodeContext) -> None:
        node = ctx.node
        urls = [f"http://127.0.0.1:{ETCD_CLIENT_PORT}"]
        if node.mgmt_ipv4 is not None:
            urls.insert(0, f"http://{node.mgmt_ipv4.ip}:{ETCD_CLIENT_PORT}")
        peer = f"http://127.0.0.1:{ETCD_PEER_PORT}"
        cluster = f"{node.name}={peer}"
        # A member of a cluster (the etcd image's own variable, ETCD_INITIAL_CLUSTER=name=http://ip:2380,...):
        # peers talk over the management network.
        if node.env.get("ETCD_INITIAL_CLUSTER") and node.mgmt_ipv4 is not None:
            peer = f"http://{node.mgmt_ipv4.ip}:{ETCD_PEER_PORT}"
            cluster = node.env["ETCD_INITIAL_CLUSTER"]
        ctx.spawn("etcd", [
            "etcd", "--name", node.name, "--data-dir", str(ctx.workdir / "etcd-data"),
            "--listen-client-urls", ",".join(urls), "--advertise-client-urls", urls[0],
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", cluster, "--log-level", "warn",
        ], env={k: v for k, v in ctx.env.items() if k != "ETCD_INITIAL_CLUSTER"})

    def wait_ready(self, ctx: NodeContext, timeout: float) -> None:
        def up() -> bool:
            proc = ctx.probe(["etcdctl", f"--endpoints=http://127.0.0.1:{ETCD_CLIENT_PORT}",
                              "--dial-timeout=1s", "endpoint", "health"])
            return proc is not None and proc.returncode == 0

        ctx.wait_until("etcd", up, timeout, interval=0.2)


class TabbyNodePlaceholder(ImageHandler):
    """``tabby/node`` before the node-agent issue registers the real handler: a plain namespace."""

    name = "tabby-node (placeholder)"


_BUILTIN: list[tuple[str, ImageHandler]] = [
    ("tabby/node", TabbyNodePlaceholder()),
    ("tabby/node:*", TabbyNodePlaceholder()),
    ("*etcd*", EtcdHandler()),
    ("*frr*", FrrHandler()),
    ("*bird*", BirdHandler()),
    ("*gobgp*", GobgpHandler()),
]
_REGISTERED: list[tuple[str, ImageHandler]] = []
_DEFAULT = ImageHandler()
_plugins_loaded = False


def register_image(pattern: str, handler: ImageHandler) -> None:
    """Make images matching ``pattern`` (fnmatch, case-insensitive) run ``handler``.

    Registered patterns win over the built-in ones; the most recent registration wins.
    """
    _REGISTERED.insert(0, (pattern.lower(), handler))


def unregister_image(pattern: str) -> None:
    """Drop a registration (tests use it to restore the registry)."""
    _REGISTERED[:] = [(p, h) for p, h in _REGISTERED if p != pattern.lower()]


def handler_for(image: str) -> ImageHandler:
    load_plugins()
    name = image.lower()
    for pattern, handler in (*_REGISTERED, *_BUILTIN):
        if fnmatch.fnmatchcase(name, pattern):
            return handler
    return _DEFAULT


def load_plugins() -> None:
    """Import the out-of-tree modules named by ``TABBY_LAB_PLUGINS`` (once); a missing one is an error."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    extra = [m.strip() for m in os.environ.get("TABBY_LAB_PLUGINS", "").split(",") if m.strip()]
    for module in extra:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name is None or not module.startswith(exc.name):
                raise
            raise LabError(f"TABBY_LAB_PLUGINS: module {module} not found") from None
