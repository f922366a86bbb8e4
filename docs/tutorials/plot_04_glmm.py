"""
Binomial, Poisson and negative-binomial GLMMs
=============================================

A generalized linear mixed model (GLMM) is a GLM whose linear predictor has
random effects:

.. code-block:: text

    y_i | b  ~  family(mu_i)
    g(mu_i)  =  x_i' beta + z_i' b,        b ~ N(0, Sigma)

``mf.glmer`` fits it from an lme4-style formula by maximum likelihood, with
the Laplace approximation of the integral over ``b`` (``fit()``) or with
adaptive Gauss-Hermite quadrature (``fit(nagq=25)``, one grouping factor).
``mf.glmer_nb`` fits the negative-binomial version.

This tutorial works through two classic lme4 examples:

1. ``cbpp``: a binomial response (cases out of herd size), with Laplace and
   quadrature fits, odds ratios and a look at the herds;
2. ``grouseticks``: overdispersed counts, handled by an observation-level
   random effect or by a negative-binomial GLMM.
"""


import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import statsmodels.api as sm
from scipy import stats

import mlmext
from mlmext import datasets, plots
from mlmext.formula import api as mf

# %%
# Contagious bovine pleuropneumonia: a binomial GLMM
# ----------------------------------------------------
#
# ``cbpp`` follows 15 herds of zebu cattle in Ethiopia over four periods:
# ``size`` is the herd size at the start of a period and ``incidence`` the
# number of new serological cases of the disease during it. The question is
# how the incidence changes over the periods; herds differ in their baseline
# risk, which a random intercept per herd absorbs.

cbpp = datasets.load("cbpp")
print(datasets.SOURCES["cbpp"])
print(cbpp.head(8))
print(cbpp.groupby("period", observed=True)[["incidence", "size"]].sum()
      .assign(proportion=lambda d: d["incidence"] / d["size"]).round(3))

# %%
# The raw proportion of cases drops from 22 % in period 1 to 4.5 % in
# period 4. The model, in lme4's notation, is
#
# .. code-block:: text
#
#     glmer(cbind(incidence, size - incidence) ~ period + (1 | herd),
#           family = binomial, data = cbpp)
#
# and the same formula works in mlmext. ``cbind(successes, failures)`` makes
# a binomial response with ``size`` trials per row; ``period`` is a factor
# with treatment contrasts (period 1 is the reference) and ``(1 | herd)`` is
# a random intercept per herd. ``fit()`` uses the Laplace approximation, as
# lme4's default ``nAGQ = 1``.

model = mf.glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)",
                 data=cbpp, family=sm.families.Binomial())
res_laplace = model.fit()
res_laplace

# %%
# How to read this summary:
#
# * **Fixed effects** are on the logit scale and are *conditional* on the
#   herd: the intercept, -1.40, is the log-odds of a case in period 1 for a
#   herd whose random effect is 0 (a probability of about 0.20). The period
#   coefficients are log-odds ratios against period 1; all three are negative,
#   with z statistics between -3.2 and -3.7.
# * **Random effects**: the herd intercepts have a standard deviation of 0.64
#   on the logit scale, so herds one SD above and below the typical herd
#   differ by a factor of exp(2 x 0.64), about 3.6, in their odds.
# * The log-likelihood is on the **full** binomial scale (with the binomial
#   coefficients), the scale lme4 reports for Laplace fits, so AIC and BIC
#   compare with other models of the same rows.
#
# The same model can be written with the observed proportion as the
# response and the number of trials as ``weights`` (R's
# ``glmer(incidence / size ~ ..., weights = size)``). Both forms give the
# same fit:

cbpp["prop"] = cbpp["incidence"] / cbpp["size"]
res_prop = mf.glmer("prop ~ period + (1 | herd)", data=cbpp, weights="size",
                    family=sm.families.Binomial()).fit()
print(pd.DataFrame({"cbind": res_laplace.fe_params, "proportion + weights": res_prop.fe_params}))
print(f"log-likelihoods: {res_laplace.llf:.6f} (cbind), {res_prop.llf:.6f} (proportion)")

