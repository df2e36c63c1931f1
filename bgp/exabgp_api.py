"""ExaBGP API helper: relays lines between ExaBGP (stdin/stdout) and the Tabby agent (a unix socket).

ExaBGP starts this as `run <venv python> -I -S exabgp_api.py <socket path>`. It is stdlib only and does
no routing logic, so it starts in ~25 ms and has almost nothing that can crash. Why a relay at all:
the agent must be able to restart (upgrade, crash) while ExaBGP keeps its BGP sessions and the routes
it announced. ExaBGP's API process is its child and talks over pipes; if the agent were that child,
an agent crash would be a helper crash. With this relay, the agent is only a socket client's peer.

Rules it keeps, in order of importance:
1. Never stop reading stdin: ExaBGP blocks writing to a full pipe and its sessions time out. Lines
   that cannot be delivered (no agent, or the agent is too slow and more than OUT_CAP bytes queue up)
   are dropped; the state lines are remembered and replayed (see 3) so the agent still learns who is up.
2. Reconnect to the agent forever, with a short backoff, while ExaBGP runs. Exit when stdin closes
   (ExaBGP went away) or on SIGTERM (ExaBGP stopping or respawning us).
3. On each connection, first send one hello line
   `{"type": "tabby-hello", "pid": P, "exabgp_pid": PP, "dropped": N, "routes": [lines], "replay": K}`
   then the last OPEN received from each peer (so a restarted agent still knows every peer's graceful
   restart capability) and the last `state` line of each peer (K lines). `routes` are the announce commands still in
   effect in ExaBGP (this helper's lifetime = the ExaBGP process's RIB lifetime, unless ExaBGP
   respawned us), so a restarted agent can withdraw what it no longer wants and need not guess.
4. Commands from the agent go to stdout in order. If ExaBGP stops reading, the helper stops reading
   the socket (backpressure reaches the agent's writer) rather than buffering without bound.
"""

from __future__ import annotations

import errno
import json
import os
import select
import signal
import socket
import sys
import time

OUT_CAP = 16 * 1024 * 1024
"""Bytes queued for the agent beyond which the connection is dropped (it resyncs through the hello)."""
CMD_PAUSE = 1024 * 1024
"""Bytes queued for ExaBGP beyond which the helper stops reading the agent's socket."""
MAX_LINE = 4 * 1024 * 1024
"""A command line longer than this (no newline yet) is discarded: ExaBGP would choke on it."""
RETRY_MIN = 0.05
RETRY_MAX = 1.0


