"""Shared model machinery: from an lme4-style formula and a DataFrame to arrays.

:class:`MixedModel` is the statsmodels ``LikelihoodModel`` that the linear,
generalized linear and ordinal mixed models subclass.  Its ``from_formula``
parses the bar terms, evaluates the fixed part and each term's model matrix
with statsmodels' ``FormulaManager`` (patsy, or formulaic when
``SM_FORMULA_ENGINE`` says so), drops incomplete rows consistently across all
pieces and counts them, and runs lme4's sanity checks.
"""
from __future__ import annotations

import functools
import importlib
import inspect
import math
import pickle
import sys
import types
import warnings

import numpy as np
import pandas as pd
from scipy.linalg import lapack
from statsmodels.base.model import LikelihoodModel

from ._args import reject_unknown
from ._frames import as_dataframe, categoricals_as_values
from .design import constant_rows, match_levels
from .frame import (FixedParts, build_model_frame, display_name, evaluate, formula_manager,
                    name_heads, names_in)
from .laplace import make_chol
from .model_data import LAZY_FRAMES, formula_arrays, frame_data

__all__ = ["MixedModel", "cbind", "drop_rank_deficient"]


def cbind(*cols):
    """``cbind(successes, failures)`` in a formula's response, as in R."""
    return np.column_stack([np.asarray(c, dtype=float) for c in cols])


def caller_namespace(depth, names=None):
    """Variables visible ``depth`` frames up, plus the formula helpers, for formula evaluation;
    ``names``: only these (a formula's names, all its evaluation looks up, now or on new data),
    not a copy of the caller's whole namespace (a pass over a notebook's globals per build)."""
    frame = sys._getframe(depth + 1)
    if names is None:
        ns = dict(frame.f_globals)
        ns.update(frame.f_locals)
    else:
        loc, glob = frame.f_locals, frame.f_globals
        ns = {n: loc[n] if n in loc else glob[n] for n in names if n in loc or n in glob}
    ns.setdefault("np", np)
    ns["cbind"] = cbind
    return ns


@functools.lru_cache(maxsize=None)
def _accepted_names(cls):
    names = set()
    for f in (cls.__init__, cls.from_formula):
        names |= {p for p in inspect.signature(f).parameters if p not in ("self", "cls", "kwargs")}
    return tuple(sorted(names))


@functools.lru_cache(maxsize=None)
def _one_owner(cls, a, b):
    """Whether one class of ``cls``'s MRO defines both attributes ``a`` and ``b`` (per class:
    a class's methods do not change)."""
    def owner(name):
        return next(k for k in cls.__mro__ if name in k.__dict__)
    return owner(a) is owner(b)


