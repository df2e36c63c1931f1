"""Calico's label selector language, parsed once and used everywhere.

Selectors pick nodes for IPPool.nodeSelector and BGPPeer nodeSelector/peerSelector today, and
endpoints for network policy later. Every one of those must agree on what a selector means, so the
grammar and the matching rules live here only. The grammar follows libcalico-go's selector parser:

    selector := <empty> | or_expr
    or_expr  := and_expr ("||" and_expr)*
    and_expr := unary ("&&" unary)*
    unary    := "!" unary | "(" or_expr ")" | term
    term     := "all()" | "global()" | "has(" key ")"
              | key ("==" | "!=" | "contains" | "starts with" | "ends with") string
              | key ("in" | "not in") "{" [string ("," string)*] "}"

Strings are single- or double-quoted without escapes. As in Calico, ``!=`` and ``not in`` are true
for a label that is absent; every other comparison is false for it.

Parsed selectors are immutable, hashable trees whose ``str()`` is a canonical form that parses back
to an equal tree, so they can be stored, compared and used as cache keys.
"""

from __future__ import annotations

import functools
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass

__all__ = [
    "All",
    "And",
    "Compare",
    "Has",
    "In",
    "Not",
    "Or",
    "Selector",
    "SelectorError",
    "canonical_selector",
    "parse_selector",
    "quote_value",
    "selector_matches",
    "validate_selector",
]

KEY_CHARS = frozenset(string.ascii_letters + string.digits + "-_./")
"""Characters allowed in a label key (Kubernetes label-key characters)."""

MAX_DEPTH = 100
"""Deepest nesting of '(' and '!' accepted; refuses pathological input before Python's stack does."""

_WHITESPACE = " \t\r\n"
_TERM_EXPECTED = "a label key, has(), all() or '('"
_OP_EXPECTED = "an operator (==, !=, in, not in, contains, starts with, ends with)"


class SelectorError(ValueError):
    """A selector that does not parse; ``position`` is the 0-based character offset of the problem.

    Subclasses ValueError so pydantic validators turn it into an ordinary validation error.
    """

    def __init__(self, message: str, position: int) -> None:
        super().__init__(message)
        self.position = position


def quote_value(value: str) -> str:
    """Quote a label value the canonical way: double quotes, or single quotes if it contains '"'.

    The language has no escapes, so a value holding both quote characters cannot be written at all.
    """
    if '"' not in value:
        return f'"{value}"'
    if "'" not in value:
        return f"'{value}'"
    raise ValueError(f"label value {value!r} contains both quote characters and cannot be written in a selector")


def _check_key(key: str) -> None:
    """Refuse keys the parser could not read back, so every constructed tree has a valid str()."""
    if not key or not KEY_CHARS.issuperset(key):
        raise ValueError(f"invalid label key {key!r}: use letters, digits, '-', '_', '.' and '/'")


