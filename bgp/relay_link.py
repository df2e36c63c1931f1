"""The agent's end of the ExaBGP API: a unix socket server that the `exabgp_api.py` relay connects to.

Lines read from the relay go through the codec (`bgp.exabgp_codec.parse_line`) and become events in a
bounded queue; acks (`done`/`error`) are matched to the oldest command awaiting one; a line that does
not parse is logged and counted, never raised.

Why the agent is the server: ExaBGP (and so the relay) may outlive the agent. A restarted agent binds
the same path again and the relay, which retries forever, reconnects and sends a hello listing the
routes ExaBGP still announces plus the last state line of every peer (marked `replayed` here).

Flow control: the reader never waits on the consumer for long (events go into a bounded queue; if the
consumer stalls until the queue is full the reader waits, the relay's buffer grows, and at its cap
the relay drops the connection and the agent resyncs through the next hello — ExaBGP itself is never
blocked because the relay always drains its pipe). Writes await `drain()`, so a slow ExaBGP slows the
agent's writer instead of growing memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import structlog

from bgp.exabgp_codec import (
    ACK_DONE,
    BadLine,
    Disconnected,
    Event,
    Hello,
    PeerState,
    format_announce,
    format_eor,
    format_refresh,
    format_withdraw,
    parse_line,
)
from bgp.types import Announcement

__all__ = ["BgpBridge", "BridgeStats"]

#: Seconds a command write may wait for the relay to read before the link is dropped.
DRAIN_TIMEOUT_S = 10.0
log = structlog.get_logger("tabby.bgp.bridge")

MAX_LINE = 1024 * 1024
"""Longest line accepted from the relay; longer ones are discarded up to their newline and counted bad."""


@dataclass
class BridgeStats:
    """Counters for `tabbyctl node status` and tests: how much came through and how much was refused."""

    lines: int = 0
    events: int = 0
    bad_lines: int = 0
    ignored: int = 0
    acks_done: int = 0
    acks_error: int = 0
    acks_unmatched: int = 0
    commands: int = 0
    commands_dropped: int = 0
    connections: int = 0
    last_bad: str = ""
    errors: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# the socket server
# ---------------------------------------------------------------------------------------------
class BgpBridge:
    """Unix socket server for the relay; one live connection at a time (a new one replaces the old).

    Use: `await bridge.start()`, then consume `await bridge.next_event()` (or iterate `bridge.events()`),
    and send with `await bridge.send(cmd)` / `announce()` / `withdraw()` / `eor()`. `send` returns False (and
    counts the command as dropped) when no relay is connected: the owner of the desired state re-sends
    everything on the next Hello, so queueing here would only duplicate work.
    """

    def __init__(self, socket_path: str, *, max_line: int = MAX_LINE, queue_size: int = 100_000) -> None:
        self.socket_path = socket_path
        self.max_line = max_line
        self.stats = BridgeStats()
        self._queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=queue_size)
        self._server: asyncio.AbstractServer | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._pending: deque[str] = deque()
        self._replay_left = 0
        self._connected = asyncio.Event()
        self._write_lock = asyncio.Lock()
        self.hello: Hello | None = None

    # ---- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Bind the socket (replacing a stale one left by a previous agent) and accept the relay."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
        os.makedirs(os.path.dirname(self.socket_path) or ".", exist_ok=True)
        self._server = await asyncio.start_unix_server(self._accept, path=self.socket_path, limit=self.max_line)
        os.chmod(self.socket_path, 0o600)
        log.info("bridge listening", socket=self.socket_path)

    async def close(self) -> None:
        """Stop listening and drop the relay's connection (ExaBGP keeps running; the relay will retry)."""
        if self._server is not None:
            self._server.close()
        await self._drop("bridge closed")
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)

    @property
    def connected(self) -> bool:
        return self._writer is not None and not self._writer.is_closing()

    async def wait_connected(self, timeout: float) -> bool:
        """Wait (bounded) until a relay is connected."""
        try:
            await asyncio.wait_for(self._connected.wait(), timeout)
        except TimeoutError:
            return False
        return True

    # ---- events ------------------------------------------------------------------------------
    async def next_event(self, timeout: float | None = None) -> Event:
        """The next event; raises TimeoutError after `timeout` seconds."""
        if timeout is None:
            return await self._queue.get()
        return await asyncio.wait_for(self._queue.get(), timeout)

    async def events(self):  # type: ignore[no-untyped-def]
        """Async iterator over events, forever."""
        while True:
            yield await self._queue.get()

    # ---- commands ----------------------------------------------------------------------------
    async def send(self, command: str) -> bool:
        """Write one command line; waits for the socket to drain (backpressure). False when not connected."""
        if "\n" in command or "\r" in command or not command.strip():
            raise ValueError("a command is one non-empty line")
        async with self._write_lock:
            writer = self._writer
            if writer is None or writer.is_closing():
                self.stats.commands_dropped += 1
                log.debug("command dropped: no relay connected", command=command[:200])
                return False
            try:
                writer.write(command.encode("ascii") + b"\n")
                await asyncio.wait_for(writer.drain(), DRAIN_TIMEOUT_S)
            except (ConnectionError, OSError) as exc:
                self.stats.commands_dropped += 1
                log.warning("command write failed", command=command[:200], error=str(exc))
                return False
            except TimeoutError:
                # A relay (or ExaBGP) that stopped reading would otherwise hold every caller forever.
                # Dropping the link is safe: the relay's next hello makes the speaker re-send everything.
                self.stats.commands_dropped += 1
                log.warning("relay stalled: dropping the API link", command=command[:200])
                writer.close()
                return False
            self._pending.append(command)
            self.stats.commands += 1
            return True

    async def announce(self, ann: Announcement, peer: str | None = None) -> bool:
        return await self.send(format_withdraw(ann.prefix, peer) if ann.withdraw else format_announce(ann, peer))

    async def withdraw(self, prefix: str, peer: str | None = None) -> bool:
        return await self.send(format_withdraw(prefix, peer))

    async def eor(self, peer: str | None = None, family: str = "ipv4 unicast") -> bool:
        return await self.send(format_eor(peer, family))

    async def refresh(self, peer: str | None = None, family: str = "ipv4 unicast") -> bool:
        return await self.send(format_refresh(peer, family))

    async def reload(self) -> bool:
        """API reload (same as SIGUSR1): re-read the config; unchanged sessions stay up."""
        return await self.send("reload")

    # ---- connection handling -----------------------------------------------------------------
    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._writer is not None:
            await self._drop("replaced by a new relay connection")
        self._writer = writer
        self._pending.clear()
        self._replay_left = 0
        self.stats.connections += 1
        self._connected.set()
        task = asyncio.current_task()
        self._reader_task = task
        try:
            await self._read_loop(reader)
        except (ConnectionError, OSError) as exc:
            log.info("relay connection error", error=str(exc))
        except asyncio.CancelledError:
            pass
        finally:
            if self._writer is writer:
                self._writer = None
                self._connected.clear()
                self._pending.clear()
                await self._emit(Disconnected("relay connection closed"))
            writer.close()

    async def _drop(self, reason: str) -> None:
        writer, task = self._writer, self._reader_task
        self._writer = None
        self._connected.clear()
        if writer is not None:
            writer.close()
        if task is not None and task is not asyncio.current_task() and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, 2)
        if writer is not None:
            await self._emit(Disconnected(reason))

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        buf = bytearray()
        discarding = False
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                return
            buf += chunk
            while True:
                cut = buf.find(b"\n")
                if cut < 0:
                    if len(buf) > self.max_line:
                        if not discarding:
                            self._bad(bytes(buf[:120]), f"line longer than {self.max_line} bytes")
                        discarding = True
                        buf.clear()
                    break
                raw = bytes(buf[:cut])
                del buf[: cut + 1]
                if discarding:
                    discarding = False
                    continue
                if len(raw) > self.max_line:
                    self._bad(raw[:120], f"line longer than {self.max_line} bytes")
                    continue
                await self.handle_line(raw)

    def _bad(self, raw: bytes, why: str) -> None:
        self.stats.bad_lines += 1
        self.stats.last_bad = why
        log.warning("bad line from ExaBGP skipped", reason=why, line=raw[:120].decode("utf-8", "replace"))

    async def handle_line(self, raw: bytes) -> None:
        """Parse one line and act on it; never raises for bad input (public so tests can inject lines)."""
        self.stats.lines += 1
        try:
            text = raw.decode("utf-8")
            result = parse_line(text)
        except UnicodeDecodeError:
            self._bad(raw, "not UTF-8")
            return
        except BadLine as exc:
            self._bad(raw, str(exc))
            return
        except Exception as exc:  # a parser bug must not kill the bridge: log loudly, keep going
            self._bad(raw, f"parser error {type(exc).__name__}: {exc}")
            return
        if result is None:
            self.stats.ignored += 1
            return
        if isinstance(result, str):
            self._ack(result)
            return
        if isinstance(result, Hello):
            self.hello = result
            self._replay_left = result.replay
            log.info(
                "relay connected",
                helper_pid=result.helper_pid,
                exabgp_pid=result.exabgp_pid,
                dropped=result.dropped,
                routes=len(result.routes),
            )
        elif isinstance(result, PeerState) and self._replay_left > 0:
            self._replay_left -= 1
            result = PeerState(**{**_fields(result), "replayed": True})
        await self._emit(result)

    def _ack(self, answer: str) -> None:
        command = self._pending.popleft() if self._pending else None
        if command is None:
            self.stats.acks_unmatched += 1
        if answer == ACK_DONE:
            self.stats.acks_done += 1
            return
        self.stats.acks_error += 1
        self.stats.errors = [*self.stats.errors[-19:], command or "?"]
        log.warning("ExaBGP refused a command", command=(command or "?")[:200])

    async def _emit(self, event: Event) -> None:
        self.stats.events += 1
        await self._queue.put(event)


def _fields(obj: Any) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in obj.__slots__}


def stamp() -> float:
    """Wall-clock time for `since` columns (kept here so tests can patch one place)."""
    return time.time()