class MixedModel(LikelihoodModel):
    """Base class of the mixed models: holds y, X, the random-effects design and row bookkeeping.

    Not used directly; see :class:`mlmext.lmm.LinearMixedModel`.

    Parameters
    ----------
    endog : array_like
        Response.
    exog : array_like
        Fixed-effects design matrix.
    re_design : RandomEffectsDesign
        The random-effects structure.
    weights : array_like, optional
        Prior weights.
    offset : array_like, optional
        Known offset added to the linear predictor.
    """

    # lme4's checks on grouping factors; GLMMs allow as many levels as rows
    _check_nlev_vs_nobs = True
    # the formula api function that builds the model, and hints for arguments it does not take
    _api_name = "MixedModel"
    _init_hints = {}

    def __init__(self, endog, exog, re_design, weights=None, offset=None, **kwargs):
        self.formula_info = kwargs.pop("formula_info", {})
        missing = kwargs.pop("missing", "none")
        if kwargs:
            reject_unknown(kwargs, f"{self._api_name}()", accepted=self._init_accepted(),
                           hints=self._init_hints)
        super().__init__(endog, exog, missing=missing)
        # kept apart from statsmodels' data object, which remove_data() empties
        self._names = (self.data.ynames, list(self.data.xnames or []))
        self.re_design = re_design
        n = self.endog.shape[0]
        self.weights = constant_rows(1.0, n) if weights is None else \
            np.asarray(weights, dtype=float).ravel()
        self.offset = constant_rows(0.0, n) if offset is None else \
            np.asarray(offset, dtype=float).ravel()
        if self.weights.shape[0] != n or self.offset.shape[0] != n:
            raise ValueError("weights and offset must have one value per row")
        # (the ones and zeros made here need no checks)
        if weights is not None and (np.any(~np.isfinite(self.weights)) or np.any(self.weights < 0)):
            raise ValueError("weights must be finite and non-negative")
        if offset is not None and np.any(~np.isfinite(self.offset)):
            raise ValueError("offset has non-finite values")
        # rows with zero weight carry no information: they are not observations (R's glm)
        self.nobs = float(n if weights is None else np.count_nonzero(self.weights))
        self.k_fe = self.exog.shape[1]
        self.nrows_dropped = self.formula_info.get("nrows_dropped", 0)
        self._check_design()

    def _handle_data(self, endog, exog, missing, hasconst, **kwargs):
        # a Series and a DataFrame (the formula's): statsmodels' data object without its
        # pandas passes (mlmext.model_data); anything else through statsmodels
        data = None
        if missing == "none" and hasconst is None and not kwargs:
            data = frame_data(endog, exog)
        if data is None:
            data = super()._handle_data(endog, exog, missing, hasconst, **kwargs)
        return data

    @property
    def endog_names(self):
        """Name of the response."""
        return self._names[0]

    @property
    def exog_names(self):
        """Names of the fixed-effects design columns."""
        return list(self._names[1])

    def _check_design(self):
        n = self.endog.shape[0]
        for t in self.re_design.terms:
            if t.m < 2:
                raise ValueError(f"grouping factor {t.name!r} in ({t.lhs} | {t.name}) has "
                                 f"{t.m} level; a grouping factor needs at least 2 levels")
            if self._check_nlev_vs_nobs and t.m >= n:
                raise ValueError(f"grouping factor {t.name!r} has {t.m} levels for {n} observations; "
                                 "the random effects and the residual are then unidentifiable")
        if self._check_nlev_vs_nobs and self.re_design.nre >= n and len(self.re_design.terms) == 1:
            raise ValueError(f"the model has {self.re_design.nre} random effects for {n} observations")

    # ------------------------------------------------------------------ formula
    @classmethod
    def from_formula(cls, formula, data, subset=None, weights=None, offset=None,
                     missing="drop", eval_env=0, **kwargs):
        """Create a model from an lme4-style formula.

        Parameters
        ----------
        formula : str
            Fixed part in statsmodels/patsy syntax plus random-effects terms
            ``(expr | g)``, ``(expr || g)``, nesting ``(1 | a/b)`` and
            interactions ``(1 | a:b)``; ``offset(expr)`` adds a known offset.
        data : pandas.DataFrame
        subset : array_like, optional
            Row selection applied to ``data`` first.
        weights, offset : str or array_like, optional
            Column names or arrays (one value per row of ``data``).
        missing : {"drop", "raise"}
            Rows with missing values in any used variable are dropped and
            counted (``"drop"``), or raise a ``ValueError`` (``"raise"``).
        eval_env : int
            Frames above the caller whose variables formulas may use.
        """
        if kwargs:                                  # fail before the (costly) frame is built
            accepted = set(cls._init_accepted())
            reject_unknown({k: v for k, v in kwargs.items() if k not in accepted},
                           f"{cls._api_name}()", accepted=sorted(accepted), hints=cls._init_hints)
        env = caller_namespace(eval_env + 1, name_heads(formula)) if isinstance(eval_env, int) \
            else eval_env
        frame = build_model_frame(formula, data, subset=subset, weights=weights, offset=offset,
                                  missing=missing, env=env, fixed_matrices=cls._fixed_matrices,
                                  mgr=formula_manager(), fixed_parts=cls._one_pass_parts())
        info = frame.info
        # the base hook reads a one-column response as the Series itself (no frame made)
        base_hook = cls._prepare_endog_exog.__func__ is MixedModel._prepare_endog_exog.__func__
        y = X = None
        arrays = None
        if LAZY_FRAMES:        # (a subclass's hook may give the response as an array too)
            arrays = ((frame.y_values, frame.y_name) if frame.y_values is not None else None) \
                if base_hook else cls._response_arrays(frame, info)
        if arrays is not None and len(arrays[0]) >= 2:
            # the base hook's work on the arrays: the Series and DataFrame it would hand the
            # model are made when first read (model_data.FormulaData)
            y, X = formula_arrays(arrays[0], arrays[1], frame.x_values, frame.x_names)
            if _columns_kept(X.values) is not None:
                y = X = None                # columns to drop (and a warning): the frames' way
        if y is None:
            y = frame.y_column if base_hook and frame.y_column is not None else frame.y
            y, X = cls._prepare_endog_exog(y, frame.X, info["data"], info)
        mod = cls(y, X, frame.design, weights=frame.weights, offset=frame.offset,
                  formula_info=info, **kwargs)
        mod.formula = formula
        return mod

    @classmethod
    def _init_accepted(cls):
        """Keyword arguments the model (and ``from_formula``) read, for "did you mean"."""
        return _accepted_names(cls)

    @classmethod
    def _fixed_matrices(cls, mgr, parsed, data, env):
        y_df, X_df = evaluate(mgr, parsed.fixed_formula, data, env, f"the fixed-effects formula {parsed.fixed_formula!r}")
        return y_df, X_df

    @classmethod
    def _fixed_parts(cls, parsed):
        """What :meth:`_fixed_matrices` evaluates, for the one-pass build: ``response ~ rhs``."""
        return FixedParts(parsed.fixed_formula)

    @classmethod
    def _one_pass_parts(cls):
        """``_fixed_parts`` when the class that defines it also defines ``_fixed_matrices`` (a
        subclass overriding only ``_fixed_matrices`` gets the generic path)."""
        return cls._fixed_parts if _one_owner(cls, "_fixed_parts", "_fixed_matrices") else None

    @classmethod
    def _response_arrays(cls, frame, info):
        """Hook for subclasses with their own :meth:`_prepare_endog_exog`: its response as
        ``(values, name)`` from the model frame without pandas objects, or None (then the
        hook runs on the frames)."""
        return None

    @classmethod
    def _prepare_endog_exog(cls, y, X, data, info):
        """Hook for subclasses: check and transform the response (default: one numeric column).
        ``y``: the response frame, or its one column as a Series (the model frame's
        ``y_column``, which only this default reads)."""
        if isinstance(y, pd.Series):
            return y, drop_rank_deficient(X)
        if y.shape[1] != 1:
            name = display_name(info["parsed"].response)
            kind = f" (it has dtype {data[name].dtype})" if name in data.columns else ""
            cols = list(y.columns)
            raise ValueError(f"the response {name!r} must be a single numeric column{kind}; the "
                             f"formula engine made {len(cols)} columns {cols[:3]}"
                             f"{' ...' if len(cols) > 3 else ''}")
        return y[y.columns[0]], drop_rank_deficient(X)        # (y.iloc[:, 0] costs 2x more)

    def _pirls_factor(self, with_x=False):
        """The PIRLS factorization with its reweighting plan, built once and never reweighted
        itself: each deviance takes its own :meth:`~mlmext.linalg.Factor.workspace` of it."""
        key = "_pirls_x" if with_x else "_pirls_u"
        fac = self.__dict__.get(key)
        if fac is None:       # two threads may both build it: same value, either one is kept
            fac = make_chol(self.re_design, self.endog.shape[0], X=self.exog if with_x else None)
            setattr(self, key, fac)
        return fac

    # ------------------------------------------------------------- new data
    def _new_design(self, data, re=True, offset=None):
        """Fixed design, per-term (Z, codes into fitted levels, -1 if new) and offset for new data.

        With ``re=False`` the random-effects terms are skipped, so population-level
        predictions do not need the grouping columns (lme4's ``re.form = NA``).
        Rows with a missing value in a variable used give NaN in the design (and
        so a NaN prediction), as statsmodels and lme4 predict.
        """
        mgr = formula_manager()
        data = as_dataframe(data, "new data").reset_index(drop=True)
        n = len(data)
        info = self.formula_info
        env = info.get("eval_env")
        values = categoricals_as_values(data)     # factors matched to the fitted levels by value

        def matrix(spec_or_formula, what):
            M = evaluate(mgr, spec_or_formula, values, env, what)
            M.columns = [display_name(c) for c in M.columns]
            return M.reindex(index=range(n))            # dropped (incomplete) rows -> NaN

        X = matrix(self._fixed_spec(), "the fixed-effects formula (new data)")
        missing_cols = [c for c in self.exog_names if c not in X.columns]
        if missing_cols:
            raise ValueError(f"the new data give no column(s) {missing_cols} of the fitted design "
                             "(a factor level not seen in fitting?)")
        X = X.reindex(columns=self.exog_names).to_numpy(dtype=float)
        terms = []
        for t in (self.re_design.terms if re else []):
            absent = [f for f in t.factors if f not in data.columns]
            if absent:
                raise ValueError(f"predicting with random effects needs the grouping column(s) "
                                 f"{absent} in the new data; use re=False for population-level "
                                 "predictions")
            Z = matrix(self._term_spec(t), f"random-effects term ({t.lhs} | {t.name}) (new data)")
            terms.append((Z.to_numpy(dtype=float), match_levels(data, t)))
        off = np.zeros(n)
        for expr in info["parsed"].offsets:
            off += matrix(f"0 + {expr}", f"offset({expr})").iloc[:, 0].to_numpy(dtype=float)
        off += self._new_offset(data, offset)
        return X, terms, off

    def _new_offset(self, data, offset):
        """The ``offset=`` part of the offset for new data (the formula's offset() is separate)."""
        how = self.formula_info.get("offset_arg")
        if offset is not None:
            arr = np.asarray(data[offset] if isinstance(offset, str) else offset, dtype=float).ravel()
            if arr.shape[0] != len(data):
                raise ValueError(f"offset has {arr.shape[0]} values for {len(data)} new rows")
            return arr
        if how is None:
            return 0.0
        if how == "array":
            raise ValueError("the model was fitted with offset= given as an array: pass offset= "
                             "(one value per new row) to predict")
        if how not in data.columns:
            raise ValueError(f"the model was fitted with offset={how!r}: the new data need that "
                             "column (or pass offset=)")
        return pd.to_numeric(data[how], errors="coerce").to_numpy(dtype=float)

    # ------------------------------------------------ formula specs (rebuilt after unpickling)
    def _fixed_spec(self):
        if self.formula_info.get("fixed_spec") is None:
            self._rebuild_specs()
        return self.formula_info["fixed_spec"]

    def _term_spec(self, term):
        if getattr(term, "spec", None) is None:
            self._rebuild_specs()
        return term.spec

    def _rebuild_specs(self):
        """Evaluate the formula again on the stored model frame to recover the engine's specs.

        patsy's specs cannot be pickled; they are dropped by ``__getstate__`` and
        rebuilt here, from the same rows, so stateful transforms learn the same state.
        """
        info = self.formula_info
        frame = self._spec_frame()
        if frame is None or info.get("parsed") is None:
            raise ValueError("this model has no formula and model frame to evaluate new data with "
                             "(a model built from arrays, or a result pickled after remove_data())")
        mgr = formula_manager()
        env = info.get("eval_env")
        _, X_df = self._fixed_matrices(mgr, info["parsed"], frame, env)
        info["fixed_spec"] = mgr.get_model_spec(X_df)
        for t in self.re_design.terms:
            Z = evaluate(mgr, t.lhs, frame, env, f"random-effects term ({t.lhs} | {t.name})")
            t.spec = mgr.get_model_spec(Z)

    def _spec_frame(self):
        """The rows the formula engine's state was learned from (the model frame)."""
        return self.formula_info.get("data")

    #: caches of the factorization's set-up (rebuilt on first use, not pickled)
    _unpickled_caches = ("_xprod", "_pirls_u", "_pirls_x", "_scalar_lap_template")

    def __getstate__(self):
        state = {k: v for k, v in self.__dict__.items() if k not in self._unpickled_caches}
        info = dict(state.get("formula_info", {}))
        info["fixed_spec"] = None
        info["eval_env"] = _picklable_env(info.get("eval_env"), info.get("parsed"))
        state["formula_info"] = info
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        for t in self.re_design.terms:   # specs are rebuilt on first use (_rebuild_specs)
            t.spec = None


