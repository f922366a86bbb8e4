"""lmerTest's tables for one linear mixed model: ``anova`` (Type I, II, III F tests), ``drop1``
and ``ranova``.

The hypothesis matrices are built as lmerTest 3.1 builds them (``get_contrasts_type1/2/3``,
``get_contrasts_marginal``): Type III from the cell-coded design ``rdX`` and the treatment-
coded design, made orthogonal to the terms that contain each term, then mapped to the fit's
own coding, so the tests do not depend on the contrasts used; Type I and II from the
Doolittle decomposition of ``X'X`` in R's column order.  Each hypothesis is tested with
:func:`~mlmext.inference.ddf.satterthwaite_ftest` or
:func:`~mlmext.inference.ddf.kenward_roger_ftest` (lmerTest's ``contestMD``).
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy import stats

from ..printing import HeadedTable
from .._args import check_flag
from ._common import _is_lmm, _raw
from ._terms import fixed_terms
from .ddf import _ddf_method, kenward_roger_ftest, satterthwaite_ftest

_F_COLUMNS = ["Sum Sq", "Mean Sq", "NumDF", "DenDF", "F value", "Pr(>F)"]


class LmerTestTable(HeadedTable):
    """A table of lmerTest's (a ``pandas.DataFrame``) printed under its heading.

    ``attrs["heading"]`` holds the heading R prints above it and ``attrs["hypotheses"]``
    the hypothesis matrix of each row (on the fitted coefficients), where there is one.
    """


def _zapsmall(x, digits=7):
    """R's ``zapsmall``: round to ``digits`` significant digits of the largest entry."""
    x = np.asarray(x, dtype=float)
    mx = np.abs(x).max() if x.size else 0.0
    if mx > 0:
        return np.round(x, max(0, digits - int(np.ceil(np.log10(mx)))))
    return np.round(x, digits)


def _doolittle(A, eps=1e-6):
    """lmerTest's ``doolittle``: the unit lower-triangular L of A = L U, entries below eps zeroed."""
    n = A.shape[0]
    L, U = np.eye(n), np.zeros((n, n))
    for i in range(n):
        U[i, :] = A[i, :] - L[i, :i] @ U[:i, :]
        if i + 1 < n:
            col = A[i + 1:, i] - L[i + 1:, :i] @ U[:i, i]
            L[i + 1:, i] = 0.0 if abs(U[i, i]) < eps else col / U[i, i]
    L[np.abs(L) < eps] = 0.0
    return L


def _type1(ft):
    Lt = _doolittle(ft.X_user.T @ ft.X_user).T
    return {t: Lt[ft.cols_user[t]] for t in ft.labels}


def _marginal(ft, which):
    eye = np.eye(ft.X_user.shape[1])
    return {t: eye[ft.cols_user[t]] for t in which}


def _type2(ft):
    X = ft.X_user
    marginal = [t for t in ft.labels if not ft.contains[t]]
    out = _marginal(ft, marginal)
    for t in ft.labels:
        if t in out:
            continue
        cols = list(ft.cols_user[t]) + [c for b in ft.contains[t] for c in ft.cols_user[b]]
        rest = [c for c in range(X.shape[1]) if c not in cols]
        order = rest + cols
        Lt = _doolittle(X[:, order].T @ X[:, order]).T
        rows = [order.index(c) for c in ft.cols_user[t]]
        L = np.zeros((len(rows), X.shape[1]))
        L[:, order] = Lt[rows]
        out[t] = L
    return {t: out[t] for t in ft.labels}


def _type3(ft):
    """lmerTest's ``extract_contrasts_type3`` on the treatment design, in treatment columns."""
    X = ft.X_treat
    L = _zapsmall((np.linalg.pinv(X) @ ft.rdX).T)            # rdX columns x X columns
    by_order = sorted(ft.labels, key=lambda t: -ft.degree[t])   # stable: ties as written
    for t in by_order:
        if ft.contains[t]:
            A = L[:, [c for b in ft.contains[t] for c in ft.cols_treat[b]]]
            Y = L[:, ft.cols_treat[t]]
            coef = np.linalg.lstsq(A, Y, rcond=None)[0]
            L[:, ft.cols_treat[t]] = _zapsmall(Y - A @ coef)
    L = L[ft.rd_of_treat]
    out = {}
    for t in ft.labels:
        Lt = L[:, ft.cols_treat[t]].T
        out[t] = Lt[np.abs(Lt).sum(axis=1) > 1e-8]
    return out


