"""Tests for the Calico selector language: table tests for every construct plus hypothesis round-trips.

The property tests generate selector trees directly, print them, parse them back, and compare
matching against a tiny independent evaluator, so printer, parser and matcher check each other.
"""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from datamodel.selector import (
    All,
    And,
    Compare,
    Has,
    In,
    Not,
    Or,
    Selector,
    SelectorError,
    canonical_selector,
    parse_selector,
    quote_value,
    selector_matches,
    validate_selector,
)

NODE = {"kubernetes.io/hostname": "node-1", "zone": "us-east-1a", "rack": "r1", "empty": ""}

MATCH_CASES: list[tuple[str, Mapping[str, str], bool]] = [
    # all(), global(), empty
    ("all()", {}, True),
    ("all()", NODE, True),
    ("global()", NODE, True),
    ("", {}, True),
    ("   \t\n", NODE, True),
    ("all( )", NODE, True),
    # has
    ("has(zone)", NODE, True),
    ("has(missing)", NODE, False),
    ("!has(missing)", NODE, True),
    ("!has(zone)", NODE, False),
    ("has( kubernetes.io/hostname )", NODE, True),
    ("has(empty)", NODE, True),
    # == and !=
    ('zone == "us-east-1a"', NODE, True),
    ("zone == 'us-east-1a'", NODE, True),
    ('zone == "us-east-1b"', NODE, False),
    ('missing == "x"', NODE, False),
    ('zone != "us-east-1b"', NODE, True),
    ('zone != "us-east-1a"', NODE, False),
    ('missing != "x"', NODE, True),
    ('empty == ""', NODE, True),
    ('missing == ""', NODE, False),
    ('kubernetes.io/hostname=="node-1"', NODE, True),
    ('kubernetes.io/hostname!="node-1"', NODE, False),
    # in / not in
    ('zone in {"us-east-1a", "us-west-2"}', NODE, True),
    ('zone in {"us-west-2"}', NODE, False),
    ("zone in {}", NODE, False),
    ('missing in {"x"}', NODE, False),
    ('zone not in {"us-west-2"}', NODE, True),
    ('zone not in {"us-east-1a"}', NODE, False),
    ("zone not in {}", NODE, True),
    ('missing not in {"x"}', NODE, True),
    ("zone in{'us-east-1a','b'}", NODE, True),
    ('zone   not   in   {  "us-west-2"  }', NODE, True),
    # contains / starts with / ends with
    ('zone contains "east"', NODE, True),
    ('zone contains "west"', NODE, False),
    ('zone contains ""', NODE, True),
    ('missing contains ""', NODE, False),
    ('zone starts with "us-"', NODE, True),
    ('zone starts with "eu-"', NODE, False),
    ('zone starts   with "us-"', NODE, True),
    ('missing starts with ""', NODE, False),
    ('zone ends with "1a"', NODE, True),
    ('zone ends with "1b"', NODE, False),
    ('missing ends with ""', NODE, False),
    # quotes: either style, the other quote inside
    ("""rack == 'r1'""", NODE, True),
    ("""q == 'say "hi"'""", {"q": 'say "hi"'}, True),
    ('''q == "it's"''', {"q": "it's"}, True),
    ('q == "a && b || !c"', {"q": "a && b || !c"}, True),
    # ! && || and precedence
    ('has(zone) && rack == "r1"', NODE, True),
    ('has(zone) && rack == "r2"', NODE, False),
    ('has(missing) || rack == "r1"', NODE, True),
    ("has(missing) || has(other)", NODE, False),
    # && binds tighter than ||: true || (false && false)
    ("has(zone) || has(missing) && has(other)", NODE, True),
    # (true || false) && false
    ("(has(zone) || has(missing)) && has(other)", NODE, False),
    # false && false || true  ==  (false && false) || true
    ("has(missing) && has(other) || has(zone)", NODE, True),
    # ! binds tighter than &&: (!true) && true
    ("!has(zone) && has(rack)", NODE, False),
    ("!(has(zone) && has(missing))", NODE, True),
    ('!zone == "us-east-1a"', NODE, False),
    ("!!has(zone)", NODE, True),
    ("! ! ! has(zone)", NODE, False),
    # nested parentheses and whitespace
    ("((((has(zone)))))", NODE, True),
    ("((has(zone) && (has(rack) || has(x))) && !(has(y)))", NODE, True),
    ('(zone=="us-east-1a")&&(rack!="r2")||has(x)', NODE, True),
    ("\thas(zone)\n&&\r\nhas(rack) ", NODE, True),
    # keys that look like keywords are ordinary keys when not followed by '('
    ('has == "1"', {"has": "1"}, True),
    ('all == "1"', {"all": "1"}, True),
    ('global != "1"', {}, True),
    ('in in {"1"}', {"in": "1"}, True),
    ('not not in {"1"}', {"not": "2"}, True),
    ('contains contains "x"', {"contains": "xx"}, True),
    ("has(has)", {"has": ""}, True),
    # long chains
    (" && ".join(f"has(k{i})" for i in range(300)), {f"k{i}": "" for i in range(300)}, True),
    (" && ".join(f"has(k{i})" for i in range(300)), {f"k{i}": "" for i in range(299)}, False),
    (" || ".join(f'k == "{i}"' for i in range(300)), {"k": "299"}, True),
    (" || ".join(f'k == "{i}"' for i in range(300)), {"k": "300"}, False),
]


