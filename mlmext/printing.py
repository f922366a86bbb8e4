"""What a fitted mixed model shows when printed: lme4's ``print.merMod`` block.

``print(res)`` and the REPL show this short account (model, formula, criterion, random
effects, number of observations and groups, fixed effects); ``res.summary()`` has the full
tables and tests.  In a notebook the same block is rendered as HTML.
"""
from __future__ import annotations

import functools
import html

import numpy as np
import pandas as pd
from statsmodels.iolib.table import SimpleTable


__all__ = ["fe_index", "fe_series", "fit_title", "fit_text", "fit_html", "re_table", "fmt", "params_table",
           "fixed_decimals", "param_index", "format_pval"]


def param_index(names):
    """The row index of every table of estimates mlmext makes (``fe_params``, ``bse_fe``,
    ``varcorr()``, ``conf_int()``): the parameters' names, the index named ``parameter``, so
    ``reset_index()`` gives a ``parameter`` column and the tables join on it."""
    return pd.Index(list(names), name="parameter")


def fe_index(model):
    """``param_index(model.exog_names)`` as a view of one Index per tuple of names, shared by
    every model and result of the process: a string Index costs ~60 us to make with pandas'
    Arrow strings, and its lookup table (built on first use: ``np.asarray(fe_params)`` asks
    it for ``__array_interface__``) is then built once, not once per fit.  The labels of an
    Index cannot change; each caller gets a view of its own, so renaming one leaves the
    others alone."""
    return _fe_index(tuple(model.exog_names)).view()


@functools.lru_cache(maxsize=256)
def _fe_index(names):
    return param_index(names)


def _manager_series():
    """``(values, index, name) -> Series`` as pandas' own methods make their results (a
    ``SingleBlockManager`` of the array, ``Series._from_mgr``): a third of the constructor's
    ~10 us, which checks and converts what is already an index and a float array.  Private
    pandas API: None where this pandas lacks it or it does not give what
    ``pd.Series(values, index=index, name=name)`` gives."""
    try:
        from_mgr = pd.Series._from_mgr
        mgr = type(pd.Series(np.zeros(1))._mgr)
        idx = pd.Index(["a", "b"], name="parameter")

        def make(values, index, name):
            s = from_mgr(mgr.from_array(values, index), [index])
            object.__setattr__(s, "_name", name)        # (as pandas' _constructor_from_mgr)
            return s

        got, want = make(np.array([1.5, -2.0]), idx, "x"), pd.Series([1.5, -2.0], idx, name="x")
        if type(got) is pd.Series and got.equals(want) and got.name == "x" and \
                got.index is idx and got.dtype == want.dtype:
            return make
    except Exception:  # noqa: BLE001 - any difference: the constructor
        pass
    return None


_make_series = _manager_series()


def fe_series(values, model, name):
    """``pd.Series(values, index=fe_index(model), name=name)`` for a fresh float array
    ``values`` (the Series owns it): ``fe_params`` and ``bse_fe``, read after every fit."""
    index = fe_index(model)
    if _make_series is None:
        return pd.Series(values, index=index, name=name)
    return _make_series(values, index, name)


def fmt(x, digits=4):
    """A table cell: ``digits`` significant digits, empty for None or non-finite."""
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return ""
    return f"{x:.{digits}g}" if abs(x) < 1e5 else f"{x:.1f}"


def fixed_decimals(values, sig=3, most=8):
    """One number of decimals for a column (R's ``format`` of a vector): enough for ``sig``
    significant digits in the entry that needs the most, at most ``most``."""
    v = np.abs(np.asarray(values, dtype=float))
    v = v[np.isfinite(v) & (v > 0)]
    if v.size == 0:
        return 0
    return int(np.clip(sig - 1 - np.floor(np.log10(v.min())), 0, most))


def _pval(p):
    """R's ``format.pval`` at printCoefmat's three significant digits (``<2e-16`` at eps)."""
    if not np.isfinite(p):
        return ""
    if p < 2.2e-16:
        return "<2e-16"
    return f"{p:.2e}" if p < 1e-3 else f"{p:.3g}"


format_pval = _pval          # for the tables of mlmext.inference