def _picklable_env(env, parsed):
    """The part of a formula's namespace a pickle can carry: the names the formula uses.

    Modules are stored by name and imported again; values that cannot be pickled
    (a lambda, an open file) are left out: new data then need no such name, or
    raise naming it.
    """
    out = {"np": _ModuleRef("numpy"), "cbind": cbind}
    if not env:
        return out
    exprs = []
    if parsed is not None:
        exprs = [parsed.fixed_formula] + [b.lhs for b in parsed.bars] + list(parsed.offsets)
    for name in {n.split(".")[0] for e in exprs for n in names_in(e)}:
        if name not in env or name in out:
            continue
        v = env[name]
        if isinstance(v, types.ModuleType):
            out[name] = _ModuleRef(v.__name__)
            continue
        try:
            pickle.dumps(v)
        except Exception:  # noqa: BLE001 - anything that cannot be pickled is left out
            continue
        out[name] = v
    return out


class _ModuleRef:
    """A module in a pickled formula namespace: pickled by name, imported again on load."""

    def __init__(self, name):
        self.name = name

    def __reduce__(self):
        return (importlib.import_module, (self.name,))


_EPS = np.finfo(float).eps


def _r_factor(A, block=8192):
    """The R of a QR decomposition of ``A`` (its columns' inner products, in min(n, p) rows),
    by blocks of rows (TSQR): LAPACK's QR of a tall matrix in one piece is slow."""
    n = A.shape[0]
    if n <= 2 * block:
        return np.linalg.qr(A, mode="r")
    Rs = [np.linalg.qr(A[i:i + block], mode="r") for i in range(0, n, block)]
    return np.linalg.qr(np.vstack(Rs), mode="r")


