"""Likelihood-ratio tests between nested mixed models (lme4's ``anova``)."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy import stats

from ._common import _fe_names, _raw, _same_rows
from ._refit import _ml_fit
from .pbtest import pb_test


class AnovaTable(pd.DataFrame):
    """Likelihood-ratio table returned by :func:`anova` (a ``pandas.DataFrame``).

    Columns ``npar, AIC, BIC, logLik, deviance, Chisq, Df, Pr(>Chisq)`` as lme4 prints them;
    ``attrs["formulas"]`` holds the models' formulas and ``attrs["refitted_ml"]`` says
    whether REML fits were refitted by maximum likelihood (shown in the printout).
    """

    @property
    def _constructor(self):
        return pd.DataFrame

    def _header(self):
        lines = []
        if self.attrs.get("refitted_ml"):
            lines.append("refitting model(s) with ML (instead of REML)")
        forms = self.attrs.get("formulas", {})
        if forms:
            lines.append("Models:")
            lines += [f"{k}: {v}" for k, v in forms.items()]
        return "\n".join(lines)

    def __repr__(self):
        # as R prints it: the first model's test cells empty, Df a whole number
        df = lambda v: "" if pd.isna(v) else f"{v:g}"
        return self._header() + "\n" + pd.DataFrame(self).to_string(
            na_rep="", formatters={"Df": df} if "Df" in self.columns else None)

    def __str__(self):
        return self.__repr__()

    def _repr_html_(self):
        # Notebooks: the refit note and the model formulas above pandas' own HTML table.
        import html
        head = self._header()
        pre = f"<pre>{html.escape(head)}</pre>" if head else ""
        return pre + pd.DataFrame(self).to_html(float_format=lambda v: f"{v:.6g}", na_rep="")


def _caller_names(results, depth=2):
    """The names the calling code gave the results (R's ``deparse(substitute())``): each
    result's variable in the caller's frame, where exactly one name refers to it and the
    names differ; else ``m1, m2, ...``."""
    import inspect
    frame = inspect.currentframe()
    try:
        for _ in range(depth):
            frame = frame.f_back if frame is not None else None
        scopes = [] if frame is None else [frame.f_locals, frame.f_globals]
        found = []
        for r in results:
            name = None
            for scope in scopes:                 # the innermost scope that names it decides
                hits = [k for k, v in scope.items() if v is r and not k.startswith("_")]
                if hits:
                    name = hits[0] if len(hits) == 1 else None
                    break
            found.append(name)
    finally:
        del frame
    if all(found) and len(set(found)) == len(found):
        return found
    return [f"m{i + 1}" for i in range(len(results))]


def _re_signature(res):
    """{grouping factor: set of random-effect columns} of a mixed model."""
    out = {}
    model = _raw(res).model
    des = getattr(model, "re_design", None)
    if des is None:
        return out
    for t in des.terms:
        out.setdefault(tuple(sorted(t.factors)), set()).update(t.colnames)
    return out


def _nested(small, large):
    """Whether ``small``'s parameters look like a subset of ``large``'s (names only)."""
    fs, fl = set(_fe_names(small)), set(_fe_names(large))
    if not fs <= fl:
        return False
    rs, rl = _re_signature(small), _re_signature(large)
    for g, cols in rs.items():
        if g not in rl or not cols <= rl[g]:
            return False
    if type(_raw(small).model) is not type(_raw(large).model):
        return False
    return True


def anova(*results, names=None, refit=True, test=None, nsim=None, rng=None, progress=None):
    """Likelihood-ratio tests of nested mixed models (lme4's ``anova(m1, m2, ...)``), or a
    parametric-bootstrap test of two of them (pbkrtest's ``PBmodcomp``).

    Parameters
    ----------
    *results : MixedResults
        Two or more fits (LMM, GLMM or clmm) of models to the same rows of the same data.
    names : list of str, optional
        Row labels; by default the names of the variables that hold the results in the
        calling code (as R's ``anova`` uses its arguments' names), where each is found
        once and they differ, else ``m1, m2, ...`` in the order given.
    refit : bool
        Refit REML fits by maximum likelihood first, as lme4 does (REML likelihoods of
        models with different fixed effects are not comparable).
    test : {None, "lrt", "pb"}
        ``None`` / ``"lrt"``: the chi-square likelihood-ratio table.  ``"pb"``: a
        parametric-bootstrap test of exactly two models (LMMs, binomial or Poisson GLMMs):
        ``nsim`` responses are simulated from the smaller model's ML fit, one at a time
        (``simulate(small, 1, seed=rng)``), both ML fits are refitted to each
        (:func:`mlmext.inference.refit`, no formula evaluated again), and the observed
        LRT is compared with the refits' LRTs (clipped at 0).
    nsim : int, optional
        ``test="pb"``: simulations (1000 when not given).
    rng : int or numpy.random.Generator, optional
        ``test="pb"``: the seed or generator of the simulations.
    progress : bool, optional
        ``test="pb"``: show a progress bar on stderr (off when not given).

    Returns
    -------
    AnovaTable or PBTestTable
        ``AnovaTable``: one row per model, ordered by number of parameters: ``npar, AIC,
        BIC, logLik, deviance, Chisq, Df, Pr(>Chisq)``.  ``Chisq`` compares each model with
        the one above it (``2 * max(0, difference in logLik)``) on ``Df`` = the difference
        in the number of parameters.

        ``PBTestTable`` (``test="pb"``): the rows of pbkrtest's ``summary(PBmodcomp())``,
        ``LRT, PBtest, Gamma, Bartlett, F``, columns ``stat, df, ddf, p.value``;
        ``PBtest``'s p-value is ``(1 + #{LRT* >= LRT}) / (1 + n_used)`` over the
        simulations whose refits both converged; failed refits are counted in
        ``attrs["n_failed"]`` and left out.  Unlike pbkrtest, bootstrap LRTs of 0 (the
        larger model's extra variance estimated as 0, or an optimizer's last digits
        making it slightly negative) are kept: they belong to the null distribution, and
        dropping them (as ``PBmodcomp`` does) makes its p-value larger for tests of variance
        components; ``attrs["n_nonpositive"]`` counts them.  ``Gamma``, ``Bartlett``
        and ``F`` use the mean and variance of the same LRTs.

    Raises
    ------
    ValueError
        Fewer than two models, or models fitted to different rows or responses; an
        unknown ``test``; ``test="pb"`` with other than two models, models with the same
        number of parameters, or ``refit=False``.
    TypeError
        ``nsim``, ``rng`` or ``progress`` without ``test="pb"``.
    NotImplementedError
        ``test="pb"`` for models other than LMMs and binomial / Poisson GLMMs.

    Warns
    -----
    UserWarning
        When consecutive models are not nested in their parameters (fixed-effect names and
        random-effect terms of the smaller model are not contained in the larger one's).
    """
    if len(results) == 1 and isinstance(results[0], (list, tuple)):
        results = tuple(results[0])
    if len(results) < 2:
        raise ValueError("anova needs at least two fitted models to compare")
    test = "lrt" if test is None else str(test).lower()
    if test not in ("lrt", "pb"):
        raise ValueError(f"unknown test {test!r}; use 'lrt' (chi-square) or 'pb' (parametric "
                         f"bootstrap)")
    if test == "lrt":
        given = [k for k, v in (("nsim", nsim), ("rng", rng), ("progress", progress)) if v is not None]
        if given:
            raise TypeError(f"anova() uses {', '.join(given)} only with test='pb'")
    elif len(results) != 2:
        raise ValueError(f"test='pb' compares exactly two models; got {len(results)}")
    elif not refit:
        raise ValueError("test='pb' compares maximum-likelihood fits, as pbkrtest does; "
                         "refit=False cannot be used with it")
    if names is None:
        names = _caller_names(results)
    names = [str(n) for n in names]
    if len(names) != len(results) or len(set(names)) != len(names):
        raise ValueError("names must give one distinct name per model")
    for r in results:
        for attr in ("llf", "k_params", "nobs", "model"):
            if not hasattr(r, attr):
                raise ValueError(f"anova needs fitted model results; got {type(r).__name__} without {attr!r}")
    for i in range(1, len(results)):
        ok, why = _same_rows(results[0], results[i])
        if not ok:
            raise ValueError(f"models {names[0]!r} and {names[i]!r} were not fitted to the same data "
                             f"({why}); likelihood-ratio tests need the same observations")
    is_reml = [bool(getattr(_raw(r), "reml", False)) for r in results]
    refitted = False
    fits = [_raw(r) for r in results]
    if any(is_reml):
        if refit:
            fits = [_ml_fit(r) if rm else r for r, rm in zip(fits, is_reml)]
            refitted = True
        else:
            fe = {tuple(_fe_names(r)) for r in fits}
            if len(fe) > 1:
                warnings.warn("comparing REML fits of models with different fixed effects: their "
                              "REML likelihoods are not comparable (use refit=True)", UserWarning,
                              stacklevel=2)
    npar = np.array([float(r.k_params) for r in fits])
    order = np.argsort(npar, kind="stable")
    formulas = {names[i]: _raw(results[i]).model.formula_info.get("formula", "")
                if hasattr(_raw(results[i]).model, "formula_info") else "" for i in order}
    if test == "pb":
        return _pb(results, fits, names, order, formulas, refitted,
                   1000 if nsim is None else nsim, rng, bool(progress))
    rows = []
    prev = None
    for i in order:
        r = fits[i]
        llf, k, n = float(r.llf), float(r.k_params), float(r.nobs)
        row = {"npar": int(k), "AIC": -2 * llf + 2 * k, "BIC": -2 * llf + np.log(n) * k,
               "logLik": llf, "deviance": -2 * llf, "Chisq": np.nan, "Df": np.nan,
               "Pr(>Chisq)": np.nan}
        if prev is not None:
            pr = fits[prev]
            df = k - float(pr.k_params)
            chisq = 2.0 * max(0.0, llf - float(pr.llf))
            row["Chisq"] = chisq
            row["Df"] = df
            row["Pr(>Chisq)"] = float(stats.chi2.sf(chisq, df)) if df > 0 else np.nan
            if not _nested(results[prev], results[i]):
                warnings.warn(f"models {names[prev]!r} and {names[i]!r} do not look nested (the "
                              f"parameters of {names[prev]!r} are not a subset of those of "
                              f"{names[i]!r}); the likelihood-ratio test assumes nesting",
                              UserWarning, stacklevel=2)
        rows.append(row)
        prev = i
    tab = AnovaTable(rows, index=pd.Index([names[i] for i in order]))
    tab["npar"] = tab["npar"].astype(int)
    tab.attrs["refitted_ml"] = refitted
    tab.attrs["formulas"] = formulas
    return tab


def _pb(results, fits, names, order, formulas, refitted, nsim, rng, progress):
    i, j = order
    if float(fits[j].k_params) <= float(fits[i].k_params):
        raise ValueError(f"models {names[i]!r} and {names[j]!r} have the same number of "
                         f"parameters; the bootstrap test needs a smaller (null) model")
    if not _nested(results[i], results[j]):
        warnings.warn(f"models {names[i]!r} and {names[j]!r} do not look nested (the parameters "
                      f"of {names[i]!r} are not a subset of those of {names[j]!r}); the "
                      f"likelihood-ratio test assumes nesting", UserWarning, stacklevel=3)
    tab = pb_test(fits[i], fits[j], nsim=nsim, rng=rng, progress=progress)
    tab.attrs["formulas"] = formulas
    tab.attrs["refitted_ml"] = refitted
    return tab
