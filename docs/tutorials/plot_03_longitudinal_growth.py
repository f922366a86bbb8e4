"""
Longitudinal growth models
==========================

In longitudinal data the same subjects are measured repeatedly, and the measurements of one
subject are correlated. A growth model describes each subject's trajectory over time by a
line (or curve) whose intercept and slope vary between subjects around a population line.
In multilevel terms the measurement occasions are level 1 and the subjects level 2.

This tutorial starts from data in the wide layout, reshapes them, fits random-intercept and
random-slope growth models, and shows how the centring of time changes what the intercept
means. It ends with a second example, the sleep-deprivation study, to show uncorrelated random
effects.
"""

import matplotlib.pyplot as plt
import pandas as pd

import mlmext
from mlmext import datasets, plots
from mlmext.formula import api as mf

# %%
# From wide to long
# -----------------
#
# Potthoff and Roy's dental growth data: the distance (mm) from the centre of the pituitary to
# the pterygomaxillary fissure, measured on 16 boys and 11 girls at ages 8, 10, 12 and 14. The
# data come as published, one row per child and one column per age:

wide = datasets.load("dental")
wide.head()

# %%
# Mixed models need the long layout, one row per measurement. ``pd.wide_to_long`` takes the
# common prefix of the measurement columns (``stubnames``), the separator, and the column
# identifying the rows; the suffix after ``distance_`` becomes the new column ``age``.

long = pd.wide_to_long(wide, stubnames="distance", i="Subject", j="age", sep="_").reset_index()
long = long.sort_values(["Subject", "age"], ignore_index=True)
long.head(8)

# %%
# 27 children times 4 ages gives 108 rows. (``wide.melt(id_vars=["Subject", "Sex"])`` followed
# by parsing the age out of the column names does the same.)

print(long.shape)
print(long.groupby("Sex", observed=True)["Subject"].nunique())

# %%
# The first plot of longitudinal data should show the raw trajectories, one line per child:

fig, axes = plt.subplots(1, 2, figsize=(9, 3.8), sharey=True, constrained_layout=True)
for ax, (sex, d) in zip(axes, long.groupby("Sex", observed=True)):
    for _, child in d.groupby("Subject", observed=True):
        ax.plot(child["age"], child["distance"], "o-", color="0.5", lw=0.8, ms=3)
    ax.set_title(sex)
    ax.set_xlabel("age (years)")
axes[0].set_ylabel("distance (mm)")

# %%
# Growth is roughly linear. Children differ a lot in their level, less obviously in their
# slopes, and the boys grow faster than the girls. A few boys have irregular zigzag trajectories.
#
# Centring time
# -------------
#
# In ``distance ~ age * Sex + (age | Subject)`` the intercept is the distance at age 0, far
# outside the data. Its fixed part is then an extrapolation, and the random intercept and slope
# are strongly correlated for a purely geometric reason: a line that is steeper over ages 8 to
# 14 reaches back to a lower value at age 0. Measuring time from the first visit,
# ``years = age - 8``, makes the intercept the distance at age 8. The model is the same (same
# fitted values, same likelihood, same slope variance), only reparametrised; what changes is the
# meaning of the intercept, its variance and its correlation with the slope:

long["years"] = long["age"] - 8
long["age11"] = long["age"] - 11

rows = {}
for var, origin in [("age", 0), ("years", 8), ("age11", 11)]:
    fit = mf.lmer(f"distance ~ {var} * Sex + ({var} | Subject)", data=long).fit()
    vc = fit.varcorr()
    rows[f"{var} (0 at age {origin})"] = {
        "intercept (boys)": fit.fe_params["Intercept"],
        "var intercept": vc["vcov"].iloc[0],
        "var slope": vc["vcov"].iloc[1],
        "corr intercept-slope": vc["sdcor"].iloc[2],
        "REML criterion": fit.deviance,
    }
pd.DataFrame(rows).T.round(3)

