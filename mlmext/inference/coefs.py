"""lme4's ``coef(fit)`` (fixed effects plus conditional modes per level) and the correlation
of the fixed-effect estimates that ``summary(fit, correlation = TRUE)`` prints."""
from __future__ import annotations

import re

import numpy as np
import pandas as pd

from ._common import _is_glmm, _is_lmm, _raw


def coef(res):
    """Per-level coefficients: fixed effects plus conditional modes (lme4's ``coef(fit)``).

    For each grouping factor, a DataFrame with one row per level and one column per fixed
    effect (in the fixed effects' order): the fixed effect, plus that level's conditional
    mode in the columns where the factor has a random effect.

    Parameters
    ----------
    res : LMM or GLMM results

    Returns
    -------
    dict of pandas.DataFrame
        Keyed by grouping factor, in :meth:`ranef`'s order (lme4's list).

    Raises
    ------
    ValueError
        A random effect with no fixed effect of the same name (lme4: "unable to align
        random and fixed effects"): its per-level coefficient would lack its mean.
    """
    r = _raw(res)
    if not (_is_lmm(r) or _is_glmm(r)):
        raise NotImplementedError("coef() is implemented for LMMs and GLMMs; a clmm's random "
                                  "effects shift the thresholds, not a fixed effect")
    fe = r.fe_params
    out = {}
    for g, modes in r.ranef().items():
        missing = [c for c in modes.columns if c not in fe.index]
        if missing:
            raise ValueError(f"unable to align random and fixed effects: the random effect(s) "
                             f"{missing} of {g!r} have no fixed effect of that name")
        df = pd.DataFrame(np.tile(fe.to_numpy(dtype=float), (len(modes), 1)), index=modes.index,
                          columns=fe.index)
        for c in modes.columns:
            df[c] = df[c] + modes[c].to_numpy(dtype=float)
        out[g] = df
    return out


def corr_fe(res):
    """Correlation matrix of the fixed-effect estimates (``cov2cor(vcov(fit))``).

    Returns
    -------
    pandas.DataFrame
        Indexed by the fixed-effect names on both axes.
    """
    r = _raw(res)
    names = list(r.fe_params.index)
    cov = r.cov_params()
    if isinstance(cov, pd.DataFrame):
        C = cov.loc[names, names].to_numpy(dtype=float)
    else:
        C = np.asarray(cov, dtype=float)[:len(names), :len(names)]
    sd = np.sqrt(np.diag(C))
    return pd.DataFrame(C / np.outer(sd, sd), index=names, columns=names)


def _abbreviate1(s, minlength):
    """R's ``abbreviate(s, minlength)`` for one string (method "left.kept", classes used):
    drop lower-case vowels from the right (ending ones first), then lower-case letters
    (ending ones first), then anything but a word's first character, until short enough."""
    b = list(s.strip())
    if len(b) <= minlength:
        return "".join(b)

    def first(i):
        return b[i - 1].isspace()

    def last(i):
        return not b[i - 1].isspace() and (i + 1 >= len(b) or b[i + 1].isspace())

    nspace = sum(c.isspace() for c in b)

    def short():
        return len(b) - nspace <= minlength

    for test in (lambda c, i: c in "aeiou" and last(i),
                 lambda c, i: c in "aeiou" and not first(i),
                 lambda c, i: c.islower() and last(i),
                 lambda c, i: c.islower() and not first(i),
                 lambda c, i: not first(i) and not c.isspace()):
        for i in range(len(b) - 1, 0, -1):
            if i < len(b) and test(b[i], i):
                del b[i]
            if short():
                return "".join(c for c in b if not c.isspace())
    return "".join(c for c in b if not c.isspace())


def abbreviate(names, minlength):
    """R's ``abbreviate(names, minlength)``: as :func:`_abbreviate1`, lengthening the
    abbreviations that collide until they differ."""
    names = [str(n) for n in names]
    out = [_abbreviate1(n, minlength) for n in names]
    m = minlength
    while len(set(out)) < len(out) and m < max(len(n) for n in names):
        m += 1
        dup = {a for a in out if out.count(a) > 1}
        out = [_abbreviate1(n, m) if a in dup else a for n, a in zip(names, out)]
    return out


def _r_name(name):
    """The coefficient as R spells it: ``grp[T.B]`` -> ``grpB``, ``Intercept`` -> ``(Intercept)``."""
    if name == "Intercept":
        return "(Intercept)"
    return re.sub(r"\[(?:[TS]\.)?([^\]]+)\]", r"\1", name)


def corr_fe_text(corr, width=80, r_names=True):
    """lme4's ``Correlation of Fixed Effects:`` block for a correlation DataFrame: the lower
    triangle to 3 decimals, rows named by ``abbreviate(, 11)``, columns by ``abbreviate(, 6)``,
    the first row and last column left out, the columns wrapped at ``width`` as R prints;
    with ``r_names`` the coefficients spelled as R spells them before abbreviating."""
    names = [_r_name(n) if r_names else n for n in corr.index]
    p = len(names)
    if p < 2:
        return ""
    vals = np.round(corr.to_numpy(dtype=float), 3) + 0.0       # no "-0.000"
    cells = [f"{v:.3f}" for v in vals.ravel()]
    w = max(len(c) for c in cells)                  # R's format(): one common width
    cells = np.array([c.rjust(w) for c in cells]).reshape(p, p)
    rows, cols = abbreviate(names, 11), abbreviate(names, 6)
    table = [[cells[i, j] if i > j else "" for j in range(p - 1)] for i in range(1, p)]
    widths = [max(len(cols[j]), max(len(table[i][j]) for i in range(p - 1))) for j in range(p - 1)]
    rw = max(len(x) for x in rows[1:])
    lines = ["Correlation of Fixed Effects:"]
    start = 0
    while start < p - 1:                   # R's print wraps the columns at width 80
        stop, used = start, rw
        while stop < p - 1 and (stop == start or used + 1 + widths[stop] <= width):
            used += 1 + widths[stop]
            stop += 1
        js = range(start, stop)
        lines.append(" " * rw + " " + " ".join(cols[j].ljust(widths[j]) for j in js))
        for i in range(p - 1):
            lines.append(rows[i + 1].ljust(rw) + " " + " ".join(table[i][j].ljust(widths[j]) for j in js))
        start = stop
    return "\n".join(lines)
