"""
Nested and crossed random effects
=================================

Many data sets have more than one grouping factor. How the factors relate to each other
decides how the random effects are written:

* **nested**: every level of the inner factor occurs within exactly one level of the outer
  factor (casks within batches, pupils within classes within schools);
* **crossed**: levels of the two factors occur in combination (every sample is tested on every
  plate; every rater scores every item).

This tutorial fits one model of each kind, from two classic data sets of Davies and Goldsmith
(1972) that Bates uses in the lme4 book, and computes profile-likelihood intervals for the
variance components.
"""

import warnings

import pandas as pd

import mlmext
from mlmext import datasets, plots
from mlmext.formula import api as mf

# %%
# Nested factors: the ``pastes`` data
# -----------------------------------
#
# The strength of a chemical paste was measured twice in each of three casks from each of 10
# delivery batches: 60 measurements. The variation in strength has three sources: between
# batches, between casks of the same batch, and between the two measurements of one cask.

pastes = datasets.load("pastes")
pastes.head(6)

# %%
# Look at how the casks are labelled. ``cask`` takes the values a, b and c *within each batch*:
# cask "a" of batch A and cask "a" of batch B are different casks that happen to share a label.
# The column ``sample`` is the unique cask identifier (batch and cask label together), with 30
# levels.

print(pd.crosstab(pastes["batch"], pastes["cask"]))
print("cask labels:", pastes["cask"].nunique(), "  casks (sample):", pastes["sample"].nunique())

# %%
# The nested model
# ~~~~~~~~~~~~~~~~
#
# ``(1 | batch/cask)`` reads "random intercepts for batches and for casks within batches". It is
# shorthand for two terms, ``(1 | batch) + (1 | batch:cask)``: one intercept per batch and one per
# combination of batch and cask label, that is, one per real cask. The summary labels the second
# term ``cask:batch``, as lme4 does. In lme4:
# ``lmer(strength ~ 1 + (1 | batch/cask), data = Pastes)``.

m_nest = mf.lmer("strength ~ 1 + (1 | batch/cask)", data=pastes).fit()
m_nest

# %%
# The variance between casks within a batch is 8.43 (SD 2.90), between batches 1.66 (SD 1.29),
# and between the two measurements of a cask 0.68 (SD 0.82). Most of the variation comes from the
# casks; the repeated measurements of one cask agree closely.
#
# The expanded form and the unique identifier give the same fit. With ``sample`` the nesting is
# already in the labels, so ``(1 | batch) + (1 | sample)`` works too:

for formula in ["strength ~ 1 + (1 | batch) + (1 | batch:cask)",
                "strength ~ 1 + (1 | batch) + (1 | sample)"]:
    print(formula)
    print(mf.lmer(formula, data=pastes).fit().varcorr(), "\n")

# %%
# Why ``(1 | cask)`` alone is wrong
# ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
#
# With the labels a, b, c, a term ``(1 | cask)`` has only three levels: it treats the 10 casks
# called "a" as one group. Those are unrelated casks from different batches, so their effects
# average out, and the model finds no cask variance at all: a singular fit in which all the
# variation ends up in the residual.

with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    m_wrong = mf.lmer("strength ~ 1 + (1 | cask)", data=pastes).fit()
for w in caught:
    print(type(w.message).__name__, ":", w.message)
print(m_wrong.varcorr())
print("singular:", m_wrong.is_singular())

# %%
# The cask variance is estimated at exactly 0 and the residual variance at 10.49, the whole
# variance of the data. Whenever the inner factor's labels repeat across the outer factor, write
# ``(1 | outer/inner)`` or build unique labels (like ``sample``) first.
#
# Is the batch variance needed?
# ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
#
# The batch SD (1.29) is small next to the cask SD (2.90), and it is estimated from only 10
# batches. A likelihood-ratio test compares the nested model with the model that keeps only the
# cask term (both are refitted by ML):

m_cask = mf.lmer("strength ~ 1 + (1 | batch:cask)", data=pastes).fit()
mlmext.anova(m_cask, m_nest)

# %%
# :math:`\chi^2 = 0.41` on 1 df, p = 0.52 (0.26 with the halved p-value for a variance on the
# boundary): the data are compatible with no batch variance, and the simpler model has the lower
# AIC. The profile-likelihood intervals say the same: the 95 % interval for the batch SD reaches
# down to zero. ``conf_int(method="profile")`` (lme4's ``confint(fit)``) profiles the ML deviance;
# an interval that hits a bound is one-sided and listed in ``attrs["boundary"]``.

