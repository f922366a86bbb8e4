"""The ordinal response given the linear predictor, for the shared Laplace / AGQ engine.

:class:`CumulativeLinkConditional` is the :class:`mlmext.laplace.ConditionalModel` of a
cumulative link model, with the optional third-order pieces for analytic gradients and the
derivatives of the interval probabilities up to the fourth order (for the exact Hessian of the
Laplace log-likelihood with a single scalar term, :mod:`mlmext.ordinal.newton`).
"""
from __future__ import annotations

import copy

from math import factorial

import numpy as np

from .links import _interval_logprob, category_probabilities, get_link

__all__ = ["CumulativeLinkConditional"]


class CumulativeLinkConditional:
    """Distribution of an ordinal ``y`` given the linear predictor ``eta`` (ConditionalModel protocol).

    ``log p(y_i | eta_i) = w_i log(F(theta_{y_i} - eta_i) - F(theta_{y_i - 1} - eta_i))``
    with ``theta_0 = -inf`` and ``theta_K = inf``; ``w_i`` are prior weights.

    Parameters
    ----------
    y : array_like of int
        Category codes ``0, ..., K - 1``.
    n_cat : int
        Number of categories ``K``.
    link : str or link object
    weights : array_like, optional
        Prior (frequency) weights, as in ``clmm``.
    thresholds : array_like, optional
        The ``K - 1`` thresholds; set later with :meth:`set_thresholds`.

    Notes
    -----
    With ``u = theta_y - eta`` and ``l = theta_{y-1} - eta`` the probability
    ``p = F(u) - F(l)`` is taken as ``(1 - F(l)) - (1 - F(u))`` when the
    interval lies above the median of ``F`` (large ``eta``), so it never
    suffers cancellation; where it underflows it is recomputed in logs.

    :meth:`derivatives` returns the observed information
    ``w = -d^2 log p / d eta^2``, which is what ``clmm``'s Laplace
    approximation uses; it is positive for the log-concave links (logit,
    probit, cloglog, loglog).  For the logit link ``d log p / d eta =
    F(u) + F(l) - 1`` and ``w = f(u) + f(l)`` exactly.  The cauchit density is
    not log-concave, so single observations can have ``w < 0``
    (:attr:`allow_negative_weights`).  The optional protocol methods
    :meth:`hessian_terms` and :meth:`param_derivatives` give the third-order
    pieces for analytic gradients; the model's own parameters (``k_extra``)
    are the ``K - 1`` thresholds.

    Results are cached for the last ``eta`` array passed (by identity), so
    callers must not modify an ``eta`` array in place between calls.
    """

    def __init__(self, y, n_cat, link="logit", weights=None, thresholds=None):
        y = np.asarray(y)
        self.y = y.astype(np.int64)
        self.n_cat = int(n_cat)
        if self.n_cat < 2:
            raise ValueError("an ordinal response needs at least two categories")
        self.link = get_link(link)
        n = self.y.shape[0]
        self.weights = None if weights is None else np.asarray(weights, dtype=float)
        if self.weights is not None and np.all(self.weights == 1.0):
            self.weights = None
        self.k_extra = self.n_cat - 1
        # ``w`` is the observed information already (what the engine's ``canonical`` flag
        # means: no separate Newton weights, ``hessian_terms()[0]`` is ``w``)
        self.canonical = True
        self.allow_negative_weights = self.link.name == "cauchit"
        # the methods take (nodes, n) arrays of eta too (AGQ evaluates all nodes in one call)
        self.vectorized_eta = True
        self.has_upper = self.y < self.n_cat - 1       # finite theta_y
        self.has_lower = self.y > 0                    # finite theta_{y-1}
        self._top = np.flatnonzero(~self.has_upper)    # u = +inf
        self._bottom = np.flatnonzero(~self.has_lower)  # l = -inf
        self._iu = np.minimum(self.y, self.n_cat - 2)
        self._il = np.maximum(self.y - 1, 0)
        k = self.n_cat - 1
        self._Eu = np.zeros((n, k))
        self._Eu[np.flatnonzero(self.has_upper), self._iu[self.has_upper]] = 1.0
        self._El = np.zeros((n, k))
        self._El[np.flatnonzero(self.has_lower), self._il[self.has_lower]] = 1.0
        self._n = n
        self._logit = self.link.name == "logit"
        self._median2 = 2.0 * self.link.median
        self._key = None
        self._cache = {"level": -1}
        self.thresholds = None
        if thresholds is not None:
            self.set_thresholds(thresholds)

    def workspace(self):
        """A copy for one deviance: the per-observation structure is shared (read-only), the
        thresholds and the cache of the last evaluation are the copy's own."""
        new = copy.copy(self)
        new._key = None
        new._cache = {"level": -1}
        return new

    def set_thresholds(self, thresholds):
        """Set the ``K - 1`` thresholds (must be increasing)."""
        th = np.asarray(thresholds, dtype=float)
        if th.shape != (self.n_cat - 1,):
            raise ValueError(f"need {self.n_cat - 1} thresholds, got shape {th.shape}")
        self.thresholds = th
        full = np.empty(th.size + 2)
        full[0], full[1:-1], full[-1] = -np.inf, th, np.inf
        self._th_up = full[self.y + 1]
        self._th_lo = full[self.y]
        self._key = None

    # -- core evaluation -----------------------------------------------------------------
    def _pieces(self, eta, level):
        """Cached per-observation pieces at ``eta``.

        level 0: ``p`` and ``logp``; 1: adds ``ru = f(u)/p``, ``rl = f(l)/p``
        and ``gu = ru f'(u)/f(u)``, ``gl`` (not for the logit, which has
        closed forms); 2: adds ``hu = ru f''(u)/f(u)``, ``hl``.

        ``p = F(u) (1 - F(l)) - F(l) (1 - F(u))`` equals ``F(u) - F(l)`` and
        is computed from the tails: it reduces to ``F(u) - F(l)`` below the
        median and to ``(1 - F(l)) - (1 - F(u))`` above it, so there is no
        cancellation for large ``|eta|``; where it underflows it is
        recomputed in logs.
        """
        if self._key is eta:
            c = self._cache
            if c["level"] >= level:
                return c
        else:
            c = self._cache = {"level": -1}
            self._key = eta
        link = self.link
        if c["level"] < 0:
            u = self._th_up - eta
            lo = self._th_lo - eta
            Fu, Su, Fl, Sl = link.cdf(u), link.sf(u), link.cdf(lo), link.sf(lo)
            p = Fu * Sl - Fl * Su
            if p.min() > 0.0:
                logp = np.log(p)
            else:                     # underflow far in a tail (or rounding): in logs
                with np.errstate(all="ignore"):
                    logp = _interval_logprob(link, u, lo)
                p = np.exp(logp)
            c.update(u=u, lo=lo, Fu=Fu, Su=Su, Fl=Fl, Sl=Sl, p=p, logp=logp, level=0)
        if level >= 1 and c["level"] < 1:
            p = c["p"]
            if self._logit:
                fu = c["Fu"] * c["Su"]
                fl = c["Fl"] * c["Sl"]
                c.update(fu=fu, fl=fl, ru=fu / p, rl=fl / p, level=1)
            else:
                u, lo = c["u"], c["lo"]
                with np.errstate(all="ignore"):
                    fu, fl = self._finite_ends(link.pdf(u), link.pdf(lo))
                    ru, rl = fu / p, fl / p
                    gu, gl = self._finite_ends(ru * link.dlogpdf(u), rl * link.dlogpdf(lo))
                c.update(fu=fu, fl=fl, ru=ru, rl=rl, gu=gu, gl=gl, level=1)
        if level >= 2 and c["level"] < 2:
            if not self._logit:
                with np.errstate(all="ignore"):
                    hu, hl = self._finite_ends(c["ru"] * link.d2pdf(c["u"]), c["rl"] * link.d2pdf(c["lo"]))
                c.update(hu=hu, hl=hl)
            c["level"] = 2
        return c

    def _finite_ends(self, at_u, at_l):
        """Values at the interval ends ``u`` and ``l``, set to 0 where these are infinite (the
        outer thresholds); ``eta`` (and so the values) may be 1-D or (nodes, n)."""
        at_u[..., self._top] = 0.0
        at_l[..., self._bottom] = 0.0
        return at_u, at_l

    def _w(self, v):
        return v if self.weights is None else v * self.weights

    def loglik_derivs(self, eta):
        """``(loglik_obs, d1, w)`` in one call (the engine's fused evaluation)."""
        d1, w = self.derivatives(eta)
        return self.loglik_obs(eta), d1, w

    def loglik_obs(self, eta):
        """(n,) ``w_i log p(y_i | eta_i)``."""
        return self._w(self._pieces(eta, 0)["logp"])

    def derivatives(self, eta):
        """``(d1, w)``: ``d log p / d eta`` and the observed information ``-d^2 log p / d eta^2``.

        For links other than the logit, rounding can make ``w`` slightly
        negative far in a tail where its true value is below rounding level;
        it is then set to 0 (not for the cauchit link, whose ``w`` can be
        genuinely negative).
        """
        c = self._pieces(eta, 1)
        if self._logit:
            if "d1" not in c:
                c["d1"] = self._w(c["Fu"] + c["Fl"] - 1.0)
                c["w"] = self._w(c["fu"] + c["fl"])
            return c["d1"], c["w"]
        D1 = c["ru"] - c["rl"]
        w = D1 * D1 - (c["gu"] - c["gl"])
        if not self.allow_negative_weights:
            w = np.maximum(w, 0.0)
        return self._w(-D1), self._w(w)

    # -- optional protocol pieces ----------------------------------------------------------
    def hessian_terms(self, eta):
        """``(h, dw)``: observed information (the ``w`` of :meth:`derivatives`) and ``d w / d eta``."""
        if self._logit:
            d1, w = self.derivatives(eta)
            c = self._cache
            dw = -(c["fu"] * (c["Su"] - c["Fu"]) + c["fl"] * (c["Sl"] - c["Fl"]))
            return w, self._w(dw)
        c = self._pieces(eta, 2)
        D1 = c["ru"] - c["rl"]
        G = c["gu"] - c["gl"]
        H = c["hu"] - c["hl"]
        return self.derivatives(eta)[1], self._w(2.0 * D1 ** 3 - 3.0 * D1 * G + H)

    def _uv_derivatives(self, eta):
        """Partial derivatives in ``u`` and ``l`` of (loglik, d1, w), unweighted."""
        if self._logit:
            c = self._pieces(eta, 1)
            fu, fl = c["fu"], c["fl"]
            return (c["ru"], -c["rl"], fu, fl, fu * (c["Su"] - c["Fu"]), fl * (c["Sl"] - c["Fl"]))
        c = self._pieces(eta, 2)
        ru, rl, gu, gl, hu, hl = c["ru"], c["rl"], c["gu"], c["gl"], c["hu"], c["hl"]
        D1 = ru - rl
        G = gu - gl
        return (ru, -rl, ru * D1 - gu, gl - rl * D1,
                2.0 * D1 * (gu - ru * D1) - (hu - ru * G),
                2.0 * D1 * (rl * D1 - gl) - (rl * G - hl))

    def param_loglik_derivatives(self, eta):
        """``dl`` of :meth:`param_derivatives` alone: ``f(u)/p`` on ``theta_y``, ``-f(l)/p`` on ``theta_{y-1}``."""
        c = self._pieces(eta, 1)
        return self._Eu * self._w(c["ru"])[..., None] - self._El * self._w(c["rl"])[..., None]

    def param_derivatives(self, eta):
        """``(dl, dd1, dw)``, each (n, K - 1): derivatives in the thresholds.

        Observation ``i`` depends on ``theta_{y_i}`` (through ``u``) and on
        ``theta_{y_i - 1}`` (through ``l``) only.
        """
        c = self._pieces(eta, 2 if not self._logit else 1)
        if "pd" in c:
            return c["pd"]
        l_u, l_l, d_u, d_l, w_u, w_l = self._uv_derivatives(eta)
        Eu, El = self._Eu, self._El
        out = []
        for a, b in ((l_u, l_l), (d_u, d_l), (w_u, w_l)):
            a = self._w(a)
            b = self._w(b)
            out.append(Eu * a[..., None] + El * b[..., None])
        c["pd"] = tuple(out)
        return c["pd"]

    # -- (u, l) second-order pieces for the fixed-effects Newton fit -------------------------
    def interval_derivatives(self, eta):
        """First and second derivatives of ``log p`` in ``u`` and ``l`` (weights applied)."""
        c = self._pieces(eta, 1)
        ru, rl = c["ru"], c["rl"]
        if self._logit:       # f'/f = 1 - 2F = S - F
            gu, gl = ru * (c["Su"] - c["Fu"]), rl * (c["Sl"] - c["Fl"])
        else:
            gu, gl = c["gu"], c["gl"]
        return tuple(self._w(v) for v in (ru, -rl, gu - ru * ru, -gl - rl * rl, ru * rl))

    def probabilities(self, eta):
        """(n, K) category probabilities at ``eta``."""
        return category_probabilities(self.link, self.thresholds, np.asarray(eta, dtype=float))

    # -- fourth-order pieces for the exact Hessian of the Laplace log-likelihood -----------------
    def interval_moments(self, eta):
        """(2, 4, n): the derivatives of ``p = F(u) - F(l)`` in ``u`` and in ``l``, relative to ``p``.

        ``[0, j] = f^(j)(u) / p`` and ``[1, j] = -f^(j)(l) / p`` for ``j = 0, ..., 3`` (the
        ``(j+1)``-th derivatives; unweighted, 0 at the infinite outer thresholds; the mixed
        derivatives vanish).  :func:`_log_interval_derivatives` turns them into the
        derivatives of ``log p``.
        """
        c = self._pieces(eta, 2)
        ru, rl = c["ru"], c["rl"]
        if self._logit:   # f'/f = S - F, f''/f = 1 - 6 F S, f'''/f = (S - F)(1 - 12 F S)
            fs_u, fs_l = c["fu"], c["fl"]
            du, dl = c["Su"] - c["Fu"], c["Sl"] - c["Fl"]
            m = np.array([[ru, ru * du, ru * (1.0 - 6.0 * fs_u), ru * du * (1.0 - 12.0 * fs_u)],
                          [rl, rl * dl, rl * (1.0 - 6.0 * fs_l), rl * dl * (1.0 - 12.0 * fs_l)]])
        else:             # r f'/f and r f''/f are in the cache already
            with np.errstate(all="ignore"):
                d3 = self._finite_ends(ru * self.link.d3pdf(c["u"]), rl * self.link.d3pdf(c["lo"]))
            m = np.array([[ru, c["gu"], c["hu"], d3[0]], [rl, c["gl"], c["hl"], d3[1]]])
        m[1] *= -1.0
        return m


