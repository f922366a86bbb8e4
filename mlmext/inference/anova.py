"""Likelihood-ratio tests between nested mixed models (lme4's ``anova``)."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy import stats

from ..printing import HeadedTable
from ._common import _fe_names, _raw, _same_rows
from ._refit import _ml_fit
from .pbtest import pb_test


class AnovaTable(HeadedTable):
    """Likelihood-ratio table returned by :func:`anova` (a ``pandas.DataFrame``).

    Columns ``npar, AIC, BIC, logLik, deviance, Chisq, Df, Pr(>Chisq)`` as lme4 prints them;
    ``attrs["formulas"]`` holds the models' formulas and ``attrs["refitted_ml"]`` says
    whether REML fits were refitted by maximum likelihood (shown in the printout).
    """

    def _header(self):
        lines = []
        if self.attrs.get("refitted_ml"):
            lines.append("refitting model(s) with ML (instead of REML)")
        forms = self.attrs.get("formulas", {})
        if forms:
            lines.append("Models:")
            lines += [f"{k}: {v}" for k, v in forms.items()]
        return "\n".join(lines)


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


def _is_mixed(res):
    return hasattr(_raw(res).model, "re_design")


def _npar(res):
    """Number of parameters as R's ``logLik(fit)`` counts them (``attr(, "df")``): for a
    statsmodels OLS / WLS / GLM fit, the coefficients plus the scale where it is estimated."""
    r = _raw(res)
    if _is_mixed(r):
        return float(r.k_params)
    k = float(len(np.asarray(r.params)))
    fam = getattr(r.model, "family", None)
    if fam is None:                                   # OLS, WLS: sigma
        return k + 1.0
    return k + float(type(fam).__name__ in ("Gaussian", "Gamma", "InverseGaussian"))


def _partition_key(codes):
    """A canonical form of the grouping a level code per row defines (level names aside)."""
    _, first, inv = np.unique(np.asarray(codes), return_index=True, return_inverse=True)
    relabel = np.argsort(np.argsort(first))          # levels numbered by first appearance
    return relabel[inv].tobytes()


def _re_signature(res):
    """{grouping partition: set of random-effect columns}: terms compared by the groups they
    make, not their names, so ``(1 | child)`` and ``(1 | school/child)``'s ``child:school``
    term are the same grouping when child ids are unique."""
    out = {}
    if not _is_mixed(res):
        return out
    for t in _raw(res).model.re_design.terms:
        out.setdefault(_partition_key(t.codes), set()).update(t.colnames)
    return out


def _nested(small, large):
    """Whether ``small``'s parameters look like a subset of ``large``'s: fixed-effect names,
    and each random-effect term's columns within the same grouping of the larger model."""
    fs, fl = set(_fe_names(small)), set(_fe_names(large))
    if not fs <= fl:
        return False
    rs, rl = _re_signature(small), _re_signature(large)
    for g, cols in rs.items():
        if g not in rl or not cols <= rl[g]:
            return False
    ms, ml = _raw(small).model, _raw(large).model
    # independent residuals are a residual correlation at 0: an lmer fit nests in a correlated one
    if _is_mixed(small) and _is_mixed(large) and not isinstance(ml, type(ms)):
        return False
    cs, cl = getattr(ms, "correlation", None), getattr(ml, "correlation", None)
    if cs is not None and type(cs) is not type(cl):
        return False
    fa, fb = getattr(ms, "family", None), getattr(ml, "family", None)
    if (fa is None) != (fb is None) and (_is_mixed(small) or _is_mixed(large)):
        # an LMM and a Gaussian GLM of the same data are comparable
        fam = fa if fa is not None else fb
        return type(fam).__name__ == "Gaussian" and type(fam.link).__name__ == "Identity"
    if fa is not None and fb is not None and type(fa) is not type(fb):
        return False
    return True


