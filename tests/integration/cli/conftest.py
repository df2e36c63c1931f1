"""Fixtures for driving ``tabbyctl`` as a user does: a subprocess against a real etcd.

Every call goes through :func:`ctl`, which also asserts the one rule that holds for every
command: no Python traceback ever reaches the user.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pytest

from datastore import Datastore, EtcdConfig

T = TypeVar("T")


def tabbyctl_command() -> list[str]:
    """The installed console script next to this interpreter (as a user runs it)."""
    script = Path(sys.executable).parent / "tabbyctl"
    if script.exists():
        return [str(script)]
    found = shutil.which("tabbyctl")
    if found:
        return [found]
    return [sys.executable, "-m", "controller.cli.main"]


@dataclass
class Result:
    rc: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


class Ctl(Protocol):
    def __call__(
        self, *args: str, input: str | None = None, env: dict[str, str] | None = None, timeout: float = 60
    ) -> Result: ...


def run_tabbyctl(args: tuple[str, ...], env: dict[str, str], input: str | None = None, timeout: float = 60) -> Result:
    proc = subprocess.run(
        [*tabbyctl_command(), *args],
        env=env,
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stdout, proc.stdout
    return Result(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def ctl(etcd_env: dict[str, str]) -> Ctl:
    """``ctl("get", "ippool")`` runs tabbyctl against this test's private etcd prefix."""

    def call(*args: str, input: str | None = None, env: dict[str, str] | None = None, timeout: float = 60) -> Result:
        return run_tabbyctl(args, env if env is not None else etcd_env, input=input, timeout=timeout)

    return call


@pytest.fixture
def run_ds(etcd_config: EtcdConfig) -> Callable[[Callable[[Datastore], Coroutine[Any, Any, T]]], T]:
    """Run ``body(ds)`` against this test's prefix (to seed or inspect data behind the CLI)."""

    def run(body: Callable[[Datastore], Coroutine[Any, Any, T]]) -> T:
        async def main() -> T:
            async with Datastore(etcd_config) as ds:
                return await body(ds)

        return asyncio.run(main())

    return run


@pytest.fixture
def write(tmp_path: Path) -> Callable[[str, str], str]:
    """Write a file under the test's temp dir and return its path."""

    def make(name: str, text: str) -> str:
        path = tmp_path / name
        path.write_text(text)
        return str(path)

    return make


def pool_yaml(name: str, cidr: str, **spec: Any) -> str:
    """One calicoctl IPPool document."""
    lines = [
        "apiVersion: projectcalico.org/v3",
        "kind: IPPool",
        "metadata:",
        f"  name: {name}",
        "spec:",
        f"  cidr: {cidr}",
    ]
    lines += [f"  {k}: {str(v).lower() if isinstance(v, bool) else v}" for k, v in spec.items()]
    return "\n".join(lines) + "\n"


@pytest.fixture
def pool_doc() -> Callable[..., str]:
    return pool_yaml


@pytest.fixture
def no_etcd_env(etcd_env: dict[str, str]) -> dict[str, str]:
    """Environment pointing at a port where nothing listens, with a short bounded wait."""
    env = dict(etcd_env)
    env["ETCD_ENDPOINTS"] = "http://127.0.0.1:9"
    env["TABBY_ETCD_TIMEOUT"] = "2"
    env.pop("GRPC_VERBOSITY", None)
    return env
