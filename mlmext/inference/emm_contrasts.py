"""Contrasts among estimated marginal means (emmeans' ``contrast`` / ``pairs``), their
multiplicity adjustments, and the plot of the means.

A contrast is ``c' m`` for the means ``m = L beta``: the linear function ``(c' L) beta``, with
variance ``c' L V L' c`` and, for an LMM, the Satterthwaite or Kenward-Roger df of ``c' L``
itself (emmeans computes the df of each contrast, not of the means).  Adjustments are emmeans'
(``.adj.p.value``): within each ``by`` group, Tukey's studentized range for one family of
pairwise differences, Sidak, Bonferroni and Holm (R's ``p.adjust``), and ``dunnettx``,
emmeans' approximation to Dunnett's test.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

_PAIRWISE = ("pairwise", "revpairwise")


def _looks_numeric(values):
    try:
        [float(v) for v in values]
    except (TypeError, ValueError):
        return False
    return True


def cell_labels(cells, names):
    """emmeans' labels of the cells: the levels of ``names`` joined by spaces, each prefixed
    by its variable's name when the levels are all numbers (``Product1``, ``cold``)."""
    parts = []
    for n in names:
        vals = list(cells[n])
        fmt = [f"{v:g}" if isinstance(v, (float, np.floating)) else str(v) for v in vals]
        parts.append([n + f if _looks_numeric(vals) else f for f in fmt])
    return [" ".join(p) for p in zip(*parts)]


def _coefficients(k, method, ref):
    """(rows of contrast coefficients over ``k`` means, their (a, b) pairs): ``a - b``."""
    if method in ("pairwise", "revpairwise") and not (isinstance(ref, (int, np.integer)) and ref == 0):
        # (was ignored: contrast("pairwise", ref=2) gave all pairs without a word)
        raise TypeError(f"ref is for method='trt.vs.ctrl'; method={method!r} does not read it")
    if method == "pairwise":
        pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
    elif method == "revpairwise":
        pairs = [(j, i) for j in range(1, k) for i in range(j)]
    elif method == "trt.vs.ctrl":
        if not isinstance(ref, (int, np.integer)) or not 0 <= ref < k:
            raise ValueError(f"ref must be a position among the {k} means, got {ref!r}")
        pairs = [(j, ref) for j in range(k) if j != ref]
    else:
        raise ValueError(f"method must be 'pairwise', 'revpairwise' or 'trt.vs.ctrl', "
                         f"got {method!r}")
    C = np.zeros((len(pairs), k))
    for r, (a, b) in enumerate(pairs):
        C[r, a], C[r, b] = 1.0, -1.0
    return C, pairs


def _holm(p):
    """R's ``p.adjust(p, "holm")``."""
    m = len(p)
    o = np.argsort(p, kind="stable")
    adj = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[o]))
    out = np.empty(m)
    out[o] = adj
    return out


def _step_up(p, factor):
    """R's ``p.adjust`` step-up methods: over ``p`` in decreasing order (ties in their order,
    as R's ``order``), the running minimum of ``factor(i) p`` with ``i = m, ..., 1``."""
    m = len(p)
    o = np.argsort(-p, kind="stable")
    adj = np.minimum(1.0, np.minimum.accumulate(factor(np.arange(m, 0, -1.0), m) * p[o]))
    out = np.empty(m)
    out[o] = adj
    return out


#: R's p.adjust step-up factors (emmeans passes these names on to it); "BH" is "fdr"
_STEP_UP = {"fdr": lambda i, m: m / i, "bh": lambda i, m: m / i,
            "by": lambda i, m: np.sum(1.0 / np.arange(1, m + 1)) * m / i,
            "hochberg": lambda i, m: m - i + 1}