def anova_formatters(table, whole=("npar", "Df", "NumDF")):
    """Column formatters for R's anova-like tables (a DataFrame): p values as ``format.pval``
    prints them, counts of parameters whole, other columns with one number of decimals each,
    enough for five significant digits (R's ``format`` of a column); empty where missing."""
    def num(fmt):
        return lambda v: "" if pd.isna(v) else fmt(v)
    out = {}
    for c in table.columns:
        if str(c).startswith("Pr(") or c == "p.value":
            out[c] = num(_pval)
        elif c in whole:
            out[c] = num(lambda v: f"{v:g}")
        elif pd.api.types.is_float_dtype(table[c]):
            d = fixed_decimals(table[c].to_numpy(dtype=float), sig=5)
            out[c] = num(lambda v, d=d: f"{v:.{d}f}")
    return out


class HeadedTable(pd.DataFrame):
    """A table of tests (a ``pandas.DataFrame``) printed as R prints anova-like tables: its
    heading (:meth:`_header`; ``attrs["heading"]`` by default) above the columns formatted by
    :func:`anova_formatters`, and the same in notebooks.  Operations on it give plain
    DataFrames."""

    @property
    def _constructor(self):
        return pd.DataFrame

    def _header(self):
        return self.attrs.get("heading", "")

    def __repr__(self):
        head = self._header()
        body = pd.DataFrame(self).to_string(na_rep="", formatters=anova_formatters(self))
        return f"{head}\n{body}" if head else body

    def __str__(self):
        return self.__repr__()

    def _repr_html_(self):
        head = self._header()
        pre = f"<pre>{html.escape(head)}</pre>" if head else ""
        return pre + pd.DataFrame(self).to_html(float_format=lambda v: f"{v:.6g}", na_rep="")


def params_table(res, alpha=0.05, rows=slice(None), title=None):
    """The coefficient table with R's ``printCoefmat`` digits: estimates, standard errors and
    interval bounds to one number of decimals that gives the smallest standard error four
    significant digits (a coefficient of 0.0009 with SE 0.001 stays readable).  ``rows``
    picks the parameters (a clmm prints its fixed effects and thresholds as two tables)."""
    names, est = _coefs(res)
    cols = [np.asarray(v, dtype=float)[rows] for v in (est, res.bse, res.tvalues, res.pvalues)]
    est, se, stat, p = cols
    ci = np.asarray(res.conf_int(alpha), dtype=float)[rows]
    d = fixed_decimals(se, sig=4)
    dz = max(2, fixed_decimals(stat, sig=3, most=3))
    cells = [[f"{e:.{d}f}", f"{s:.{d}f}", f"{z:.{dz}f}", _pval(pp), f"{lo:.{d}f}", f"{hi:.{d}f}"]
             for e, s, z, pp, (lo, hi) in zip(est, se, stat, p, ci)]
    kind = "t" if res.use_t else "z"
    return SimpleTable(cells, headers=["coef", "std err", kind, f"P>|{kind}|",
                                       f"[{alpha / 2:g}", f"{1 - alpha / 2:g}]"],
                       stubs=names[rows], title=title)


def re_table(res):
    """lme4's random-effects table: groups, names, variances, SDs and correlations."""
    rows = []
    for label, names, C, sd in res._re_cov_sd():
        for i, nm in enumerate(names):
            corr = []
            for j in range(i):
                d = sd[i] * sd[j]
                corr.append(f"{C[i, j] / d:.2f}" if d > 0 else "NaN")
            rows.append([label if i == 0 else "", nm, fmt(C[i, i]), fmt(sd[i]), " ".join(corr)])
    if res._has_residual:
        rows.append(["Residual", "", fmt(res.sigma ** 2), fmt(res.sigma), ""])
    return SimpleTable(rows, headers=["Groups", "Name", "Variance", "Std.Dev.", "Corr"],
                       title="Random effects")


def fit_title(res):
    """lme4's first line: which model, fitted how."""
    api = getattr(res.model, "_api_name", "")
    nagq = getattr(res, "nagq", 1)
    approx = ("Laplace approximation" if nagq == 1
              else f"adaptive Gauss-Hermite quadrature, nAGQ = {nagq}")
    if getattr(res, "specified", False):      # make_lmer: nothing was fitted
        how = "REML" if res.reml else "ML"
        return f"Linear mixed model at specified parameters (make_lmer, {how} refits), not fitted"
    if api == "lmer":
        return f"Linear mixed model fit by {'REML' if res.reml else 'maximum likelihood'}"
    if api == "clmm":
        return f"Cumulative link mixed model fit by maximum likelihood ({approx}) [{res._family_name}]"
    link = getattr(res, "link_name", "")
    return (f"Generalized linear mixed model fit by maximum likelihood ({approx}) "
            f"[{res._family_name}{', ' + link if link else ''}]")


