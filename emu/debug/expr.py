"""A small, safe expression language for breakpoint conditions (`break ... if EXPR`).

Nothing here reaches Python's eval/exec/compile/ast: the text is tokenized and parsed by
hand into a tree of plain tuples, and the evaluator applies a fixed set of operators to
plain values (int, str, None).  Names are looked up in a dict the caller passes; there is
no attribute access, no call, no indexing, so no way to reach Python objects.

    compile(text, fields=None) -> Expr         ExprError on any mistake
    Expr.evaluate(values: dict) -> value       ExprError on a run-time fault (1 / 0, ...)
    Expr.truth(values) -> bool
    Expr.names -> frozenset of the names the expression reads
    parse_int(text) -> int                     the number syntax, for spec values too

Syntax
    integers   123, 0x7b, with a k/M/G suffix (binary multiples, as workload sizes): 4k, 0x10k
    strings    "OUT" or 'OUT' (backslash escapes \\\\ \\" \\')
    names      identifiers, dotted allowed: len, desc.len, req.sector
    operators, loosest first (Python's precedence and meaning):
        or  ||                 a or b  (returns a if a is true, else b)
        and &&                 a and b
        not !                  not a
        == != < <= > >=        comparisons, chained like Python (a < b < c)
        x in A..B              A <= x <= B (both ends included)
        |   ^   &              bitwise
        << >>                  shifts (count 0..256)
        + -                    integer arithmetic
        * / %                  / is floor division, % its remainder (Python's // and %)
        - ~ +  (unary)
        ( ... )
    comparisons and `not` give true/false, which count as 1/0 in arithmetic.

Values and None.  A field may have no value (None, e.g. `idx` of an indirect-table entry):
    == and != compare it normally (None == None); an ordering (<, ...) or `in` with None is
    false; arithmetic and bitwise operators with None give None; None is false.
Strings compare with == and != against anything, and with orderings against strings only;
they take no arithmetic.  A type mismatch or a division by zero raises ExprError at
evaluation time.

Errors name the token and its 1-based column:  "unexpected token ')' at column 7",
"unknown field 'lenn' at column 1 (fields: addr, len, ...)".
"""
from __future__ import annotations

import re
from typing import Iterable

__all__ = ["Expr", "ExprError", "compile", "parse_int"]

MAX_LENGTH = 2000        # characters of an expression
MAX_DEPTH = 32           # nesting of parentheses and unary operators (parser recursion)
MAX_TREE_DEPTH = 200     # depth of the parsed tree (evaluator recursion), e.g. a + a + ... + a
MAX_SHIFT = 256

_MULT = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
_INT_RE = re.compile(r"(0[xX][0-9a-fA-F]+|[0-9]+)([kKmMgG]?)(?![0-9A-Za-z_])")
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
_SYMBOLS = ("..", "==", "!=", "<=", ">=", "<<", ">>", "&&", "||",
            "<", ">", "+", "-", "*", "/", "%", "&", "|", "^", "~", "!", "(", ")")
_KEYWORDS = {"and", "or", "not", "in"}
_COMPARE = ("==", "!=", "<", "<=", ">", ">=")


class ExprError(ValueError):
    """A malformed expression or a run-time fault; position is the 1-based column (0 if none)."""

    def __init__(self, reason: str, position: int = 0, hint: str = "") -> None:
        self.reason = reason
        self.position = position
        self.hint = hint
        msg = reason + (f" at column {position}" if position else "") + (f" ({hint})" if hint else "")
        super().__init__(msg)

    @property
    def message(self) -> str:
        return str(self)

    def shifted(self, offset: int) -> "ExprError":
        """The same error with its column moved by offset (the expression sat inside a longer text)."""
        return ExprError(self.reason, self.position + offset if self.position else 0, self.hint)


