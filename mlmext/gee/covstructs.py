"""Working correlations estimated as geepack estimates them, for statsmodels' GEE.

:class:`PairwiseExchangeable`, :class:`PairwiseAR1` and :class:`PairwiseUnstructured`
(subclasses of :class:`PairwiseCovStruct`) are statsmodels ``CovStruct`` objects whose
parameters are geepack's moment estimates: least-squares fits to the pairwise products of
standardized Pearson residuals within clusters.
"""
from __future__ import annotations

import warnings

import numpy as np
from scipy import linalg as spl
from scipy import optimize
from statsmodels.genmod import cov_struct as sm_cov
from statsmodels.tools.sm_exceptions import SingularMatrixWarning

__all__ = ["PairwiseCovStruct", "PairwiseExchangeable", "PairwiseAR1", "PairwiseUnstructured"]


class PairwiseCovStruct(sm_cov.CovStruct):
    """
    Base class for working correlations estimated from residual products.

    For every pair ``j < k`` of observations in a cluster, the standardized
    product ``z_jk = r_j r_k / phi`` of the Pearson residuals
    ``r = (y - mu) / sqrt(V(mu))`` estimates the working correlation
    ``rho_jk(alpha)``, where ``phi = sum w r**2 / sum w`` is the Pearson scale
    at the current estimates, whatever scale the GEE itself uses (statsmodels
    fixes it at 1 for Binomial and Poisson).  Subclasses fit ``alpha`` by least
    squares with pair weights ``w_j w_k`` (the GEE's weights; one without
    weights).  These are geepack's moment estimators, with its default
    ``scale.fix = FALSE``.

    Pairs are defined by the model's ``time`` (the position within the cluster
    when the GEE has no ``time``), as geepack's ``waves``.

    Unlike statsmodels' default, a working correlation that is not positive
    definite is not projected to the nearest positive definite matrix: it is
    inverted as it is (as geepack does) and a ``SingularMatrixWarning`` is
    issued.  :func:`gee_select` flags such fits.  Clusters observed at the same
    times share one inverse per update.

    Structures whose correlation depends on time (AR(1), unstructured) need
    distinct times within a cluster and raise ``ValueError`` otherwise; the
    exchangeable correlation does not use time.
    """

    # a pair at the same time has no lag (AR(1)) and no cell (unstructured)
    _distinct_times = True

    def initialize(self, model):
        super().initialize(model)
        if np.ndim(model.time) == 2 and np.shape(model.time)[1] != 1:
            raise ValueError(f"{type(self).__name__} needs a one-dimensional time")
        times = [np.asarray(t, dtype=float).ravel() for t in model.time_li]
        starts = np.r_[0, np.cumsum([len(t) for t in times])[:-1]]
        pj, pk = [], []
        for start, t in zip(starts, times):
            j, k = np.triu_indices(len(t), 1)
            pj.append(start + j)
            pk.append(start + k)
        self._pj = np.concatenate(pj).astype(np.intp)
        self._pk = np.concatenate(pk).astype(np.intp)
        tcat = np.concatenate(times)
        if self._distinct_times and np.any(tcat[self._pj] == tcat[self._pk]):
            raise ValueError(f"{type(self).__name__}: repeated time values within a cluster; "
                             "pairs of observations must have distinct times")
        self._times = times
        # clusters with the same times share their working correlation (and its inverse)
        patterns = {}
        self._pattern = [patterns.setdefault(tuple(t), len(patterns)) for t in times]
        self._inverses, self._inverses_of = {}, None

    def update(self, params):
        model = self.model
        mu = np.concatenate([m[0] for m in model.cached_means])
        resid = (np.concatenate(model.endog_li) - mu) / np.sqrt(model.family.variance(mu))
        w = np.ones_like(resid) if model.weights is None else np.concatenate(model.weights_li)
        phi = np.dot(w, resid ** 2) / w.sum()
        if len(self._pj):
            self._estimate(resid[self._pj] * resid[self._pk] / phi, w[self._pj] * w[self._pk])

    def _estimate(self, z, w):
        """Set ``dep_params`` from the standardized residual products ``z`` with pair weights ``w``."""
        raise NotImplementedError

    def _correlation(self, index):
        """The working correlation matrix of cluster ``index``."""
        raise NotImplementedError

    def covariance_matrix(self, expval, index):
        return self._correlation(index), True

    def _inverse(self, index):
        if self._inverses_of is not self.dep_params:          # dep_params changed: new inverses
            self._inverses, self._inverses_of = {}, self.dep_params
        key = self._pattern[index]
        if key not in self._inverses:
            rmat = self._correlation(index)
            try:
                chol = np.linalg.cholesky(rmat)
                self._inverses[key] = spl.cho_solve((chol, True), np.eye(len(rmat)))
            except np.linalg.LinAlgError:
                warnings.warn(f"{type(self).__name__}: the working correlation of cluster {index} is "
                              "not positive definite; it is used without projection",
                              SingularMatrixWarning, stacklevel=3)
                self._inverses[key] = np.linalg.inv(rmat)
        return self._inverses[key]

    def covariance_matrix_solve(self, expval, index, stdev, rhs):
        rinv = self._inverse(index)
        out = []
        for x in rhs:
            s = stdev if x.ndim == 1 else stdev[:, None]
            out.append(rinv @ (x / s) / s)
        return out

    @property
    def n_params(self):
        """Number of working-correlation parameters."""
        return int(np.size(self.dep_params))

    def problems(self):
        """Problems of the current estimate, as a list of short messages."""
        return []


