"""Keyword arguments we do not read raise ``TypeError`` instead of being swallowed.

statsmodels' ``Model.__init__`` stores unknown keyword arguments and many ``fit``
methods take ``**kwargs``: an R habit (``REML=False``, ``nAGQ=25``,
``newdata=``) or a typo (``weight=``) would then give a different model with
no error.  Every public entry point that takes ``**kwargs`` passes what is left
to :func:`reject_unknown`, which names the argument and the spelling that works.
"""
from __future__ import annotations

import difflib

import numpy as np

__all__ = ["RE_HINT", "check_flag", "reject_unknown", "reject_robust_cov"]

#: lme4's ``re.form``: our predict()'s ``re`` (also for MixedLM users' ``re_formula`` there)
RE_HINT = "use re=False for population-level predictions, re=True (default) with the random effects"

# R / lme4 / statsmodels spellings that mean something else here
_HINTS = {
    "REML": "the criterion is chosen when fitting: .fit(reml=False) for ML, .fit() for REML",
    "nAGQ": "use .fit(nagq=...) (1 = Laplace, up to 100 quadrature nodes)",
    "newdata": "pass the new rows as data= (or exog=)",
    "new_data": "pass the new rows as data= (or exog=)",
    "re_form": RE_HINT,
    "re.form": RE_HINT,
    "type": "use which='mean' (response scale) or which='linear' (link scale)",
    "allow_new_levels": "levels not seen in fitting always get the population value "
                        "(random effect 0)",
    "weight": "did you mean weights=?",
    "exposure": "give the log exposure as an offset: offset=np.log(exposure)",
    "start": "use start_params=",
    "control": "give the optimizer settings to fit() directly (maxiter=, tol=)",
    "verbose": "use disp=",
    "na_action": "use missing='drop' or missing='raise'",
    "contrasts": "write contrasts in the formula, e.g. C(f, Sum)",
    # statsmodels MixedLM's arguments: here the random effects live in the formula
    "groups": "write the grouping in the formula: 'y ~ x + (1 | g)'",
    "re_formula": "write random effects in the formula: 'y ~ x + (1 + x | g)'",
    "vc_formula": "write variance components as terms in the formula: '(1 | g) + (1 | g:h)'",
    "exog_re": "write random effects in the formula: 'y ~ x + (1 + x | g)'",
}


def reject_unknown(kwargs, where, accepted=(), hints=None):
    """Raise ``TypeError`` when ``kwargs`` is not empty.

    Parameters
    ----------
    kwargs : dict
        The keyword arguments left over after the ones the function reads.
    where : str
        The function as the user called it (``"lmer()"``, ``"fit()"``).
    accepted : sequence of str
        The names the function does take, for a "did you mean" suggestion.
    hints : dict, optional
        Per-function hints overriding the shared ones.
    """
    if not kwargs:
        return
    msgs = []
    for key in kwargs:
        hint = (hints or {}).get(key) or _HINTS.get(key)
        if hint is None:
            close = difflib.get_close_matches(key, list(accepted), n=1, cutoff=0.6)
            hint = f"did you mean {close[0]}=?" if close else (
                f"it takes {', '.join(sorted(accepted))}" if accepted else "")
        msgs.append(f"{key!r}" + (f" ({hint})" if hint else ""))
    word = "argument" if len(msgs) == 1 else "arguments"
    raise TypeError(f"{where} got an unexpected keyword {word} " + "; ".join(msgs))


def reject_robust_cov(kwargs, what):
    """``fit(cov_type=...)`` of a model without cluster-robust covariances: NotImplementedError
    (not the TypeError of an unknown argument: statsmodels users expect it to exist)."""
    cov_type = kwargs.pop("cov_type", "nonrobust")
    cov_kwds = kwargs.pop("cov_kwds", None)
    if str(cov_type).lower() not in ("nonrobust", "cluster"):
        raise ValueError(f"unknown cov_type {cov_type!r}; {what} fits have cov_type='nonrobust' "
                         "(the model-based covariance)")
    if str(cov_type).lower() != "nonrobust" or cov_kwds:
        raise NotImplementedError(
            f"cluster-robust covariances (cov_type={cov_type!r}) are implemented for linear mixed "
            f"models (lmer) only, not for {what} fits; the model-based covariance is "
            "cov_type='nonrobust'")


def check_flag(name, value):
    """``value`` if it is a bool, else ValueError (a string was read by its truth:
    ``re="False"`` drew new random effects)."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False; got {value!r}")
    return bool(value)
