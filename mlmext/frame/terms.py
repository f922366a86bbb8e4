"""Parsing of lme4 random-effect ("bar") terms inside a model formula.

A mixed-model formula is an ordinary statsmodels formula whose right-hand side
may also contain bar terms ``(expr | group)`` or ``(expr || group)``.  This
module splits the formula into the fixed part (handed to statsmodels'
formula machinery unchanged) and a list of :class:`BarTerm` with lme4's
expansion rules applied:

* ``(x || g)`` becomes ``(1 | g) + (0 + x | g)`` (one term per formula term),
* ``(1 | a/b)`` becomes ``(1 | a) + (1 | b:a)`` and ``a/b/c`` likewise,
  named as lme4 names them (``b:a``, ``c:(b:a)``),
* ``offset(expr)`` terms are taken out of the fixed part.
"""
from __future__ import annotations

from dataclasses import dataclass, field
import re

__all__ = ["BarTerm", "ParsedFormula", "parse_formula", "split_top_level"]


@dataclass
class BarTerm:
    """One random-effects term ``(lhs | group)``.

    Attributes
    ----------
    lhs : str
        The model-matrix expression left of the bar (``"1 + Days"``).
    factors : tuple of str
        The variables whose interaction forms the grouping factor.
    name : str
        The grouping factor's name as lme4 prints it (``"cask:batch"``).
    """

    lhs: str
    factors: tuple
    name: str
    source: str = field(default="", compare=False)


@dataclass
class ParsedFormula:
    response: str
    fixed_rhs: str
    bars: list
    offsets: list

    @property
    def fixed_formula(self):
        return f"{self.response} ~ {self.fixed_rhs}" if self.response else self.fixed_rhs


def split_top_level(expr, sep="+"):
    """Split ``expr`` at ``sep`` characters that are not inside brackets.

    A ``-`` separator is kept with its term (``"0 + x - 1"`` splits into
    ``["0", "x", "-1"]``) when ``sep`` is ``"+"``.
    """
    parts, depth, cur = [], 0, []
    for ch in expr:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced parentheses in formula: {expr!r}")
        if depth == 0 and ch == sep:
            parts.append("".join(cur))
            cur = []
        elif depth == 0 and sep == "+" and ch == "-" and "".join(cur).strip():
            parts.append("".join(cur))
            cur = [ch]
        else:
            cur.append(ch)
    if depth != 0:
        raise ValueError(f"unbalanced parentheses in formula: {expr!r}")
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


def _strip_outer_parens(s):
    s = s.strip()
    while s.startswith("(") and s.endswith(")"):
        depth = 0
        for i, ch in enumerate(s):
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0 and i < len(s) - 1:
                return s  # "(a) + (b)": the first paren closes early
        s = s[1:-1].strip()
    return s


def _find_bar(s):
    """Position and width of the top-level ``|`` or ``||`` in ``s`` (or None)."""
    depth = 0
    i = 0
    while i < len(s):
        ch = s[i]
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "|" and depth == 0:
            return i, 2 if s[i:i + 2] == "||" else 1
        i += 1
    return None


_NAME = re.compile(r"^(?:[^\W\d]|\.)[\w.]*$|^`[^`]+`$|^Q\(['\"][^'\"]+['\"]\)$")


def _clean_name(tok):
    tok = tok.strip()
    if tok.startswith("`") and tok.endswith("`"):
        return tok[1:-1]
    m = re.match(r"^Q\(['\"]([^'\"]+)['\"]\)$", tok)
    return m.group(1) if m else tok


def _expand_group(gexpr, source):
    """Expand a grouping expression into lme4's list of (factors, name)."""
    g = _strip_outer_parens(gexpr)
    if not g:
        raise ValueError(f"random-effects term {source!r} has no grouping variable after the bar")
    nested = split_top_level(g, "/")
    out = []
    prev_factors, prev_name = (), None
    for level in nested:
        facs = tuple(_clean_name(f) for f in split_top_level(_strip_outer_parens(level), ":"))
        for f in facs:
            if not _NAME.match(f) and not f.replace(" ", "").isidentifier():
                raise ValueError(f"grouping variable {f!r} in {source!r} must be a column name")
        name = ":".join(facs)
        if prev_name is None:
            factors, full = facs, name
        else:
            factors = facs + prev_factors
            inner = f"({prev_name})" if len(prev_factors) > 1 else prev_name
            full = f"{name}:{inner}"
        out.append((factors, full))
        prev_factors, prev_name = factors, full
    # lme4 lists the deepest nesting level first
    return out[::-1]