class PairwiseExchangeable(PairwiseCovStruct):
    """
    Exchangeable working correlation, estimated as geepack does.

    ``alpha = sum_pairs w_j w_k z_jk / sum_pairs w_j w_k``, the weighted mean of
    the standardized residual products over all within-cluster pairs (see
    :class:`PairwiseCovStruct`), geepack's estimate.  statsmodels'
    ``Exchangeable`` gives the same value without weights when the GEE is
    fitted with ``ddof_scale=0``; otherwise it differs by its
    degrees-of-freedom corrections, and it weights clusters rather than pairs.
    """

    _distinct_times = False

    def __init__(self):
        super().__init__()
        self.dep_params = 0.0

    def _estimate(self, z, w):
        self.dep_params = float(np.dot(w, z) / w.sum())

    def _correlation(self, index):
        dim = len(self._times[index])
        rmat = np.full((dim, dim), self.dep_params)
        np.fill_diagonal(rmat, 1.0)
        return rmat

    def summary(self):
        return f"The correlation between two observations in the same cluster is {self.dep_params:.3f}"


class PairwiseAR1(PairwiseCovStruct):
    """
    First-order autoregressive working correlation, estimated as geepack does.

    The correlation of two observations of a cluster at times ``s`` and ``t``
    is ``alpha ** |s - t|``.  ``alpha`` minimizes the weighted least-squares
    criterion::

        sum over within-cluster pairs of w_j w_k (z_jk - alpha ** |t_j - t_k|) ** 2

    over ``[-1, 1]`` (``[0, 1]`` when some lags are not integers), where
    ``z_jk`` are the standardized residual products of
    :class:`PairwiseCovStruct`.  All pairs are used, not only neighbours: this is
    the least-squares problem that geepack's Gauss-Newton updates solve.  The
    criterion only depends on the sums of weights and of weighted products per
    distinct lag, so the minimization is cheap: a grid search followed by a
    bounded Brent refinement, which finds the global minimum on the interval
    (statsmodels' ``Autoregressive(grid=False)`` brackets it on ``[0, 1)`` and
    fails when it cannot).

    Lags are measured in the units of the GEE's ``time``; without ``time``
    they are differences of positions within the cluster (geepack's default
    ``waves``).  Pass consecutive visit numbers as time for a per-visit AR(1).

    Attributes
    ----------
    dep_params : float
        The autocorrelation ``alpha``.
    at_boundary : bool
        True when the minimum is at the end of the interval (``|alpha|`` within
        1e-6 of 1, or 0 when only non-negative values are allowed).
    """

    _EPS = 1e-6

    def __init__(self):
        super().__init__()
        self.dep_params = 0.0
        self.at_boundary = False

    def initialize(self, model):
        super().initialize(model)
        tcat = np.concatenate(self._times)
        lags = np.abs(tcat[self._pk] - tcat[self._pj])
        self._lags, self._lag_index = np.unique(lags, return_inverse=True)
        integer = np.allclose(self._lags, np.round(self._lags))
        self._bounds = (-1.0 + self._EPS if integer else 0.0, 1.0 - self._EPS)

    def _objective(self, alpha, wsum, zsum):
        powers = np.power.outer(np.atleast_1d(alpha), self._lags)
        return (powers * (wsum * powers - 2.0 * zsum)).sum(axis=-1)

    def _estimate(self, z, w):
        wsum = np.bincount(self._lag_index, weights=w, minlength=len(self._lags))
        zsum = np.bincount(self._lag_index, weights=w * z, minlength=len(self._lags))
        lo, hi = self._bounds
        grid = np.linspace(lo, hi, 801)
        i = int(np.argmin(self._objective(grid, wsum, zsum)))
        a, b = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
        res = optimize.minimize_scalar(lambda x: self._objective(x, wsum, zsum)[0],
                                       bounds=(a, b), method="bounded",
                                       options={"xatol": 1e-13})
        alpha = float(res.x) if res.fun <= self._objective(grid[i], wsum, zsum)[0] else grid[i]
        self.dep_params = alpha
        self.at_boundary = bool(alpha - lo < 1e-9 or hi - alpha < 1e-9)

    def _correlation(self, index):
        t = self._times[index]
        return np.power(self.dep_params, np.abs(np.subtract.outer(t, t)))

    def problems(self):
        if self.at_boundary:
            return [f"AR(1) estimate at the boundary ({self.dep_params:.6f})"]
        return []

    def summary(self):
        return f"Autocorrelation alpha = {self.dep_params:.4f}; corr = alpha ** |lag|"