ci_nest = m_nest.conf_int(method="profile")
print(ci_nest.round(3))
print("ends at a bound:", ci_nest.attrs["boundary"])

# %%
# The batch SD could be anything from 0 to 2.95, while the cask SD is clearly positive (2.16 to
# 4.05). Without the batch term, the cask variance absorbs most of the batch variance: it rises
# to 9.98, close to the sum 8.43 + 1.66 of the nested model's two components, and the residual
# variance stays at 0.68.

print(m_cask.varcorr())

# %%
# The caterpillar plot shows the conditional modes of the nested model with 95 % prediction
# intervals, one panel per grouping factor. The cask effects spread widely (the intervals of 15
# of the 30 casks exclude zero); the batch effects are shrunk towards zero, and all 10 of their
# intervals include zero.

fig = plots.caterpillar(m_nest)

# %%
# Crossed factors: the ``penicillin`` data
# ----------------------------------------
#
# To assay the potency of six samples of penicillin, each sample was applied to each of 24 agar
# plates, and the diameter of the zone of inhibited growth was measured: 144 measurements. Every
# sample meets every plate once, so the factors are completely crossed:

pen = datasets.load("penicillin")
print(pd.crosstab(pen["plate"], pen["sample"]).head())
print("plates:", pen["plate"].nunique(), "samples:", pen["sample"].nunique(), "rows:", len(pen))

# %%
# Crossed random effects are written as separate terms, one per factor:
# ``(1 | plate) + (1 | sample)``. A plate effect is shared by the six measurements on that plate, a sample effect
# by the 24 measurements of that sample, and the two are added (lme4:
# ``lmer(diameter ~ 1 + (1 | plate) + (1 | sample), data = Penicillin)``).

m_pen = mf.lmer("diameter ~ 1 + (1 | plate) + (1 | sample)", data=pen).fit()
m_pen

# %%
# The sample variance, 3.73 (SD 1.93), is five times the plate variance, 0.72 (SD 0.85), and
# the residual variance is small, 0.30 (SD 0.55). With crossed factors each component has its own
# ICC-like share of the total:

vc = m_pen.varcorr().set_index("grp")
share = vc["vcov"] / vc["vcov"].sum()
print(share.round(3))

# %%
# 79 % of the variance is between samples, 15 % between plates, and 6 % is residual. The
# caterpillar plot has one panel per factor: 24 plate effects and 6 sample effects. The sample
# effects are far apart compared to their narrow intervals (the potencies clearly differ); the
# plate effects spread less, and the intervals of 14 of the 24 plates exclude zero.

fig = plots.caterpillar(m_pen)
# sphinx_gallery_thumbnail_number = 2

# %%
# Profile-likelihood intervals
# ----------------------------
#
# Wald intervals (estimate plus or minus 1.96 standard errors) are poor for variance components:
# the sampling distribution of a variance estimate is skewed, especially when the number of
# levels is small. Profile intervals avoid the approximation: for each parameter the ML deviance
# is minimised over all other parameters with that one held fixed, and the interval is where the
# signed square root of the deviance increase, :math:`\zeta`, stays within :math:`\pm 1.96`.

ci_pen = m_pen.conf_int(method="profile")
ci_pen.round(3)

# %%
# The profile is that of the ML fit, so the intervals surround the ML estimates (for the sample
# SD 1.77, a little below the REML estimate 1.93 of the summary). The interval for the sample SD,
# 1.10 to 3.56, is wide and asymmetric, because it rests on only six samples; the plate SD
# (24 plates: 0.63 to 1.18) and the residual SD (144 measurements: 0.49 to 0.63) are much more
# precise.
#
# ``plots.profile`` draws the :math:`\zeta` traces (lme4's ``xyplot(profile(fit))``), here for
# the three variance parameters. A straight line would mean a quadratic log-likelihood, where
# profile and Wald intervals coincide. The residual SD's trace is nearly straight; the sample
# SD's trace bends strongly, steep below the estimate and flat above it, which is why its
# interval stretches much further up than down. The dashed lines mark the 95 % cutoffs
# :math:`\pm 1.96`.

fig = plots.profile(m_pen, params=["sd_Intercept|plate", "sd_Intercept|sample", "sigma"])