def _criterion(res):
    if getattr(res, "specified", False):
        what = "REML criterion" if res.reml else "-2 log-likelihood"
        return f"{what} at the specified parameters: {res.criterion:.4f}"
    if getattr(res, "reml", False):
        return f"REML criterion at convergence: {res.criterion:.4f}"
    return (f"AIC: {res.aic:.4f}  BIC: {res.bic:.4f}  logLik: {res.llf:.4f}  "
            f"deviance: {-2.0 * res.llf:.4f}")


def _groups(res):
    seen = {}
    for t in res.model.re_design.terms:          # one entry per grouping factor (lme4's ngrps)
        seen.setdefault(t.name, t.m)
    return ", ".join(f"{name}, {m}" for name, m in seen.items())


def _coefs(res):
    """(names, values) of the estimates ``params`` holds (clmm: thresholds, then beta)."""
    data = getattr(res.model, "data", None)
    names = getattr(data, "param_names", None) or res.model.exog_names   # what params is labelled by
    return [str(n) for n in names], np.asarray(res.params, dtype=float)


def _coef_rows(res, per_line=6):
    """Names over values (4 significant digits, R's print digits), wrapped like R's print."""
    names, v = _coefs(res)
    vals = [f"{x:.4g}" if np.isfinite(x) else "NA" for x in v]
    out = []
    for k in range(0, len(names), per_line):
        w = [max(len(n), len(v)) for n, v in zip(names[k:k + per_line], vals[k:k + per_line])]
        out.append("  ".join(n.rjust(x) for n, x in zip(names[k:k + per_line], w)))
        out.append("  ".join(v.rjust(x) for v, x in zip(vals[k:k + per_line], w)))
    return out


def _notes(res):
    notes = []
    if res.is_singular():
        notes.append("boundary (singular) fit: see res.is_singular()")
    if getattr(res, "specified", False):
        notes.append("not fitted: " + res.optim.message)
    elif not res.converged:
        notes.append(f"did not converge: {res.optim.message}")
    dropped = getattr(res.model, "nrows_dropped", 0)
    if dropped:
        notes.append(f"{dropped} rows with missing values dropped")
    return notes


def fit_text(res):
    """The block as plain text."""
    formula = res.model.formula_info.get("formula", "")
    lines = [fit_title(res), f"Formula: {formula}", _criterion(res), ""]
    lines += str(re_table(res)).splitlines()
    lines.append(f"Number of obs: {int(res.nobs)}, groups: {_groups(res)}")
    lines += ["", "Fixed effects:" if getattr(res.model, "_api_name", "") != "clmm"
              else "Coefficients (thresholds and fixed effects):"]
    lines += _coef_rows(res)
    lines += [f"Note: {n}" for n in _notes(res)]
    return "\n".join(lines)


def fit_html(res):
    """The block for notebooks: the title lines, the random-effects table, the coefficients."""
    formula = res.model.formula_info.get("formula", "")
    # monospace, as the printed block: in a notebook or the docs the title lines then read as
    # output, not as a paragraph of body text
    head = "\n".join(html.escape(s) for s in (fit_title(res), f"Formula: {formula}",
                                                 _criterion(res)))
    names, v = _coefs(res)
    coefs = "".join(f"<th>{html.escape(n)}</th>" for n in names)
    vals = "".join(f"<td>{x:.4g}</td>" for x in v)
    notes = "".join(f"<p><i>Note: {html.escape(n)}</i></p>" for n in _notes(res))
    return (f"<div><pre>{head}</pre>{re_table(res).as_html()}"
            f"<p>Number of obs: {int(res.nobs)}, groups: {html.escape(_groups(res))}</p>"
            f"<table><caption>Fixed effects</caption><tr>{coefs}</tr><tr>{vals}</tr></table>"
            f"{notes}</div>")
