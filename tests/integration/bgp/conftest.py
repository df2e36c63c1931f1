"""Fixtures for the speaker's integration tests: an asyncio loop in a thread, namespaces, FRR, a Speaker.

ExaBGP takes ~2 s to start and FRR sessions a few more, so the expensive pieces are module-scoped and
each test module leaves them in a known state. Every fixture kills what it started and deletes what it
created in `finally`, so a failing test leaves no namespace, daemon or ExaBGP behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from bgp.exabgp_codec import Event
from bgp.speaker import Speaker
from tests.integration.bgp.lab import Frr, Netns, wait_for

T = TypeVar("T")

pytestmark = [pytest.mark.root, pytest.mark.slow]


class LoopThread:
    """A private event loop in a daemon thread: sync tests drive the async Speaker with `run(coro)`."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


class Events:
    """Every event a Speaker passed to on_event, with a bounded wait for one matching a predicate."""

    def __init__(self) -> None:
        self.items: list[Event] = []
        self.lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        with self.lock:
            self.items.append(event)

    def snapshot(self) -> list[Event]:
        with self.lock:
            return list(self.items)

    def wait(self, what: str, pred: Callable[[Event], bool], timeout: float = 20) -> Event:
        return wait_for(what, lambda: next((e for e in self.snapshot() if pred(e)), None), timeout)


def need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, FRR, ExaBGP)")


@pytest.fixture(scope="module")
def loop_thread() -> Iterator[LoopThread]:
    lt = LoopThread()
    try:
        yield lt
    finally:
        lt.close()


@pytest.fixture(scope="module")
def make_ns() -> Iterator[Callable[[str], Netns]]:
    """Namespace factory; every namespace made is deleted at module end."""
    need_root()
    made: list[Netns] = []

    def make(tag: str) -> Netns:
        ns = Netns(tag)
        made.append(ns)
        return ns

    try:
        yield make
    finally:
        for ns in reversed(made):
            ns.close()


@pytest.fixture(scope="module")
def make_frr() -> Iterator[Callable[[Netns], Frr]]:
    made: list[Frr] = []

    def make(ns: Netns) -> Frr:
        frr = Frr(ns)
        made.append(frr)
        return frr

    try:
        yield make
    finally:
        for frr in made:
            frr.close()


@pytest.fixture(scope="module")
def make_speaker(
    loop_thread: LoopThread, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., tuple[Speaker, Events]]]:
    """Speaker factory: every Speaker (and its ExaBGP) is stopped at module end, also after a failure."""
    made: list[Speaker] = []

    def make(ns: Netns, run_dir: Path | None = None, **kw: Any) -> tuple[Speaker, Events]:
        events = Events()
        speaker = Speaker(ns.name, run_dir or tmp_path_factory.mktemp("speaker"), on_event=events, **kw)
        made.append(speaker)
        return speaker, events

    try:
        yield make
    finally:
        for speaker in made:
            try:
                loop_thread.run(speaker.stop(), timeout=20)
            except Exception:
                pid = speaker.pid
                if pid:
                    with contextlib.suppress(OSError):
                        os.kill(pid, 9)
