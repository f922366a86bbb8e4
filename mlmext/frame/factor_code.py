"""What the code of a patsy factor refers to, and whether it behaves alike on NumPy arrays and
on pandas Series (for :mod:`.patsy_pass`).

A factor's code (``np.log(z)``, ``C(f, Treatment('a'))``, ``I(x - x.mean())``) is parsed once
(:func:`code_info`); its names are then resolved as patsy resolves them -- a column of the
data first, then the formula's namespace, patsy's builtins, Python's builtins
(:func:`resolve`) -- and each object is classified (:func:`kind_of`):

* ``"rowwise"``: elementwise and the same on arrays as on Series (NumPy ufuncs, operators,
  ``C``, ``I``, ``Q``, contrasts, ``cbind``, ``abs``, ``round``, ``pow``, scalars);
* ``"array"``: the same on arrays, not elementwise (``len``, ``sum``, ``min``, ``max``, an
  array or list of the namespace: it is not subset with the rows);
* ``"pandas"``: not known to be the same (patsy's stateful transforms, whose results on a
  Series pass through pandas arithmetic; other NumPy functions, which call a Series' own
  methods -- ``np.mean(x)`` is ``x.mean()``, which skips NaN; functions of the caller).
"""
from __future__ import annotations

import ast
import builtins
import functools
import numbers
import types

import numpy as np

try:
    import patsy.builtins as _pb
    # the names patsy adds to every formula's namespace (its own "from patsy.builtins import *")
    PATSY_BUILTINS = {name: getattr(_pb, name) for name in _pb.__all__}
except ImportError:  # pragma: no cover - the one-pass build needs patsy
    _pb = None
    PATSY_BUILTINS = {}

__all__ = ["CodeInfo", "code_info", "resolve", "kind_of", "bare_column", "MISSING", "PATSY_BUILTINS"]

_OK_NODES = (ast.Expression, ast.Load, ast.Constant, ast.BinOp, ast.UnaryOp, ast.Compare,
             ast.List, ast.Tuple, ast.keyword,
             ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Pow, ast.USub, ast.UAdd, ast.Invert,
             ast.BitAnd, ast.BitOr, ast.BitXor,
             ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE)


def _chain(node):
    """``a.b.c`` as ``("a", "b", "c")``; None for anything else (``"s".upper``, ``f().x``)."""
    if isinstance(node, ast.Name):
        return (node.id,)
    if isinstance(node, ast.Attribute):
        head = _chain(node.value)
        return None if head is None else head + (node.attr,)
    return None


class CodeInfo:
    __slots__ = ("refs", "c_levels", "bare")

    def __init__(self, refs, c_levels, bare):
        self.refs = refs          # ((dotted path, called), ...)
        self.c_levels = c_levels  # a C(..., levels=...) call
        self.bare = bare          # ("name", x), ("Q", "x") or ("C", inner bare): the factor is a column


@functools.lru_cache(maxsize=1024)
def code_info(code):
    """What one factor's code refers to, or None when its syntax is not taken (subscripts,
    ``%``, ``//``, ``not``, ``if``, lambdas, comprehensions, ``**kwargs``...)."""
    try:
        tree = ast.parse(code, mode="eval")
    except SyntaxError:
        return None
    refs, c_levels = [], [False]

    def visit(node):
        if isinstance(node, ast.Call):
            path = _chain(node.func)
            if path is None:
                return False
            refs.append((path, True))
            if path == ("C",) and (len(node.args) > 2 or any(k.arg == "levels" for k in node.keywords)):
                c_levels[0] = True
            return all(visit(a) for a in node.args) and \
                all(k.arg is not None and visit(k.value) for k in node.keywords)
        if isinstance(node, (ast.Name, ast.Attribute)):
            path = _chain(node)
            if path is None:
                return False
            refs.append((path, False))
            return True
        if not isinstance(node, _OK_NODES):
            return False
        return all(visit(c) for c in ast.iter_child_nodes(node))

    if not visit(tree):
        return None
    return CodeInfo(tuple(refs), c_levels[0], _bare(tree.body))


def _bare(node):
    if isinstance(node, ast.Name):
        return ("name", node.id)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
        if node.func.id == "Q" and len(node.args) == 1 and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            return ("Q", node.args[0].value)
        if node.func.id == "C" and 1 <= len(node.args) <= 2:
            inner = _bare(node.args[0])
            if inner is not None and inner[0] != "C":
                return ("C", inner)
    return None


MISSING = object()
_ROWWISE_BUILTINS = (abs, round, pow)
_ARRAY_BUILTINS = (min, max, sum, len)


def _patsy_kind(obj):
    if any(obj is b for b in (_pb.I, _pb.Q, _pb.C, _pb.Treatment, _pb.Sum, _pb.Poly, _pb.Helmert,
                              _pb.Diff, _pb.ContrastMatrix)):
        return "rowwise"
    if any(obj is b for b in (_pb.center, _pb.standardize, _pb.scale, _pb.bs, _pb.cr, _pb.cc,
                              _pb.te)):
        # stateful: learned from the rows, and on a Series its arithmetic is pandas'
        return "pandas"
    return None


def bare_column(bare, columns, env):
    """The column a factor is (``x``, ``Q("x")``, ``C(x)``, ``C(x, Treatment)``), or None."""
    if bare is not None and bare[0] == "C":
        bare = bare[1] if resolve(("C",), columns, env) is _pb.C else None
    if bare is None or bare[1] not in columns:
        return None
    if bare[0] == "Q" and resolve(("Q",), columns, env) is not _pb.Q:
        return None
    return bare[1]


def _scalar(obj):
    return obj is None or isinstance(obj, (bool, numbers.Number, str, bytes, np.generic))


def kind_of(obj, called, cbind):
    """How a name of the namespace behaves: "rowwise" (elementwise, the same on arrays as on
    Series), "array" (the same on arrays, not elementwise) or "pandas" (not known to be the
    same on arrays)."""
    kind = _patsy_kind(obj)
    if kind is not None:
        return kind
    if obj is cbind or isinstance(obj, np.ufunc):
        return "rowwise"
    if isinstance(obj, types.BuiltinFunctionType) and getattr(obj, "__module__", None) == "builtins":
        if any(obj is b for b in _ROWWISE_BUILTINS):
            return "rowwise"
        return "array" if any(obj is b for b in _ARRAY_BUILTINS) else "pandas"
    if called or isinstance(obj, types.ModuleType):
        # other NumPy functions call a Series' own methods (np.mean(x) is x.mean(), which
        # skips NaN); the caller's functions may use pandas
        return "pandas"
    if _scalar(obj):
        return "rowwise"
    if isinstance(obj, np.ndarray) or (isinstance(obj, (list, tuple)) and all(map(_scalar, obj))):
        return "array"                              # not subset with the rows
    return "pandas"


def resolve(path, columns, env):
    """The object a dotted name in a factor refers to: ``"column"``, or the object, or MISSING."""
    head = path[0]
    if head in columns:
        return "column" if len(path) == 1 else MISSING
    for ns in (env, PATSY_BUILTINS, builtins.__dict__):
        if head in ns:
            obj = ns[head]
            break
    else:
        return MISSING
    for attr in path[1:]:
        obj = getattr(obj, attr, MISSING)
        if obj is MISSING:
            return MISSING
    return obj
