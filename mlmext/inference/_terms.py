"""The fixed-effects terms of a formula fit as R's ``terms()`` sees them, for lmerTest's tables.

R orders the terms of ``y ~ Days * g`` by degree and then by appearance (``Days, g, Days:g``)
and the columns of an interaction with the first variable varying fastest; patsy groups terms
by their numeric factors (``g, Days, Days:g``).  Type I and II hypotheses depend on that order,
so the designs here are rebuilt in R's order from the patsy coding of each term, and mapped to
the fitted columns by ``T = pinv(X_R) X``: a hypothesis ``L_R beta_R`` is ``(L_R T) beta``.
"""
from __future__ import annotations

import numpy as np

from ._common import _raw


class FixedTerms:
    """R's view of the fixed part: term labels in R's order, their columns and containment.

    Attributes
    ----------
    labels : list of str
        Term labels (intercept excluded) in R's order, variables joined by ``:``.
    X_user, X_treat, rdX : ndarray
        The design rebuilt in R's column order with the fit's coding, with treatment
        contrasts, and lmerTest's ``get_rdX`` (each term coded with all its cells).
    cols_user, cols_treat : dict
        Term label (``"(Intercept)"`` too) -> column positions in ``X_user`` / ``X_treat``.
    rd_of_treat : ndarray of int
        For each column of ``X_treat``, the column of ``rdX`` it equals (R's name matching).
    T_user, T_treat : ndarray
        ``pinv(X_R) X`` for the two codings: hypotheses in R's columns times ``T`` are
        hypotheses on the fitted coefficients.
    contains : dict
        Term label -> labels of the terms that contain it (lmerTest's ``containment``).
    vars, degree : dict
        Term label -> its variables (patsy factor names), their number.
    has_intercept : bool
    """


def _r_order(spec, rhs):
    """The spec's terms in R's order: by degree, then as they appear in the formula."""
    from patsy import ModelDesc
    terms = [t for t in spec.terms]
    try:
        written = ModelDesc.from_formula(rhs).rhs_termlist
    except Exception:  # noqa: BLE001 - a right-hand side patsy cannot read alone: spec order
        written = terms
    pos = {}
    for i, t in enumerate(written):
        pos.setdefault(frozenset(t.factors), i)
    first = {}
    for t in written:
        for f in t.factors:
            first.setdefault(f, len(first))
    key = lambda t: (len(t.factors), pos.get(frozenset(t.factors), len(pos)))
    ordered = sorted(terms, key=key)
    return ordered, lambda t: sorted(t.factors, key=lambda f: first.get(f, len(first)))


def _factor_values(spec, factor, data, n):
    """(kind, values): the codes (n,) of a categorical factor or the (n, k) numeric columns."""
    from patsy import NAAction
    from patsy.categorical import categorical_to_int
    fi = spec.factor_infos[factor]
    raw = factor.eval(fi.state, data)
    if fi.type == "categorical":
        codes = categorical_to_int(raw, fi.categories, NAAction(NA_types=[]), origin=factor)
        return "cat", (np.asarray(codes), len(fi.categories))
    vals = np.asarray(raw, dtype=float).reshape(n, -1)
    return "num", vals


def _product(pieces, n):
    """Columns of the product of pieces, the first varying fastest (R's interaction order)."""
    out = np.ones((n, 1))
    for P in pieces:
        out = (P[:, :, None] * out[:, None, :]).reshape(P.shape[0], -1)
    return out


