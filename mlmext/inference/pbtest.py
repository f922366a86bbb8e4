"""Parametric-bootstrap likelihood-ratio test of two nested mixed models (pbkrtest's
``PBmodcomp``), reached through ``mlmext.anova(m0, m1, test="pb")``."""
from __future__ import annotations

import time
import warnings

import numpy as np
import pandas as pd
from scipy import stats

from ..printing import HeadedTable
from ._common import _Progress, _family, _is_glmm, _is_lmm, _raw
from ._refit import refit
from .refit_batch import _batched_or_none
from .simulation import one_at_a_time

_ROWS = ["LRT", "PBtest", "Gamma", "Bartlett", "F"]
_COLS = ["stat", "df", "ddf", "p.value"]


class PBTestTable(HeadedTable):
    """Parametric-bootstrap test table returned by ``anova(..., test="pb")``.

    Rows as ``summary(PBmodcomp(...))`` prints them: ``LRT`` (chi-square reference),
    ``PBtest`` (the bootstrap p-value), ``Gamma`` (a gamma distribution matched to the mean
    and variance of the bootstrap LRTs), ``Bartlett`` (the LRT scaled by ``df / mean``) and
    ``F`` (pbkrtest's F approximation); columns ``stat, df, ddf, p.value``.

    ``attrs``: ``ref`` (the bootstrap LRTs of the simulations whose refits converged,
    read-only), ``nsim``, ``n_used``, ``n_failed`` (refits that raised or did not converge),
    ``n_extreme`` (bootstrap LRTs >= the observed one), ``n_nonpositive`` (bootstrap LRTs
    that are 0, which pbkrtest would drop), ``seconds``, ``formulas`` and ``refitted_ml``.
    """

    def _header(self):
        a = self.attrs
        lines = []
        if a.get("refitted_ml"):
            lines.append("refitting model(s) with ML (instead of REML)")
        lines.append(f"Parametric bootstrap test; time: {a.get('seconds', np.nan):.2f} sec; "
                     f"samples: {a.get('nsim')}; extremes: {a.get('n_extreme')}; "
                     f"failed refits: {a.get('n_failed')}")
        for role, (name, form) in zip(("small", "large"), a.get("formulas", {}).items()):
            lines.append(f"{role} : {name}: {form}")
        return "\n".join(lines)


def pb_table(tobs, df, ref):
    """The rows of ``summary(PBmodcomp)`` from an observed LRT and its bootstrap LRTs.

    Parameters
    ----------
    tobs : float
        The observed likelihood-ratio statistic.
    df : float
        Difference in the number of parameters.
    ref : array_like
        Bootstrap likelihood-ratio statistics (all of them are used: pbkrtest drops those
        that are not positive first, see :func:`mlmext.anova`).

    Returns
    -------
    pandas.DataFrame
        Rows ``LRT, PBtest, Gamma, Bartlett, F``; columns ``stat, df, ddf, p.value``.
    """
    ref = np.asarray(ref, dtype=float)
    n = ref.size
    out = pd.DataFrame(np.nan, index=pd.Index(_ROWS, name="test"), columns=_COLS)
    out.loc["LRT", ["stat", "df", "p.value"]] = [tobs, df, stats.chi2.sf(tobs, df)]
    # ties count as extreme: p = (1 + #{LRT* >= LRT}) / (1 + n) (Davison & Hinkley 4.11)
    out.loc["PBtest", ["stat", "p.value"]] = [tobs, (1 + np.sum(ref >= tobs)) / (1 + n)]
    mean = ref.mean() if n else np.nan
    var = ref.var(ddof=1) if n > 1 else np.nan
    if np.isfinite(var) and var > 0 and mean > 0:
        # moment-matched gamma, Bartlett-scaled chi-square, and F with ddf = 2E / (E - 1)
        out.loc["Gamma", ["stat", "p.value"]] = [tobs, stats.gamma.sf(tobs, mean ** 2 / var,
                                                                       scale=var / mean)]
        bc = df * tobs / mean
        out.loc["Bartlett", ["stat", "df", "p.value"]] = [bc, df, stats.chi2.sf(bc, df)]
        ddf = 2 * mean / (mean - 1)
        fobs = tobs / df
        out.loc["F", ["stat", "df", "ddf"]] = [fobs, df, ddf]
        if ddf > 0:
            out.loc["F", "p.value"] = stats.f.sf(fobs, df, ddf)
    return out


