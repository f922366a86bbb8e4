"""
Robust standard errors, bootstrap tests and cross-validation
============================================================

A mixed model's standard errors, tests and predictions all lean on its assumptions: the
random-effects structure, normality, and the large-sample theory behind the chi-square tests.
This tutorial shows three checks that lean on them less:

1. cluster-robust (sandwich) standard errors, which stay valid when the random-effects
   structure is wrong (R's clubSandwich);
2. a parametric-bootstrap likelihood-ratio test, which replaces the chi-square reference
   distribution by simulation (R's pbkrtest ``PBmodcomp``);
3. grouped cross-validation, which measures how well a model predicts new groups and new
   observations of known groups.
"""

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from scipy import stats

import mlmext
from mlmext import datasets
from mlmext.formula import api as mf
from mlmext.model_selection import GroupKFold, WithinGroupKFold

# %%
# Cluster-robust standard errors
# ------------------------------
#
# The model-based covariance of the fixed effects, :math:`\sigma^2 (X'V^{-1}X)^{-1}`, is
# correct if V, the covariance the random effects imply, is correct. A sandwich estimator
# uses the fitted model only to weight the data, and measures the variability of the
# estimates from the residuals of each cluster, so it stays consistent when V is wrong, as
# long as clusters are independent and there are enough of them. CR2 (Bell and McCaffrey)
# corrects the small-sample bias of the sandwich, and its t tests use Satterthwaite degrees
# of freedom per coefficient (Pustejovsky and Tipton), which matter when clusters are few.
#
# On the High School and Beyond data (7185 students in 160 schools) we fit the same fixed
# effects twice: with a random intercept per school only, which wrongly assumes that the
# effect of a student's SES (``cses``) is the same in every school, and with a random SES
# slope as well. ``fit(cov_type="cluster", cov_kwds={"type": "CR2"})`` fits with the robust
# covariance, clustered by school (the outermost grouping factor, by default);
# ``get_robustcov_results`` gives it for a model already fitted, as a new result.

hsb = datasets.load("hsb82")
fixed = "mAch ~ sector * cses + meanses"
m_int = mf.lmer(fixed + " + (1 | school)", data=hsb).fit()
m_slope = mf.lmer(fixed + " + (cses | school)", data=hsb).fit()
r_int = mf.lmer(fixed + " + (1 | school)", data=hsb).fit(cov_type="cluster",
                                                          cov_kwds={"type": "CR2"})
r_slope = m_slope.get_robustcov_results("cluster", type="CR2")

pd.DataFrame({
    "(1 | school): model": m_int.bse_fe,
    "(1 | school): CR2": r_int.bse,
    "(cses | school): model": m_slope.bse_fe,
    "(cses | school): CR2": r_slope.bse,
    "CR2 df": r_int.df_resid_inference,
}).round(4)

# %%
# How to read the table:
#
# * For the student-level ``cses`` and its interaction with ``sector``, the random-intercept
#   model's own SEs are 7 to 10 % smaller than the robust ones (0.145 against 0.160 for
#   ``cses``). Its assumption that all schools share one SES slope makes it overconfident
#   about the slope. With the random slope in the model, the model-based SEs move to the
#   robust values: the sandwich points at the missing random effect.
# * For the school-level terms the robust SEs are a little *smaller* (``meanses``: 0.339
#   against 0.369). A robust SE is not a penalty; it is another estimate, and with 160
#   clusters it is a good one.
# * The CR2 df are far below the 7185 observations: 56 for ``meanses``, as if it were
#   estimated from a small sample of schools. With few clusters (say, below 30-40), these df,
#   not a normal approximation, keep the tests honest.
#
# When to prefer them: when the inference should not depend on the random-effects structure
# being right (econometric practice, or a referee asking), and as a check of the model. When
# robust and model-based SEs agree, as for the random-slope model here, the model-based SEs
# (which are more efficient, and available for every test) can be used with confidence.
#
# A robust result works like any statsmodels result: ``summary()``, ``pvalues``,
# ``conf_int()`` and ``t_test`` use the robust covariance and the CR2 df, and ``wald_test``
# gives clubSandwich's HTZ F test. Here, the SES slope in Catholic schools:

print(r_slope.t_test("cses + sector[T.Catholic]:cses = 0"))

# %%
# Parametric bootstrap test of a random slope
# -------------------------------------------
#
# Do children grow at different rates? Potthoff and Roy's dental data (27 children measured
# at ages 8 to 14, see the growth tutorial) with a random intercept, and with a random slope
# of ``years`` (age - 8) too:

dental = datasets.load("dental")
growth = pd.wide_to_long(dental, stubnames="distance", i="Subject", j="age",
                         sep="_").reset_index()
growth["years"] = growth["age"] - 8
g_int = mf.lmer("distance ~ years * Sex + (1 | Subject)", data=growth).fit()
g_slope = mf.lmer("distance ~ years * Sex + (years | Subject)", data=growth).fit()
mlmext.anova(g_int, g_slope)

# %%
# The likelihood-ratio test compares :math:`\chi^2 = 0.83` with a :math:`\chi^2_2`
# distribution (the slope variance and the correlation). That reference distribution is
# only asymptotic, and here it is wrong even asymptotically: under the null hypothesis the
# slope variance is zero, on the boundary of its range, and the true null distribution puts
# more weight near zero than :math:`\chi^2_2` does. The chi-square p-value is therefore too
# large: the test is conservative. (Asymptotic theory gives a 50:50 mixture of
# :math:`\chi^2_1` and :math:`\chi^2_2` for this test, Stram and Lee's correction, and
# p = 0.51; for a single variance, a 50:50 mixture of 0 and :math:`\chi^2_1`, which halves
# the p-value.)
#
# The parametric bootstrap does not need the theory. ``test="pb"`` simulates ``nsim``
# responses from the smaller model's ML fit, refits both models to each, and counts how often
# the simulated likelihood-ratio statistic is at least the observed one. ``rng=`` makes it
# reproducible. 200 simulations keep this page fast; use 1000 or more for a p-value you
# report (its Monte-Carlo standard error is about :math:`\sqrt{p(1-p)/n_{sim}}`, 0.035 here).