class PairwiseUnstructured(PairwiseCovStruct):
    """
    Unstructured working correlation, estimated as geepack does.

    One correlation per pair of distinct time values ``a < b``:
    ``alpha_ab = sum w_j w_k z_jk / sum w_j w_k`` over the within-cluster pairs
    observed at ``(a, b)``, with ``z_jk`` the standardized residual products of
    :class:`PairwiseCovStruct`.  Because every product is divided by the
    common scale rather than by the variances at ``a`` and ``b``, estimates can
    fall outside ``[-1, 1]`` and the matrix need not be positive definite
    (statsmodels' ``Unstructured`` rescales to a correlation matrix instead);
    :func:`gee_select` flags such fits.  Pairs of times never observed in
    the same cluster get 0 (they enter no working matrix).

    Time values are coded by their rank among the distinct values of the GEE's
    ``time`` (the positions within clusters without ``time``, geepack's
    default ``waves``).

    Attributes
    ----------
    dep_params : ndarray
        The ``q x q`` working correlation over the ``q`` distinct times.
    times : ndarray
        The distinct time values, in the order of ``dep_params``.
    """

    def initialize(self, model):
        super().initialize(model)
        self.times, codes = np.unique(np.concatenate(self._times), return_inverse=True)
        q = len(self.times)
        self._codes = np.split(codes, np.cumsum([len(t) for t in self._times])[:-1])
        cj, ck = codes[self._pj], codes[self._pk]
        self._key = np.minimum(cj, ck) * q + np.maximum(cj, ck)
        self._observed = np.bincount(self._key, minlength=q * q).reshape(q, q) > 0
        self.dep_params = np.eye(q)

    def _estimate(self, z, w):
        q = len(self.times)
        wsum = np.bincount(self._key, weights=w, minlength=q * q)
        zsum = np.bincount(self._key, weights=w * z, minlength=q * q)
        alpha = np.divide(zsum, wsum, out=np.zeros(q * q), where=wsum > 0).reshape(q, q)
        rmat = alpha + alpha.T
        np.fill_diagonal(rmat, 1.0)
        self.dep_params = rmat

    def _correlation(self, index):
        ix = self._codes[index]
        return self.dep_params[np.ix_(ix, ix)]

    @property
    def n_params(self):
        return int(np.triu(self._observed, 1).sum())

    def correlations(self):
        """The estimated correlations of the pairs of times observed together."""
        return self.dep_params[np.triu(self._observed, 1)]

    def summary(self):
        return f"Estimated working correlation (times {list(self.times)}):\n{self.dep_params}"
