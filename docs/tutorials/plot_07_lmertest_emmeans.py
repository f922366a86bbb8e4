"""
Tests of model terms and estimated marginal means
=================================================

A fitted mixed model answers questions one coefficient at a time. Applied questions are often
about whole terms ("does the effect of SES differ between sectors?"), about the random part
("do schools differ in their SES slopes?"), or about predicted means of groups ("how large is
the Catholic-school advantage for a student of low, average or high SES?"). In R these answers
come from lmerTest (``anova``, ``drop1``, ``ranova``), lme4 (``coef``) and emmeans. This
tutorial asks them of one model in mlmext, goes on to influence diagnostics (would the
conclusions change without one school?) and ends with a power analysis by simulation (how
many schools would a new study need?), as R's simr does.
"""

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import statsmodels.formula.api as smf

import mlmext
from mlmext import datasets, plots
from mlmext.formula import api as mf

# %%
# The model
# ---------
#
# The High School and Beyond data hold the math achievement (``mAch``) of 7185 students in 160
# US high schools, public or Catholic (``sector``). ``cses`` is the student's socio-economic
# status centred at the school's mean, ``meanses`` that school mean, and ``sx`` the student's
# sex. We let the effect of SES within a school (``cses``) and the sex gap differ between the
# sectors, and give each school its own intercept and SES slope (lme4:
# ``lmer(mAch ~ sector * (cses + sx) + meanses + (cses | school), data = hsb82)``):

hsb = datasets.load("hsb82")
m = mf.lmer("mAch ~ sector * (cses + sx) + meanses + (cses | school)", data=hsb).fit()

# %%
# Type III F tests: ``anova(m)``
# ------------------------------
#
# ``mlmext.anova`` with a single model gives lmerTest's table: one F test per term, each
# asking whether all the coefficients of that term are zero. Type III tests each term after
# all the others (for a main effect of a factor in an interaction: at the average over the
# other factor's levels, so the result does not depend on the contrasts used). The
# denominator degrees of freedom come from Satterthwaite's approximation: terms that vary
# between schools (``sector``, ``meanses``) get about 150 df, close to the number of schools,
# and the student-level ``sx`` thousands.

mlmext.anova(m)

# %%
# The sector difference in the SES slope (``sector:cses``) is clear, F = 31.7 on 1 and 154 df;
# the sector difference in the sex gap (``sector:sx``) is not, p = 0.77. The Kenward-Roger
# method (pbkrtest; REML fits) also adjusts the covariance of the estimates for the
# uncertainty in the variance components. With 160 schools the two agree closely; with few
# groups Kenward-Roger is the safer choice.

mlmext.anova(m, ddf="kenward-roger")

# %%
# ``type=2`` gives Type II tests and ``type=1`` sequential ones. ``drop1`` tests only the terms
# that could be removed without breaking the hierarchy of the model (no term contains them):
# here ``meanses`` and the two interactions, not ``sector`` or ``cses``.

mlmext.drop1(m)

# %%
# The random part: ``ranova``
# ---------------------------
#
# ``ranova`` refits the model without each random-effect term and compares likelihoods. A
# term with a slope is reduced to its intercept, so the row ``cses in (cses | school)`` tests
# the slope variance together with its correlation with the intercept (2 df). REML fits are
# compared by their REML likelihoods, since the fixed effects stay the same.

mlmext.ranova(m)

# %%
# p = 0.27: once the sector difference in slopes is in the model, the remaining variation of
# the SES slope between schools is small and not significant. (The test is conservative,
# because a variance of zero lies on the boundary of its range; the tutorial
# :ref:`sphx_glr_auto_tutorials_plot_08_robust_bootstrap_cv.py` gets a p-value by simulation
# instead.)
#
# Is a mixed model needed at all? R's ``anova(lmer_fit, lm_fit)`` compares with the same
# regression without random effects; mlmext accepts statsmodels' OLS (and GLM) fits in the
# same way. The REML fit is refitted by ML first, and the three extra parameters of the mixed
# model are the intercept and slope variances and their covariance:

ols = smf.ols("mAch ~ sector * (cses + sx) + meanses", data=hsb).fit()
mlmext.anova(m, ols)

# %%
# :math:`\chi^2 = 190` on 3 df: schools differ far beyond what the fixed effects explain, and
# OLS standard errors, which treat the 7185 students as independent, would be too small.
#
# Coefficients per school and their correlations
# ----------------------------------------------
#
# ``coef()`` is lme4's ``coef``: for each grouping factor, one row per level with the fixed
# effects plus that level's conditional modes. Only ``Intercept`` and ``cses`` vary between
# schools here; the other columns repeat the fixed effects. (A school's own SES slope also
# depends on its sector: add ``sector[T.Catholic]:cses`` for Catholic schools.)