# %%
# With age 0 as origin the intercept-slope correlation is -0.67 and the intercept variance 5.79;
# measured from age 8 the correlation is -0.09 and the variance 3.23; centred at age 11 (the
# middle of the study) the correlation is 0.21. The slope variance (0.033) and the REML
# criterion are identical in all three. We use ``years`` from now on: the intercept is the
# distance at the first visit, and intercept and slope are nearly uncorrelated.
#
# Random intercept or random slope?
# ---------------------------------
#
# The random-intercept model gives each child a parallel line: all children of one sex grow at
# the same rate. The random-slope model lets the growth rates vary too. In lme4:
# ``lmer(distance ~ years * Sex + (1 | Subject), data = long)`` and
# ``lmer(distance ~ years * Sex + (years | Subject), data = long)``.

m_int = mf.lmer("distance ~ years * Sex + (1 | Subject)", data=long).fit()
m_slope = mf.lmer("distance ~ years * Sex + (years | Subject)", data=long).fit()
m_slope

# %%
# The slope SD is 0.18 mm/year, small next to the average growth rate of 0.78 mm/year of the
# boys. The likelihood-ratio test (both models refitted by ML) asks whether the slope variance
# and the intercept-slope correlation are needed:

mlmext.anova(m_int, m_slope)

# %%
# :math:`\chi^2 = 0.83` on 2 df, p = 0.66, and the random-intercept model has the lower AIC:
# the data give no evidence that growth rates differ between children of the same sex (the test
# is conservative because the slope variance is tested at its boundary, zero, but even the
# halved p-value is far from significant). We interpret the random-intercept model, with
# Satterthwaite t tests:

print(m_int.summary(ddf="satterthwaite"))

# %%
# * ``Intercept`` 22.62: mean distance of the boys at age 8;
# * ``Sex[T.Female]`` -1.41: girls are 1.41 mm lower at age 8 (not significant, p = 0.10);
# * ``years`` 0.78: the boys grow 0.78 mm per year;
# * ``years:Sex[T.Female]`` -0.30: the girls grow 0.30 mm per year less, 0.48 mm per year.
#
# The children's levels vary with SD 1.82 mm around their sex's line, the measurements around the
# child's line with SD 1.39 mm: the intraclass correlation is 3.30 / (3.30 + 1.92) = 0.63, so
# two measurements of the same child, after allowing for age and sex, correlate at 0.63.
# ``icc()`` reports this as the "adjusted" ICC; the "conditional" ICC, 0.37, also counts the
# variance explained by the fixed effects (age and sex) in the total.

m_int.icc()

# %%
# Population and subject-specific predictions
# -------------------------------------------
#
# ``predict(re=False)`` gives the population lines (fixed effects only); ``predict()`` adds
# each child's random intercept, which gives the child's own fitted line. Left: observed data
# with the two population lines; right: the subject-specific fitted lines, parallel within each
# sex in this model.

long["pop"] = m_int.predict(re=False)
long["subj"] = m_int.predict()
colors = {"Male": "C0", "Female": "C1"}

fig, axes = plt.subplots(1, 2, figsize=(9, 3.8), sharey=True, constrained_layout=True)
for (sex, child), d in long.groupby(["Sex", "Subject"], observed=True):
    axes[0].plot(d["age"], d["distance"], color=colors[sex], lw=0.6, alpha=0.5)
    axes[1].plot(d["age"], d["subj"], color=colors[sex], lw=0.8, alpha=0.8)
for sex, d in long.groupby("Sex", observed=True):
    line = d.drop_duplicates("age")
    axes[0].plot(line["age"], line["pop"], color=colors[sex], lw=3, label=f"{sex} (population)")
axes[0].set_title("observed, with population lines")
axes[1].set_title("subject-specific fitted lines")
axes[0].legend(fontsize=8)
for ax in axes:
    ax.set_xlabel("age (years)")
axes[0].set_ylabel("distance (mm)")
# sphinx_gallery_thumbnail_number = 2

# %%
# The effect plot draws the same population lines with 95 % confidence bands (``years`` is the
# time since age 8). The bands overlap at age 8 (``years`` = 0), where the sex difference is not
# significant, and separate as the boys' faster growth accumulates.

fig = plots.effects(m_int, "years", by="Sex")

