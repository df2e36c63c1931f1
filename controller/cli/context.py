"""What every tabbyctl command shares: global options, the datastore connection, user errors.

Why a separate module: each command is a few lines of "read input, call the store, print";
the parts that must behave identically everywhere (how etcd settings are read, the bounded
wait before "etcd unreachable", turning any known failure into one line per problem) live
here once. Heavy modules (aetcd/grpc, the pydantic models) are imported inside functions so
``tabbyctl --help`` and ``tabbyctl version`` start quickly.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from datastore import Datastore, EtcdConfig

T = TypeVar("T")

#: calicoctl's default configuration file, read when no -c/--config is given and it exists.
DEFAULT_CONFIG_FILE = "/etc/calico/calicoctl.cfg"
#: Where to look for that file instead (tests; a packaged install with another /etc).
DEFAULT_CONFIG_ENV = "TABBY_CALICOCTL_CFG"
#: calicoctl reads its settings also with a CALICO_ prefix (CALICO_ETCD_ENDPOINTS, ...).
_CALICO_ALIASES = (
    "ETCD_ENDPOINTS",
    "ETCD_CA_CERT_FILE",
    "ETCD_CERT_FILE",
    "ETCD_KEY_FILE",
    "ETCD_USERNAME",
    "ETCD_PASSWORD",
    "DATASTORE_TYPE",
)

#: tabbyctl waits this long for etcd before saying it is unreachable (daemons wait longer).
DEFAULT_CLI_TIMEOUT = 5.0
TIMEOUT_ENV = "TABBY_ETCD_TIMEOUT"


class UserError(Exception):
    """A mistake the user can fix: printed as one ``Error: ...`` line per problem, exit 1."""

    def __init__(self, problems: str | Sequence[str]) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


class CalicoctlError(Exception):
    """A failure printed exactly as calicoctl prints it (stderr, no ``Error:`` prefix), exit 1: for the
    lines scripts written for calicoctl parse (``Failed to create 'IPPool' resource: [...]``)."""

    def __init__(self, lines: Sequence[str]) -> None:
        self.lines = list(lines)
        super().__init__("; ".join(self.lines))


@dataclass
class CliState:
    """Global options, filled in by the root group and by per-command ``-c`` options."""

    config_file: str | None = None
    etcd_endpoints: str | None = None
    log_level: str = "warning"
    #: Write ClusterInformation on first contact with a datastore that has none (calico-node's rule).
    initialise: bool = True
    environ: dict[str, str] = field(default_factory=lambda: dict(os.environ))

    def etcd_config(self, timeout: float | None = None) -> EtcdConfig:
        """Settings as calicoctl reads them (file, then environment), with tabbyctl's bounded wait."""
        from datastore import EtcdConfig

        env = dict(self.environ)
        for name in _CALICO_ALIASES:
            if not env.get(name) and env.get(f"CALICO_{name}"):
                env[name] = env[f"CALICO_{name}"]
        dstype = env.get("DATASTORE_TYPE", "").strip()
        if dstype and dstype != "etcdv3":
            raise UserError(
                f"DATASTORE_TYPE={dstype}: Tabby supports only the etcdv3 datastore (unset it, or set etcdv3)"
            )
        if self.etcd_endpoints:
            env["ETCD_ENDPOINTS"] = self.etcd_endpoints
        config_file = self.config_file
        if config_file is None:
            default = env.get(DEFAULT_CONFIG_ENV) or DEFAULT_CONFIG_FILE
            config_file = default if os.path.isfile(default) else None
        config = EtcdConfig.load(config_file, env)
        wait = timeout if timeout is not None else cli_timeout(env)
        return replace(config, connect_timeout=wait, rpc_timeout=min(config.rpc_timeout, max(wait, 0.5)))

    def run(self, body: Callable[[Datastore], Awaitable[T]], *, timeout: float | None = None) -> T:
        """Connect (bounded), run ``body`` with the datastore, always close the connection."""
        from datastore import Datastore

        config = self.etcd_config(timeout)

        async def main() -> T:
            ds = Datastore(config)
            try:
                await ds.connect()
                if self.initialise:
                    from controller.cluster_info import ensure_cluster_information
                    from datastore import DatastoreError

                    try:
                        await ensure_cluster_information(ds)
                    except DatastoreError as exc:  # e.g. a read-only etcd user: reads still work
                        import structlog

                        structlog.get_logger("tabby.cli").debug("cli.cluster_info_skipped", error=str(exc))
                return await body(ds)
            finally:
                await ds.close()

        return asyncio.run(main())


def cli_timeout(env: dict[str, str]) -> float:
    raw = env.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_CLI_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        raise UserError(f"{TIMEOUT_ENV}: must be a number of seconds, got {raw!r}") from None
    if value <= 0:
        raise UserError(f"{TIMEOUT_ENV}: must be more than 0 seconds, got {raw!r}")
    return value


def state() -> CliState:
    """The CliState of the running command (created by the root group)."""
    ctx = click.get_current_context()
    obj = ctx.find_object(CliState)
    if obj is None:
        obj = ctx.ensure_object(CliState)
    return obj


def _set_config(ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value:
        ctx.ensure_object(CliState).config_file = value
    return value


def datastore_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """``-c/--config`` on the subcommand too, because calicoctl puts it there."""
    func = click.option(
        "-c",
        "--config",
        "config_file",
        metavar="FILE",
        expose_value=False,
        is_eager=True,
        callback=_set_config,
        help="Datastore settings file (calicoctl CalicoAPIConfig or ETCD_* mapping).",
    )(func)
    func = click.option(
        "--allow-version-mismatch",
        is_flag=True,
        expose_value=False,
        hidden=True,
        help="Accepted for calicoctl compatibility; tabbyctl does not check versions.",
    )(func)
    return func


def user_problems(exc: BaseException) -> list[str] | None:
    """The one-line problems for an exception that is the user's to fix, or None if it is a bug.

    Only classes from modules already imported are checked, so classifying an error never
    imports the heavy datastore or model code.
    """
    import sys

    if isinstance(exc, UserError):
        return exc.problems
    store = sys.modules.get("controller.resource_store")
    if store is not None and isinstance(exc, store.StoreError):
        return exc.problems
    resources = sys.modules.get("datamodel.resources.errors")
    if resources is not None and isinstance(exc, resources.ResourceError):
        return exc.problems
    ds = sys.modules.get("datastore")
    if ds is not None and isinstance(exc, ds.ConfigError | ds.DatastoreError):
        return [str(exc)]
    ipam_errors = sys.modules.get("ipam.errors")
    if ipam_errors is not None and isinstance(exc, ipam_errors.IPAMError):
        return [str(exc)]
    if isinstance(exc, FileNotFoundError | PermissionError | IsADirectoryError):
        return [f"{exc.filename}: {exc.strerror}"]
    return None