def parse_int(text: str) -> int:
    """'123', '0x7b', '4k', '0x10M', '2G' -> int; ValueError if it is not exactly that."""
    mt = _INT_RE.fullmatch(text.strip())
    if not mt or (len(mt.group(1)) > 1 and mt.group(1)[0] == "0" and mt.group(1)[1] not in "xX"):
        raise ValueError(f"not a number: {text!r} (use e.g. 4096, 0x1000, 4k, 1M)")
    return int(mt.group(1), 0) * _MULT[mt.group(2).lower()]


# -- tokens ------------------------------------------------------------------------------

class _Tok:
    __slots__ = ("kind", "value", "col", "text")

    def __init__(self, kind: str, value, col: int, text: str) -> None:
        self.kind = kind        # "int" | "str" | "name" | "op" | "end"
        self.value = value
        self.col = col          # 1-based
        self.text = text

    def shown(self) -> str:
        return "end of expression" if self.kind == "end" else f"token {self.text!r}"


def _tokenize(text: str) -> list[_Tok]:
    toks: list[_Tok] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
            continue
        col = i + 1
        if c.isdigit():
            mt = _INT_RE.match(text, i)
            if mt and len(mt.group(1)) > 1 and mt.group(1)[0] == "0" and mt.group(1)[1] not in "xX":
                raise ExprError(f"bad number {mt.group(0)!r}", col, "no leading zeros; hex is 0x...")
            if not mt:
                j = i
                while j < n and (text[j].isalnum() or text[j] == "_"):
                    j += 1
                raise ExprError(f"bad number {text[i:j]!r}", col)
            toks.append(_Tok("int", int(mt.group(1), 0) * _MULT[mt.group(2).lower()], col,
                             mt.group(0)))
            i = mt.end()
            continue
        if c in "\"'":
            j = i + 1
            out = []
            while True:
                if j >= n:
                    raise ExprError(f"unterminated string {text[i:]!r}", col)
                d = text[j]
                if d == "\\":
                    if j + 1 >= n:
                        raise ExprError(f"unterminated string {text[i:]!r}", col)
                    out.append(text[j + 1])
                    j += 2
                    continue
                if d == c:
                    break
                out.append(d)
                j += 1
            toks.append(_Tok("str", "".join(out), col, text[i:j + 1]))
            i = j + 1
            continue
        if c.isalpha() or c == "_":
            mt = _NAME_RE.match(text, i)
            word = mt.group(0)
            if word in _KEYWORDS:
                toks.append(_Tok("op", word, col, word))
            else:
                toks.append(_Tok("name", word, col, word))
            i = mt.end()
            if i < n and text[i] == "." and not text.startswith("..", i):
                raise ExprError(f"bad name {text[col - 1:i + 1]!r}", col)
            continue
        for sym in _SYMBOLS:
            if text.startswith(sym, i):
                toks.append(_Tok("op", sym, col, sym))
                i += len(sym)
                break
        else:
            hint = "use == to compare" if c == "=" else ""
            raise ExprError(f"unexpected character {c!r}", col, hint)
    toks.append(_Tok("end", None, n + 1, ""))
    return toks


# -- parser: recursive descent, Python's precedence -----------------------------------------
# Nodes: ("int", v) ("str", s) ("name", n) ("neg"|"inv"|"pos"|"not", x) ("bin", op, a, b)
#        ("and", a, b) ("or", a, b) ("cmp", [a, b, c...], [op, op...]) ("in", x, lo, hi)

_ALIASES = {"&&": "and", "||": "or", "!": "not"}


