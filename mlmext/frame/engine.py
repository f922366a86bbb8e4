"""statsmodels' formula engine for mlmext: names quoted for it and unquoted in results, its
errors re-raised naming the unknown column.

statsmodels' engine (patsy, or formulaic when ``SM_FORMULA_ENGINE`` says so) sits behind a
private module, ``statsmodels.formula._manager``: this is the one place in mlmext that
imports it.

Names that are not Python identifiers (R's ``Sepal.Length``, ``class``, a name with spaces
written in backticks) are quoted for the formula engine here, and unquoted again in the
names the results show.
"""
from __future__ import annotations

import difflib
import functools
import keyword
import re

from statsmodels.formula._manager import FormulaManager

__all__ = ["formula_manager", "quote_names", "display_name", "names_in", "name_heads",
           "formula_error", "evaluate"]


def formula_manager():
    """A fresh statsmodels ``FormulaManager`` (the formula engine statsmodels is set to use)."""
    return FormulaManager()


# (names as Python's: letters of any script, ``größe``, as patsy's tokenizer reads them)
_IDENT_RUN = re.compile(r"(?:[^\W\d]|\.)[\w.]*")
_NUMBER_RUN = re.compile(r"[0-9][\w.]*")


def _quote(name, engine):
    return f"`{name}`" if engine == "formulaic" else f"Q({name!r})"


def quote_names(formula, columns, engine="patsy"):
    """Quote column names the formula engine cannot read as Python names.

    A backticked name (R's `` `my var` ``) and a bare name that is a column but
    not a Python identifier (``Sepal.Length``, ``class``) become ``Q("...")``
    (patsy) or `` `...` `` (formulaic).  String literals are left alone.
    """
    # (a list first: iterating a pandas index of Arrow strings costs ~1.5 us a label)
    cols = {str(c) for c in (columns.tolist() if hasattr(columns, "tolist") else columns)}
    out, i, n = [], 0, len(formula)
    while i < n:
        ch = formula[i]
        if ch in "'\"":                                   # string literal: copy verbatim
            j = i + 1
            while j < n and formula[j] != ch:
                j += 2 if formula[j] == "\\" else 1
            out.append(formula[i:j + 1])
            i = j + 1
        elif ch == "`":
            j = formula.find("`", i + 1)
            if j < 0:
                raise ValueError(f"unclosed backtick in formula {formula!r}")
            out.append(_quote(formula[i + 1:j], engine))
            i = j + 1
        elif ch in "0123456789":                          # a number such as 1.5e3
            m = _NUMBER_RUN.match(formula, i)
            out.append(m.group(0))
            i = m.end()
        elif (m := _IDENT_RUN.match(formula, i)) is not None:
            tok = m.group(0)
            needs = tok in cols and (not tok.isidentifier() or keyword.iskeyword(tok))
            prev = formula[:i].rstrip()[-1:]
            out.append(_quote(tok, engine) if needs and prev != "." else tok)
            i = m.end()
        else:
            out.append(ch)
            i += 1
    return "".join(out)


_QUOTED = re.compile(r"""Q\((["'])(.*?)\1\)|`([^`]*)`""")


def display_name(name):
    """A design column name without the quoting added by :func:`quote_names`."""
    return _QUOTED.sub(lambda m: m.group(2) if m.group(2) is not None else m.group(3), str(name))


def names_in(expr):
    """Identifiers an expression uses (quoted names included), in order."""
    return list(_names_in(expr))


def name_heads(formula):
    """The names a formula string can look up in its namespace (``np`` of ``np.log``), or None
    (not a string: the whole namespace)."""
    return {n.split(".")[0] for n in _names_in(formula)} if isinstance(formula, str) else None


@functools.lru_cache(maxsize=1024)
def _names_in(expr):
    names = [m.group(2) or m.group(3) for m in _QUOTED.finditer(expr)]
    stripped = _QUOTED.sub(" ", re.sub(r"(['\"]).*?\1", " ", expr))
    names += [t for t in _IDENT_RUN.findall(stripped) if not t[0].isdigit()]
    return tuple(dict.fromkeys(names))


def _resolves(dotted, env):
    """Whether ``a.b.c`` is an attribute path in ``env`` (``np.log``), not a mistyped column."""
    head, *rest = dotted.split(".")
    obj = env.get(head)
    for part in rest:
        if obj is None or not part.isidentifier() or not hasattr(obj, part):
            return False
        obj = getattr(obj, part)
    return obj is not None


def formula_error(exc, where, data, env=None, formula=None):
    """A ValueError for a formula engine's failure, naming the unknown column if there is one."""
    msg = str(exc)
    m = re.search(r"name '([^']+)' is not defined", msg) or re.search(r"'([^']+)' is not present", msg)
    cols = [str(c) for c in data.columns]
    if m:
        name = m.group(1)
        close = difflib.get_close_matches(name, cols, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        dotted = [c for c in cols if c.startswith(name + ".")]
        if dotted:
            hint = (f"; {dotted[0]!r} is a column: names with dots are read as Python attribute "
                    f"access unless quoted, Q({dotted[0]!r}) or `{dotted[0]}`")
        return ValueError(f"unknown column {name!r} in {where}{hint} (the data has columns {cols})")
    first = msg.splitlines()[0] if msg else type(exc).__name__
    hint = ""
    if re.search(r"syntax|tokeniz|unexpected", msg, re.I):
        hint = ("; column names that are not Python names (dots, spaces, keywords such as "
                "'class') must be quoted, as Q(\"my name\") or `my name`")
        env = env or {}
        text = formula if isinstance(formula, str) else ""     # a stored spec has no text
        odd = [t for t in names_in(text) if ("." in t or keyword.iskeyword(t))
               and t not in cols and not _resolves(t, env)]
        if odd:
            close = difflib.get_close_matches(odd[0], cols, n=1)
            hint = (f"; {odd[0]!r} is not a column" + (f" (did you mean {close[0]!r}?)" if close
                                                        else f" (the data has columns {cols})"))
    text = re.sub(r"(['\"`]).*?\1", " ", formula if isinstance(formula, str) else "")
    if "%in%" in text:      # R's nesting operator (patsy reads % as the modulo)
        hint = "; R's b %in% a is written a:b here (a/b, a + a:b, is as in R)"
    return ValueError(f"could not evaluate {where}: {first}{hint}")


def evaluate(mgr, formula, data, env, where):
    """The formula engine's matrices with rows holding a missing value dropped (pandas)."""
    try:
        return mgr.get_matrices(formula, data, eval_env=env, pandas=True,
                                na_action=mgr.get_na_action("drop"))
    except Exception as exc:  # noqa: BLE001 - re-raised with the column name
        raise formula_error(exc, where, data, env, formula) from exc