def term_contrasts(res, type=3):
    """lmerTest's hypothesis matrices per fixed-effect term, on the fitted coefficients.

    Parameters
    ----------
    res : LMM results fitted from a formula
    type : {1, 2, 3, "marginal"}

    Returns
    -------
    dict
        Term label (R's order and spelling, variables joined by ``:``) -> matrix with one
        row per hypothesis and one column per fixed effect.
    """
    ft = fixed_terms(res)
    single = ft.X_user.shape[1] <= 1 or len(ft.labels) <= 1    # lmerTest falls back to Type I
    if type == 1 or single:
        Ls, T = _type1(ft), ft.T_user
    elif type == 2:
        Ls, T = _type2(ft), ft.T_user
    elif type == 3:
        Ls, T = _type3(ft), _zapsmall(ft.T_treat)
    elif type == "marginal":
        Ls, T = _marginal(ft, ft.labels), ft.T_user
    else:
        raise ValueError(f"type must be 1, 2, 3 (or 'I', 'II', 'III'); got {type!r}")
    return {t: L @ T for t, L in Ls.items()}


def _type_arg(type):
    roman = {"I": 1, "II": 2, "III": 3, "1": 1, "2": 2, "3": 3}
    if isinstance(type, (int, np.integer)) and int(type) in (1, 2, 3):
        return int(type)
    if isinstance(type, str) and type.upper() in roman:
        return roman[type.upper()]
    raise ValueError(f"type must be 1, 2 or 3 (or 'I', 'II', 'III'); got {type!r}")


def _f_row(res, L, method):
    """One row of lmerTest's F table (``contestMD``'s ``mk_Ftable``)."""
    r = _raw(res)
    if L.shape[0] == 0:
        return dict.fromkeys(_F_COLUMNS, np.nan)
    s2 = float(r.sigma) ** 2
    if method == "satterthwaite":
        t = satterthwaite_ftest(r, L)
        Fu, scale = t["F"], 1.0
    else:
        t = kenward_roger_ftest(r, L)
        Fu, scale = t["F_unscaled"], t["F_scaling"]
    ms = Fu * s2
    F = Fu * scale
    return {"Sum Sq": ms * t["df_num"], "Mean Sq": ms, "NumDF": float(t["df_num"]),
            "DenDF": t["df_denom"], "F value": F,
            "Pr(>F)": float(stats.f.sf(F, t["df_num"], t["df_denom"]))}


def _method_name(method):
    return {"satterthwaite": "Satterthwaite's", "kenward-roger": "Kenward-Roger's"}[method]


def _f_table(res, Ls, method, heading):
    rows = [_f_row(res, L, method) for L in Ls.values()]
    tab = LmerTestTable(rows, index=pd.Index(list(Ls), name=None), columns=_F_COLUMNS)
    tab.attrs["heading"] = heading
    tab.attrs["hypotheses"] = {k: pd.DataFrame(L, columns=list(_raw(res).model.exog_names))
                               for k, L in Ls.items()}
    return tab


def anova_lmm(res, type=3, ddf="satterthwaite"):
    """lmerTest's ``anova(m, type = , ddf = )``: F tests of the fixed-effect terms of one LMM.

    Parameters
    ----------
    res : LMM results fitted from a formula (``mf.lmer``)
    type : {3, 2, 1} or {"III", "II", "I"}
        Type III (default): each term adjusted for all others, with lmerTest's hypotheses,
        which do not depend on the factor coding; Type II: adjusted for the terms that do
        not contain it; Type I: sequential, in R's term order (by degree, then as written).
    ddf : {"satterthwaite", "kenward-roger"}
        Denominator degrees of freedom (Kenward-Roger: REML fits; the F statistic is
        then pbkrtest's scaled one and ``Sum Sq`` / ``Mean Sq`` are from the unscaled F).

    Returns
    -------
    LmerTestTable
        One row per term: ``Sum Sq, Mean Sq, NumDF, DenDF, F value, Pr(>F)`` (``Mean Sq``
        is F times sigma squared, as lmerTest defines it).
    """
    if not _is_lmm(res):
        raise NotImplementedError("F tests of the terms of one model (lmerTest's anova) are "
                                  f"implemented for LMMs; this is a {type_name(res)}; compare "
                                  "two fits with anova(m0, m1) instead")
    ty = _type_arg(type)
    method = _ddf_method(ddf)
    Ls = term_contrasts(res, ty)
    roman = {1: "I", 2: "II", 3: "III"}[ty]
    return _f_table(res, Ls, method, f"Type {roman} Analysis of Variance Table with "
                                     f"{_method_name(method)} method")