# %%
# Laplace approximation or adaptive quadrature?
# ---------------------------------------------
#
# The Laplace approximation replaces each herd's integral over its random
# effect by a Gaussian one around the conditional mode. With few
# observations per herd (here 4 periods, a handful of cases each) it can be
# a little off. Adaptive Gauss-Hermite quadrature evaluates the integral with
# ``nagq`` nodes per herd placed around the mode; it is available when there
# is a single grouping factor (lme4: ``nAGQ = 25``).

res_agq = model.fit(nagq=25)
comparison = pd.DataFrame({
    "Laplace": pd.concat([res_laplace.fe_params,
                          pd.Series({"SD(herd)": res_laplace.varcorr()["sdcor"].iloc[0],
                                     "log-likelihood": res_laplace.llf})]),
    "AGQ, 25 nodes": pd.concat([res_agq.fe_params,
                                pd.Series({"SD(herd)": res_agq.varcorr()["sdcor"].iloc[0],
                                           "log-likelihood": res_agq.llf})]),
})
comparison["difference"] = comparison["AGQ, 25 nodes"] - comparison["Laplace"]
comparison.round(4)

# %%
# The two fits agree to the second decimal: the fixed effects move by less
# than 0.002 and the herd SD from 0.642 to 0.648, and the quadrature
# log-likelihood is higher by 0.04. Here the Laplace approximation is
# adequate; with binary data and few observations per group the difference
# can be larger, and quadrature is the safer choice whenever it is available.
#
# .. note::
#
#    For ``nAGQ > 1`` lme4 reports a log-likelihood without the binomial
#    coefficients (-50.005 for this model). mlmext keeps the full scale for
#    both methods, so that Laplace and quadrature fits are comparable, and
#    gives lme4's number as ``llf_lme4``:

print(f"llf = {res_agq.llf:.5f}, loglike_saturated = {res_agq.loglike_saturated:.5f}, "
      f"llf_lme4 = {res_agq.llf_lme4:.5f}")

# %%
# Odds ratios
# -----------
#
# Exponentiating the coefficients and their Wald intervals gives odds ratios.
# The intercept row becomes the odds of a case in period 1 for a typical
# herd.

odds_ratios = np.exp(pd.concat([res_agq.fe_params.rename("odds ratio"),
                                res_agq.conf_int().rename(columns={0: "2.5 %", 1: "97.5 %"})],
                               axis=1))
odds_ratios.round(3)

# %%
# Compared with period 1, the odds of a new case within a herd are about
# 0.37 times as large in period 2 (95 % interval 0.20 to 0.68), 0.32 in
# period 3 and 0.21 in period 4 (0.09 to 0.48). These are *herd-specific*
# (conditional) odds ratios: they compare two periods for the same herd. A
# population-averaged odds ratio, averaged over herds, is closer to 1 (this
# is what a GEE would estimate).
#
# Profile-likelihood intervals
# ----------------------------
#
# Wald intervals assume the log-likelihood is quadratic in each parameter.
# Profiling drops that assumption: each parameter is fixed on a grid, the
# deviance is minimised over all the others, and the interval is where the
# signed square root of the deviance increase (zeta) reaches +-1.96, as
# lme4's ``confint(fit, method = "profile")``. It also gives an interval for
# the herd SD, which has no useful Wald interval. Here for the Laplace fit:

ci_profile = res_laplace.conf_int(method="profile")
ci_profile.round(3)

# %%
# The profile intervals of the period effects are shifted down and wider
# than the Wald intervals (period 4: -2.50 to -0.80 against -2.42 to
# -0.74 by Wald), and the herd SD runs from 0.35 to 1.10. The zeta plot shows
# why: straight lines would mean a quadratic log-likelihood; the curvature
# of the SD's and period 4's traces is what moves their intervals.

fig = plots.profile(res_laplace)
plt.show()

# %%
# Predicted probabilities and the herds
# -------------------------------------
#
# The effects plot shows the predicted probability of a case in each period
# for a typical herd (random effect 0), with 95 % Wald intervals computed on
# the logit scale and transformed.

fig = plots.effects(res_agq, "period")
fig.axes[0].set_title("cbpp: probability of a new case, typical herd")
plt.show()