@pytest.mark.parametrize(("text", "labels", "expected"), MATCH_CASES)
def test_matches(text: str, labels: Mapping[str, str], expected: bool) -> None:
    assert parse_selector(text).matches(labels) is expected
    assert selector_matches(text, labels) is expected
    # The canonical form means the same thing and is stable.
    canonical = canonical_selector(text)
    assert parse_selector(canonical) == parse_selector(text)
    assert parse_selector(canonical).matches(labels) is expected
    assert canonical_selector(canonical) == canonical


CANONICAL_CASES: list[tuple[str, str]] = [
    ("", "all()"),
    ("global()", "all()"),
    ("has( a )", "has(a)"),
    ("has(a)&&b=='x'", 'has(a) && b == "x"'),
    ("""a == 'say "hi"'""", """a == 'say "hi"'"""),
    ('a in {"y", "x", "y"}', 'a in {"x", "y"}'),
    ("a not in {}", "a not in {}"),
    ("a starts  with 'p'", 'a starts with "p"'),
    ('!a == "b"', '!(a == "b")'),
    ("!(has(a) || has(b))", "!(has(a) || has(b))"),
    ("!!has(a)", "!!has(a)"),
    ("(has(a) || has(b)) && has(c)", "(has(a) || has(b)) && has(c)"),
    ("has(a) || has(b) && has(c)", "has(a) || has(b) && has(c)"),
    ("(has(a) && has(b)) && has(c)", "(has(a) && has(b)) && has(c)"),
    ("((has(a)))", "has(a)"),
]


@pytest.mark.parametrize(("text", "expected"), CANONICAL_CASES)
def test_canonical_form(text: str, expected: str) -> None:
    assert canonical_selector(text) == expected
    assert str(parse_selector(text)) == expected


def test_tree_shape() -> None:
    assert parse_selector("has(a) || has(b) && !has(c)") == Or((Has("a"), And((Has("b"), Not(Has("c"))))))
    assert parse_selector("a in {'x'} && b not in {}") == And((In("a", ("x",)), In("b", (), negated=True)))
    assert parse_selector("a ends with 'z'") == Compare("a", "ends with", "z")
    assert parse_selector("") == All() == parse_selector("global()")
    # Flat chains: long selectors do not nest (no deep recursion when matching).
    chain = parse_selector(" || ".join(f"has(k{i})" for i in range(1000)))
    assert isinstance(chain, Or) and len(chain.operands) == 1000