# %%
# The model assumes normally distributed random intercepts. Their normal QQ plot (one point per
# child, the conditional modes) follows the line; the two most extreme children lie a little
# off it, which is unremarkable with 27 points:

fig = plots.qqplot_ranef(m_int)

# %%
# The residuals are less well behaved: the scaled residuals of the summary range from -3.6 to
# 3.7, and the normal QQ plot of the residuals is straight in the middle but has a few points far
# out at both ends. All residuals beyond 2.5 mm in absolute value belong to two boys with the
# irregular trajectories of the first plot: M09 (-3.8 at age 10, +5.1 at age 12) and M13 (-5.0
# at age 8, +2.8 at age 14). Refitting without them, or with a heavier-tailed model, would show
# how much they influence the estimates.

fig = plots.qqplot_resid(m_int)

# %%
# HLMdiag's case-deletion diagnostics measure that influence. ``influence("Subject",
# method="refit")`` refits the model 27 times, each time without one child, and reports Cook's
# distance and MDFFITS (how far the fixed effects move), COVTRACE and COVRATIO (how their
# covariance changes) and the relative change of each variance component (``rvc_...``). M13 has
# the largest Cook's distance, 0.25, the only one beyond HLMdiag's internal cut-off (the upper
# quartile plus three interquartile ranges, 0.14, the red line). M09, whose fixed effects barely
# move, shows up in the variances: without M09 the residual variance falls by a quarter
# (``rvc_sigma2`` = -0.25), without M13 by a fifth; no other child changes it by more than 4 %.

infl = m_int.influence("Subject", method="refit")
print(infl[["cooks_d", "mdffits", "covratio", "rvc_sigma2"]].sort_values("cooks_d").tail())
print(infl["rvc_sigma2"].sort_values().head(3))
fig = plots.influence_plot(infl, "cooks_d")

# %%
# Correlated or uncorrelated random effects: ``sleepstudy``
# ---------------------------------------------------------
#
# In the sleep-deprivation study (Belenky et al. 2003), 18 subjects' reaction times were
# measured on 10 days (day 0 to 9) of sleep restriction. Unlike the dental data, the subjects'
# slopes (how fast their reaction times increase) differ a lot, with an SD of about 6 ms/day
# around an average of 10.5 ms/day, so both models below have random slopes.
# ``(Days | Subject)`` estimates the intercept variance, the slope variance and their
# correlation; ``(Days || Subject)`` is shorthand for ``(1 | Subject) + (0 + Days | Subject)``,
# the same variances with the correlation fixed at zero (lme4:
# ``lmer(Reaction ~ Days + (Days || Subject), data = sleepstudy)``).

sleep = datasets.load("sleepstudy")
m_corr = mf.lmer("Reaction ~ Days + (Days | Subject)", data=sleep).fit()
m_uncorr = mf.lmer("Reaction ~ Days + (Days || Subject)", data=sleep).fit()
print(m_corr.varcorr())
print(m_uncorr.varcorr())

# %%
# The uncorrelated model lists two terms for ``Subject`` (labelled ``Subject`` and
# ``Subject.1``, as in lme4). The estimated correlation in the full model is only 0.07, and the
# variances barely change when it is dropped. The likelihood-ratio test agrees:

mlmext.anova(m_uncorr, m_corr)

# %%
# :math:`\chi^2 = 0.06` on 1 df, p = 0.80: the correlation can be dropped. Unlike a variance, a
# correlation of zero is not on the boundary of its range, so the ordinary :math:`\chi^2_1`
# reference distribution applies. Uncorrelated random effects are most useful when a model with
# a full covariance matrix is too rich for the data; remember that, as the dental example showed,
# the correlation depends on where time is centred, so a zero correlation is only meaningful for
# a time origin chosen with care (here day 0, the start of sleep restriction).
#
# A caterpillar plot of the uncorrelated model shows how differently the subjects react: one
# panel for the intercepts and one for the slopes (the change in reaction time per day, in ms),
# which range from about -11 to +9 ms/day around the average slope of 10.5 ms/day: some
# subjects hardly slow down at all, others lose about 20 ms a day.

fig = plots.caterpillar(m_uncorr)
