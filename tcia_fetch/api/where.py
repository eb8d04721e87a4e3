"""``--where``: a small, safe filter language over rows keyed as the server names them.

Grammar (hand-written recursive descent; nothing is ever ``eval``-ed)::

    expr        := or_expr
    or_expr     := and_expr ("or" and_expr)*
    and_expr    := not_expr ("and" not_expr)*
    not_expr    := "not" not_expr | primary
    primary     := "(" expr ")" | comparison
    comparison  := KEY OP VALUE
    OP          := "=" | "==" | "!=" | "<" | "<=" | ">" | ">=" | "~" | "contains"
    KEY         := identifier (letters, digits, _) | `back-quoted` for odd names
    VALUE       := number | 'single' or "double" quoted text | bare word

Keywords are case-insensitive. Comparison semantics, per row:

* a number literal compares numerically with a row value that reads as a number
  (``"500.000000"`` is 500);
* a date literal (``MM-DD-YYYY`` or ``YYYY-MM-DD``) compares as a date with a row value that
  reads as one;
* otherwise values compare as text (case-sensitive); ``~`` is a regular-expression search
  and ``contains`` a case-insensitive substring test;
* a key missing from a row (the server omits nulls) makes every comparison false.

Errors are :class:`~tcia_fetch.errors.InputError` naming the column position, e.g.
``--where: col 1: unknown key 'ImageCont' in '>>>ImageCont>5'``.
"""

from __future__ import annotations

import datetime as dt
import operator
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from tcia_fetch.errors import InputError

__all__ = ["Predicate", "parse_where"]

_COMPARATORS = ("==", "!=", "<=", ">=", "=", "<", ">", "~")
_ORDERING: dict[str, Callable[[Any, Any], bool]] = {
    "=": operator.eq,
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
_KEYWORDS = frozenset({"and", "or", "not", "contains"})
_BARE_WORD = re.compile(r"[A-Za-z0-9_.:/+\-^*]+")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_V4_DATE = re.compile(r"(\d{2})-(\d{2})-(\d{4})")
_ISO_DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})(?:[ T][0-9:.]+)?")


@dataclass(frozen=True)
class _Token:
    kind: str  # "word", "string", "op", "lparen", "rparen", "key", "end"
    text: str
    position: int  # 1-based column


def _error(text: str, position: int, message: str) -> InputError:
    """One line: the column, the problem, and the expression with ``>>>`` at the spot."""
    marked = f"{text[: position - 1]}>>>{text[position - 1 :]}"
    return InputError(f"col {position}: {message} in {marked!r}", source="--where")


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    index = 0
    while index < len(text):
        char = text[index]
        column = index + 1
        if char.isspace():
            index += 1
        elif char == "(":
            tokens.append(_Token("lparen", char, column))
            index += 1
        elif char == ")":
            tokens.append(_Token("rparen", char, column))
            index += 1
        elif char in "'\"`":
            end = text.find(char, index + 1)
            if end < 0:
                raise _error(text, column, f"unterminated {char} quote")
            kind = "key" if char == "`" else "string"
            tokens.append(_Token(kind, text[index + 1 : end], column))
            index = end + 1
        elif any(text.startswith(op, index) for op in _COMPARATORS):
            op = next(op for op in _COMPARATORS if text.startswith(op, index))
            tokens.append(_Token("op", op, column))
            index += len(op)
        elif match := _BARE_WORD.match(text, index):
            tokens.append(_Token("word", match.group(), column))
            index = match.end()
        else:
            raise _error(text, column, f"unexpected character {char!r}")
    tokens.append(_Token("end", "", len(text) + 1))
    return tokens


def _as_number(value: object) -> Decimal | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float | str):
        text = str(value).strip()
        if not _NUMBER.fullmatch(text):
            return None
        try:
            number = Decimal(text)
        except InvalidOperation:
            return None
        return number if number.is_finite() else None
    return None


def _as_date(value: object) -> dt.date | None:
    if isinstance(value, dt.date):
        return value
    if not isinstance(value, str):
        return None
    text = value.strip()
    try:
        if match := _V4_DATE.fullmatch(text):
            month, day, year = (int(group) for group in match.groups())
            return dt.date(year, month, day)
        if match := _ISO_DATE.fullmatch(text):
            year, month, day = (int(group) for group in match.groups())
            return dt.date(year, month, day)
    except ValueError:
        return None
    return None


class Predicate:
    """A parsed filter; call :meth:`matches` on a row (keys as the server names them)."""

    def __init__(
        self, text: str, evaluate: Callable[[Mapping[str, object]], bool], keys: frozenset[str]
    ) -> None:
        self.text = text
        self._evaluate = evaluate
        self.keys = keys

    def __repr__(self) -> str:
        return f"Predicate({self.text!r})"

    def matches(self, row: Mapping[str, object]) -> bool:
        """True when ``row`` satisfies the expression."""
        return self._evaluate(row)


_Eval = Callable[[Mapping[str, object]], bool]