# %%
# The caterpillar plot shows the conditional modes of the herd intercepts
# with 95 % intervals from their conditional variances (lme4's
# ``dotplot(ranef(fit, condVar = TRUE))``), sorted.

fig = plots.caterpillar(res_agq)
plt.show()

re_herd = res_agq.ranef(condvar=True)["herd"]
print(re_herd["Intercept"].sort_values().round(3).to_string())

# %%
# Most intervals cross zero: with four periods and a few cases each, a
# single herd's intercept is poorly determined (conditional SDs of 0.3 to
# 0.46). Only herds 7 and 14 have intervals entirely above zero; herd 14
# has the largest mode (0.98: 11 cases among 19 animals in period 1) and
# herd 13 the smallest (-0.69: 3 cases among 87 animals).
#
# Overdispersed counts: ticks on grouse chicks
# --------------------------------------------
#
# ``grouseticks`` counts the ticks on the heads of 403 red grouse chicks
# (``TICKS``), in three years, at 63 locations of different altitude
# (``HEIGHT``; ``cHEIGHT`` is height centred at its mean, in metres).

grouse = datasets.load("grouseticks")
print(datasets.SOURCES["grouseticks"])
print(grouse.head())
print(grouse.groupby("YEAR", observed=True)["TICKS"].agg(["count", "mean", "var"]).round(2))

# %%
# Within a year the variance of the counts is far above the mean (a Poisson
# variable has variance = mean), and 31 % of the chicks have no ticks at all.
# Part of this extra variation comes from the locations; a Poisson GLMM with
# a random intercept per location is the first model
# (R: ``glmer(TICKS ~ YEAR + cHEIGHT + (1 | LOCATION), family = poisson)``).

pois = mf.glmer("TICKS ~ YEAR + cHEIGHT + (1 | LOCATION)", data=grouse,
                family=sm.families.Poisson()).fit()
pois

# %%
# A quick check of overdispersion: the sum of squared Pearson residuals over
# the residual degrees of freedom should be near 1 for a Poisson model.


def pearson_dispersion(res):
    """Sum of squared Pearson residuals / (n - number of parameters)."""
    return float(np.sum(np.asarray(res.resid_pearson) ** 2) / (res.nobs - res.k_params))


print(f"Pearson dispersion, Poisson GLMM: {pearson_dispersion(pois):.2f}")

# %%
# A ratio of 2.7 means the counts vary much more than the Poisson model
# allows, even with the location effects, and the standard errors above are
# too small.
#
# Remedy 1: an observation-level random effect
# ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
#
# ``INDEX`` numbers the chicks, one row each. A random intercept
# ``(1 | INDEX)`` gives every observation its own normal deviation on the log
# scale, so that the counts are Poisson-lognormal: the observation-level
# random effect (OLRE) soaks up the extra-Poisson variation.

pois_olre = mf.glmer("TICKS ~ YEAR + cHEIGHT + (1 | LOCATION) + (1 | INDEX)", data=grouse,
                     family=sm.families.Poisson()).fit()
pois_olre

# %%
# The chick-level SD is 0.71 on the log scale, and the year effects are now
# estimated with standard errors about twice as large as before (0.17 instead
# of 0.08 for 1996). Since the model without OLRE is the special case
# SD(INDEX) = 0, the likelihood-ratio test of ``mlmext.anova`` (lme4's
# ``anova``) compares them:

mlmext.anova(pois, pois_olre, names=["Poisson", "Poisson + OLRE"])

# %%
# The log-likelihood improves by 222 units (chi-squared 445 on 1 df). The
# null hypothesis puts a variance on the boundary of its range, so the
# chi-squared(1) p-value is conservative (the correct reference is a 50:50
# mixture of 0 and chi-squared(1), which halves the p-value); here it makes no
# difference.
#
# Remedy 2: a negative-binomial GLMM
# ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
#
# The negative binomial adds a gamma-distributed multiplicative deviation to
# each observation instead of a lognormal one. mlmext uses the NB2
# parametrization
#
# .. code-block:: text
#
#     Var(y | b) = mu + alpha * mu^2
#
# with ``alpha`` estimated jointly with the other parameters. lme4's
# ``glmer.nb`` and MASS report ``theta = 1 / alpha`` instead (a larger theta
# is closer to Poisson). R: ``glmer.nb(TICKS ~ YEAR + cHEIGHT + (1 | LOCATION))``.