def _split_lhs(lhs):
    """Split a bar term's left side into (has_intercept, [formula terms])."""
    parts = split_top_level(lhs, "+")
    intercept = True
    terms = []
    for p in parts:
        q = p.replace(" ", "")
        if q in ("0", "-1"):
            intercept = False
        elif q == "1":
            intercept = True
        elif q in ("+1",):
            intercept = True
        else:
            terms.append(p)
    return intercept, terms


def _expand_bar(inner, source):
    pos = _find_bar(inner)
    lhs, width = inner[:pos[0]].strip(), pos[1]
    gexpr = inner[pos[0] + width:]
    if not lhs:
        raise ValueError(f"random-effects term {source!r} has nothing left of the bar; use (1 | g)")
    groups = _expand_group(gexpr, source)
    if width == 1:
        lhs_list = [lhs]
    else:  # (x || g): one uncorrelated term per formula term, as lme4 expands it
        intercept, terms = _split_lhs(lhs)
        lhs_list = (["1"] if intercept else []) + [f"0 + {t}" for t in terms]
    bars = []
    for factors, name in groups:
        for l in lhs_list:
            bars.append(BarTerm(lhs=l, factors=factors, name=name, source=source))
    return bars


def _r_powers_in_I(expr):
    """R's ``I(x^2)`` means a power; in Python ``^`` is XOR, so rewrite it inside ``I()``."""
    out, i = [], 0
    while i < len(expr):
        m = re.compile(r"(?<![\w.])I\(").search(expr, i)
        if not m:
            out.append(expr[i:])
            break
        out.append(expr[i:m.end()])
        depth, j = 1, m.end()
        while j < len(expr) and depth:
            depth += {"(": 1, ")": -1}.get(expr[j], 0)
            j += 1
        out.append(expr[m.end():j].replace("^", "**"))
        i = j
    return "".join(out)


def reject_xor(formula):
    """``ValueError`` for a ``^`` left outside ``I()`` (after :func:`_r_powers_in_I`).

    R's ``(a + b)^2`` crosses terms and ``x^2`` alone is ``x``; Python's ``^``, which the
    formula engine would evaluate, is the exclusive or: ``a^2`` of an integer column is a
    silently different column.  (Quoted names and strings may hold a ``^``.)"""
    text = re.sub(r"`[^`]*`|(['\"]).*?\1", " ", formula)
    if "^" in text:
        raise ValueError(f"formula {formula!r} uses '^' outside I(): R's (a + b)^2 is written "
                         "(a + b)**2 here and a power I(x^2) or I(x**2); in Python '^' is the "
                         "exclusive or of integers")


def parse_formula(formula):
    """Split an lme4-style formula into its fixed part, bar terms and offsets.

    Parameters
    ----------
    formula : str
        For example ``"Reaction ~ Days + (Days | Subject)"``.

    Returns
    -------
    ParsedFormula
    """
    if not isinstance(formula, str):
        raise TypeError("formula must be a string")
    if "~" not in formula:
        raise ValueError(f"formula {formula!r} has no '~'")
    formula = _r_powers_in_I(formula)
    reject_xor(formula)
    response, rhs = formula.split("~", 1)
    response = response.strip()
    if not response:
        raise ValueError(f"formula {formula!r} has no response left of '~'")
    fixed, bars, offsets = [], [], []
    for term in split_top_level(rhs, "+"):
        sign = ""
        body = term
        if term.startswith("-"):
            sign, body = "-", term[1:].strip()
        stripped = _strip_outer_parens(body)
        if body.startswith("(") and _find_bar(stripped) is not None:
            if sign:
                raise ValueError(f"cannot subtract a random-effects term: {term!r}")
            bars.extend(_expand_bar(stripped, body))
        elif re.match(r"^offset\s*\(", body) and body.endswith(")"):
            offsets.append(body[body.index("(") + 1:-1].strip())
        elif body == ".":
            raise ValueError("R's '.' (all other columns) is not supported in a formula: list "
                             "the columns")
        elif _find_bar(body) is not None:
            raise ValueError(f"random-effects term {term!r} must be written in parentheses: ({body})")
        else:
            fixed.append(term)
    fixed_rhs = " + ".join(fixed).replace("+ -", "- ") if fixed else "1"
    return ParsedFormula(response=response, fixed_rhs=fixed_rhs, bars=bars, offsets=offsets)
