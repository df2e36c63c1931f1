"""Every file in malformed/ holds one mistake a user could make in calicoctl YAML.

The first line of each file is `# expect: <fragment>`: the ResourceError must contain that
fragment (usually `<field.path>: <reason>`) on a line naming the file, and nothing may be returned.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from datamodel.resources import ResourceError, parse_documents

CORPUS = Path(__file__).parent / "malformed"
FILES = sorted(CORPUS.glob("*.yaml"))


def _expected(text: str) -> str:
    first = text.splitlines()[0]
    assert first.startswith("# expect: "), "corpus files start with '# expect: <fragment>'"
    return first[len("# expect: ") :]


def test_corpus_is_large_enough() -> None:
    assert len(FILES) >= 35


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_malformed_document_is_refused_with_its_field_path(path: Path) -> None:
    text = path.read_text()
    expected = _expected(text)
    result = None
    with pytest.raises(ResourceError) as info:
        result = parse_documents(text, source=path.name)
    assert result is None
    problems = info.value.problems
    assert problems, "a ResourceError always carries at least one problem line"
    matching = [line for line in problems if expected in line]
    assert matching, f"expected {expected!r} in:\n" + "\n".join(problems)
    for line in problems:
        assert line.startswith(f"{path.name} document "), line
        assert "\n" not in line
        assert "Value error" not in line and "Input should be" not in line, line