def type_name(res):
    return type(_raw(res).model).__name__


def drop1(res, ddf="satterthwaite"):
    """lmerTest's ``drop1`` for an LMM: marginal F tests of the terms that can be dropped.

    A term can be dropped when no other term contains all its variables (R's
    ``drop.scope``); its test is ``beta_term = 0`` on Satterthwaite (or Kenward-Roger) df.

    Parameters
    ----------
    res : LMM results fitted from a formula
    ddf : {"satterthwaite", "kenward-roger"}

    Returns
    -------
    LmerTestTable
        ``Sum Sq, Mean Sq, NumDF, DenDF, F value, Pr(>F)``, one row per droppable term.
    """
    if not _is_lmm(res):
        raise NotImplementedError(f"drop1 is implemented for LMMs; this is a {type_name(res)}")
    method = _ddf_method(ddf)
    ft = fixed_terms(res)
    scope = [t for t in ft.labels
             if not any(ft.vars[t] < ft.vars[o] for o in ft.labels if o != t)]
    if ft.X_user.shape[1] <= 1 or len(ft.labels) <= 1:
        Ls = {t: L @ ft.T_user for t, L in _type1(ft).items()}
    else:
        Ls = {t: L @ ft.T_user for t, L in _marginal(ft, scope).items()}
    Ls = {t: Ls[t] for t in scope}
    formula = getattr(_raw(res).model, "formula", "") or ""
    return _f_table(res, Ls, method, f"Single term deletions using {_method_name(method)} "
                                     f"method:\n\nModel:\n{formula}")


# ----------------------------------------------------------------------------- ranova
def _bar(lhs, name):
    return f"({lhs} | {name})"


def _lhs_terms(lhs):
    """The terms of a random-effect term's left side (patsy's expansion, no intercept)."""
    from patsy import ModelDesc
    desc = ModelDesc.from_formula(lhs)
    return [t for t in desc.rhs_termlist if t.factors]


def _label(lhs, name):
    from ..frame import display_name
    return _bar(display_name(lhs), display_name(name))


def _reduced_forms(terms, reduce_terms):
    """(row label, list of (lhs, name) kept) for each reduced model (lmerTest's get_newforms),
    the terms as lme4's ``findbars`` lists them (as written; ``a/b`` as ``b:a``, ``a``)."""
    full = [(t.lhs.strip(), t.name) for t in terms]
    out = []
    for i, (lhs, name) in enumerate(full):
        rest = full[:i] + full[i + 1:]
        lterms = _lhs_terms(lhs) if reduce_terms else []
        if not lterms:
            out.append((_label(lhs, name), rest))
            continue
        labels = [t.name() for t in lterms]
        scope = [a for a in labels
                 if not any(set(a.split(":")) < set(b.split(":")) for b in labels if b != a)]
        for s in scope:
            keep = [a for a in labels if a != s]
            new = "1" if not keep else " + ".join(keep)
            same = lambda a, b: a.replace(" ", "") == b.replace(" ", "")
            # R's update.formula adds a term only once: (0 + Days | g) reduced next to (1 | g)
            # is the model with (1 | g)
            dup = any(same(a, new) and same(b, name) for a, b in rest)
            out.append((f"{s} in {_label(lhs, name)}", rest + ([] if dup else [(new, name)])))
    return out


def _ols_loglik(y, X, w, reml):
    """R's ``logLik.lm`` (ML or REML) of the weighted least-squares fit: (logLik, npar)."""
    sw = np.sqrt(w)
    Q, R = np.linalg.qr(X * sw[:, None])
    yw = y * sw
    rss = float(yw @ yw - (Q.T @ yw) @ (Q.T @ yw))
    n, p = int(np.count_nonzero(w)), X.shape[1]
    N = n - p if reml else n
    ll = 0.5 * (np.sum(np.log(w[w > 0])) - N * (np.log(2 * np.pi) + 1 - np.log(N) + np.log(rss)))
    if reml:
        ll -= np.sum(np.log(np.abs(np.diag(R))))
    return ll, p + 1


