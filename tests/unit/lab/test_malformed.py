"""Every file in malformed/ is refused, each problem on one line naming its node or link.

A file states what it expects in ``# expect: <text>`` header lines; each must appear in one of
the reported problems (``:N:`` pins the line number too).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.errors import TopologyError
from lab.topology import load_topology

CORPUS = Path(__file__).parent / "malformed"
FILES = sorted(CORPUS.glob("*.clab.yml"))


def expectations(path: Path) -> list[str]:
    return [line.split("# expect:", 1)[1].strip() for line in path.read_text().splitlines()
            if line.startswith("# expect:")]


def test_corpus_is_there() -> None:
    assert len(FILES) >= 30
    assert all(expectations(f) for f in FILES), "every corpus file states what it expects"


@pytest.mark.parametrize("path", FILES, ids=[f.name.removesuffix(".clab.yml") for f in FILES])
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
