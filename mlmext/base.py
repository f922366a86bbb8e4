"""Shared model machinery: from an lme4-style formula and a DataFrame to arrays.

:class:`MixedModel` is the statsmodels ``LikelihoodModel`` that the linear,
generalized linear and ordinal mixed models subclass.  Its ``from_formula``
parses the bar terms, evaluates the fixed part and each term's model matrix
with statsmodels' ``FormulaManager`` (patsy, or formulaic when
``SM_FORMULA_ENGINE`` says so), drops incomplete rows consistently across all
pieces and counts them, and runs lme4's sanity checks.
"""
from __future__ import annotations

import sys
import warnings

import numpy as np
import pandas as pd
from statsmodels.base.model import LikelihoodModel
from statsmodels.formula._manager import FormulaManager

from .design import RandomEffectsDesign, ReTerm, grouping_factor
from .formula.terms import parse_formula

__all__ = ["MixedModel", "cbind"]


def cbind(*cols):
    """``cbind(successes, failures)`` in a formula's response, as in R."""
    return np.column_stack([np.asarray(c, dtype=float) for c in cols])


def _caller_namespace(depth):
    """Variables visible ``depth`` frames up, plus the formula helpers, for formula evaluation."""
    frame = sys._getframe(depth + 1)
    ns = dict(frame.f_globals)
    ns.update(frame.f_locals)
    ns.setdefault("np", np)
    ns["cbind"] = cbind
    return ns


def _formula_error(exc, where, data):
    """Turn a formula engine's error about a missing name into a ValueError naming the column."""
    msg = str(exc)
    import re
    m = re.search(r"name '([^']+)' is not defined", msg) or re.search(r"'([^']+)' is not present", msg)
    if m:
        return ValueError(f"unknown column {m.group(1)!r} in {where}; the data has columns "
                          f"{list(data.columns)}")
    return ValueError(f"could not evaluate {where}: {msg.splitlines()[0] if msg else type(exc).__name__}")