def _check_family(res):
    if _is_lmm(res):
        return
    fam = _family(res)
    name = type(fam).__name__ if fam is not None else type(_raw(res).model).__name__
    if not _is_glmm(res) or name not in ("Binomial", "Poisson"):
        raise NotImplementedError(f"the parametric bootstrap test is implemented for linear "
                                  f"mixed models and binomial / Poisson GLMMs; not for this "
                                  f"{type(_raw(res).model).__name__} ({name})")


def _as_generator(rng):
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or isinstance(rng, (int, np.integer)):
        return np.random.default_rng(rng)
    raise ValueError(f"rng must be None, an int seed or a numpy.random.Generator; got {rng!r}")


#: simulated responses refitted together
_CHUNK = 64


def _lrt(large, small):
    return 2.0 * max(0.0, float(large.llf) - float(small.llf))


def pb_test(small, large, nsim=1000, rng=None, progress=False):
    """Parametric-bootstrap LRT of ``small`` within ``large`` (both ML fits, same rows).

    Responses are simulated one at a time from ``small`` (``simulate(small, 1, seed=rng)``,
    new random effects), both models are refitted to each (:func:`mlmext.inference.refit`:
    the designs are reused, each fit starts from the observed fit; on a small one-factor
    design 64 responses are refitted together, :func:`mlmext.inference.refit_many`), and the
    LRT of every pair is the bootstrap distribution.  Use :func:`mlmext.anova` (``test="pb"``), which
    checks the models and refits REML fits by ML first.

    Returns
    -------
    PBTestTable
    """
    for r in (small, large):
        _check_family(r)
    nsim = int(nsim)
    if nsim < 1:
        raise ValueError(f"nsim must be a positive number of simulations; got {nsim}")
    gen = _as_generator(rng)
    df = float(large.k_params) - float(small.k_params)
    tobs = _lrt(large, small)
    bar = _Progress(nsim, progress, "PB test ")
    draw = one_at_a_time(small)     # (simulate(small, 1, seed=gen)'s draws, its set-up once)
    ref = np.full(nsim, np.nan)
    t0 = time.perf_counter()
    for lo in range(0, nsim, _CHUNK):
        # the responses drawn one at a time (the generator's sequence does not depend on the
        # chunks), then each model's refits together where its design allows (refit_many)
        Y = np.column_stack([draw(gen) for _ in range(lo, min(lo + _CHUNK, nsim))])
        S, G = _batched_or_none(small, Y), _batched_or_none(large, Y)
        for j in range(Y.shape[1]):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")   # singular refits are expected under the null
                    s = _raw(refit(small, Y[:, j])) if S is None else S[j]
                    g = _raw(refit(large, Y[:, j])) if G is None else G[j]
                if s is not None and g is not None and s.converged and g.converged:
                    ref[lo + j] = _lrt(g, s)
            except (np.linalg.LinAlgError, ValueError, RuntimeError, FloatingPointError):
                pass                                   # counted below as a failed refit
            bar.step()
    seconds = time.perf_counter() - t0
    used = ref[np.isfinite(ref)]
    used.setflags(write=False)
    tab = PBTestTable(pb_table(tobs, df, used))
    tab.attrs.update(ref=used, nsim=nsim, n_used=int(used.size), n_failed=int(nsim - used.size),
                     n_extreme=int(np.sum(used >= tobs)), n_nonpositive=int(np.sum(used <= 0)),
                     seconds=seconds)
    return tab