class _Parser:
    def __init__(self, text: str, known_keys: Collection[str] | None) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.index = 0
        self.known_keys = known_keys
        self.keys_used: set[str] = set()

    def peek(self) -> _Token:
        return self.tokens[self.index]

    def advance(self) -> _Token:
        token = self.tokens[self.index]
        if token.kind != "end":
            self.index += 1
        return token

    def is_keyword(self, token: _Token, word: str) -> bool:
        return token.kind == "word" and token.text.lower() == word

    def parse(self) -> _Eval:
        if self.peek().kind == "end":
            raise _error(self.text, 1, "empty expression")
        result = self.or_expr()
        token = self.peek()
        if token.kind != "end":
            raise _error(
                self.text, token.position, f"unexpected {token.text!r}; expected 'and', 'or' or the end"
            )
        return result

    def or_expr(self) -> _Eval:
        parts = [self.and_expr()]
        while self.is_keyword(self.peek(), "or"):
            self.advance()
            parts.append(self.and_expr())
        if len(parts) == 1:
            return parts[0]
        return lambda row: any(part(row) for part in parts)

    def and_expr(self) -> _Eval:
        parts = [self.not_expr()]
        while self.is_keyword(self.peek(), "and"):
            self.advance()
            parts.append(self.not_expr())
        if len(parts) == 1:
            return parts[0]
        return lambda row: all(part(row) for part in parts)

    def not_expr(self) -> _Eval:
        if self.is_keyword(self.peek(), "not"):
            self.advance()
            inner = self.not_expr()
            return lambda row: not inner(row)
        return self.primary()

    def primary(self) -> _Eval:
        token = self.peek()
        if token.kind == "lparen":
            self.advance()
            inner = self.or_expr()
            closing = self.advance()
            if closing.kind != "rparen":
                raise _error(self.text, closing.position, "expected ')'")
            return inner
        return self.comparison()

    def comparison(self) -> _Eval:
        key_token = self.advance()
        if key_token.kind == "word" and (
            key_token.text.lower() in _KEYWORDS or not _IDENTIFIER.fullmatch(key_token.text)
        ):
            raise _error(self.text, key_token.position, f"expected a column name, got {key_token.text!r}")
        if key_token.kind not in ("word", "key"):
            found = "the end" if key_token.kind == "end" else repr(key_token.text)
            raise _error(self.text, key_token.position, f"expected a column name, got {found}")
        key = key_token.text
        if self.known_keys is not None and key not in self.known_keys:
            hint = _closest(key, self.known_keys)
            raise _error(
                self.text,
                key_token.position,
                f"unknown key {key!r}" + (f"; did you mean {hint!r}?" if hint else ""),
            )
        self.keys_used.add(key)
        op_token = self.advance()
        if self.is_keyword(op_token, "contains"):
            op = "contains"
        elif op_token.kind == "op":
            op = op_token.text
        else:
            found = "the end" if op_token.kind == "end" else repr(op_token.text)
            raise _error(
                self.text, op_token.position, f"expected an operator (= != < <= > >= ~ contains), got {found}"
            )
        value_token = self.advance()
        if value_token.kind not in ("word", "string") or (
            value_token.kind == "word" and value_token.text.lower() in _KEYWORDS
        ):
            found = "the end" if value_token.kind == "end" else repr(value_token.text)
            raise _error(self.text, value_token.position, f"expected a value, got {found}")
        return self.build(key, op, value_token)

    def build(self, key: str, op: str, value_token: _Token) -> _Eval:
        literal = value_token.text
        if op == "~":
            try:
                pattern = re.compile(literal)
            except re.error as exc:
                raise _error(self.text, value_token.position, f"bad regular expression ({exc})") from None
            return lambda row: key in row and pattern.search(str(row[key])) is not None
        if op == "contains":
            needle = literal.casefold()
            return lambda row: key in row and needle in str(row[key]).casefold()
        compare = _ORDERING[op]
        number = _as_number(literal) if value_token.kind == "word" else None
        date = _as_date(literal)

        def evaluate(row: Mapping[str, object]) -> bool:
            if key not in row:
                return False
            value = row[key]
            if number is not None:
                row_number = _as_number(value)
                if row_number is not None:
                    return compare(row_number, number)
            if date is not None:
                row_date = _as_date(value)
                if row_date is not None:
                    return compare(row_date, date)
            return compare(str(value), literal)

        return evaluate


def _closest(key: str, known: Collection[str]) -> str | None:
    folded = key.casefold()
    for candidate in known:
        if candidate.casefold() == folded:
            return candidate
    prefix = [candidate for candidate in known if candidate.casefold().startswith(folded[:4])]
    return sorted(prefix)[0] if prefix else None


def parse_where(text: str, *, known_keys: Collection[str] | None = None) -> Predicate:
    """Parse a ``--where`` expression.

    Args:
        text: the expression.
        known_keys: when given, a key outside this set is an error (with a suggestion).

    Raises:
        InputError: bad syntax, an unknown key or a bad regular expression; the message
            show the column and the expression with ``>>>`` marking the spot.
    """
    parser = _Parser(text, known_keys)
    evaluate = parser.parse()
    return Predicate(text, evaluate, frozenset(parser.keys_used))