def fixed_terms(res):
    """:class:`FixedTerms` of a formula fit (patsy engine); ``NotImplementedError`` otherwise."""
    model = _raw(res).model
    info = getattr(model, "formula_info", {}) or {}
    try:
        spec = model._fixed_spec()
    except Exception as exc:  # noqa: BLE001 - no formula, or the data were removed
        raise NotImplementedError("lmerTest's tables need a model fitted from a formula with "
                                  f"its data ({exc})") from exc
    if not hasattr(spec, "term_codings"):
        raise NotImplementedError("lmerTest's tables need the patsy formula engine")
    data = info.get("data")
    X = np.asarray(model.exog, dtype=float)
    n = X.shape[0]
    from ..frame import display_name
    if data is None or len(data) != n or \
            [display_name(c) for c in spec.column_names] != list(model.exog_names):
        raise NotImplementedError("lmerTest's tables need the fitted model frame and a full-rank "
                                  "design with the columns the formula makes (no dropped columns)")
    ordered, factor_order = _r_order(spec, str(info["parsed"].fixed_rhs))
    vals = {}
    ft = FixedTerms()
    ft.labels, ft.contains, ft.has_intercept, ft.degree = [], {}, False, {}
    blocks = {"user": [], "treat": [], "rd": []}
    ft.cols_user, ft.cols_treat, rd_cols = {}, {}, {}
    treat_rd = []
    numeric_vars, term_vars = {}, {}
    pos = {"user": 0, "treat": 0, "rd": 0}
    for term in ordered:
        facs = factor_order(term)
        label = ":".join(display_name(f.name()) for f in facs) if facs else "(Intercept)"
        if not facs:
            ft.has_intercept = True
        for f in facs:
            if f not in vals:
                vals[f] = _factor_values(spec, f, data, n)
        numeric_vars[label] = {f.name() for f in facs if vals[f][0] == "num"}
        term_vars[label] = {f.name() for f in facs}
        ft.degree[label] = len(facs)
        # rdX: every cell of the term's categorical variables, times its numeric variables
        cells = [np.eye(vals[f][1][1])[vals[f][1][0]] if vals[f][0] == "cat" else vals[f][1]
                 for f in facs]
        rd = _product(cells, n)
        cols = {"user": [], "treat": []}
        for sub in spec.term_codings[term]:
            if set(sub.factors) != set(facs):
                raise NotImplementedError(f"term {label!r} is coded by patsy in pieces that R codes "
                                          "differently; write the marginal terms explicitly")
            pu, pt, sel = [], [], []
            for f in facs:
                if vals[f][0] == "num":
                    pu.append(vals[f][1]), pt.append(vals[f][1])
                    sel.append(np.arange(vals[f][1].shape[1]))
                    continue
                codes, k = vals[f][1]
                C = np.asarray(sub.contrast_matrices[f].matrix, dtype=float)
                ind = np.eye(k)[codes]
                pu.append(ind @ C)
                full = C.shape[1] == k
                keep = np.arange(k) if full else np.arange(1, k)   # contr.treatment drops the first
                pt.append(ind[:, keep])
                sel.append(keep)
            U, Tm = _product(pu, n), _product(pt, n)
            blocks["user"].append(U), blocks["treat"].append(Tm)
            # the rdX column each treatment column is: the same cells of the same term
            sizes = [vals[f][1][1] if vals[f][0] == "cat" else vals[f][1].shape[1] for f in facs]
            idx = np.zeros(1, dtype=int)
            stride = 1
            for s, size in zip(sel, sizes):
                idx = (idx[None, :] + stride * s[:, None]).ravel()
                stride *= size
            treat_rd.extend(pos["rd"] + idx)
            cols["user"] += list(range(pos["user"], pos["user"] + U.shape[1]))
            cols["treat"] += list(range(pos["treat"], pos["treat"] + Tm.shape[1]))
            pos["user"] += U.shape[1]
            pos["treat"] += Tm.shape[1]
        blocks["rd"].append(rd)
        rd_cols[label] = list(range(pos["rd"], pos["rd"] + rd.shape[1]))
        pos["rd"] += rd.shape[1]
        ft.cols_user[label], ft.cols_treat[label] = cols["user"], cols["treat"]
        if facs:
            ft.labels.append(label)
    ft.X_user = np.hstack(blocks["user"])
    ft.X_treat = np.hstack(blocks["treat"])
    ft.rdX = np.hstack(blocks["rd"])
    ft.rd_of_treat = np.asarray(treat_rd, dtype=int)
    ft.T_user = np.linalg.pinv(ft.X_user) @ X
    ft.T_treat = np.linalg.pinv(ft.X_treat) @ X
    scale = max(1.0, np.abs(X).max())
    for name, R in (("fit's coding", ft.X_user), ("treatment coding", ft.X_treat)):
        T = ft.T_user if R is ft.X_user else ft.T_treat
        if R.shape[1] != X.shape[1] or np.abs(R @ T - X).max() > 1e-8 * scale:
            raise NotImplementedError(f"cannot rebuild the fixed design in R's order ({name}); "
                                      "lmerTest's tables are not available for this formula")
    ft.vars = term_vars
    # lmerTest's term_contain reads R's "factors" matrix where it is 1: a variable of a term
    # of several variables counts only if the term without it is in the model (else R codes
    # it 2, "no contrasts"): in Days + Days:grp, Days:grp's variables are {grp}, and Days is
    # contained in no term
    present = {frozenset(v) for v in term_vars.values()}
    ones = {lab: {v for v in term_vars[lab]
                  if len(term_vars[lab]) == 1 or frozenset(term_vars[lab] - {v}) in present}
            for lab in ft.labels}
    for a in ft.labels:
        num = lambda lab: ones[lab] & numeric_vars[lab]
        ft.contains[a] = [b for b in ft.labels if ones[a] <= ones[b] and ones[b] - ones[a]
                          and num(a) == num(b)]
    return ft