def test_selectors_are_hashable_and_immutable() -> None:
    a = parse_selector('has(a) && b in {"y", "x"}')
    b = parse_selector("has(a)&&b in {'x','y','x'}")
    assert a == b and hash(a) == hash(b)
    assert len({a, b}) == 1
    with pytest.raises(AttributeError):
        a.operands = ()  # type: ignore[misc]
    assert parse_selector("has(a)") is parse_selector("has(a)")  # cached


def test_validate_selector_returns_text_unchanged() -> None:
    text = "  has(a)&&b=='x'  "
    assert validate_selector(text) == text
    with pytest.raises(SelectorError):
        validate_selector("has(")
    with pytest.raises(SelectorError):
        validate_selector(None)  # type: ignore[arg-type]
    assert issubclass(SelectorError, ValueError)


def test_validate_selector_in_pydantic() -> None:
    from typing import Annotated

    from pydantic import AfterValidator, BaseModel, ValidationError

    class Pool(BaseModel):
        nodeSelector: Annotated[str, AfterValidator(validate_selector)] = "all()"

    assert Pool(nodeSelector="has(a)").nodeSelector == "has(a)"
    with pytest.raises(ValidationError, match="position 4"):
        Pool(nodeSelector="a ==")


def test_constructors_refuse_unprintable_trees() -> None:
    with pytest.raises(ValueError, match="both quote"):
        Compare("a", "==", """'"'""")
    with pytest.raises(ValueError, match="invalid label key"):
        Has("a b")
    with pytest.raises(ValueError, match="invalid label key"):
        In("", ())
    with pytest.raises(ValueError, match="unknown comparison"):
        Compare("a", "=", "x")
    with pytest.raises(ValueError, match="two operands"):
        And((Has("a"),))
    with pytest.raises(ValueError, match="two operands"):
        Or(())
    assert quote_value("x") == '"x"' and quote_value('"') == "'\"'"


BAD_CASES: list[tuple[str, int, str]] = [
    ("a ==", 4, "expected a quoted string"),
    ("has(", 4, "expected a label key"),
    ("has()", 4, "expected a label key"),
    ("has(a", 5, "expected ')'"),
    ("has(a b)", 6, "expected ')'"),
    ('a in {"x"', 9, "expected ',' or '}'"),
    ('a in {"x",}', 10, "expected a quoted string"),
    ('a in {"x" "y"}', 10, "expected ',' or '}'"),
    ('a in "x"', 5, "expected '{'"),
    ("&& a", 0, "expected a label key"),
    ('a === "b"', 4, "expected a quoted string"),
    ('a == "b', 5, "unterminated string"),
    ("a == 'b\"", 5, "unterminated string"),
    ('a = "b"', 2, "expected an operator"),
    ("!", 1, "expected a label key"),
    ("()", 1, "expected a label key"),
    ("has(a) b", 7, "expected '&&', '||' or end of selector"),
    ("has(a))", 6, "expected '&&', '||' or end of selector"),
    ("has(a) & has(b)", 7, "expected '&&', '||' or end of selector"),
    ("has(a) | has(b)", 7, "expected '&&', '||' or end of selector"),
    ("has(a) &&", 9, "expected a label key"),
    ("has(a) || || has(b)", 10, "expected a label key"),
    ("(has(a)", 7, "expected '&&', '||' or ')'"),
    ("a", 1, "expected an operator"),
    ("a b", 2, "expected an operator"),
    ('a containsfoo "x"', 2, "unexpected 'containsfoo'"),
    ("a not on {}", 6, "expected 'in' after 'not'"),
    ('a starts "x"', 9, "expected 'with' after 'starts'"),
    ('a ends wit "x"', 7, "expected 'with' after 'ends'"),
    ("a == b", 5, "expected a quoted string"),
    ("all(x)", 4, "expected ')'"),
    ('a == "x" has(b)', 9, "expected '&&', '||' or end of selector"),
    ("a@b == 'x'", 1, "expected an operator"),
    ('"a" == "b"', 0, "expected a label key"),
    ("(" * 150 + "has(a)" + ")" * 150, 101, "nested deeper than"),
    ("!" * 150 + "has(a)", 101, "nested deeper than"),
]