nb = mf.glmer_nb("TICKS ~ YEAR + cHEIGHT + (1 | LOCATION)", data=grouse).fit()
nb

# %%
print(f"alpha = {nb.alpha:.4f}, lme4's theta = 1 / alpha = {1 / nb.alpha:.4f}")
print(f"Pearson dispersion, negative-binomial GLMM: {pearson_dispersion(nb):.2f}")

# %%
# ``alpha`` = 0.487 (theta = 2.05): at a mean of 6 ticks the conditional
# variance is 6 + 0.487 x 36, about 23.5, four times the Poisson variance. The
# Pearson ratio drops to 0.83. The year and height effects are close to those
# of the OLRE model, with similar standard errors. The intercepts differ
# (0.59 against 0.36) because they refer to different things: in the OLRE
# model the intercept is for a chick whose own random effect is 0, and the
# mean over chicks is higher by the lognormal factor exp(0.71^2 / 2) = 1.29,
# 0.25 on the log scale, close to the difference of 0.23.
#
# Comparing the count models
# ~~~~~~~~~~~~~~~~~~~~~~~~~~
#
# The Poisson GLMM is the limit alpha -> 0 of the negative-binomial one, so
# the two can be compared by a likelihood ratio test as well (again with the
# parameter on the boundary, so the p-value is halved). ``mlmext.anova``
# only checks nesting by the names of the parameters and would warn here (a
# different model class), so the test is done by hand. The OLRE and the
# negative-binomial models are not nested in each other: compare them by AIC.

lr = 2 * (nb.llf - pois.llf)
print(f"LR statistic, Poisson vs negative binomial: {lr:.1f}, "
      f"p = {0.5 * stats.chi2.sf(lr, 1):.2g} (half of chi-squared(1))")

aic_table = pd.DataFrame({
    "parameters": [r.k_params for r in (pois, pois_olre, nb)],
    "logLik": [r.llf for r in (pois, pois_olre, nb)],
    "AIC": [r.aic for r in (pois, pois_olre, nb)],
    "BIC": [r.bic for r in (pois, pois_olre, nb)],
}, index=["Poisson", "Poisson + OLRE", "negative binomial"])
aic_table.round(1)

# %%
# Both remedies fit far better than the plain Poisson GLMM (AIC 1834 and
# 1824 against 2277); between them, the negative binomial has the lower AIC
# by 10 with the same number of parameters. Both lead to the same
# conclusions about the fixed effects.
#
# The altitude effect on the count scale
# ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
#
# The ``cHEIGHT`` coefficient of the negative-binomial model, -0.0238 per
# metre, is a log rate ratio: exp(-0.0238 x 10) = 0.79. Of two locations
# with the same random effect, the one 10 m higher up has about 21 % fewer
# ticks per chick. The
# effects plot shows the predicted mean count against height for each year,
# at a typical location (random effect 0), with 95 % intervals.

print(f"rate ratio per 10 m: {np.exp(10 * nb.fe_params['cHEIGHT']):.3f}")
fig = plots.effects(nb, "cHEIGHT", by="YEAR")
fig.axes[0].set_title("grouseticks: expected ticks per chick, typical location")
plt.show()
# sphinx_gallery_thumbnail_number = 4

# %%
# The curves differ by a constant factor between years, as the model has no
# interaction: 1996 has the most ticks, 1997 the fewest.
#
# Summary
# -------
#
# * ``glmer(..., family=sm.families.Binomial())`` takes 0/1 responses,
#   ``cbind(successes, failures)`` or proportions with ``weights``;
#   ``family=sm.families.Poisson()`` takes counts.
# * ``fit()`` is the Laplace approximation, ``fit(nagq=25)`` adaptive
#   quadrature (one grouping factor); the log-likelihoods are on one scale.
# * Coefficients are conditional on the random effects; exponentiate them for
#   odds ratios (logit) or rate ratios (log).
# * Check count models for overdispersion; an observation-level random effect
#   or ``glmer_nb`` (NB2, ``alpha = 1 / theta``) absorbs it.
