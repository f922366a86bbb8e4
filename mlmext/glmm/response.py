"""The GLMM response and family: (successes, failures) columns, count checks, family names.
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from statsmodels.genmod import families



# ============================================================================ response handling
def _is_cbind(resp):
    return resp.replace(" ", "").startswith("cbind(")


def _cbind_proportions(yv, resp, info):
    """Proportions of a ``cbind(s, f)`` response's (n, 2) counts; the trials in
    ``info["trials"]``."""
    if yv.shape[1] != 2:
        raise ValueError(f"the response {resp} must have two columns (successes, failures); "
                         f"it has {yv.shape[1]}")
    s, f = yv[:, 0], yv[:, 1]
    if np.any(s < 0) or np.any(f < 0):
        raise ValueError(f"the response {resp} has negative counts (successes or failures "
                         "below 0); both columns must be >= 0")
    n = s + f
    prop = np.divide(s, n, out=np.zeros_like(s), where=n > 0)
    info["response_kind"] = "cbind"
    info["trials"] = n
    return prop


def _response_arrays(frame, info):
    """:func:`_response_from_frame` on the model frame's arrays, ``(values, name)``: a numeric
    response column or ``cbind(s, f)`` (its proportions); None for other responses (a
    categorical's columns), which take the frames' way."""
    if frame.y_values is not None:
        info["response_kind"] = "numeric"
        return frame.y_values, frame.y_name
    resp = info["parsed"].response.strip()
    if not _is_cbind(resp):
        return None
    # (the frame's one conversion, as _response_from_frame's)
    return _cbind_proportions(frame.y.to_numpy(dtype=float), resp, info), resp


def _response_from_frame(y, X, info):
    """Binomial-style responses from the formula engine's response frame.

    ``cbind(s, f)`` -> proportions with trials in ``info["trials"]``; a two-level
    categorical or boolean -> 0/1 with the first level as failure (as R).
    """
    resp = info["parsed"].response.strip()
    if _is_cbind(resp):
        # one conversion of the frame (two iloc column reads cost ~4 times more)
        return pd.Series(_cbind_proportions(y.to_numpy(dtype=float), resp, info),
                         index=y.index, name=resp), X
    if y.shape[1] == 1:
        info["response_kind"] = "numeric"
        return y.iloc[:, 0], X
    levels = [str(c)[len(resp) + 1:-1] if str(c).startswith(resp + "[") else str(c) for c in y.columns]
    info["response_kind"] = "factor"
    info["response_levels"] = levels
    # more than two levels: the model's family decides the message (_check_response_kind)
    return pd.Series(y.iloc[:, 1].to_numpy(dtype=float), index=y.index, name=resp), X


def _check_counts(y, name, what="counts"):
    if np.any(y < 0):
        raise ValueError(f"the response {name!r} has negative values (min {np.min(y):g}); "
                         f"{what} must be >= 0")
    if np.any(np.abs(y - np.round(y)) > 1e-8 * np.maximum(1.0, np.abs(y))):
        warnings.warn(f"the response {name!r} has non-integer values; the log-likelihood "
                      "uses the continuous extension (log-gamma)", UserWarning, stacklevel=4)


# R's family names (and statsmodels' class names, any case; "." "_" " " ignored)
_FAMILY_NAMES = {"binomial": families.Binomial, "poisson": families.Poisson,
                 "gamma": families.Gamma, "inversegaussian": families.InverseGaussian}
_FAMILY_OTHER = {
    "gaussian": (NotImplementedError, "a Gaussian GLMM with an identity link is an LMM: use "
                 "mlmext.formula.api.lmer"),
    "normal": (NotImplementedError, "a Gaussian GLMM with an identity link is an LMM: use "
               "mlmext.formula.api.lmer"),
    "negativebinomial": (ValueError, "for the negative binomial use glmer_nb (alpha is estimated "
                         "with the other parameters)"),
    "negbin": (ValueError, "for the negative binomial use glmer_nb (alpha is estimated with the "
               "other parameters)"),
    "nb": (ValueError, "for the negative binomial use glmer_nb (alpha is estimated with the "
           "other parameters)"),
    "beta": (ValueError, "the beta family is mlmext.glmm.BetaMixedModel (glmer(..., "
             "family='beta') builds it)"),
    # glmmTMB's hurdle families: the zero part needs a ziformula
    "truncatedpoisson": (ValueError, "a hurdle Poisson model is glmer(..., family='poisson', "
                         "ziformula='~ 1', hurdle=True)"),
    "truncatednbinom2": (ValueError, "a hurdle NB2 model is glmer_nb(..., ziformula='~ 1', "
                         "hurdle=True)"),
    "quasibinomial": (NotImplementedError, "quasi families have no likelihood to maximize (lme4 "
                      "does not fit them either); for overdispersion add an observation-level "
                      "random effect (1 | obs)"),
    "quasipoisson": (NotImplementedError, "quasi families have no likelihood to maximize (lme4 "
                     "does not fit them either); for overdispersed counts use glmer_nb or an "
                     "observation-level random effect (1 | obs)"),
}


def _family_from_name(name):
    """``"binomial"`` / ``"poisson"`` (R's names, any case) -> a statsmodels family instance."""
    key = name.strip().lower().replace(".", "").replace("_", "").replace(" ", "")
    if key.endswith("()"):
        key = key[:-2]
    if key in _FAMILY_NAMES:
        return _FAMILY_NAMES[key]()
    if key in _FAMILY_OTHER:
        exc, msg = _FAMILY_OTHER[key]
        raise exc(f"family={name!r}: {msg}")
    if key == "tweedie":
        raise NotImplementedError(f"the {name} family is not implemented; binomial, Poisson, "
                                  "Gamma, inverse Gaussian, negative binomial (glmer_nb, NB2 or "
                                  "NB1) and beta are")
    raise ValueError(f"unknown family {name!r}; use 'binomial', 'poisson', 'Gamma', "
                     "'inverse.gaussian' or 'beta' (or "
                     "sm.families.Binomial() / sm.families.Poisson() with any link), and "
                     "glmer_nb for the negative binomial (NB2, or NB1 with variance='nb1')")


# the keyword arguments of GeneralizedLinearMixedModel.fit, and hints for others


class NBFamily(families.NegativeBinomial):
    """statsmodels' NB2 family (log link) as the family of a :class:`NegativeBinomialMixedModel`.

    Its own class so that a model rebuilt from a fitted one (which passes the old model's
    ``family`` back) is told apart from a user's ``family=`` argument, which glmer_nb rejects.
    """

    def __init__(self, alpha=1.0):
        super().__init__(link=families.links.Log(), alpha=alpha)


# messages name families by their class name: this one is statsmodels' NegativeBinomial (the
# qualified name stays, so instances pickle)
NBFamily.__name__ = "NegativeBinomial"
