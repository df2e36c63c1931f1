"""The refused-topology corpus, in two halves, each problem on one line naming its node or link.

``malformed/containerlab-refuses/``: files containerlab refuses too (schema errors, links to
missing nodes, addresses Docker would not give, ...). ``malformed/tabby-refuses/``: valid
containerlab files Tabby refuses on purpose, each with a ``# reason:`` line (they would touch the
root namespace, or need a kind other than linux). A file states what it expects in
``# expect: <text>`` header lines; each must appear in one of the reported problems (``:N:``
pins the line number too).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.errors import TopologyError
from lab.topology import load_topology

CORPUS = Path(__file__).parent / "malformed"
CLAB_REFUSES = sorted((CORPUS / "containerlab-refuses").glob("*.clab.yml"))
TABBY_REFUSES = sorted((CORPUS / "tabby-refuses").glob("*.clab.yml"))
FILES = CLAB_REFUSES + TABBY_REFUSES


def expectations(path: Path) -> list[str]:
    return [line.split("# expect:", 1)[1].strip() for line in path.read_text().splitlines()
            if line.startswith("# expect:")]


def test_corpus_is_there() -> None:
    assert len(CLAB_REFUSES) >= 25 and len(TABBY_REFUSES) >= 6
    assert all(expectations(f) for f in FILES), "every corpus file states what it expects"
    assert all("# reason:" in f.read_text() for f in TABBY_REFUSES), "a deliberate refusal says why"


@pytest.mark.parametrize("path", FILES, ids=[f"{f.parent.name}/{f.name.removesuffix('.clab.yml')}" for f in FILES])
def test_malformed_file_is_refused_with_a_named_problem(path: Path) -> None:
    with pytest.raises(TopologyError) as info:
        load_topology(path)
    problems = info.value.problems
    assert problems
    for line in problems:
        assert "\n" not in line
        assert line.startswith(str(path)), line
    for expected in expectations(path):
        assert any(expected in p for p in problems), f"{expected!r} not in {problems}"