class Selector:
    """Base of all selector nodes: immutable, hashable, structurally comparable (via dataclass)."""

    __slots__ = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether a resource carrying ``labels`` is selected."""
        raise NotImplementedError

    def __str__(self) -> str:
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class All(Selector):
    """Selects everything: ``all()``, ``global()`` and the empty selector."""

    def matches(self, labels: Mapping[str, str]) -> bool:
        return True

    def __str__(self) -> str:
        return "all()"


@dataclass(frozen=True, slots=True)
class Has(Selector):
    """``has(key)``: the label is present, whatever its value."""

    key: str

    def __post_init__(self) -> None:
        _check_key(self.key)

    def matches(self, labels: Mapping[str, str]) -> bool:
        return self.key in labels

    def __str__(self) -> str:
        return f"has({self.key})"


_COMPARE_OPS: dict[str, Callable[[str, str], bool]] = {
    "==": lambda actual, wanted: actual == wanted,
    "!=": lambda actual, wanted: actual != wanted,
    "contains": lambda actual, wanted: wanted in actual,
    "starts with": lambda actual, wanted: actual.startswith(wanted),
    "ends with": lambda actual, wanted: actual.endswith(wanted),
}


@dataclass(frozen=True, slots=True)
class Compare(Selector):
    """``key <op> "value"`` for op in ==, !=, contains, starts with, ends with.

    An absent label matches only ``!=`` (Calico semantics: "not equal to v" holds when there is no value).
    """

    key: str
    op: str
    value: str

    def __post_init__(self) -> None:
        _check_key(self.key)
        if self.op not in _COMPARE_OPS:
            raise ValueError(f"unknown comparison {self.op!r}; expected one of {', '.join(_COMPARE_OPS)}")
        quote_value(self.value)

    def matches(self, labels: Mapping[str, str]) -> bool:
        actual = labels.get(self.key)
        if actual is None:
            return self.op == "!="
        return _COMPARE_OPS[self.op](actual, self.value)

    def __str__(self) -> str:
        return f"{self.key} {self.op} {quote_value(self.value)}"


@dataclass(frozen=True, slots=True)
class In(Selector):
    """``key in {...}`` or, with ``negated``, ``key not in {...}`` (true when the label is absent).

    ``values`` is kept sorted and de-duplicated so that equal sets give equal selectors.
    """

    key: str
    values: tuple[str, ...]
    negated: bool = False

    def __post_init__(self) -> None:
        _check_key(self.key)
        for value in self.values:
            quote_value(value)
        object.__setattr__(self, "values", tuple(sorted(set(self.values))))

    def matches(self, labels: Mapping[str, str]) -> bool:
        actual = labels.get(self.key)
        if actual is None:
            return self.negated
        return (actual in self.values) != self.negated

    def __str__(self) -> str:
        op = "not in" if self.negated else "in"
        return f"{self.key} {op} {{{', '.join(quote_value(v) for v in self.values)}}}"


@dataclass(frozen=True, slots=True)
class Not(Selector):
    """``!operand``."""

    operand: Selector

    def matches(self, labels: Mapping[str, str]) -> bool:
        return not self.operand.matches(labels)

    def __str__(self) -> str:
        # Parenthesise anything that is not a single function-like term, for readability and so
        # that '!' visibly covers a whole comparison or sub-expression.
        if isinstance(self.operand, All | Has | Not):
            return f"!{self.operand}"
        return f"!({self.operand})"


@dataclass(frozen=True, slots=True)
class And(Selector):
    """``a && b && ...``; flat (n-ary) so long chains need no deep recursion."""

    operands: tuple[Selector, ...]

    def __post_init__(self) -> None:
        if len(self.operands) < 2:
            raise ValueError("And needs at least two operands")

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(operand.matches(labels) for operand in self.operands)

    def __str__(self) -> str:
        # A nested And/Or keeps its parentheses so the tree round-trips exactly.
        return " && ".join(f"({o})" if isinstance(o, And | Or) else str(o) for o in self.operands)


@dataclass(frozen=True, slots=True)
class Or(Selector):
    """``a || b || ...``; flat (n-ary) so long chains need no deep recursion."""

    operands: tuple[Selector, ...]

    def __post_init__(self) -> None:
        if len(self.operands) < 2:
            raise ValueError("Or needs at least two operands")

    def matches(self, labels: Mapping[str, str]) -> bool:
        return any(operand.matches(labels) for operand in self.operands)

    def __str__(self) -> str:
        return " || ".join(f"({o})" if isinstance(o, Or) else str(o) for o in self.operands)


class _Parser:
    """Recursive-descent parser working directly on the characters (the language is too small for a lexer)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.depth = 0

    # --- low-level helpers -------------------------------------------------------------------

    def error(self, expected: str, pos: int | None = None) -> SelectorError:
        """Build a SelectorError naming what was found at ``pos`` and what the grammar wanted there."""
        pos = self.pos if pos is None else pos
        if pos >= len(self.text):
            found = "end of input"
        else:
            end = pos
            while end < len(self.text) and self.text[end] in KEY_CHARS:
                end += 1
            found = repr(self.text[pos:end] if end > pos else self.text[pos])
        return SelectorError(f"unexpected {found} at position {pos}: expected {expected}", pos)

    def skip_ws(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in _WHITESPACE:
            self.pos += 1

    def accept(self, token: str) -> bool:
        """Consume ``token`` (after whitespace) if it is next."""
        self.skip_ws()
        if self.text.startswith(token, self.pos):
            self.pos += len(token)
            return True
        return False

    def expect(self, token: str, expected: str) -> None:
        if not self.accept(token):
            raise self.error(expected)

    def word(self) -> str:
        """Read a run of label-key characters (keys and keyword operators alike); "" if none."""
        self.skip_ws()
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] in KEY_CHARS:
            self.pos += 1
        return self.text[start : self.pos]

    def enter(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise SelectorError(f"selector nested deeper than {MAX_DEPTH} levels at position {self.pos}", self.pos)

    # --- grammar -----------------------------------------------------------------------------

    def parse(self) -> Selector:
        self.skip_ws()
        if self.pos == len(self.text):
            return All()
        node = self.parse_or()
        self.skip_ws()
        if self.pos != len(self.text):
            raise self.error("'&&', '||' or end of selector")
        return node

    def parse_or(self) -> Selector:
        operands = [self.parse_and()]
        while self.accept("||"):
            operands.append(self.parse_and())
        return operands[0] if len(operands) == 1 else Or(tuple(operands))

    def parse_and(self) -> Selector:
        operands = [self.parse_unary()]
        while self.accept("&&"):
            operands.append(self.parse_unary())
        return operands[0] if len(operands) == 1 else And(tuple(operands))

    def parse_unary(self) -> Selector:
        if self.accept("!"):
            self.enter()
            node: Selector = Not(self.parse_unary())
            self.depth -= 1
            return node
        if self.accept("("):
            self.enter()
            node = self.parse_or()
            self.expect(")", "'&&', '||' or ')'")
            self.depth -= 1
            return node
        return self.parse_term()

    def parse_term(self) -> Selector:
        key = self.word()
        if not key:
            raise self.error(_TERM_EXPECTED)
        if key in ("all", "global", "has") and self.accept("("):
            if key == "has":
                inner = self.word()
                if not inner:
                    raise self.error("a label key")
                self.expect(")", "')'")
                return Has(inner)
            self.expect(")", "')'")
            return All()
        self.skip_ws()
        op_pos = self.pos
        for symbol in ("==", "!="):
            if self.accept(symbol):
                return Compare(key, symbol, self.parse_string())
        op = self.word()
        if op == "in":
            return In(key, self.parse_set())
        if op == "not":
            self.skip_ws()
            if self.word() != "in":
                raise self.error("'in' after 'not'", self.pos_of_last_word())
            return In(key, self.parse_set(), negated=True)
        if op == "contains":
            return Compare(key, op, self.parse_string())
        if op in ("starts", "ends"):
            self.skip_ws()
            if self.word() != "with":
                raise self.error(f"'with' after '{op}'", self.pos_of_last_word())
            return Compare(key, f"{op} with", self.parse_string())
        raise self.error(_OP_EXPECTED, op_pos)

    def pos_of_last_word(self) -> int:
        """Start of the word just read by word() (for error messages pointing at a wrong keyword)."""
        pos = self.pos
        while pos > 0 and self.text[pos - 1] in KEY_CHARS:
            pos -= 1
        return pos

    def parse_string(self) -> str:
        self.skip_ws()
        if self.pos >= len(self.text) or self.text[self.pos] not in "'\"":
            raise self.error("a quoted string")
        start = self.pos
        end = self.text.find(self.text[start], start + 1)
        if end < 0:
            raise SelectorError(f"unterminated string starting at position {start}", start)
        self.pos = end + 1
        return self.text[start + 1 : end]

    def parse_set(self) -> tuple[str, ...]:
        self.expect("{", "'{'")
        values: list[str] = []
        if self.accept("}"):
            return ()
        while True:
            values.append(self.parse_string())
            if self.accept("}"):
                return tuple(values)
            self.expect(",", "',' or '}'")


def parse_selector(text: str) -> Selector:
    """Parse a selector string; cached because the same few selectors are evaluated over and over.

    Raises SelectorError (a ValueError) with the position of the first problem.
    """
    if not isinstance(text, str):
        raise SelectorError(f"selector must be a string, not {type(text).__name__}", 0)
    return _parse_cached(text)


@functools.lru_cache(maxsize=4096)
def _parse_cached(text: str) -> Selector:
    """The cache behind parse_selector (kept separate so non-strings never reach lru_cache's hashing)."""
    return _Parser(text).parse()


def validate_selector(text: str) -> str:
    """Return ``text`` unchanged if it parses, else raise SelectorError; meant for pydantic validators."""
    parse_selector(text)
    return text


def canonical_selector(text: str) -> str:
    """The canonical spelling of a selector (e.g. ``has(a) && b == "x"``), for storage and display."""
    return str(parse_selector(text))


def selector_matches(text: str, labels: Mapping[str, str]) -> bool:
    """Shorthand for ``parse_selector(text).matches(labels)``."""
    return parse_selector(text).matches(labels)
