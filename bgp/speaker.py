"""Supervise one ExaBGP process per node: render its config, start it in the node's namespace, restart it with
backoff, reload it when only sessions changed, and keep per-peer session state for `tabbyctl node status`.

Process layout (see docs/bgp-speaker.md):

    agent (this Speaker + relay_link.BgpBridge, unix socket server <run_dir>/api.sock)
      |  (ExaBGP is started with start_new_session: it is not killed with the agent)
      v
    ip netns exec <ns> exabgp server <run_dir>/exabgp.conf      pid in <run_dir>/exabgp.pid
      |  stdin/stdout pipes
      v
    exabgp_api.py relay  -- connects (and reconnects) to <run_dir>/api.sock

Who survives what: the agent dying leaves ExaBGP and its sessions up (a new agent adopts the pid from
the pid file, the relay reconnects and says which routes ExaBGP still announces). ExaBGP dying takes
the relay with it (stdin EOF); peers keep our routes for the graceful-restart time while the Speaker
restarts it. The relay dying is ExaBGP's business (`respawn`).

Desired announcements live here, not in ExaBGP: on every relay hello the Speaker withdraws what ExaBGP
holds but should not, and (re)announces the rest; on every session `up` it re-announces that peer's
routes and then sends End-of-RIB (we run `manual-eor`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import structlog

from bgp import exabgp_config
from bgp.exabgp_codec import (
    Disconnected,
    Event,
    Hello,
    Notification,
    PeerState,
    Shutdown,
    format_announce,
    format_withdraw,
)
from bgp.relay_link import BgpBridge
from bgp.types import Announcement, PeerSpec, SpeakerSpec, normalize_prefix
from common.files import write_private

__all__ = ["ApplyResult", "SessionStatus", "Speaker"]

log = structlog.get_logger("tabby.bgp.speaker")

HELPER = str(Path(__file__).with_name("exabgp_api.py"))
ApplyResult = Literal["started", "restarted", "reloaded", "unchanged"]

_STATE_NAMES = {"connected": "Connect", "up": "Established", "down": "Idle"}


@dataclass(frozen=True, slots=True)
class SessionStatus:
    """One row of `node status`: Peer address | Peer type | State | Since | Info (Calico's columns)."""

    peer: str
    type: str
    name: str
    state: str = "Idle"
    since: float = 0.0
    info: str = ""
    last_error: str = ""
    established_count: int = 0
    last_notification: str = ""
    """The last NOTIFICATION sent or received (kept apart from last_error, which the `down` reason overwrites:
    an OPEN refused for a capability must still be visible after the session dropped)."""


def _family_of(prefix: str) -> str:
    return "ipv6 unicast" if ":" in prefix else "ipv4 unicast"


def _default_exabgp() -> str:
    candidate = Path(sys.executable).with_name("exabgp")
    return str(candidate) if candidate.exists() else "exabgp"


class Speaker:
    """One ExaBGP per node. `apply()` the speaker identity and peers; `announce()`/`withdraw()` routes.

    Events from the bridge (Update, EndOfRib, PeerState, ...) are handed to `on_event` after the Speaker
    has acted on them; on a `down` state the consumer must flush or mark stale that peer's paths (ExaBGP
    sends no withdrawals for a dropped session).
    """

    def __init__(
        self,
        netns: str | None,
        run_dir: str | os.PathLike[str],
        *,
        exabgp: str | None = None,
        python: str | None = None,
        on_event: Callable[[Event], Awaitable[None] | None] | None = None,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        stable_after: float = 60.0,
        dual_stack: bool = False,
    ) -> None:
        self.netns = netns
        self.run_dir = Path(run_dir)
        self.exabgp = exabgp or _default_exabgp()
        self.python = python or sys.executable
        self.on_event = on_event
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.stable_after = stable_after
        self.dual_stack = dual_stack
        self.conf_path = self.run_dir / "exabgp.conf"
        self.state_path = self.run_dir / "exabgp.state.json"
        self.pid_path = self.run_dir / "exabgp.pid"
        self.log_path = self.run_dir / "exabgp.log"
        self.socket_path = self.run_dir / "api.sock"
        self.bridge = BgpBridge(str(self.socket_path))
        self.sessions: dict[str, SessionStatus] = {}
        self.restarts = 0
        self.reloads = 0
        #: When ExaBGP's configuration was last written (start, restart, reload; for an adopted
        #: speaker, its predecessor's write): CalicoNodeStatus' lastReconfigurationTime.
        self.last_reconfigured: float | None = None
        self._config: exabgp_config.ExabgpConfig | None = None
        self._specs: dict[str, PeerSpec] = {}
        self._desired: dict[tuple[str | None, str], Announcement] = {}
        self._desired_complete = False
        self._held: tuple[str, ...] = ()
        self._proc: asyncio.subprocess.Process | None = None
        self._adopted_pid: int | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._pump: asyncio.Task[None] | None = None
        self._exited = asyncio.Event()
        self._stopping = False
        self._lock = asyncio.Lock()
        #: ExaBGP installs its SIGUSR1 handler only once running: a freshly started one dies of a
        #: reload signal. Until its API relay says hello, a reload is remembered and sent then.
        self._relay_ready = False
        self._reload_pending = False

    # ---- public API ---------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        if self._proc is not None and self._proc.returncode is None:
            return self._proc.pid
        return self._adopted_pid

    async def apply(self, speaker: SpeakerSpec, peers: Iterable[PeerSpec]) -> ApplyResult:
        """Make ExaBGP run this configuration, touching as few sessions as possible.

        started: nothing ran (or an adopted ExaBGP had a different start-up identity: restarted).
        reloaded: only neighbors changed -> SIGUSR1; ExaBGP leaves identical neighbors' sessions alone.
        restarted: router id, listen addresses/port or the API command changed (ExaBGP reads those once).
        """
        async with self._lock:
            peer_list = list(peers)
            self.run_dir.mkdir(parents=True, exist_ok=True)
            run = exabgp_config.api_command(self.python, HELPER, str(self.socket_path))
            config = exabgp_config.build(
                speaker, peer_list, run=run, log_path=str(self.log_path), dual_stack=self.dual_stack
            )
            self._specs = {p.address: p for p in peer_list}
            self._sync_sessions()
            if self._bridge_task_missing():
                await self.bridge.start()
                self._pump = asyncio.create_task(self._pump_events(), name="bgp-bridge-events")
            if self._config is None:
                self._config = self._load_previous()
                if self._config is not None and self._adopt():
                    log.info("adopted running ExaBGP", pid=self._adopted_pid)
                    with contextlib.suppress(OSError):
                        self.last_reconfigured = self.conf_path.stat().st_mtime
            previous = self._config
            if self.pid is None:
                self._write(config)
                await self._start()
                self._ensure_supervisor()
                return "started"
            assert previous is not None
            if previous.restart_key != config.restart_key or dict(previous.env) != dict(config.env):
                self._write(config)
                await self._restart("start-up settings changed")
                return "restarted"
            self._ensure_supervisor()
            if previous.text == config.text:
                return "unchanged"
            self._write(config)
            added = sorted(set(config.peers) - set(previous.peers))
            removed = sorted(set(previous.peers) - set(config.peers))
            changed = sorted(a for a in config.peers if a in previous.peers and config.peers[a] != previous.peers[a])
            self.reloads += 1
            if self._relay_ready:
                self._signal(signal.SIGUSR1)
                log.info("ExaBGP reloaded", added=added, removed=removed, changed=changed)
            else:
                self._reload_pending = True
                log.info("ExaBGP reload deferred until its API relay is up", added=added, removed=removed)
            return "reloaded"

    async def announce(self, ann: Announcement, peer: str | None = None) -> None:
        """Desire `ann` (to `peer`, or every peer when None) and send it if the relay is connected."""
        key = (peer, normalize_prefix(ann.prefix))
        if ann.withdraw:
            await self.withdraw(ann.prefix, peer)
            return
        format_announce(ann, peer)  # validate now, not at the next resync
        self._desired[key] = ann
        await self.bridge.announce(ann, peer)

    async def replace_announcements(self, items: Iterable[Announcement | tuple[str | None, Announcement]]) -> None:
        """Set the complete desired set (bare Announcement = to every peer); send only the difference.

        Until this is called once, the Speaker never withdraws what ExaBGP already holds: a restarted agent
        must not pull a node's routes before it has recomputed them (that would be an outage, not a resync).
        """
        new: dict[tuple[str | None, str], Announcement] = {}
        for item in items:
            peer, ann = item if isinstance(item, tuple) else (None, item)
            if ann.withdraw:
                continue
            format_announce(ann, peer)
            new[(peer, normalize_prefix(ann.prefix))] = ann
        old = self._desired
        self._desired = new
        first = not self._desired_complete
        self._desired_complete = True
        for key in sorted(set(old) - set(new), key=str):
            await self._unsend(key)
        for key, ann in sorted(new.items(), key=lambda kv: str(kv[0])):
            if old.get(key) != ann:
                await self.bridge.announce(ann, key[0])
        if first and self._held:
            await self._withdraw_extras(self._held)

    async def withdraw(self, prefix: str, peer: str | None = None) -> None:
        key = (peer, normalize_prefix(prefix))
        if self._desired.pop(key, None) is not None:
            await self._unsend(key)

    async def _unsend(self, key: tuple[str | None, str]) -> None:
        """Withdraw one desired route (already dropped from `_desired`) without losing another one.

        ExaBGP keeps ONE route per prefix and neighbor: a per-neighbor withdraw also removes the route
        announced to every neighbor, and a withdraw to every neighbor also removes the per-neighbor ones.
        So what else is desired for the prefix is sent again instead (or right after)."""
        peer, prefix = key
        if peer is not None:
            general = self._desired.get((None, prefix))
            if general is not None:
                await self.bridge.announce(general, peer)
            else:
                await self.bridge.withdraw(prefix, peer)
            return
        await self.bridge.withdraw(prefix, None)
        await self._resend_per_peer(prefix)

    async def _resend_per_peer(self, prefix: str) -> None:
        """After a withdraw to every neighbor (which also removes per-neighbor routes): the per-neighbor
        routes still desired for ``prefix``, sent again."""
        for (target, other), ann in sorted(self._desired.items(), key=str):
            if target is not None and other == prefix:
                await self.bridge.announce(ann, target)

    @property
    def desired(self) -> dict[tuple[str | None, str], Announcement]:
        return dict(self._desired)

    async def stop(self, *, keep_exabgp: bool = False) -> None:
        """Stop supervising. keep_exabgp=True leaves ExaBGP running (an agent upgrade); else it is terminated."""
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._supervisor
        if not keep_exabgp:
            await self._terminate()
            for path in (self.pid_path, self.state_path):
                path.unlink(missing_ok=True)
        await self.bridge.close()
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._pump

    # ---- sessions -----------------------------------------------------------------------------
    def _sync_sessions(self) -> None:
        for addr in list(self.sessions):
            if addr not in self._specs:
                del self.sessions[addr]
        for addr, spec in self._specs.items():
            if addr not in self.sessions:
                self.sessions[addr] = SessionStatus(peer=addr, type=spec.type, name=spec.name, since=time.time())
            else:
                self.sessions[addr] = replace(self.sessions[addr], type=spec.type, name=spec.name)

    def _on_state(self, event: PeerState) -> None:
        current = self.sessions.get(event.peer)
        if current is None:
            return
        state = _STATE_NAMES.get(event.state, event.state)
        since = event.time or time.time()
        changes: dict[str, object] = {"state": state, "info": event.reason}
        if state != current.state:
            changes["since"] = since
        if event.state == "up" and not event.replayed:
            changes["established_count"] = current.established_count + 1
        if event.state == "down" and event.reason:
            changes["last_error"] = event.reason
        self.sessions[event.peer] = replace(current, **changes)  # type: ignore[arg-type]
        log.info("bgp session", peer=event.peer, state=state, reason=event.reason, replayed=event.replayed)

    # ---- event pump ---------------------------------------------------------------------------
    async def _pump_events(self) -> None:
        while True:
            event = await self.bridge.next_event()
            try:
                await self._handle(event)
            except Exception:
                log.exception("speaker event handling failed", event=type(event).__name__)
            if self.on_event is not None:
                try:
                    result = self.on_event(event)
                    if asyncio.iscoroutine(result):
                        await result
                except Exception:
                    log.exception("on_event callback failed", event=type(event).__name__)

    async def _handle(self, event: Event) -> None:
        if isinstance(event, Hello):
            self._relay_ready = True
            if self._reload_pending:
                self._reload_pending = False
                self._signal(signal.SIGUSR1)
                log.info("ExaBGP reloaded (deferred)")
            await self._resync(event)
        elif isinstance(event, PeerState):
            self._on_state(event)
            if event.state == "up":
                await self._peer_up(event.peer, refresh=event.replayed)
        elif isinstance(event, Notification):
            current = self.sessions.get(event.peer)
            if current is not None:
                info = f"NOTIFICATION {event.direction} {event.code}/{event.subcode} {event.message}".strip()
                self.sessions[event.peer] = replace(current, last_error=info, last_notification=info)
        elif isinstance(event, Disconnected | Shutdown):
            log.info("ExaBGP API link lost", reason=getattr(event, "reason", "shutdown"))

    async def _resync(self, hello: Hello) -> None:
        """Make ExaBGP's announced set equal the desired set: withdraw extras, announce everything desired."""
        self._held = hello.routes
        if self._desired_complete:
            await self._withdraw_extras(hello.routes)
        held = set(hello.routes)
        desired_lines = [format_announce(ann, peer) for (peer, _), ann in sorted(self._desired.items(), key=str)]
        for line in desired_lines:
            if line not in held:
                await self.bridge.send(line)
        log.info("resynced announcements", desired=len(desired_lines), held=len(held), complete=self._desired_complete)

    async def _withdraw_extras(self, routes: Iterable[str]) -> None:
        """Withdraw routes ExaBGP holds (per the relay's hello) that are not desired.

        ExaBGP keeps ONE route per prefix and neighbor, and a general route is sent again per neighbor
        when a session comes up (`_peer_up`), which the relay lists as `neighbor X announce ...`. Such a
        line is the general route for that neighbor, not an extra: withdrawing it would pull the prefix
        from that neighbor (a restarted agent did exactly that to a live node's block). It is only
        re-sent when it differs from the desired general route. A general line that is not desired is
        withdrawn, and what is still desired per neighbor for the prefix is sent again after it."""
        for line in routes:
            words = line.split()
            peer: str | None = None
            if len(words) >= 2 and words[0] == "neighbor":
                peer, words = words[1], words[2:]
            if len(words) < 3 or words[0] != "announce":
                continue
            prefix = normalize_prefix(words[2])
            if (peer, prefix) in self._desired:
                continue
            general = self._desired.get((None, prefix))
            if peer is not None and general is not None:
                if line != format_announce(general, peer):
                    await self.bridge.announce(general, peer)
                continue
            await self.bridge.send(format_withdraw(words[2], peer))
            if peer is None:
                await self._resend_per_peer(prefix)
        self._held = ()

    async def _peer_up(self, peer: str, *, refresh: bool) -> None:
        """Session up: re-announce this peer's routes (ExaBGP may have them queued already: harmless), then EoR."""
        spec = self._specs.get(peer)
        families = exabgp_config.families_for(spec, dual_stack=self.dual_stack) if spec else ("ipv4 unicast",)
        for (target, prefix), ann in sorted(self._desired.items(), key=str):
            # only the session's own families: ExaBGP refuses (and logs) an IPv6 route for an IPv4 session
            if (target is None or target == peer) and _family_of(prefix) in families:
                await self.bridge.announce(ann, peer)
        for family in families:
            await self.bridge.eor(peer, family)
            if refresh:
                # a replayed `up` means we (the agent) missed this session's table: ask for it again
                await self.bridge.refresh(peer, family)

    # ---- process management -------------------------------------------------------------------
    def _write(self, config: exabgp_config.ExabgpConfig) -> None:
        # Both hold BGP passwords (md5-password; the peers' options): 0600 from the first byte.
        write_private(self.conf_path, config.text)
        state = {"env": dict(config.env), "restart_key": list(config.restart_key), "peers": config.peers}
        write_private(self.state_path, json.dumps(state, default=list, sort_keys=True))
        self._config = config
        self.last_reconfigured = time.time()

    def _load_previous(self) -> exabgp_config.ExabgpConfig | None:
        """The config a previous agent left (to compare with, when adopting its ExaBGP)."""
        try:
            state = json.loads(self.state_path.read_text())
            text = self.conf_path.read_text()
            peers = {k: tuple(v) if isinstance(v, list) else v for k, v in state["peers"].items()}
            peers = {k: tuple(tuple(x) if isinstance(x, list) else x for x in v) for k, v in peers.items()}
            return exabgp_config.ExabgpConfig(
                text=text, env=state["env"], restart_key=tuple(state["restart_key"]), peers=peers
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _adopt(self) -> bool:
        """Take over an ExaBGP a previous agent started (pid file + /proc cmdline naming our config)."""
        try:
            pid = int(self.pid_path.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return False
        if str(self.conf_path).encode() not in cmdline or not any(b"exabgp" in part for part in cmdline):
            return False
        if not same_netns(pid, self.netns):
            # Same run dir, another namespace (two labs with the same node names): not ours.
            log.warning("not adopting an ExaBGP of another network namespace", pid=pid, netns=self.netns)
            return False
        self._adopted_pid = pid
        self._relay_ready = True  # it has been running: its signal handlers are in place
        return True

    def _argv(self) -> list[str]:
        argv = [self.exabgp, "server", str(self.conf_path)]
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        return argv

    async def _start(self) -> None:
        assert self._config is not None
        env = {k: v for k, v in os.environ.items() if not k.lower().startswith("exabgp")}
        env.update(self._config.env)
        logf = open(self.log_path, "ab")  # noqa: SIM115 (handed to the child; closed right after spawn)
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *self._argv(),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=logf,
                stderr=logf,
                env=env,
                start_new_session=True,
                cwd=str(self.run_dir),
            )
        finally:
            logf.close()
        self._adopted_pid = None
        self._relay_ready = False
        self._exited.clear()
        self.pid_path.write_text(f"{self._proc.pid}\n")
        log.info("ExaBGP started", pid=self._proc.pid, netns=self.netns, config=str(self.conf_path))

    def _signal(self, sig: int) -> None:
        pid = self.pid
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    async def _wait_exit(self) -> int | None:
        """Wait for the running ExaBGP (child or adopted) to exit; returns its code when known."""
        if self._proc is not None and self._proc.returncode is None:
            return await self._proc.wait()
        pid = self._adopted_pid
        if pid is None:
            return None
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            self._adopted_pid = None
            return None
        loop = asyncio.get_running_loop()
        gone = loop.create_future()
        loop.add_reader(fd, lambda: gone.done() or gone.set_result(None))
        try:
            await gone
        finally:
            loop.remove_reader(fd)
            os.close(fd)
        self._adopted_pid = None
        return None

    async def _terminate(self, timeout: float = 5.0) -> None:
        pid = self.pid
        if pid is None:
            return
        self._signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self._wait_exit(), timeout)
        except TimeoutError:
            log.warning("ExaBGP ignored SIGTERM, killing it", pid=pid)
            self._signal(signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wait_exit(), timeout)
        self._proc = None
        self._adopted_pid = None

    async def _restart(self, why: str) -> None:
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._supervisor
            self._supervisor = None
        log.info("restarting ExaBGP", reason=why)
        await self._terminate()
        await self._start()
        self.restarts += 1
        self._ensure_supervisor()

    def _ensure_supervisor(self) -> None:
        if self._supervisor is None or self._supervisor.done():
            self._supervisor = asyncio.create_task(self._supervise(), name="exabgp-supervisor")

    async def _supervise(self) -> None:
        """Restart ExaBGP whenever it exits, with exponential backoff reset after a stable run."""
        delay = self.backoff_initial
        while not self._stopping:
            started = time.monotonic()
            code = await self._wait_exit()
            if self._stopping:
                return
            ran = time.monotonic() - started
            if ran >= self.stable_after:
                delay = self.backoff_initial
            for addr, status in self.sessions.items():
                self.sessions[addr] = replace(status, state="Idle", since=time.time(), info="ExaBGP exited")
            log.warning("ExaBGP exited", code=code, ran_s=round(ran, 1), restart_in_s=delay, log=str(self.log_path))
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.backoff_max)
            if self.pid is not None:  # apply() started one during the backoff: supervise it, start no second
                continue
            try:
                await self._start()
                self.restarts += 1
            except OSError as exc:
                log.error("ExaBGP start failed", error=str(exc))

    def _bridge_task_missing(self) -> bool:
        return self._pump is None or self._pump.done()


def same_netns(pid: int, netns: str | None) -> bool:
    """Whether process ``pid`` lives in network namespace ``netns`` (a /run/netns name or path; None: ours)."""
    ours = (netns if "/" in netns else f"/run/netns/{netns}") if netns else "/proc/self/ns/net"
    try:
        theirs_st = os.stat(f"/proc/{pid}/ns/net")
        ours_st = os.stat(ours)
    except OSError:
        return False
    return (theirs_st.st_dev, theirs_st.st_ino) == (ours_st.st_dev, ours_st.st_ino)