def adjust_pvalues(t, df, adjust, n_means):
    """Two-sided p-values of one family of contrasts, adjusted as emmeans adjusts them."""
    t, df = np.abs(np.asarray(t, dtype=float)), np.asarray(df, dtype=float)
    p = 2 * stats.t.sf(t, df)
    m = len(t)
    if adjust == "none" or m == 1:
        return p
    if adjust == "tukey":
        return stats.studentized_range.sf(np.sqrt(2) * t, n_means, df)
    if adjust == "bonferroni":
        return np.minimum(1.0, m * p)
    if adjust == "sidak":
        return 1 - (1 - p) ** m
    if adjust == "holm":
        return _holm(p)
    if adjust in _STEP_UP:
        return _step_up(p, _STEP_UP[adjust])
    if adjust == "dunnettx":     # emmeans' .pdunnx: a weighted Tukey / Sidak mixture
        kk = (1 + np.sqrt(1 + 8 * m)) / 2
        tukey = 1 - stats.studentized_range.sf(np.sqrt(2) * t, kk, df)
        sidak = stats.f.cdf(t ** 2, 1, df) ** m
        w = (m - 1) / m
        return 1 - (w * tukey + (1 - w) * sidak)
    if adjust in ("hommel", "mvt", "scheffe"):
        raise NotImplementedError(f"adjust={adjust!r} is not implemented; use 'tukey', 'holm', "
                                  "'hochberg', 'fdr' (BH), 'BY', 'bonferroni', 'sidak' or "
                                  "'dunnettx'")
    raise ValueError(f"adjust must be one of 'tukey', 'holm', 'hochberg', 'fdr' ('BH'), 'BY', "
                     f"'bonferroni', 'sidak', 'dunnettx', 'none'; got {adjust!r}")


class EMMContrasts(pd.DataFrame):
    """Contrasts of estimated marginal means (a ``pandas.DataFrame``) with emmeans' notes in
    ``attrs["notes"]`` (the adjustment and the family size)."""

    @property
    def _constructor(self):
        return pd.DataFrame

    def __repr__(self):
        body = pd.DataFrame(self).to_string(index=False, float_format=lambda v: f"{v:.6g}")
        return body + "\n\n" + "\n".join(self.attrs.get("notes", []))

    __str__ = __repr__


def _ratio_kind(info):
    """'odds.ratio' / 'ratio' when the contrasts are back-transformed (emmeans' regrid of
    log / logit differences: a GLMM's link, a log-transformed LMM response), else None."""
    tran = getattr(info, "tran", None)
    if info.type != "response" or tran is None or getattr(info, "regridded", False) or \
            tran.base is None:
        return None
    return "odds.ratio" if tran.name == "logit" else "ratio"


