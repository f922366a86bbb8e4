"""What gee_select's table reports about each fit besides the criteria.

The working-correlation estimate in words, its number of parameters, and the problems of a
working correlation that flag a fit (not positive definite, correlations outside [-1, 1], projected during the fit).
"""
from __future__ import annotations

import numpy as np
from statsmodels.genmod import cov_struct as sm_cov

from .covstructs import PairwiseAR1, PairwiseCovStruct, PairwiseExchangeable, PairwiseUnstructured


def _describe(cs):
    """The working-correlation estimate in a few words."""
    dp = cs.dep_params
    if isinstance(cs, sm_cov.Independence):
        return "independent"
    if isinstance(cs, (PairwiseExchangeable, sm_cov.Exchangeable)):
        return f"exchangeable, rho = {float(dp):.3f}"
    if isinstance(cs, (PairwiseAR1, sm_cov.Autoregressive)):
        return f"rho^|lag|, rho = {float(dp):.3f}"
    if isinstance(cs, (PairwiseUnstructured, sm_cov.Unstructured)):
        vals = cs.correlations() if isinstance(cs, PairwiseUnstructured) else dp[np.triu_indices(len(dp), 1)]
        return f"{len(vals)} correlations in [{vals.min():.2f}, {vals.max():.2f}]" if len(vals) else "none"
    if isinstance(cs, sm_cov.Stationary):
        lags = ", ".join(f"{v:.2f}" for v in np.asarray(dp)[1:4])
        more = ", ..." if len(dp) > 4 else ""
        return f"lag 1..{len(dp) - 1}: {lags}{more}"
    if isinstance(cs, sm_cov.Nested):
        return "variance components " + ", ".join(f"{v:.3g}" for v in np.atleast_1d(dp))
    vals = np.atleast_1d(np.asarray(dp, dtype=float)) if dp is not None else np.zeros(0)
    return f"{type(cs).__name__}: " + ", ".join(f"{v:.3g}" for v in vals.ravel()[:4])


def _n_corr_params(cs):
    if isinstance(cs, PairwiseCovStruct):
        return cs.n_params
    if isinstance(cs, sm_cov.Independence):
        return 0
    if isinstance(cs, sm_cov.Unstructured):
        q = len(cs.dep_params)
        return q * (q - 1) // 2
    if isinstance(cs, sm_cov.Stationary):
        return cs.max_lag
    dp = cs.dep_params
    return 0 if dp is None else int(np.size(dp))


def _correlation_problems(results):
    """Working matrices that are not positive definite or have correlations outside [-1, 1]."""
    model, cs = results.model, results.cov_struct
    seen, not_pd, outside = {}, 0, 0
    for i in range(model.num_group):
        mat, is_cor = cs.covariance_matrix(model.cached_means[i][0], i)
        mat = np.asarray(mat, dtype=float)
        key = (mat.shape, mat.tobytes())
        if key not in seen:
            bad_pd = mat.size > 0 and (not np.all(np.isfinite(mat))
                                       or np.linalg.eigvalsh(mat).min() <= 1e-10 * max(1.0, np.abs(mat).max()))
            off = mat[~np.eye(len(mat), dtype=bool)]
            bad_range = bool(is_cor and off.size and np.abs(off).max() > 1.0 + 1e-12)
            seen[key] = (bad_pd, bad_range)
        not_pd += seen[key][0]
        outside += seen[key][1]
    out = []
    if outside:
        out.append(f"correlation estimates outside [-1, 1] ({outside} of {model.num_group} clusters)")
    if not_pd:
        out.append(f"working correlation not positive definite ({not_pd} of {model.num_group} clusters)")
    adjusted = sum(np.sum(a) for a in results.fit_history.get("cov_adjust", []) if np.size(a))
    if adjusted:
        out.append("working correlation projected to positive definite during the fit")
    return out
