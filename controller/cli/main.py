"""``tabbyctl``: the calicoctl-compatible command line of Tabby.

The root group reads the global options (datastore settings, logging) and every failure is
turned into something a user can act on: a mistake (bad YAML, a validation problem, an
unknown kind, a missing file, a conflict, an unreachable etcd) prints one ``Error: ...`` line
per problem on stderr and exits 1; a bug prints one ``internal error`` line plus a hint to
rerun with ``--log-level debug``, which then shows the traceback. Never a bare traceback.
"""

from __future__ import annotations

import gc
import os
import sys
import threading
from collections.abc import Sequence

import click

from controller.cli.context import CalicoctlError, CliState, user_problems
from controller.cli.controller import controller
from controller.cli.datastore_cmd import datastore
from controller.cli.flows import flows
from controller.cli.ipam import ipam
from controller.cli.node import node
from controller.cli.policy_cmd import policy
from controller.cli.resources import COMMANDS
from controller.cli.version import version

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


class _TabbyGroup(click.Group):
    """The root group; mounts ``lab`` lazily so start-up does not pay for importing it."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), "lab"})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is None and cmd_name == "lab":
            command = _load_lab()
            self.add_command(command, "lab")
        return command


@click.group(cls=_TabbyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "-c",
    "--config",
    "config_file",
    metavar="FILE",
    help="Datastore settings file (calicoctl CalicoAPIConfig YAML, or a mapping of ETCD_* names).",
)
@click.option(
    "--etcd-endpoints",
    metavar="URLS",
    help="Comma-separated etcd endpoints; overrides ETCD_ENDPOINTS and the config file.",
)
@click.option(
    "-l",
    "--log-level",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    default="warning",
    show_default=True,
    help="Log level (logs go to stderr).",
)
@click.option(
    "--log-format",
    type=click.Choice(["console", "json"]),
    default="console",
    show_default=True,
    help="Log line format.",
)
@click.pass_context
def cli(
    ctx: click.Context, config_file: str | None, etcd_endpoints: str | None, log_level: str, log_format: str
) -> None:
    """Manage a Tabby network: resources in etcd, IP address management, the lab.

    Datastore settings come from ETCD_ENDPOINTS, ETCD_CA_CERT_FILE, ETCD_CERT_FILE,
    ETCD_KEY_FILE, ETCD_USERNAME, ETCD_PASSWORD (and TABBY_ETCD_PREFIX), or from -c FILE.
    TABBY_ETCD_TIMEOUT bounds the wait for an unreachable etcd (default 5 s).
    """
    from common import logs

    obj = ctx.ensure_object(CliState)
    obj.config_file = config_file or obj.config_file
    obj.etcd_endpoints = etcd_endpoints
    obj.log_level = log_level.lower()
    logs.configure(level=obj.log_level, fmt=log_format)


for _command in (*COMMANDS, ipam, version, node, controller, datastore, flows, policy):
    cli.add_command(_command)


def _load_lab() -> click.Command:
    """The ``lab`` group, imported on first use (it is heavy; most commands never need it).

    A lab runner that fails to import must not break tabbyctl: a stand-in ``lab`` command
    then says why instead of the whole CLI failing with a traceback.
    """
    try:
        from lab.cli import lab
    except Exception as exc:  # ImportError before it lands; anything while it is being edited
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0]

        @click.command(
            "lab", context_settings={"ignore_unknown_options": True, "allow_extra_args": True}, add_help_option=False
        )
        def lab_unavailable() -> None:
            """Lab runner (unavailable in this installation)."""
            from controller.cli.context import UserError

            raise UserError(f"the lab commands are unavailable: {reason}")

        return lab_unavailable
    return lab


def _debug_requested(argv: Sequence[str]) -> bool:
    """Whether the user asked for debug logs (looked up in argv: the group may not have run)."""
    for i, arg in enumerate(argv):
        if arg in ("-l", "--log-level") and i + 1 < len(argv) and argv[i + 1].lower() == "debug":
            return True
        if arg.lower() in ("--log-level=debug", "-ldebug"):
            return True
    return False


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point: run the CLI, map every failure to a short message and an exit code.

    Called as the console script (``argv`` None), the process ends right here once output is
    flushed and no other thread runs: the interpreter's own teardown of a 10,000-resource apply's
    heap took 0.2 s, a tenth of the whole command, and frees nothing the kernel would not."""
    if argv is None:
        _short_lived_gc()
    code = _main(argv)
    if argv is None and threading.active_count() == 1:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except (BrokenPipeError, ValueError):  # `tabbyctl get ... | head`, or a closed stream
            pass
        os._exit(code)
    return code


def _short_lived_gc() -> None:
    """Collector settings for one command's lifetime. A 10,000-document apply builds about a
    million objects that live until the end; CPython's default thresholds (a collection every 700
    allocations, with full passes as the heap grows) traversed them again and again, 0.2-0.3 s of
    the command. The objects of the imported modules are frozen (never garbage), and young
    collections run every 100,000 allocations: cyclic garbage is still collected, later."""
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)


def _main(argv: Sequence[str] | None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    # gRPC's C core prints its own warnings to stderr; keep them out of the user's way.
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    try:
        result = cli.main(args=args, prog_name="tabbyctl", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return int(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("Aborted.", err=True)
        return 130
    except BrokenPipeError:  # `tabbyctl get ... | head`
        return 0
    except CalicoctlError as exc:
        for line in exc.lines:
            click.echo(line, err=True)
        return 1
    except Exception as exc:
        problems = user_problems(exc)
        if problems is not None:
            for line in problems:
                click.echo(f"Error: {line}", err=True)
            return 1
        if _debug_requested(args):
            import traceback

            traceback.print_exc()
        click.echo(f"internal error: {type(exc).__name__}: {exc}".splitlines()[0], err=True)
        if not _debug_requested(args):
            click.echo("Rerun with --log-level debug to see the traceback.", err=True)
        return 1
    return int(result) if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
