"""``tabbyctl node diags``: one archive with what a bug report about a node needs (calicoctl node diags).

Contents (each a file in ``tabby-diags-<node>-<time>/``): the agent's log, its view (the local
API's BGP_STATUS and STATUS answers), its environment, the kernel state of the namespace it runs
in (addresses, links, routes of every table, neighbours, rules, the nft ruleset, forwarding
sysctls), ExaBGP's configuration, log and pid from ``<run dir>/bgp/``, and versions. A command
that fails leaves its error in the file instead of aborting the collection.

Secrets are redacted before anything is written: values of variables and JSON keys whose name
says password, secret, token or key (``ETCD_PASSWORD``, ``ETCD_KEY_FILE`` stays a path but
``*_KEY`` values go), ExaBGP ``md5-password``, credentials in URLs. The archive is 0600.

Where the agent's log is: ``--log-file`` (repeatable), else ``$TABBY_LOG_FILE``, else the lab's
per-node log (``/run/tabby/lab/*/nodes/<node>/tabby-node.log``, written by ``tabbyctl lab``).
"""

from __future__ import annotations

import io
import json
import os
import platform
import re
import subprocess
import sys
import tarfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import click

SECRET_NAME = re.compile(r"(pass(word|wd)?|secret|token|key$|private)", re.I)
REDACTED = "<redacted>"
_URL_CREDS = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]+):(?P<pw>[^@/\s]+)@", re.I)
_MD5 = re.compile(r"(md5-password\s+)(\"[^\"]*\"|'[^']*'|\S+?)(\s*;)?$", re.M)
LAB_LOGS = Path("/run/tabby/lab")  # lab/state.py's state root: the lab's per-node logs live below it
COMMANDS: dict[str, list[str]] = {
    "ip-addr.txt": ["ip", "addr"],
    "ip-link.txt": ["ip", "-d", "link"],
    "ip-route.txt": ["ip", "route", "show", "table", "all"],
    "ip6-route.txt": ["ip", "-6", "route", "show", "table", "all"],
    "ip-neigh.txt": ["ip", "neigh"],
    "ip-rule.txt": ["ip", "rule"],
    "nft-ruleset.txt": ["nft", "list", "ruleset"],
    "sysctl-forwarding.txt": ["sysctl", "net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"],
}
VERSION_COMMANDS = {"ip": ["ip", "-V"], "nft": ["nft", "--version"], "etcd": ["etcd", "--version"],
                    "exabgp": [sys.executable, "-m", "exabgp", "version"]}


def redact_text(text: str) -> str:
    text = _URL_CREDS.sub(lambda m: f"{m['scheme']}{m['user']}:{REDACTED}@", text)
    text = _MD5.sub(lambda m: f"{m[1]}\"{REDACTED}\"{m[3] or ''}", text)
    # KEY=value lines (environments) and "key": "value" pairs in text logs
    text = re.sub(r"(?im)^([A-Z0-9_]*(PASS(WORD|WD)?|SECRET|TOKEN|_KEY|PRIVATE)[A-Z0-9_]*)=(.*)$",
                  lambda m: f"{m[1]}={REDACTED}" if not m[1].endswith("_FILE") else m[0], text)
    text = re.sub(r'(?i)("[^"]*(password|passwd|secret|token|private)[^"]*"\s*:\s*)"[^"]*"',
                  lambda m: f'{m[1]}"{REDACTED}"', text)
    return text