coefs = m.coef()["school"]
coefs[["Intercept", "cses"]].describe().round(2)

# %%
# ``summary(correlation=True)`` appends lme4's correlation matrix of the fixed-effect
# estimates (abbreviated names, as lme4 prints them). Large correlations show which estimates
# trade off against each other: ``sector[T.Catholic]`` with the intercept (-0.68), because
# with treatment contrasts the Catholic mean is the intercept plus this coefficient, and the
# two ``sx`` terms (-0.61) for the same reason. ``res.corr_fe`` holds the matrix as a
# DataFrame.

print(m.summary(correlation=True))

# %%
# Estimated marginal means: ``emmeans``
# -------------------------------------
#
# With an interaction, the coefficient ``sector[T.Catholic]`` is the sector difference for a
# male student at his school's mean SES (``cses`` = 0) and ``meanses`` = 0: a single point of
# a surface. Estimated marginal means (R's emmeans) predict the mean on a *reference grid*:
# every level of each factor, numeric covariates at their means unless ``at=`` gives values,
# and then average with equal weights over the factors not asked for (here ``sx``). With
# ``by=`` the means and their contrasts are made within each value of another variable. We
# ask for the sector means at one SD of ``cses`` (about 0.66) below and above the school mean,
# rounded to -1, 0 and 1:

emm = m.emmeans("sector", by="cses", at={"cses": [-1, 0, 1]})
emm

# %%
# The df and the SEs are Kenward-Roger's by default (as emmeans uses with pbkrtest);
# ``ddf="satterthwaite"`` gives lmerTest's. ``pairs()`` gives the differences within each
# ``by`` group:

emm.pairs()

# %%
# Catholic schools have an advantage of 2.6 points for students one unit of SES below their
# school's mean, 1.3 at the mean, and none above it: the SES gradient within Catholic schools
# is flatter, as the ``sector:cses`` test said. ``emm.plot()`` draws the means with their 95 %
# confidence intervals:

fig = emm.plot()
# sphinx_gallery_thumbnail_number = 1

# %%
# When a family has more than two means, p-values of all pairwise differences need a
# multiplicity adjustment. ``adjust="tukey"`` (the default) uses the studentized range
# distribution for the family, ``"holm"``, ``"bonferroni"`` and ``"sidak"`` are also
# available. The four sector-by-sex cells, at the average SES, give six comparisons:

cells = m.emmeans(["sector", "sx"])
cells.pairs(adjust="tukey")

# %%
# Boys in Catholic schools score highest, girls in public schools lowest. Girls in Catholic
# schools and boys in public schools do not differ (adjusted p = 0.99): the sector advantage
# (about 1.3 points) and the sex gap (about 1.2) are of the same size. The same call works
# for GLMMs (``type="response"`` gives probabilities, odds ratios or rate ratios) and for
# ordinal ``clmm`` fits.
#
# The sector means above average over ``sx`` with equal weights (emmeans' default): the mean
# of a population half boys, half girls. ``weights="proportional"`` weights the cells by
# their numbers of students instead (``"cells"``, ``"outer"`` and ``"flat"`` are emmeans'
# other schemes):

m.emmeans("sector", weights="proportional")

# %%
# Variance explained: R² for multilevel models
# --------------------------------------------
#
# Rights and Sterba's decomposition (R's r2mlm) splits the outcome's variance into what the
# fixed effects explain within schools (``f1``) and between them (``f2``), what the random
# slopes (``v``) and intercepts (``m``) add, and the residual. It needs the level-1
# predictors centred at their school means, as ``cses`` is (``sx`` is not: with it only the
# total measures are given), so we fit the model with ``cses`` and ``meanses``:

m_rs = mf.lmer("mAch ~ cses + meanses + (cses | school)", data=hsb).fit()
m_rs.r2(method="rights-sterba")

# %%
# School mean SES explains 69 % of the variance between schools (``f2``, between), SES within
# a school 5 % of the variance within them. MuMIn's likelihood-ratio R²
# (``method="lr"``) and mitml's RB1/RB2/SB/MVP (``method="mitml"``) are the other common
# summaries; ``r2()`` alone gives Nakagawa's marginal and conditional R².

m.r2(method="mitml")

# %%
# Influence: would one school change the answer?
# ----------------------------------------------
#
# ``influence("school")`` gives HLMdiag's group-deletion diagnostics for every school: how far
# the fixed effects move when the school is left out (Cook's distance and MDFFITS, in units of
# their covariance), and how much the precision changes (COVTRACE, COVRATIO). The default
# one-step method keeps the variance components at their estimates, which takes a fraction of
# a second for 160 schools; ``method="refit"`` refits the model 160 times and adds the
# relative change of each variance component.