def ranova(res, reduce_terms=True):
    """lmerTest's ``ranova``: likelihood-ratio tests of the random-effect terms of an LMM.

    Each row refits the model with one random-effect term removed or, with
    ``reduce_terms=True`` and a term with slopes, with one of its slope terms removed
    (``(Days | Subject)`` becomes ``(1 | Subject)``).  The fits keep the fit's criterion:
    REML fits are compared by their REML log-likelihoods, as lmerTest does (the fixed
    effects are the same).  Removing the last random-effect term leaves a linear
    regression, whose (REML) log-likelihood is R's ``logLik.lm``.

    Parameters
    ----------
    res : LMM results fitted from a formula
    reduce_terms : bool
        lmerTest's ``reduce.terms``.

    Returns
    -------
    LmerTestTable
        Rows ``<none>`` and one per reduced model: ``npar, logLik, AIC, LRT, Df,
        Pr(>Chisq)``.
    """
    if not _is_lmm(res):
        raise NotImplementedError(f"ranova is implemented for LMMs; this is a {type_name(res)}")
    check_flag("reduce_terms", reduce_terms)
    r = _raw(res)
    model = r.model
    if getattr(model, "correlation", None) is not None:
        raise NotImplementedError("ranova is not implemented for models with a residual correlation "
                                  "structure (its reduced models would be gls fits)")
    info = getattr(model, "formula_info", {}) or {}
    parsed, data = info.get("parsed"), info.get("data")
    if parsed is None or data is None:
        raise NotImplementedError("ranova refits the model from its formula and model frame; "
                                  "this model has none (built from arrays, or remove_data())")
    reml = bool(r.reml)
    terms = parsed.bars
    fixed = " + ".join([parsed.fixed_rhs] + [f"offset({o})" for o in parsed.offsets])
    kw = {}
    if info.get("has_weights"):
        kw["weights"] = np.asarray(model.weights, dtype=float)
    off = info.get("offset_arg")
    if off is not None:
        kw["offset"] = np.asarray(model.offset, dtype=float) - _formula_offset(model, parsed, data)
    rows = [{"npar": int(r.k_params), "logLik": float(r.llf)}]
    names = ["<none>"]
    for label, keep in _reduced_forms(terms, reduce_terms):
        if keep:
            form = f"{parsed.response} ~ {fixed} + " + " + ".join(_bar(a, b) for a, b in keep)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                new = type(model).from_formula(form, data, missing="raise", **kw)
                fit = _raw(new.fit(reml=reml))
            if int(fit.nobs) != int(r.nobs):
                raise ValueError("number of rows in use has changed")
            rows.append({"npar": int(fit.k_params), "logLik": float(fit.llf)})
        else:
            y = np.asarray(model.endog, dtype=float) - np.asarray(model.offset, dtype=float)
            ll, k = _ols_loglik(y, np.asarray(model.exog, dtype=float),
                                np.asarray(model.weights, dtype=float), reml)
            rows.append({"npar": k, "logLik": ll})
        names.append(label)
    tab = pd.DataFrame(rows, index=names)
    tab["AIC"] = -2 * tab["logLik"] + 2 * tab["npar"]
    lrt = 2 * (tab["logLik"].iloc[0] - tab["logLik"])
    df = tab["npar"].iloc[0] - tab["npar"]
    tab["LRT"] = lrt.where(tab.index != "<none>")
    tab["Df"] = df.astype(float).where(tab.index != "<none>")
    tab["Pr(>Chisq)"] = [np.nan if not (d > 0) else float(stats.chi2.sf(x, d))
                         for x, d in zip(tab["LRT"], tab["Df"])]
    out = LmerTestTable(tab)
    from ..frame import display_name
    full = " + ".join(_label(t.lhs.strip(), t.name) for t in terms)
    out.attrs["heading"] = ("ANOVA-like table for random-effects: Single term deletions\n\n"
                            f"Model:\n{display_name(parsed.response)} ~ {fixed} + {full}")
    return out


def _formula_offset(model, parsed, data):
    """The part of the model's offset that the formula's ``offset()`` terms make."""
    if not parsed.offsets:
        return 0.0
    from ..frame import evaluate, formula_manager
    env = model.formula_info.get("eval_env")
    tot = 0.0
    for expr in parsed.offsets:
        tot = tot + evaluate(formula_manager(), f"0 + {expr}", data, env,
                             f"offset({expr})").iloc[:, 0].to_numpy(dtype=float)
    return tot