class _Parser:
    def __init__(self, toks: list[_Tok]) -> None:
        self.toks = toks
        self.pos = 0
        self.depth = 0

    def peek(self) -> _Tok:
        return self.toks[self.pos]

    def op(self) -> str | None:
        t = self.toks[self.pos]
        if t.kind != "op":
            return None
        return _ALIASES.get(t.value, t.value)

    def take(self) -> _Tok:
        t = self.toks[self.pos]
        self.pos += 1
        return t

    def fail(self, t: _Tok | None = None) -> ExprError:
        t = t or self.peek()
        return ExprError(f"unexpected {t.shown()}", t.col)

    def enter(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ExprError("expression nested too deeply", self.peek().col)

    def parse(self):
        if self.peek().kind == "end":
            raise ExprError("empty expression", self.peek().col)
        node = self.or_()
        if self.peek().kind != "end":
            raise self.fail()
        return node

    def or_(self):
        node = self.and_()
        while self.op() == "or":
            self.take()
            node = ("or", node, self.and_())
        return node

    def and_(self):
        node = self.not_()
        while self.op() == "and":
            self.take()
            node = ("and", node, self.not_())
        return node

    def not_(self):
        if self.op() == "not":
            self.take()
            self.enter()
            node = ("not", self.not_())
            self.depth -= 1
            return node
        return self.compare()

    def compare(self):
        first = self.bitor()
        if self.op() == "in":
            self.take()
            lo = self.bitor()
            if self.op() != "..":
                raise ExprError(f"expected '..' in a range, got {self.peek().shown()}", self.peek().col)
            self.take()
            hi = self.bitor()
            if self.op() in _COMPARE or self.op() == "in":
                raise self.fail()
            return ("in", first, lo, hi)
        operands, ops = [first], []
        while self.op() in _COMPARE:
            ops.append(self.take().value)
            operands.append(self.bitor())
        if self.op() == "in":
            raise self.fail()
        return ("cmp", operands, ops) if ops else first

    def _binary(self, sub, ops: tuple):
        node = sub()
        while self.op() in ops:
            op = self.take().value
            node = ("bin", op, node, sub())
        return node

    def bitor(self):
        return self._binary(self.bitxor, ("|",))

    def bitxor(self):
        return self._binary(self.bitand, ("^",))

    def bitand(self):
        return self._binary(self.shift, ("&",))

    def shift(self):
        return self._binary(self.arith, ("<<", ">>"))

    def arith(self):
        return self._binary(self.term, ("+", "-"))

    def term(self):
        return self._binary(self.unary, ("*", "/", "%"))

    def unary(self):
        op = self.op()
        if op in ("-", "~", "+"):
            self.take()
            self.enter()
            node = ({"-": "neg", "~": "inv", "+": "pos"}[op], self.unary())
            self.depth -= 1
            return node
        return self.atom()

    def atom(self):
        t = self.peek()
        if t.kind == "int":
            self.take()
            return ("int", t.value)
        if t.kind == "str":
            self.take()
            return ("str", t.value)
        if t.kind == "name":
            self.take()
            return ("name", t.value, t.col)
        if t.kind == "op" and t.value == "(":
            self.take()
            self.enter()
            node = self.or_()
            self.depth -= 1
            if self.op() != ")":
                nt = self.peek()
                raise ExprError(f"expected ')' (opened at column {t.col}), got {nt.shown()}", nt.col)
            self.take()
            return node
        raise self.fail(t)


# -- evaluation --------------------------------------------------------------------------------

def _is_int(v) -> bool:
    return isinstance(v, int)          # bool is an int


def _kind(v) -> str:
    if v is None:
        return "nothing"
    if isinstance(v, str):
        return f"string {v!r}"
    return "number"


def _arith(op: str, a, b):
    if a is None or b is None:
        return None
    if not (_is_int(a) and _is_int(b)):
        raise ExprError(f"'{op}' needs numbers, got {_kind(a)} and {_kind(b)}")
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if op in ("/", "%"):
        if b == 0:
            raise ExprError("division by zero" if op == "/" else "modulo by zero")
        return a // b if op == "/" else a % b
    if op == "&":
        return a & b
    if op == "|":
        return a | b
    if op == "^":
        return a ^ b
    if op in ("<<", ">>"):
        if not 0 <= b <= MAX_SHIFT:
            raise ExprError(f"shift count {b} out of range (0..{MAX_SHIFT})")
        return a << b if op == "<<" else a >> b
    raise AssertionError(op)


def _compare(op: str, a, b) -> bool:
    if op == "==":
        return a == b
    if op == "!=":
        return a != b
    if a is None or b is None:
        return False
    if isinstance(a, str) != isinstance(b, str):
        raise ExprError(f"cannot order {_kind(a)} and {_kind(b)} with '{op}'")
    if op == "<":
        return a < b
    if op == "<=":
        return a <= b
    if op == ">":
        return a > b
    return a >= b


def _eval(node, env: dict):
    tag = node[0]
    if tag == "name":
        return env.get(node[1])
    if tag == "int" or tag == "str":
        return node[1]
    if tag == "bin":
        return _arith(node[1], _eval(node[2], env), _eval(node[3], env))
    if tag == "cmp":
        operands, ops = node[1], node[2]
        left = _eval(operands[0], env)
        for op, sub in zip(ops, operands[1:]):
            right = _eval(sub, env)
            if not _compare(op, left, right):
                return False
            left = right
        return True
    if tag == "and":
        a = _eval(node[1], env)
        return _eval(node[2], env) if _truth(a) else a
    if tag == "or":
        a = _eval(node[1], env)
        return a if _truth(a) else _eval(node[2], env)
    if tag == "not":
        return not _truth(_eval(node[1], env))
    if tag in ("neg", "inv", "pos"):
        v = _eval(node[1], env)
        if v is None:
            return None
        if not _is_int(v):
            sym = {"neg": "-", "inv": "~", "pos": "+"}[tag]
            raise ExprError(f"unary '{sym}' needs a number, got {_kind(v)}")
        return -v if tag == "neg" else ~v if tag == "inv" else +v
    if tag == "in":
        x, lo, hi = (_eval(node[i], env) for i in (1, 2, 3))
        if x is None or lo is None or hi is None:
            return False
        if not (_is_int(x) and _is_int(lo) and _is_int(hi)):
            raise ExprError("'in A..B' needs numbers")
        return lo <= x <= hi
    raise AssertionError(tag)


def _truth(v) -> bool:
    if v is None:
        return False
    if isinstance(v, str):
        return v != ""
    return v != 0


def _names(node, out: list) -> None:
    tag = node[0]
    if tag == "name":
        out.append((node[1], node[2]))
    elif tag == "cmp":
        for sub in node[1]:
            _names(sub, out)
    elif tag in ("int", "str"):
        return
    else:
        for sub in node[1:]:
            if isinstance(sub, tuple):
                _names(sub, out)


def _depth(tree) -> int:
    """Depth of the tree, without recursion."""
    best = 0
    stack = [(tree, 1)]
    while stack:
        node, d = stack.pop()
        best = max(best, d)
        kids = node[1] if node[0] == "cmp" else node[1:]
        for sub in kids:
            if isinstance(sub, tuple):
                stack.append((sub, d + 1))
    return best


class Expr:
    """A compiled expression: plain data (a tuple tree), safe to copy and to pickle."""
    __slots__ = ("text", "tree", "names")

    def __init__(self, text: str, tree) -> None:
        self.text = text
        self.tree = tree
        found: list = []
        _names(tree, found)
        self.names = frozenset(n for n, _c in found)

    def evaluate(self, values: dict):
        """The value of the expression; names missing from `values` are None."""
        return _eval(self.tree, values)

    def truth(self, values: dict) -> bool:
        return _truth(self.evaluate(values))

    def __repr__(self) -> str:
        return f"Expr({self.text!r})"


def compile(text: str, fields: Iterable[str] | None = None) -> Expr:  # noqa: A001 (the API name)
    """Parse text; with `fields`, every name must be one of them (else ExprError naming it)."""
    if not isinstance(text, str):
        raise ExprError("an expression is text")
    if len(text) > MAX_LENGTH:
        raise ExprError(f"expression longer than {MAX_LENGTH} characters")
    tree = _Parser(_tokenize(text)).parse()
    if _depth(tree) > MAX_TREE_DEPTH:
        raise ExprError("expression nested too deeply", 1)
    if fields is not None:
        known = set(fields)
        found: list = []
        _names(tree, found)
        for name, col in found:
            if name not in known:
                raise ExprError(f"unknown field {name!r}", col,
                                "fields: " + ", ".join(sorted(known)))
    return Expr(text, tree)