def contrast(info, method="pairwise", adjust=None, ref=0):
    """The contrasts table of :meth:`EMMeans.contrast` (``info``: its ``EMMInfo``)."""
    if adjust is None:
        adjust = "tukey" if method in _PAIRWISE else "dunnettx"
    adjust = str(adjust).lower()
    notes = []
    if adjust == "tukey" and method not in _PAIRWISE:
        adjust = "sidak"
        notes.append('Note: adjust = "tukey" was changed to "sidak" because "tukey" is only '
                     "appropriate for one set of pairwise comparisons")
    adjust_pvalues(np.zeros(2), np.ones(2), adjust, 2)       # checks the name before any work
    cells, specs, by = info.cells, info.specs, info.by
    labels = cell_labels(cells, specs)
    n_spec = int(np.prod([cells[s].nunique() for s in specs]))
    n_groups = len(cells) // n_spec
    if n_spec < 2:
        raise ValueError(f"contrasts need at least two means per group; specs {specs} have "
                         f"{n_spec} level here")
    ratio = _ratio_kind(info)
    rows, Ls, ests, groups, Cs = [], [], [], [], []
    for g in range(n_groups):
        idx = np.arange(g * n_spec, (g + 1) * n_spec)
        C, pairs = _coefficients(n_spec, method, ref)
        Cg = np.zeros((C.shape[0], len(cells)))
        Cg[:, idx] = C
        Cs.append(Cg)
        for r, (a, b) in enumerate(pairs):
            sep = " / " if ratio else " - "
            rows.append({"contrast": labels[idx[a]] + sep + labels[idx[b]],
                         **{v: cells[v].iloc[idx[0]] for v in by}})
        Ls.append(C @ info.L[idx])
        ests.append(C @ info.est[idx])         # (offsets cancel in differences)
        groups.append(len(pairs))
    Lc = np.vstack(Ls)
    est = np.concatenate(ests)
    se = np.sqrt(np.einsum("ij,jk,ik->i", Lc, info.V, Lc))
    df = info.df_of(Lc, np.vstack(Cs))
    t = est / se
    p = np.empty_like(t)
    start = 0
    for n in groups:
        sl = slice(start, start + n)
        p[sl] = adjust_pvalues(t[sl], df[sl], adjust, n_spec)
        start += n
    out = pd.DataFrame(rows)
    for v in by:
        if isinstance(out[v].dtype, pd.CategoricalDtype):
            out[v] = out[v].astype(out[v].cat.categories.dtype)
    if ratio:                   # b^d with SE b^d log(b) se (b: e, or a log2 / log10's base)
        b = info.tran.base
        out[ratio], out["SE"] = b ** est, b ** est * np.log(b) * se
    else:
        out["estimate"], out["SE"] = est, se
    out["df"] = df
    if ratio:
        out["null"] = 1.0
    z = bool(np.all(np.isinf(df)))
    out["z.ratio" if z else "t.ratio"] = t
    out["p.value"] = p
    table = EMMContrasts(out)
    if ratio:
        notes.append("Tests are performed on the log scale")
    elif info.type == "response" and getattr(info, "tran", None) is not None and \
            not getattr(info, "regridded", False):
        notes.append("Note: contrasts are still on the "
                     f"{'link' if info.kind == 'glmm' else info.tran.name} scale")
    if groups[0] > 1 and adjust != "none":
        notes.append(f"P value adjustment: {adjust} method " + (
            f"for comparing a family of {n_spec} estimates" if adjust == "tukey"
            else f"for {groups[0]} tests"))
    notes.append(f"Degrees-of-freedom method: {info.ddf}")
    table.attrs["notes"] = notes
    return table


def plot_emmeans(emm, ax=None, **kwargs):
    """Draw ``emm`` (an :class:`EMMeans`): a point and its confidence interval per mean."""
    if kwargs:
        raise TypeError(f"plot() got unexpected keyword arguments {sorted(kwargs)}")
    try:
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError("EMMeans.plot needs matplotlib: pip install 'mlmext[plots]'") from err
    info = emm._emm
    if ax is None:
        # constrained layout keeps the long 'spec | by = value' labels inside the figure
        fig, ax = plt.subplots(figsize=(5.5, 0.45 * len(emm) + 1.4), constrained_layout=True)
    else:
        fig = ax.figure
    cols = list(emm.columns)
    name = cols[len(info.specs) + len(info.by)]
    lo, hi = emm[cols[-2]].to_numpy(), emm[cols[-1]].to_numpy()
    y = np.arange(len(emm))[::-1]
    lab = cell_labels(info.cells, info.specs)
    if info.by:
        def fmt(x):
            return f"{x:g}" if isinstance(x, (float, np.floating)) else str(x)
        lab = [f"{a} | " + ", ".join(f"{v} = {fmt(info.cells[v].iloc[i])}" for v in info.by)
               for i, a in enumerate(lab)]
    est = emm[name].to_numpy()
    ax.errorbar(est, y, xerr=[est - lo, hi - est], fmt="o", ms=5, capsize=3, color="C0")
    ax.set_yticks(y)
    ax.set_yticklabels(lab)
    ax.set_xlabel(f"{name} ({info.level:.0%} CI)")
    ax.set_title("Estimated marginal means", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    return fig