def _kept_in_order(V, tol):
    """Columns of ``V`` kept by Gram-Schmidt in column order: a column goes when its residual
    on the columns kept before it is at most ``tol`` times its norm (or it is zero)."""
    Q = np.zeros((V.shape[0], 0))
    keep = []
    for j in range(V.shape[1]):
        v = V[:, j].copy()
        nv = np.linalg.norm(v)
        for _ in range(2):                      # Gram-Schmidt with reorthogonalization
            v -= Q @ (Q.T @ v)
        if nv > 0 and np.linalg.norm(v) > tol * nv:
            Q = np.column_stack([Q, v / np.linalg.norm(v)])
            keep.append(j)
    return keep


def _all_independent(A, tol):
    """Whether every column of ``A`` is certainly kept: from the Cholesky factor of the
    column-scaled cross-product, each column's residual ratio (its diagonal) exceeds ``tol``
    by more than the factor's rounding error, bounded through the column's coefficients on
    the columns before it."""
    G = A.T @ A
    d = G.diagonal()
    if not (np.isfinite(G).all() and (d > 0).all()):
        return False
    s = 1.0 / np.sqrt(d)
    R, info = lapack.dpotrf(G * s[:, None] * s[None, :], lower=0)     # LAPACK: no overhead
    if info != 0:
        return False
    r = R.diagonal()
    Rinv, info = lapack.dtrtri(R, lower=0)
    if info != 0:
        return False
    # coefficients of column j on the columns before it: -R_jj * (R^-1)[:j, j]
    coef = (np.abs(Rinv).sum(axis=0) - np.abs(Rinv.diagonal())) * r
    err = 8 * len(r) * _EPS * (1.0 + coef) ** 2
    return bool((r * r - err > 4 * tol * tol).all())


