"""Errors of the lab runner.

Why a small hierarchy: the CLI turns every ``LabError`` into one line per problem on stderr and
a non-zero exit, so a user mistake never shows a traceback; anything else is a bug and is
allowed to surface as one.
"""

from __future__ import annotations


class LabError(Exception):
    """A problem the user can act on (bad file, lab already deployed, a daemon that died)."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems: list[str] = problems if problems else [message]


class TopologyError(LabError):
    """The topology file is malformed; ``problems`` holds one line per mistake found."""

    def __init__(self, path: str, problems: list[str]) -> None:
        super().__init__(f"{path}: {len(problems)} problem(s) in the topology file", problems)
        self.path = path


class NotRootError(LabError):
    """Namespaces, veth pairs and daemons need root; said plainly instead of an EPERM trace."""
