"""
Ordinal responses: cumulative link mixed models
===============================================

Ratings on a scale from 1 to 5 are ordered, but the distances between the
categories are unknown: treating them as numbers assumes that 1 to 2 is the
same step as 4 to 5, and a binomial model would throw away the order. A
*cumulative link model* models the probability of a rating at or below each
category:

.. code-block:: text

    P(Y <= j | b) = F(theta_j - x' beta - z' b),    j = 1, ..., K - 1,
    b ~ N(0, sigma_b^2)

with ``F`` the logistic distribution function (the logit link), increasing
*thresholds* ``theta_1 < ... < theta_{K-1}`` and one set of coefficients
``beta`` for all the cut points. ``mf.clmm`` fits it with random effects,
as R's ``ordinal::clmm``.
"""

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.miscmodels.ordinal_model import OrderedModel

from mlmext import datasets, plots
from mlmext.formula import api as mf

# %%
# The wine data
# -------------
#
# Nine judges rated the bitterness of wines on a scale from 1 (least bitter)
# to 5. The wines were produced at two temperatures (``temp``: cold, warm)
# and with or without contact between juice and skins (``contact``), two
# bottles per combination; every judge rated all eight bottles, 72 ratings
# in all. ``rating`` is an ordered categorical.

wine = datasets.load("wine")
print(datasets.SOURCES["wine"])
print(wine.head())
print(wine["rating"].dtype)
pd.crosstab([wine["temp"], wine["contact"]], wine["rating"])

# %%
# Warm temperature and skin contact both shift the ratings upwards. Judges
# also differ in how they use the scale, so the ratings of one judge are
# correlated: a random intercept per judge captures that.
#
# The model
# ---------
#
# The formula is written as for any regression; the intercept is dropped
# after the design is built, because the thresholds play its role. In R:
# ``clmm(rating ~ temp + contact + (1 | judge), data = wine)``.

model = mf.clmm("rating ~ temp + contact + (1 | judge)", data=wine)
res_laplace = model.fit()
res_laplace

# %%
# Reading the output
# ------------------
#
# **Coefficients.** A positive coefficient moves the ratings up. With the
# logit link ``exp(beta)`` is a cumulative odds ratio: for a given judge,
# the odds of a rating *above* any category j (rather than at or below it)
# are multiplied by ``exp(beta)``, the same factor for every j. This is the
# *proportional-odds* assumption that the single ``beta`` encodes.
#
# **Thresholds.** ``1|2``, ``2|3``, ... are the cut points on the latent
# logit scale for the reference wine (cold, no contact) and a judge with
# random effect 0: ``P(Y <= 1) = F(-1.62)``, ``P(Y <= 2) = F(1.51)``, and so
# on. Their spacing is estimated from the data, not assumed equal.
#
# **Random effects.** The judges' SD is 1.13 on the latent logit scale,
# where the residual logistic distribution has SD pi / sqrt(3) = 1.81.
#
# Odds ratios with Wald intervals:

ors = np.exp(pd.concat([res_laplace.fe_params.rename("odds ratio"),
                        res_laplace.conf_int().loc[res_laplace.fe_params.index]
                        .rename(columns={0: "2.5 %", 1: "97.5 %"})], axis=1))
ors.round(2)

# %%
# For the same judge, a warm wine has 21 times the odds of a more bitter
# rating than a cold one (95 % interval 6.7 to 69), at any cut point; skin
# contact multiplies the odds by 6.3 (2.3 to 17). The intervals are wide with
# 72 ratings, but both effects are clearly positive (z = 5.1 and 3.6).
#
# The thresholds also have standard errors (by the delta method for
# non-flexible threshold structures); they are rarely of interest in
# themselves:

pd.DataFrame({"threshold": res_laplace.thresholds, "std err": res_laplace.bse_thresholds}).round(3)

# %%
# Laplace approximation and adaptive quadrature
# ---------------------------------------------
#
# As for GLMMs, ``fit()`` uses the Laplace approximation and ``fit(nagq=10)``
# adaptive Gauss-Hermite quadrature with 10 nodes per judge
# (R: ``clmm(..., nAGQ = 10)``), for models with one grouping factor.

res_agq = model.fit(nagq=10)
pd.DataFrame({
    "Laplace": pd.concat([res_laplace.params,
                          pd.Series({"SD(judge)": res_laplace.varcorr()["sdcor"].iloc[0],
                                     "log-likelihood": res_laplace.llf})]),
    "AGQ, 10 nodes": pd.concat([res_agq.params,
                                pd.Series({"SD(judge)": res_agq.varcorr()["sdcor"].iloc[0],
                                           "log-likelihood": res_agq.llf})]),
}).round(4)

