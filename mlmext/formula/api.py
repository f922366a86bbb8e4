"""smf-style entry points: ``from mlmext.formula import api as mf``.

>>> res = mf.lmer("Reaction ~ Days + (Days | Subject)", data=df).fit()
"""
from mlmext.gee import gee_select  # noqa: F401  (GEE working-correlation selection by QIC)
from mlmext.lmm import LinearMixedModel


def lmer(formula, data, weights=None, offset=None, subset=None, missing="drop", eval_env=0, **kwargs):
    """Linear mixed model from an lme4-style formula (see :class:`mlmext.lmm.LinearMixedModel`).

    Parameters
    ----------
    formula : str
        ``"y ~ x + (x | g)"``; random-effects terms ``(expr | g)``,
        ``(expr || g)``, ``(1 | a/b)``, ``(1 | a:b)``; ``offset(expr)``.
    data : pandas.DataFrame
    weights, offset : str or array_like, optional
        Prior weights and a known offset (column names or arrays).
    subset : array_like, optional
    missing : {"drop", "raise"}
        Rows with missing values are dropped and counted, or raise.

    Returns
    -------
    LinearMixedModel
        Call ``.fit(reml=True)`` on it.
    """
    return LinearMixedModel.from_formula(formula, data, weights=weights, offset=offset, subset=subset,
                                         missing=missing, eval_env=eval_env + 1, **kwargs)


__all__ = ["lmer", "glmer", "glmer_nb", "clmm", "gee_select"]


def _not_yet(name, issue):
    def f(*args, **kwargs):
        raise NotImplementedError(f"mlmext.formula.api.{name} is not implemented yet ({issue})")
    f.__name__ = name
    return f


glmer = _not_yet("glmer", "generalized linear mixed models")
glmer_nb = _not_yet("glmer_nb", "negative binomial mixed models")
clmm = _not_yet("clmm", "cumulative link mixed models")