def _two_clearly_independent(A, tol):
    """Whether the two columns of ``A`` are so far from collinear (squared sine of their angle
    above 1e-6, norms far from under- and overflow) that :func:`_all_independent` certainly
    keeps both (its test is at ``4 tol**2`` <= 4e-14, its rounding bound below 2e-14): three
    dot products decide, without the LAPACK calls, whose code is out of the CPU caches after
    a garbage collection."""
    a, b = A[:, 0], A[:, 1]
    gaa, gbb, gab = float(a.dot(a)), float(b.dot(b)), float(a.dot(b))
    if not (1e-200 < gaa < 1e200 and 1e-200 < gbb < 1e200 and abs(gab) < 1e200) or tol > 1e-7:
        return False
    return 1.0 - (gab / gaa) * (gab / gbb) > 1e-6


def _columns_kept(A, tol=1e-7):
    """The columns of the design ``A`` that :func:`drop_rank_deficient` keeps, None for all."""
    if A.shape[1] == 0:
        return None
    # (a finite sum first, by the ufunc: every value is then finite; np.all's wrappers cost more)
    if not math.isfinite(np.add.reduce(A, None)) and not np.isfinite(A).all():
        raise ValueError("the fixed-effects design has non-finite values")
    if A.shape[1] == 2 and _two_clearly_independent(A, tol):
        return None
    if _all_independent(A, tol):
        return None
    keep = _kept_in_order(_r_factor(A), tol)
    return None if len(keep) == A.shape[1] else keep


def drop_rank_deficient(X, tol=1e-7):
    """Drop columns of a rank-deficient fixed-effects design, warning as lme4 does.

    Columns are taken in order and a column is dropped when it lies (to
    ``tol``, relative to its norm) in the span of the columns kept before it,
    so the later of two collinear columns goes, as in lme4.

    One cross-product and its Cholesky factor decide a design whose columns are clearly
    independent (the usual case); otherwise Gram-Schmidt runs on the R of a QR
    decomposition of the design, whose columns have the design's inner products.
    """
    A = X.to_numpy(dtype=float)
    keep = _columns_kept(A, tol)
    if keep is None:
        return X
    dropped = [X.columns[j] for j in range(A.shape[1]) if j not in keep]
    warnings.warn(f"fixed-effect model matrix is rank deficient so dropping {len(dropped)} "
                  f"column(s): {dropped}", UserWarning, stacklevel=4)
    return X.iloc[:, keep]