def redact_json(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: (REDACTED if SECRET_NAME.search(str(k)) and not str(k).lower().endswith("file")
                    and isinstance(v, str | int) else redact_json(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_json(v) for v in value]
    if isinstance(value, str):
        return redact_text(value)
    return value


def _run(argv: Sequence[str], timeout: float = 15) -> str:
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"# {' '.join(argv)}: {exc}\n"
    out = proc.stdout + (f"\n# stderr:\n{proc.stderr}" if proc.stderr.strip() else "")
    return out if proc.returncode == 0 else f"# {' '.join(argv)} exited {proc.returncode}\n{out}"


def _agent_pid(run_dir: Path) -> int | None:
    try:
        text = (run_dir / "agent.lock").read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() and Path(f"/proc/{text}").exists() else None


def _environ(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError as exc:
        return f"# /proc/{pid}/environ: {exc}\n"
    return "".join(f"{item}\n" for item in sorted(raw.decode(errors="replace").split("\0")) if item)


def find_logs(nodename: str, given: Sequence[str], env: Mapping[str, str]) -> list[Path]:
    if given:
        return [Path(p) for p in given]
    if env.get("TABBY_LOG_FILE"):
        return [Path(env["TABBY_LOG_FILE"])]
    return sorted(LAB_LOGS.glob(f"*/nodes/{nodename}/tabby-node.log"))


def collect(nodename: str, run_dir: Path, status: dict[str, Any] | None, cni_status: dict[str, Any] | None,
            logs: Sequence[Path], version: str) -> dict[str, bytes]:
    """name -> redacted content of every file of the archive."""
    files: dict[str, str] = {}
    files["agent-status.json"] = json.dumps(redact_json(status) if status is not None else
                                            {"error": "no agent answered on its local API"}, indent=2, sort_keys=True)
    if cni_status is not None:
        files["agent-cni-status.json"] = json.dumps(redact_json(cni_status), indent=2, sort_keys=True)
    pid = _agent_pid(run_dir)
    files["agent-environ.txt"] = _environ(pid) if pid else f"# no running agent found (lock {run_dir}/agent.lock)\n"
    for i, log in enumerate(logs):
        try:
            files[f"agent-log-{i}-{log.name}" if len(logs) > 1 else "agent.log"] = log.read_text(errors="replace")
        except OSError as exc:
            files[f"agent-log-{i}.txt"] = f"# {log}: {exc}\n"
    if not logs:
        files["agent.log"] = ("# agent log not found: pass --log-file, set TABBY_LOG_FILE, or collect the\n"
                              "# container/journal log of the agent (it logs to stderr)\n")
    for name, argv in COMMANDS.items():
        files[name] = _run(argv)
    bgp = run_dir / "bgp"
    for name in ("exabgp.conf", "exabgp.log", "exabgp.pid", "exabgp.env"):
        path = bgp / name
        if path.exists():
            try:
                files[f"exabgp/{name}"] = path.read_text(errors="replace")
            except OSError as exc:
                files[f"exabgp/{name}"] = f"# {path}: {exc}\n"
    versions = [f"tabby {version}", f"python {platform.python_version()}",
                f"kernel {platform.release()} {platform.version()}"]
    for name, argv in VERSION_COMMANDS.items():
        out = _run(argv).strip()
        versions.append(f"{name}: {out.splitlines()[0] if out else '?'}")
    files["versions.txt"] = "\n".join(versions) + "\n"
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    files["README.txt"] = f"tabbyctl node diags for node {nodename}, {when}\nrun dir {run_dir}; secrets redacted.\n"
    return {name: redact_text(text).encode() for name, text in files.items()}


def write_archive(path: Path, top: str, files: Mapping[str, bytes]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(data)
            info.mtime = int(time.time())
            info.mode = 0o600
            tar.addfile(info, io.BytesIO(data))


@click.command("diags")
@click.option("--nodename", default=None, help="Node whose agent to ask (default: NODENAME, then this namespace's).")
@click.option("--log-file", "log_files", multiple=True, type=click.Path(dir_okay=False),
              help="The agent's log (repeatable; default: TABBY_LOG_FILE, then the lab's per-node log).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Archive path (default: ./tabby-diags-<node>-<time>.tar.gz).")
def diags(nodename: str | None, log_files: tuple[str, ...], output: Path | None) -> None:
    """Collect one archive for a bug report: agent log and view, routes, nft ruleset, ExaBGP, versions."""
    from controller.cli.node import agent_sockets, query_agent, query_agent_command
    from controller.cli.version import client_version

    root = Path(os.environ.get("TABBY_RUN_ROOT") or "/run/tabby")
    name = nodename or os.environ.get("NODENAME") or None
    sockets = agent_sockets(name)
    status = query_agent(sockets)
    node = name or (status or {}).get("node") or "unknown"
    cni = query_agent_command(sockets, "STATUS")
    run_dir = Path(os.environ.get("TABBY_RUN_DIR") or root / node)
    files = collect(node, run_dir, status, cni, find_logs(node, log_files, os.environ), client_version())
    stamp = time.strftime("%Y%m%d-%H%M%S")
    top = f"tabby-diags-{node}-{stamp}"
    path = output or Path(f"{top}.tar.gz")
    try:
        write_archive(path, top, files)
    except OSError as exc:
        from controller.cli.context import UserError

        raise UserError(f"--output: cannot write {path}: {exc.strerror or exc}") from None
    click.echo(f"Diagnostics for node {node} written to {path} ({len(files)} files).", err=True)
    click.echo(str(path))