class Relay:
    """The helper's whole state: two buffers, the peer state cache and the announced-route table."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock: socket.socket | None = None
        self.to_agent = bytearray()
        self.to_exabgp = bytearray()
        self.from_exabgp = bytearray()
        self.from_agent = bytearray()
        self.discarding = False
        self.dropped = 0
        self.states: dict[str, bytes] = {}
        self.opens: dict[str, bytes] = {}
        self.routes: dict[tuple[str, str], str] = {}
        self.retry_at = 0.0
        self.retry = RETRY_MIN
        self.stdin_open = True

    # ---- connection to the agent -------------------------------------------------------------
    def connect(self) -> None:
        now = time.monotonic()
        if self.sock is not None or now < self.retry_at:
            return
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            self.retry_at = now + self.retry
            self.retry = min(self.retry * 2, RETRY_MAX)
            return
        sock.setblocking(False)
        self.sock = sock
        self.retry = RETRY_MIN
        self.from_agent.clear()
        self.discarding = False
        hello = {
            "type": "tabby-hello",
            "pid": os.getpid(),
            "exabgp_pid": os.getppid(),
            "dropped": self.dropped,
            "routes": sorted(self.routes.values()),
            "replay": len(self.states),
        }
        self.to_agent = bytearray(json.dumps(hello).encode() + b"\n")
        for line in self.opens.values():
            self.to_agent += line
        for line in self.states.values():
            self.to_agent += line

    def disconnect(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.sock = None
        self.to_agent.clear()
        self.retry_at = time.monotonic() + self.retry

    # ---- ExaBGP -> agent ---------------------------------------------------------------------
    def on_exabgp_line(self, line: bytes) -> None:
        if b'"state"' in line or b'"open"' in line:
            self._remember_state(line)
        if self.sock is None:
            self.dropped += 1
            return
        if len(self.to_agent) + len(line) > OUT_CAP:
            self.dropped += 1
            self.disconnect()
            return
        self.to_agent += line

    def _remember_state(self, line: bytes) -> None:
        try:
            msg = json.loads(line)
            peer = msg["neighbor"]["address"]["peer"]
            if msg.get("type") == "state" and isinstance(peer, str):
                self.states[peer] = line
            elif msg.get("type") == "open" and msg["neighbor"].get("direction") == "receive" and isinstance(peer, str):
                self.opens[peer] = line
        except (ValueError, KeyError, TypeError):
            pass

    # ---- agent -> ExaBGP ---------------------------------------------------------------------
    def on_agent_line(self, line: bytes) -> None:
        try:
            text = line.decode("ascii").strip()
        except UnicodeDecodeError:
            return
        if not text:
            return
        self._track(text)
        self.to_exabgp += text.encode() + b"\n"

    def _track(self, text: str) -> None:
        words = text.split()
        target = "*"
        if len(words) >= 2 and words[0] == "neighbor":
            target, words = words[1], words[2:]
        if len(words) >= 3 and words[1] == "route" and words[0] in ("announce", "withdraw"):
            key = (target, words[2])
            if words[0] == "announce":
                self.routes[key] = text
            else:
                self.routes.pop(key, None)

    # ---- the loop ----------------------------------------------------------------------------
    def step(self, timeout: float) -> None:
        self.connect()
        readers: list[int] = []
        writers: list[int] = []
        if self.stdin_open:
            readers.append(0)
        if self.to_exabgp:
            writers.append(1)
        if self.sock is not None:
            if len(self.to_exabgp) < CMD_PAUSE:
                readers.append(self.sock.fileno())
            if self.to_agent:
                writers.append(self.sock.fileno())
        try:
            readable, writable, _ = select.select(readers, writers, [], timeout)
        except InterruptedError:
            return
        if 0 in readable:
            self._read_stdin()
        if 1 in writable:
            self._write_stdout()
        if self.sock is not None and self.sock.fileno() in readable:
            self._read_sock()
        if self.sock is not None and self.sock.fileno() in writable and self.to_agent:
            self._write_sock()

    def _read_stdin(self) -> None:
        try:
            data = os.read(0, 65536)
        except BlockingIOError:
            return
        if not data:
            self.stdin_open = False
            return
        self.from_exabgp += data
        while True:
            cut = self.from_exabgp.find(b"\n")
            if cut < 0:
                break
            line = bytes(self.from_exabgp[: cut + 1])
            del self.from_exabgp[: cut + 1]
            self.on_exabgp_line(line)

    def _write_stdout(self) -> None:
        try:
            sent = os.write(1, self.to_exabgp)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno == errno.EPIPE:
                self.stdin_open = False
                self.to_exabgp.clear()
                return
            raise
        del self.to_exabgp[:sent]

    def _read_sock(self) -> None:
        assert self.sock is not None
        try:
            data = self.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.disconnect()
            return
        if not data:
            self.disconnect()
            return
        self.from_agent += data
        while True:
            cut = self.from_agent.find(b"\n")
            if cut < 0:
                if len(self.from_agent) > MAX_LINE:
                    self.from_agent.clear()
                    self.discarding = True
                break
            line = bytes(self.from_agent[:cut])
            del self.from_agent[: cut + 1]
            if self.discarding:
                self.discarding = False
                continue
            self.on_agent_line(line)

    def _write_sock(self) -> None:
        assert self.sock is not None
        try:
            sent = self.sock.send(self.to_agent)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.disconnect()
            return
        del self.to_agent[:sent]


def main(argv: list[str]) -> int:
    """Run the relay until ExaBGP closes our stdin or sends SIGTERM."""
    if len(argv) != 2:
        sys.stderr.write("usage: exabgp_api.py SOCKET_PATH\n")
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    os.set_blocking(0, False)
    os.set_blocking(1, False)
    relay = Relay(argv[1])
    while relay.stdin_open:
        relay.step(0.2)
    # flush what is left for the agent briefly (the last `down`/shutdown lines), then go
    deadline = time.monotonic() + 0.5
    while relay.sock is not None and relay.to_agent and time.monotonic() < deadline:
        relay.step(0.05)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