# %%
# The two agree to about 0.003 in every parameter, and the quadrature
# log-likelihood is 0.03 higher. With eight ratings per judge the Laplace
# approximation is adequate; the rest of the tutorial uses the quadrature
# fit.
#
# Do the judges differ? A likelihood-ratio test
# ---------------------------------------------
#
# The model without the judge effect is an ordinary cumulative link model
# (R's ``clm``); ``mf.clmm`` needs a random-effects term, so it is fitted
# with statsmodels' ``OrderedModel``, which maximizes the same likelihood
# (``mlmext.anova`` only accepts mixed-model results). Its
# thresholds are parametrized differently (the first cut point, then log
# increments), but its log-likelihood is on the same full scale, so the
# likelihood-ratio statistic can be formed by hand. In R:
# ``anova(clm(rating ~ temp + contact, data = wine), fit_clmm)``.

clm = OrderedModel.from_formula("rating ~ temp + contact", data=wine,
                                distr="logit").fit(method="bfgs", disp=False)
print(clm.params.round(4))

lr = 2 * (res_agq.llf - clm.llf)
print(f"logLik without judges: {clm.llf:.3f}, with judges: {res_agq.llf:.3f}")
print(f"LR statistic = {lr:.2f} on 1 df: p = {stats.chi2.sf(lr, 1):.4f} (chi-squared(1)), "
      f"{0.5 * stats.chi2.sf(lr, 1):.4f} (50:50 mixture for a variance on the boundary)")

# %%
# The fixed part of the ``clm`` fit has smaller coefficients (2.50 and 1.53
# against 3.06 and 1.83): ignoring the judges adds their variation to the
# residual, which attenuates the coefficients of a logit model. The
# likelihood ratio of 9.9 (p = 0.0016, or 0.0008 with the boundary
# correction, since the null value sigma_b = 0 is on the edge of the
# parameter space) shows clear differences between judges.
#
# Predicted category probabilities
# --------------------------------
#
# ``predict`` returns one column per rating category. ``re=False`` sets the
# judge effect to 0, a typical judge, so the new data need no ``judge``
# column (with ``re=True`` a judge not seen in fitting would also get 0).

grid = pd.DataFrame({
    "temp": pd.Categorical(["cold", "cold", "warm", "warm"],
                           categories=wine["temp"].cat.categories),
    "contact": pd.Categorical(["no", "yes", "no", "yes"],
                              categories=wine["contact"].cat.categories),
})
probs = res_agq.predict(grid, re=False)
probs.index = [f"{t}, contact {c}" for t, c in zip(grid["temp"], grid["contact"])]
probs.round(3)

# %%
# For a typical judge, a cold wine without skin contact is most likely rated
# 2 (probability 0.65), a warm wine with contact most likely 4 (0.43), with
# 0.23 for a 5. Each row sums to one. The effects plot shows the same
# probabilities with 95 % intervals: one panel per value of ``contact``,
# with the probability of each rating at the two temperatures. The
# intervals come from the delta method on the logit of each probability and
# reflect the uncertainty of the thresholds and coefficients, not the
# variation between judges.

fig = plots.effects(res_agq, "temp", by="contact")
plt.show()
# sphinx_gallery_thumbnail_number = 1

# %%
# The judges
# ----------
#
# The caterpillar plot shows each judge's conditional mode with a 95 %
# interval from its conditional variance (R: ``ranef(fit, condVar = TRUE)``).
# A positive mode is a judge who gives higher (more bitter) ratings than the
# typical judge.

fig = plots.caterpillar(res_agq)
plt.show()

re_judge = res_agq.ranef(condvar=True)["judge"]
pd.DataFrame({"mode": re_judge["Intercept"],
              "cond. SD": re_judge.attrs["condsd"]["Intercept"]}).sort_values("mode").round(3)

# %%
# Judge 1 is the harshest (mode 1.70, interval entirely above zero) and
# judge 7 the mildest (-1.91, entirely below zero); the others' intervals
# include zero. The conditional SDs, 0.55 to 0.62, are large compared with
# the SD of the judges (1.13): eight ratings say only so much about a judge.
#
# Summary
# -------
#
# * ``mf.clmm("y ~ x + (1 | g)", data)`` needs an ordered response (an
#   ordered categorical, integers, or ``levels=``); the thresholds replace the
#   intercept.
# * ``exp(coefficient)`` is a cumulative odds ratio, the same at every cut
#   point (proportional odds); a positive coefficient shifts the ratings up.
# * ``fit(nagq=10)`` uses adaptive quadrature for a single grouping factor.
# * ``predict(new_data, re=False)`` gives the category probabilities for a
#   typical group member; ``ranef(condvar=True)`` the group effects.