pb = mlmext.anova(g_int, g_slope, test="pb", nsim=200, rng=1)
pb

# %%
# The bootstrap p-value (``PBtest``) is 0.41, against 0.66 from :math:`\chi^2_2`. The
# conclusion is the same (no evidence that growth rates vary between children), but a
# variance component near the edge of significance could be declared unnecessary by the
# chi-square test while the bootstrap keeps it. ``Gamma`` and ``Bartlett`` smooth the
# simulated distribution (a gamma fit, and the LRT rescaled by its simulated mean); ``F`` is
# pbkrtest's F approximation. The simulated statistics are in ``pb.attrs["ref"]``; compared
# with :math:`\chi^2_2` they are concentrated near zero:

ref = pb.attrs["ref"]
observed = pb.loc["LRT", "stat"]
fig, ax = plt.subplots(figsize=(6, 3.6), constrained_layout=True)
ax.hist(ref, bins=np.arange(0, 10.25, 0.25), density=True, color="0.75",
        label=f"{len(ref)} bootstrap LRTs")
grid = np.linspace(0.01, 10, 300)
ax.plot(grid, stats.chi2.pdf(grid, 2), color="C0", label=r"$\chi^2_2$ density")
ax.axvline(observed, color="C3", label=f"observed LRT = {observed:.2f}")
ax.set_xlabel("likelihood-ratio statistic")
ax.set_ylabel("density")
ax.set_xlim(0, 10)
ax.legend()
plt.show()
# sphinx_gallery_thumbnail_number = 1

# %%
# The same call works for fixed-effect terms (where the chi-square approximation is off
# with few groups) and for binomial and Poisson GLMMs. ``progress=True`` shows a progress
# bar for long runs.
#
# Grouped cross-validation
# ------------------------
#
# Information criteria and tests compare models by their fit to the data at hand.
# Cross-validation asks how well they predict data they have not seen, and with grouped data
# there are two different questions:
#
# * **new groups** (a new subject): ``GroupKFold`` holds out whole groups, so the random
#   effects of a held-out group are unknown and the prediction is the population one;
# * **new observations of known groups** (a subject's next day): ``WithinGroupKFold`` holds
#   out rows within groups, so their conditional modes can be used.
#
# ``mlmext.cross_validate`` refits the formula on each training fold and scores the held-out
# rows with the random effects (``*_re``) and without them (``*_fixed``). The scores are the
# RMSE, the mean absolute error and the log score (mean log predictive density: higher is
# better; it rewards a predictive distribution of the right width, not just the right mean).
# We compare a random-intercept and a random-slope model of the sleep-deprivation study
# (18 subjects, reaction times over 10 days), 6 folds of 3 subjects each:

sleep = datasets.load("sleepstudy")
models = {"(1 | Subject)": "Reaction ~ Days + (1 | Subject)",
          "(Days | Subject)": "Reaction ~ Days + (Days | Subject)"}
new_groups = {name: mlmext.cross_validate(formula, sleep, groups="Subject", cv=GroupKFold(6))
              for name, formula in models.items()}
pd.DataFrame({name: cv.mean for name, cv in new_groups.items()}).round(3)

# %%
# For subjects not seen in training, ``*_re`` equals ``*_fixed``: both predict the
# population line, so the RMSE (48.4 ms) cannot tell the two models apart. The log score can:
# the random-slope model predicts a spread that grows with ``Days``, as the subjects' lines
# fan out, and scores higher (-5.29 against -5.35 per observation). ``cv.folds`` has the
# scores of each fold; the random-slope model is better in every fold:

fold_scores = pd.DataFrame({name: cv.folds["log_score_re"] for name, cv in new_groups.items()})
fig, ax = plt.subplots(figsize=(6, 3.4), constrained_layout=True)
for name in fold_scores:
    ax.plot(fold_scores.index, fold_scores[name], "o-", label=name)
ax.set_xticks(fold_scores.index)
ax.set_xlabel("fold (3 held-out subjects each)")
ax.set_ylabel("log score per observation")
ax.set_title("GroupKFold(6): predicting new subjects")
ax.legend()
plt.show()

# %%
# For new days of known subjects (5 folds of days dealt at random within each subject), the
# conditional modes pay off: the RMSE drops from about 47 ms without the random effects to
# 32 ms (random intercepts) and 28 ms (random slopes).

within = {name: mlmext.cross_validate(formula, sleep, groups="Subject",
                                      cv=WithinGroupKFold(5, rng=1))
          for name, formula in models.items()}
pd.DataFrame({name: cv.mean for name, cv in within.items()}).round(3)

# %%
# ``cv=`` also takes ``LeaveOneGroupOut()`` or any list of (train, test) index pairs, and the
# splitters follow scikit-learn's interface, so they can be used in scikit-learn pipelines.
# For binomial GLMMs the Brier score is added.
#
# A note on GLMM standard errors: the covariance of a GLMM's estimates comes from the
# Hessian of the deviance at the optimum, computed by central differences of the exact
# gradient (for adaptive quadrature, second differences of the deviance); the SEs agree with
# lme4's own central differences within 1.5e-5 relative (see the GLMM guide).
