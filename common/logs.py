"""One structlog set-up for every Tabby process (daemons and tabbyctl).

Why one module: operators grep logs from the controller, the node agents and the CLI side by
side, so every process must use the same keys (``timestamp``, ``level``, ``logger``,
``event``) and the same two renderings: a console line for humans and one JSON object per
line for log collectors (``--log-format json``). Logs always go to stderr so a command's
stdout stays machine-readable (``tabbyctl get -o json | jq`` must never see a log line).
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog

LEVELS = ("debug", "info", "warning", "error", "critical")
FORMATS = ("console", "json")


def level_number(level: str) -> int:
    """``"warning"`` -> ``logging.WARNING``; unknown names are a user mistake, not a crash."""
    name = level.strip().lower()
    if name == "warn":
        name = "warning"
    if name not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, got {level!r}")
    return int(getattr(logging, name.upper()))


def configure(level: str = "info", fmt: str = "console", stream: TextIO | None = None, *,
              adjustable: bool = False) -> None:
    """Configure structlog and the stdlib root logger to write ``fmt`` lines to stderr.

    Stdlib logging (aetcd, grpc, asyncio) is routed through the same renderer so third-party
    messages look like ours and obey the same level. ``adjustable``: the level can be changed
    later by :func:`set_level` (the agent follows FelixConfiguration's logSeverityScreen); the
    level is then checked on the stdlib logger first thing (``filter_by_level``) instead of being
    baked into the bound loggers' class, which loggers bound before the change would keep.
    """
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    number = level_number(level)
    out = stream if stream is not None else sys.stderr

    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(sort_keys=True)
        shared.append(structlog.processors.format_exc_info)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())

    structlog.configure(
        processors=[
            *([structlog.stdlib.filter_by_level] if adjustable else []),
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG if adjustable else number),
        cache_logger_on_first_use=False,
    )

    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=shared,
        )
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(number)


def set_level(level: str) -> None:
    """Change the level of a process configured with ``adjustable=True`` (takes effect at once)."""
    logging.getLogger().setLevel(level_number(level))


def current_level() -> str:
    return logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower()