def anova(*results, names=None, refit=True, type=None, ddf=None, test=None, nsim=None, rng=None,
          progress=None):
    """Likelihood-ratio tests of nested models (lme4's ``anova(m1, m2, ...)``), a
    parametric-bootstrap test of two of them (pbkrtest's ``PBmodcomp``), or lmerTest's F tests
    of the terms of one LMM (``anova(m, type = 3)``).

    With one LMM, returns :func:`~mlmext.inference.lmertest.anova_lmm` ``(m, type, ddf)``:
    Type III (default), II or I F tests with Satterthwaite (default) or Kenward-Roger df.

    Parameters
    ----------
    *results : MixedResults or statsmodels results
        One LMM, or two or more fits (LMM, GLMM or clmm) of models to the same rows of the
        same data; statsmodels OLS / WLS / GLM fits of the same data serve as models
        without random effects (R's ``anova(lmer_fit, lm_fit)``): their ``llf`` is the
        maximum-likelihood one, and REML mixed fits are refitted by ML.
    names : list of str, optional
        Row labels; by default the names of the variables that hold the results in the
        calling code (as R's ``anova`` uses its arguments' names), where each is found
        once and they differ, else ``m1, m2, ...`` in the order given.
    refit : bool
        Refit REML fits by maximum likelihood first, as lme4 does (REML likelihoods of
        models with different fixed effects are not comparable).
    type : {3, 2, 1}, optional
        One model only: the type of the F tests (default 3).
    ddf : {"satterthwaite", "kenward-roger"}, optional
        One model only: the denominator degrees of freedom (default Satterthwaite).
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
        No model, or models fitted to different rows or responses; an unknown ``test``;
        ``test="pb"`` with other than two models, models with the same number of
        parameters, or ``refit=False``.
    TypeError
        ``type`` or ``ddf`` with more than one model (they are read for one model only);
        ``test``, ``nsim``, ``rng`` or ``progress`` with one model, or ``nsim``, ``rng`` or
        ``progress`` without ``test="pb"``.
    NotImplementedError
        ``test="pb"`` for models other than LMMs and binomial / Poisson GLMMs.

    Warns
    -----
    UserWarning
        When consecutive models are not nested in their parameters (fixed-effect names and
        random-effect terms of the smaller model are not contained in the larger one's, a
        term compared by the grouping it makes, not by its name).
    """
    if len(results) == 1 and isinstance(results[0], (list, tuple)):
        results = tuple(results[0])
    if len(results) == 1:
        given = [k for k, v in (("names", names), ("test", test), ("nsim", nsim), ("rng", rng),
                                ("progress", progress)) if v is not None] + ([] if refit is True else ["refit"])
        if given:
            raise TypeError(f"{', '.join(given)} are for comparing two or more models; one model "
                            "gets F tests of its terms (type=, ddf=)")
        from .lmertest import anova_lmm
        return anova_lmm(results[0], type=3 if type is None else type,
                         ddf="satterthwaite" if ddf is None else ddf)
    if type is not None or ddf is not None:
        raise TypeError("type and ddf are read for one model (lmerTest's F tests); a comparison "
                        "of two or more models is a likelihood-ratio test")
    if len(results) < 2:
        raise ValueError("anova needs a fitted model, or two or more to compare")
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
        for attr in ("llf", "params", "nobs", "model"):
            if not hasattr(r, attr):
                raise ValueError(f"anova needs fitted model results; got {r.__class__.__name__} without {attr!r}")
    for r in results:
        fam = getattr(_raw(r).model, "family", None)
        vw = getattr(_raw(r).model, "var_weights", None)
        if (not _is_mixed(r) and fam is not None and vw is not None
                and fam.__class__.__name__ in ("Binomial", "Poisson") and not np.allclose(vw, 1.0)):
            raise ValueError("a statsmodels GLM with var_weights has no binomial / Poisson "
                             "likelihood to compare; fit the binomial GLM with a two-column "
                             "response (successes + I(n - successes) ~ ...) instead")
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
    npar = np.array([_npar(r) for r in fits])
    order = np.argsort(npar, kind="stable")
    formulas = {names[i]: _formula_of(results[i]) for i in order}
    if test == "pb":
        return _pb(results, fits, names, order, formulas, refitted,
                   1000 if nsim is None else nsim, rng, bool(progress))
    rows = []
    prev = None
    for i in order:
        r = fits[i]
        llf, k, n = float(r.llf), _npar(r), float(r.nobs)
        row = {"npar": int(k), "AIC": -2 * llf + 2 * k, "BIC": -2 * llf + np.log(n) * k,
               "logLik": llf, "deviance": -2 * llf, "Chisq": np.nan, "Df": np.nan,
               "Pr(>Chisq)": np.nan}
        if prev is not None:
            pr = fits[prev]
            df = k - _npar(pr)
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


def _formula_of(res):
    model = _raw(res).model
    if hasattr(model, "formula_info"):
        return model.formula_info.get("formula", "")
    return getattr(model, "formula", None) or ""