def _eval(mgr, formula, data, env, where):
    try:
        return mgr.get_matrices(formula, data, eval_env=env, pandas=True,
                                na_action=mgr.get_na_action("drop"))
    except Exception as exc:  # noqa: BLE001 - re-raised with the column name
        raise _formula_error(exc, where, data) from exc


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

    def __init__(self, endog, exog, re_design, weights=None, offset=None, **kwargs):
        self.formula_info = kwargs.pop("formula_info", {})
        missing = kwargs.pop("missing", "none")
        super().__init__(endog, exog, missing=missing, **kwargs)
        self.re_design = re_design
        n = self.endog.shape[0]
        self.weights = np.ones(n) if weights is None else np.asarray(weights, dtype=float).ravel()
        self.offset = np.zeros(n) if offset is None else np.asarray(offset, dtype=float).ravel()
        if self.weights.shape[0] != n or self.offset.shape[0] != n:
            raise ValueError("weights and offset must have one value per row")
        if np.any(~np.isfinite(self.weights)) or np.any(self.weights < 0):
            raise ValueError("weights must be finite and non-negative")
        if np.any(~np.isfinite(self.offset)):
            raise ValueError("offset has non-finite values")
        self.nobs = float(n)
        self.k_fe = self.exog.shape[1]
        self.nrows_dropped = self.formula_info.get("nrows_dropped", 0)
        self._check_design()

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
        if not isinstance(data, pd.DataFrame):
            data = pd.DataFrame(data)
        if subset is not None:
            data = data.loc[subset]
        if missing not in ("drop", "raise", "none"):
            raise ValueError("missing must be 'drop' or 'raise'")
        env = _caller_namespace(eval_env + 1) if isinstance(eval_env, int) else eval_env
        row_labels = data.index
        data = data.reset_index(drop=True)
        parsed = parse_formula(formula)
        mgr = FormulaManager()

        def column_or_array(v, what):
            if v is None:
                return None
            if isinstance(v, str):
                if v not in data.columns:
                    raise ValueError(f"unknown column {v!r} given as {what}")
                return pd.to_numeric(data[v], errors="coerce").to_numpy(dtype=float)
            arr = np.asarray(v, dtype=float).ravel()
            if arr.shape[0] != len(data):
                raise ValueError(f"{what} has {arr.shape[0]} values for {len(data)} rows")
            return arr

        w_all = column_or_array(weights, "weights")
        off_all = column_or_array(offset, "offset")

        y_df, X_df = cls._fixed_matrices(mgr, parsed, data, env)
        keep = pd.Index(y_df.index).intersection(X_df.index)
        bad_cols = {}
        lhs_frames = {}
        for bar in parsed.bars:
            for f in bar.factors:
                if f not in data.columns:
                    raise ValueError(f"unknown column {f!r} in random-effects term {bar.source}; "
                                     f"the data has columns {list(data.columns)}")
                na = data[f].isna()
                if na.any():
                    bad_cols[f] = int(na.sum())
                    keep = keep.intersection(data.index[~na])
            if bar.lhs not in lhs_frames:
                Z = _eval(mgr, bar.lhs, data, env, f"random-effects term {bar.source}")
                lhs_frames[bar.lhs] = (Z, mgr.get_model_spec(Z))
                keep = keep.intersection(Z.index)
        off_parts = []
        for expr in parsed.offsets:
            o = _eval(mgr, f"0 + {expr}", data, env, f"offset({expr})")
            if o.shape[1] != 1:
                raise ValueError(f"offset({expr}) must be a single numeric column")
            off_parts.append(o.iloc[:, 0])
            keep = keep.intersection(o.index)
        for arr, what in ((w_all, "weights"), (off_all, "offset")):
            if arr is not None:
                ok = np.isfinite(arr)
                if not ok.all():
                    bad_cols[what] = int((~ok).sum())
                    keep = keep.intersection(data.index[ok])
        keep = keep.sort_values()
        ndrop = len(data) - len(keep)
        if ndrop and missing == "raise":
            raise ValueError(f"{ndrop} rows have missing values (missing='raise'); "
                             "use missing='drop' to drop them")
        if len(keep) == 0:
            raise ValueError("no rows left after dropping rows with missing values")
        sub = data.loc[keep].reset_index(drop=True)
        y = y_df.loc[keep]
        X = X_df.loc[keep]
        terms = []
        for bar in parsed.bars:
            Z, spec = lhs_frames[bar.lhs]
            Zk = Z.loc[keep].to_numpy(dtype=float)
            codes, levels = grouping_factor(sub, list(bar.factors))
            t = ReTerm(bar.name, bar.factors, bar.lhs, Zk, list(Z.columns), codes, levels)
            t.spec = spec
            terms.append(t)
        design = RandomEffectsDesign(terms)
        off = np.zeros(len(keep))
        for o in off_parts:
            off += o.loc[keep].to_numpy(dtype=float)
        if off_all is not None:
            off += off_all[keep.to_numpy()]
        w = None if w_all is None else w_all[keep.to_numpy()]
        info = {
            "formula": formula,
            "parsed": parsed,
            "fixed_spec": mgr.get_model_spec(X_df),
            "nrows_dropped": ndrop,
            "row_labels": row_labels[keep.to_numpy()],
            "data": sub,
            "eval_env": env,
            "has_offset": bool(parsed.offsets) or off_all is not None,
            "has_weights": w_all is not None,
        }
        y, X = cls._prepare_endog_exog(y, X, sub, info)
        mod = cls(y, X, design, weights=w, offset=off, formula_info=info, **kwargs)
        mod.formula = formula
        return mod

    @classmethod
    def _fixed_matrices(cls, mgr, parsed, data, env):
        y_df, X_df = _eval(mgr, parsed.fixed_formula, data, env, f"the fixed-effects formula {parsed.fixed_formula!r}")
        return y_df, X_df

    @classmethod
    def _prepare_endog_exog(cls, y, X, data, info):
        """Hook for subclasses: check and transform the response (default: one numeric column)."""
        if y.shape[1] != 1:
            raise ValueError(f"the response {info['parsed'].response!r} must be a single numeric "
                             f"column; the formula engine made columns {list(y.columns)}")
        return y.iloc[:, 0], _drop_rank_deficient(X)

    # ------------------------------------------------------------- new data
    def _new_design(self, data, re=True):
        """Fixed design and per-term (X, codes into fitted levels, -1 if new) for new data.

        With ``re=False`` the random-effects terms are skipped, so population-level
        predictions do not need the grouping columns (lme4's ``re.form = NA``).
        """
        mgr = FormulaManager()
        data = pd.DataFrame(data).reset_index(drop=True)
        info = self.formula_info
        X = mgr.get_matrices(info["fixed_spec"], data, pandas=True)
        X = X.reindex(columns=self.exog_names).to_numpy(dtype=float)
        terms = []
        for t in (self.re_design.terms if re else []):
            missing = [f for f in t.factors if f not in data.columns]
            if missing:
                raise ValueError(f"predicting with random effects needs the grouping column(s) "
                                 f"{missing} in the new data; use re=False for population-level "
                                 "predictions")
            Z = mgr.get_matrices(t.spec, data, pandas=True).to_numpy(dtype=float)
            codes, labels = grouping_factor(data, list(t.factors))
            lookup = {lev: i for i, lev in enumerate(t.levels)}
            newcodes = np.array([lookup.get(lab, -1) for lab in labels], dtype=np.int64)[codes]
            terms.append((Z, newcodes))
        off = np.zeros(len(data))
        for expr in info["parsed"].offsets:
            off += mgr.get_matrices(f"0 + {expr}", data, eval_env=info["eval_env"],
                                    pandas=True).iloc[:, 0].to_numpy(dtype=float)
        return X, terms, off


def _drop_rank_deficient(X, tol=1e-7):
    """Drop columns of a rank-deficient fixed-effects design, warning as lme4 does.

    Columns are taken in order and a column is dropped when it lies (to
    ``tol``, relative to its norm) in the span of the columns kept before it,
    so the later of two collinear columns goes, as in lme4.
    """
    A = X.to_numpy(dtype=float)
    if A.shape[1] == 0:
        return X
    if not np.all(np.isfinite(A)):
        raise ValueError("the fixed-effects design has non-finite values")
    Q = np.zeros((A.shape[0], 0))
    keep = []
    for j in range(A.shape[1]):
        v = A[:, j].copy()
        nv = np.linalg.norm(v)
        for _ in range(2):                      # Gram-Schmidt with reorthogonalization
            v -= Q @ (Q.T @ v)
        if nv > 0 and np.linalg.norm(v) > tol * nv:
            Q = np.column_stack([Q, v / np.linalg.norm(v)])
            keep.append(j)
    if len(keep) == A.shape[1]:
        return X
    dropped = [X.columns[j] for j in range(A.shape[1]) if j not in keep]
    warnings.warn(f"fixed-effect model matrix is rank deficient so dropping {len(dropped)} "
                  f"column(s): {dropped}", UserWarning, stacklevel=4)
    return X.iloc[:, keep]