infl = m.influence("school")
infl[["cooks_d", "mdffits", "covtrace", "covratio"]].sort_values("cooks_d").tail()

# %%
# Look at the dot plot first: the schools sorted by Cook's distance, with HLMdiag's internal
# cut-off (upper quartile plus three interquartile ranges). The schools beyond it (red
# triangles) move the fixed effects more than the bulk of the schools do. What matters is not
# that some school is flagged (with 160 schools a few always are), but whether leaving it out
# changes a conclusion:

fig = plots.influence_plot(infl, "cooks_d")

# %%
# One school, 3427, lies beyond the line, and only just. The columns named after the fixed
# effects hold the change β̂ - β̂(-school). Divided by the standard errors, they show what
# leaving out this school (or the next two) does: no coefficient moves by more than a third of
# its standard error, and the SES slope and ``meanses`` by less than a tenth. No single school
# drives the conclusions.

changes = infl[m.fe_params.index].div(m.bse_fe)
changes.loc[infl["cooks_d"].nlargest(3).index].round(2)

# %%
# ``leverage("school")`` shows which schools *could* be influential because of their place in
# the design (HLMdiag's leverage, averaged over the school's students): ``fixef`` for the
# fixed part, ``ranef`` for the random part. Influence needs leverage and an unusual response
# together. Here the highest fixed-part leverage belongs to schools whose mean SES is far from
# the average; the random-part leverage is highest in the smallest schools (14 to 22
# students), where each student weighs more in the school's conditional mode.

schools = hsb.groupby("school", observed=True).agg(students=("mAch", "size"),
                                                     school_ses=("meanses", "first"))
lev = m.leverage("school").join(schools)
lev.sort_values("fixef").tail()

# %%
# Power: how many schools would a new study need?
# -----------------------------------------------
#
# Suppose we plan a new study of the sector difference in the SES slope, with 20 students per
# school. simr's workflow (``makeLmer``, ``powerSim``, ``powerCurve``, ``extend``) is in
# ``mlmext.power``: ``make_lmer`` builds a model with given fixed effects and variance
# components on a planned design, and ``power_sim`` simulates responses from it, refits the
# model to each and counts how often the test rejects. We take the parameters from a fit of
# the smaller model to the survey and plan 30 schools, half of them Catholic:

m2 = mf.lmer("mAch ~ sector * cses + (cses | school)", data=hsb).fit()
rng = np.random.default_rng(1)
design = pd.DataFrame({"school": np.repeat([f"s{i}" for i in range(30)], 20),
                       "sector": np.repeat(["Public", "Catholic"] * 15, 20),
                       "cses": rng.normal(0, 0.65, 600)})
design["sector"] = pd.Categorical(design["sector"], categories=["Public", "Catholic"])
plan = mlmext.make_lmer("mAch ~ sector * cses + (cses | school)", design,
                        fixef=m2.fe_params, theta=m2.theta, sigma=m2.sigma, seed=2)
plan.varcorr()[["vcov", "sdcor"]].round(3)

# %%
# The Satterthwaite t test of ``sector[T.Catholic]:cses`` is made on each simulated data set.
# Only 20 simulations keep this page fast, hence the wide interval (Clopper-Pearson's, as
# simr's); a real plan uses 500 or more, and ``progress=True`` shows a bar on long runs:

plan.power_sim("sector[T.Catholic]:cses", nsim=20, seed=3)

# %%
# With 30 schools the interaction is found in about 40 % of the simulated studies (the
# interval is wide: 19 % to 64 %). ``power_curve`` repeats the simulation on the first 10, 20
# and 30 schools (``along=``; ``within=`` varies the students per school instead). Its
# ``warned`` column counts the simulations whose refit or test warned (say, a refit that
# stopped short of its minimum), as simr counts warnings: their p-values are kept, and
# ``power_sim(...).warning_messages`` lists the messages.

curve = mlmext.power_curve(plan, "sector[T.Catholic]:cses", along="school",
                           breaks=[10, 20, 30], nsim=20, seed=4)
fig = curve.plot()
curve[["break", "nobs", "power", "lower", "upper", "warned"]]

# %%
# ``extend`` adds schools beyond the design (copies of the rows of its schools, in turn), at
# the same parameters. With three times as many schools:

big = mlmext.extend(plan, along="school", n=90, seed=5)
big.power_sim("sector[T.Catholic]:cses", nsim=20, seed=6)

# %%
# About 75 % (51 % to 91 %): a study that wants 80 % power needs at least 90 schools of 20
# students, and more simulations to pin the number down.