@pytest.mark.parametrize(("text", "position", "message"), BAD_CASES)
def test_malformed_selectors_are_refused(text: str, position: int, message: str) -> None:
    with pytest.raises(SelectorError) as info:
        parse_selector(text)
    assert info.value.position == position
    assert message in str(info.value)
    assert f"position {position}" in str(info.value)


# --- property tests ----------------------------------------------------------------------------

KEYS = ["a", "b", "app", "kubernetes.io/hostname", "projectcalico.org/namespace", "has", "all", "in", "not", "x-y_z"]
# A few common values (so comparisons often hit) plus arbitrary text that may contain selector syntax.
COMMON_VALUES = ["", "x", "y", "xy", "yx", "a b", "us-east-1a"]
values = st.one_of(
    st.sampled_from(COMMON_VALUES),
    st.text(alphabet="xy &|!(){},='\" \t", max_size=6).filter(lambda v: not ('"' in v and "'" in v)),
)
keys = st.sampled_from(KEYS)

leaves: st.SearchStrategy[Selector] = st.one_of(
    st.just(All()),
    st.builds(Has, keys),
    st.builds(Compare, keys, st.sampled_from(["==", "!=", "contains", "starts with", "ends with"]), values),
    st.builds(In, keys, st.lists(values, max_size=3).map(tuple), st.booleans()),
)


def _extend(children: st.SearchStrategy[Selector]) -> st.SearchStrategy[Selector]:
    operand_lists = st.lists(children, min_size=2, max_size=4).map(tuple)
    return st.one_of(st.builds(Not, children), st.builds(And, operand_lists), st.builds(Or, operand_lists))


selectors = st.recursive(leaves, _extend, max_leaves=12)
label_dicts = st.dictionaries(keys, values, max_size=len(KEYS))


def reference_eval(node: Selector, labels: Mapping[str, str]) -> bool:
    """Independent, deliberately naive statement of Calico's semantics, to check matches() against."""
    if isinstance(node, All):
        return True
    if isinstance(node, Has):
        return node.key in labels
    if isinstance(node, Compare):
        if node.op == "!=":
            return node.key not in labels or labels[node.key] != node.value
        if node.key not in labels:
            return False
        value = labels[node.key]
        return {
            "==": value == node.value,
            "contains": node.value in value,
            "starts with": value[: len(node.value)] == node.value,
            "ends with": value[len(value) - len(node.value) :] == node.value,
        }[node.op]
    if isinstance(node, In):
        present = node.key in labels and labels[node.key] in set(node.values)
        return (not present) if node.negated else present
    if isinstance(node, Not):
        return not reference_eval(node.operand, labels)
    if isinstance(node, And):
        return all(reference_eval(o, labels) for o in node.operands)
    if isinstance(node, Or):
        return any(reference_eval(o, labels) for o in node.operands)
    raise AssertionError(f"unknown node {node!r}")


@settings(max_examples=200, deadline=None)
@given(selectors)
def test_round_trip(tree: Selector) -> None:
    text = str(tree)
    parsed = parse_selector(text)
    assert parsed == tree
    assert hash(parsed) == hash(tree)
    assert str(parsed) == text


@settings(max_examples=200, deadline=None)
@given(selectors, label_dicts)
def test_matches_agrees_with_reference(tree: Selector, labels: dict[str, str]) -> None:
    expected = reference_eval(tree, labels)
    assert tree.matches(labels) is expected
    assert parse_selector(str(tree)).matches(labels) is expected


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="ab() &|!=\"'{},in", max_size=20))
def test_arbitrary_text_parses_or_raises_selector_error(text: str) -> None:
    """Junk never escapes as anything but SelectorError, and whatever parses has a stable canonical form."""
    try:
        parsed = parse_selector(text)
    except SelectorError as err:
        assert 0 <= err.position <= len(text)
    else:
        assert parse_selector(str(parsed)) == parsed