def _partition_coefficients(size=5):
    """``C[r, s] = (-1)^(r+s-1) (r+s-1)!``: the weight of a partition into ``r + s`` blocks."""
    C = np.zeros((size, size))
    for r in range(size):
        for s in range(size):
            if r + s:
                C[r, s] = (-1.0) ** (r + s - 1) * factorial(r + s - 1)
    return C


_PARTITION_C = _partition_coefficients()


def _log_interval_derivatives(m):
    """``kappa[j, k] = d^(j+k) log p / du^j dl^k`` of ``log p = log(F(u) - F(l))``: (5, 5, n).

    Entries with ``j + k <= 4`` are used (``[0, 0]`` is not ``log p``).  ``m`` holds the
    derivatives of ``p`` relative to ``p`` (:meth:`CumulativeLinkConditional.interval_moments`);
    the mixed ones vanish.  The derivatives of ``log p`` are the joint cumulants of these
    "moments": sums over the set partitions of the ``j + k`` variables of ``(-1)^(r-1) (r-1)!``
    times the product of the moments of the ``r`` blocks.  With vanishing mixed moments only
    partitions into blocks of one kind count, so

        kappa[j, k] = sum_{r, s} Bell_{j,r}(u) C[r, s] Bell_{k,s}(l),   C[r, s] = c(r + s),

    with the partial Bell polynomials of each side's moments.
    """
    m1, m2, m3, m4 = m[:, 0], m[:, 1], m[:, 2], m[:, 3]
    m1s = m1 * m1
    bell = np.zeros((5, 5) + m.shape[::2])                  # [j, r, side, n]
    bell[0, 0] = 1.0
    bell[1, 1] = m1
    bell[2, 1], bell[2, 2] = m2, m1s
    bell[3, 1], bell[3, 2], bell[3, 3] = m3, 3.0 * m1 * m2, m1s * m1
    bell[4, 1], bell[4, 2] = m4, 4.0 * m1 * m3 + 3.0 * m2 * m2
    bell[4, 3], bell[4, 4] = 6.0 * m1s * m2, m1s * m1s
    Cb = np.matmul(_PARTITION_C, bell[:, :, 1])             # [k, r, n] = sum_s C[r, s] Bell_{k,s}(l)
    return np.einsum("jrn,krn->jkn", bell[:, :, 0], Cb)
