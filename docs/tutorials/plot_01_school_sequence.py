"""
The school sequence
===================

Raudenbush and Bryk's *Hierarchical Linear Models* (2002, chapter 4) introduces multilevel
modelling with a sequence of models for the High School and Beyond data: math achievement of
7185 students in 160 US high schools. Each model adds one idea to the previous one:

1. a **null model** (one-way random-effects ANOVA) that splits the variance into a between-school
   and a within-school part, summarised by the intraclass correlation;
2. a **level-1 predictor**, student socio-economic status (SES), centred at each school's mean;
3. a **random slope**, letting the SES-achievement relation differ between schools;
4. **level-2 predictors**, school characteristics that explain why school means differ;
5. **cross-level interactions**, school characteristics that explain why the SES slopes differ.

Every model is fitted with ``mlmext.formula.api.lmer``, which reads lme4's formula syntax, and
by REML unless said otherwise. Each section gives the lme4 call that fits the same model in R.
"""

import numpy as np
import pandas as pd
from scipy import stats

import mlmext
from mlmext import datasets, plots
from mlmext.formula import api as mf

# %%
# The data
# --------
#
# ``hsb82`` has one row per student. ``mAch`` is the math achievement score, ``ses`` the
# student's SES (a standardised composite), ``meanses`` the mean SES of the student's school,
# ``cses = ses - meanses`` the student's SES relative to the school, and ``sector`` whether the
# school is Public or Catholic.

df = datasets.load("hsb82")
df.head()

# %%
# Schools contribute between 14 and 67 students (45 on average); 90 schools are public and 70
# Catholic.

per_school = df.groupby("school", observed=True)
print(per_school.size().describe().round(1))
print(per_school["sector"].first().value_counts())

# %%
# (a) The null model and the intraclass correlation
# -------------------------------------------------
#
# The simplest multilevel model has no predictors. Student *i* in school *j* scores
#
# .. math::
#
#    \text{mAch}_{ij} = \gamma_{00} + u_{0j} + e_{ij}, \qquad
#    u_{0j} \sim N(0, \tau_{00}), \quad e_{ij} \sim N(0, \sigma^2):
#
# a grand mean, a school effect and a student-level residual. In the formula, ``1`` is the fixed
# intercept and ``(1 | school)`` a random intercept for each school (lme4:
# ``lmer(mAch ~ 1 + (1 | school), data = hsb82)``).

m_a = mf.lmer("mAch ~ 1 + (1 | school)", data=df).fit()
m_a

# %%
# How to read the summary: the top block describes the fit (REML criterion, AIC, BIC, number of
# students and schools). "Random effects" lists the variance components: the variance of the
# school intercepts, :math:`\hat\tau_{00} = 8.61` (standard deviation 2.93), and the residual
# variance within schools, :math:`\hat\sigma^2 = 39.15` (SD 6.26). The last table holds the
# fixed effects: the grand mean is 12.64 (SE 0.24).
#
# ``varcorr()`` returns the same components as a data frame (lme4's
# ``as.data.frame(VarCorr(fit))``), from which the intraclass correlation (ICC) is one line:

vc = m_a.varcorr()
print(vc)
tau00 = vc.loc[vc.grp == "school", "vcov"].item()
sigma2 = vc.loc[vc.grp == "Residual", "vcov"].item()
print(f"ICC = {tau00:.3f} / ({tau00:.3f} + {sigma2:.3f}) = {tau00 / (tau00 + sigma2):.3f}")

# %%
# The ICC is 0.18: 18 % of the variance in math achievement lies between schools. It is also the
# correlation between the scores of two students from the same school. ``icc()`` computes it as
# the ``performance`` package does; with no fixed effects apart from the intercept the
# "adjusted" and "conditional" versions are the same number.

m_a.icc()

# %%
# (b) A level-1 predictor, centred at the school mean
# ---------------------------------------------------
#
# Next, student SES enters as a predictor. We use ``cses``, SES centred at the school mean
# (group-mean centring). Its mean is exactly zero within every school, so:
#
# * the coefficient of ``cses`` is a purely *within-school* effect: how much higher a student
#   scores than a schoolmate with one unit lower SES. With raw ``ses`` the coefficient would mix
#   this with the between-school relation (richer schools score higher), which is a different
#   quantity;
# * the intercept of school *j* is the expected score of a student with the average SES of that
#   school, so the school intercepts remain school means.

print(np.abs(df["ses"] - df["meanses"] - df["cses"]).max())    # cses = ses - meanses
print(per_school["cses"].mean().abs().max())                    # zero mean in every school

# %%
# The model keeps a random intercept and gives ``cses`` a fixed slope (lme4:
# ``lmer(mAch ~ cses + (1 | school), data = hsb82)``).

m_b = mf.lmer("mAch ~ cses + (1 | school)", data=df).fit()
m_b

# %%
# Within a school, one unit of SES goes with 2.19 more points of math achievement (SE 0.11).
# The residual variance falls from 39.15 to 37.01, so ``cses`` explains about 5 % of the
# within-school variance. The school variance does not fall (8.61 to 8.67): a predictor whose
# school means are all zero cannot explain differences between schools.
#
# (c) A random slope
# ------------------
#
# Does the SES slope differ between schools? ``(cses | school)`` (short for
# ``(1 + cses | school)``) gives each school its own intercept *and* slope, with variances
# :math:`\tau_{00}`, :math:`\tau_{11}` and a correlation between them (lme4:
# ``lmer(mAch ~ cses + (cses | school), data = hsb82)``).

m_c = mf.lmer("mAch ~ cses + (cses | school)", data=df).fit()
m_c

# %%
# The school slopes vary around the average slope 2.19 with variance
# :math:`\hat\tau_{11} = 0.69` (SD 0.83): in a school one SD above average the slope is about
# 2.19 + 0.83 = 3.0, one SD below about 1.4. Slopes and intercepts are nearly uncorrelated
# (0.02).
#
# The likelihood-ratio test compares (b) and (c). ``mlmext.anova`` refits both REML fits by
# maximum likelihood first, as lme4's ``anova`` does, and tests the two extra parameters (slope
# variance and correlation):

lrt = mlmext.anova(m_b, m_c)
lrt

# %%
# :math:`\chi^2 = 9.43` on 2 df, p = 0.009: the slopes do differ between schools. A caveat: under
# the null hypothesis the slope variance is zero, on the boundary of its parameter space, and then
# the :math:`\chi^2_2` reference distribution is conservative. The usual correction refers the
# statistic to a 50:50 mixture of :math:`\chi^2_1` and :math:`\chi^2_2`, which here roughly halves
# the p-value:

chisq = lrt["Chisq"].iloc[1]
p_mix = 0.5 * stats.chi2.sf(chisq, 1) + 0.5 * stats.chi2.sf(chisq, 2)
print(f"chi2 = {chisq:.2f}, p (chi2_2) = {stats.chi2.sf(chisq, 2):.4f}, p (mixture) = {p_mix:.4f}")

# %%
# The conditional modes of the school effects (lme4's ``ranef``) with their 95 % prediction
# intervals form a caterpillar plot, one panel per random effect, schools sorted by their
# estimate. The intervals of 88 of the 160 school intercepts exclude zero, but only one of the
# 160 slope intervals does: with about 45 students a school, a single school's slope is estimated
# with little precision, even though the slopes clearly vary as a whole.

fig = plots.caterpillar(m_c, figsize=(8, 14))

# %%
# (d) Level-2 predictors
# ----------------------
#
# Why do some schools score higher? Two school characteristics enter the fixed part: the school's
# mean SES ``meanses`` and ``sector`` (the reference level is Public, the first level of the
# categorical, as in R). In lme4:
# ``lmer(mAch ~ cses + meanses + sector + (cses | school), data = hsb82)``.

m_d = mf.lmer("mAch ~ cses + meanses + sector + (cses | school)", data=df).fit()
m_d.fe_params.round(3)

# %%
# A school one unit higher in mean SES scores 5.2 points higher, and a Catholic school 1.4 points
# higher than a public school of the same mean SES. Together they take the intercept variance from
# 8.68 to 2.39, so they account for about 72 % of the differences between school means. The slope
# variance is untouched (0.69 to 0.70): these terms only shift the school intercepts.

print(m_d.varcorr())
tau00_c = m_c.varcorr()["vcov"].iloc[0]
tau00_d = m_d.varcorr()["vcov"].iloc[0]
print(f"intercept variance explained by meanses and sector: {1 - tau00_d / tau00_c:.1%}")

# %%
# (e) Cross-level interactions
# ----------------------------
#
# To explain the *slopes*, the school characteristics interact with ``cses``. In patsy (and R),
# ``cses * (meanses + sector)`` expands to the main effects of ``cses``, ``meanses`` and
# ``sector`` and the two interactions ``cses:meanses`` and ``cses:sector``, so the school slope is
# modelled as
#
# .. math::
#
#    \beta_{1j} = \gamma_{10} + \gamma_{11}\,\text{meanses}_j
#                 + \gamma_{12}\,\text{Catholic}_j + u_{1j}.
#
# This is Raudenbush and Bryk's final model (lme4:
# ``lmer(mAch ~ cses * (meanses + sector) + (cses | school), data = hsb82)``). As lmerTest's
# summary, it shows t tests with Satterthwaite degrees of freedom (the default for LMMs;
# ``fit(ddf="z")`` gives z tests).

m_e = mf.lmer("mAch ~ cses * (meanses + sector) + (cses | school)", data=df).fit()
print(m_e.summary())

# %%
# Reading the fixed effects:
#
# * ``Intercept`` 12.13: expected score of a student of average SES for the school, in a public
#   school of average mean SES (``meanses`` 0);
# * ``cses`` 2.95: the within-school SES slope in such a public school;
# * ``cses:sector[T.Catholic]`` -1.64: the slope is 1.64 points flatter in Catholic schools
#   (2.95 - 1.64 = 1.30), so achievement depends less on a student's SES there;
# * ``cses:meanses`` 1.04: the slope is steeper in schools of higher mean SES;
# * ``meanses`` 5.33 and ``sector[T.Catholic]`` 1.23: the level-2 effects on school means, as
#   in (d).
#
# The Satterthwaite df are between about 140 and 161, close to the 160 schools and far from the
# 7185 students: every coefficient here is estimated from school-level information. The slope
# variance falls from 0.70 to 0.10 (the intercept variance stays at 2.38): the two school
# characteristics explain about 86 % of the slope variance of model (d).

df_satt = m_e.df_satterthwaite()
print(df_satt.round(1))
tau11_d = m_d.varcorr()["vcov"].iloc[1]
tau11_e = m_e.varcorr()["vcov"].iloc[1]
print(f"slope variance explained by the cross-level interactions: {1 - tau11_e / tau11_d:.1%}")

# %%
# The SES slope in Catholic schools is a sum of two coefficients, ``cses`` +
# ``cses:sector[T.Catholic]``. ``t_test`` estimates such a linear combination with its standard
# error, here with Satterthwaite df (lmerTest's ``contest``):

print(m_e.t_test("cses + cses:sector[T.Catholic] = 0", df="satterthwaite"))

# %%
# In Catholic schools of average mean SES, one unit of SES goes with 1.30 more points (95 % CI
# 0.96 to 1.64): the relation is clearly positive there too, but less than half as steep as in
# public schools.
#
# Is there slope variance left? Dropping the random slope from (e) and testing with ``anova``
# (again: p-values from :math:`\chi^2_2` for a variance on the boundary are conservative):

m_e0 = mf.lmer("mAch ~ cses * (meanses + sector) + (1 | school)", data=df).fit()
lrt_e = mlmext.anova(m_e0, m_e)
lrt_e

# %%
# :math:`\chi^2 = 1.0` on 2 df, p = 0.61: the remaining slope variance is small and not significant. Once
# mean SES and sector are known, the schools' SES slopes differ little.
#
# The effect plot shows the cross-level interaction: predicted achievement against ``cses`` in
# the two sectors (fixed effects only, ``meanses`` held at its mean of about 0), with 95 %
# confidence bands. The Catholic line is much flatter. Students with low SES for their school
# are predicted to do clearly better in Catholic schools; the gap shrinks as SES rises, and the
# lines cross near
# ``cses`` = 0.75 (1.23 - 1.64 ``cses`` = 0), above which the fitted public-school scores are the
# higher ones.

fig = plots.effects(m_e, "cses", by="sector")
# sphinx_gallery_thumbnail_number = 2

# %%
# Residuals against fitted values (fitted values include the school effects) should show no
# pattern; the lowess line stays within about one point of zero. The straight diagonal edges of
# the cloud come from the bounded score scale (``mAch`` runs from -2.8 to 25.0): a residual
# cannot exceed 25 minus the fitted value, so high fitted values cannot have large positive
# residuals, and low fitted values cannot have large negative ones.

fig = plots.resid_fitted(m_e)

# %%
# The sequence at a glance
# ------------------------
#
# The variance components across the sequence (REML estimates): how much each step explains at
# which level.


def components(res):
    vc = res.varcorr()
    slope = vc[(vc.grp == "school") & (vc.var1 == "cses") & vc.var2.isna()]
    corr = vc[(vc.grp == "school") & (vc.var2 == "cses")]
    return {
        "tau00 (intercept)": vc.loc[(vc.grp == "school") & (vc.var1 == "Intercept")
                                    & vc.var2.isna(), "vcov"].item(),
        "tau11 (cses slope)": slope["vcov"].item() if len(slope) else np.nan,
        "corr": corr["sdcor"].item() if len(corr) else np.nan,
        "sigma2 (residual)": vc.loc[vc.grp == "Residual", "vcov"].item(),
    }


sequence = {
    "(a) null": m_a,
    "(b) + cses": m_b,
    "(c) + random slope": m_c,
    "(d) + meanses, sector": m_d,
    "(e) + cross-level": m_e,
}
table = pd.DataFrame({name: components(res) for name, res in sequence.items()}).T
table.round(3)

# %%
# The pattern is the textbook one: the level-1 predictor reduces only the residual variance, the
# level-2 predictors only the intercept variance, and the cross-level interactions only the slope
# variance.
#
# Finally, the share of variance explained by the fixed effects and by fixed plus random effects
# (Nakagawa and Schielzeth's marginal and conditional R²) of the final model:

m_e.r2()

# %%
# The fixed effects account for 18 % of the variance in math achievement (marginal R² 0.18); with
# the school effects added, the model accounts for 23 % (conditional R² 0.23). Most of the
# variation is between students of the same school and remains unexplained by SES and the two
# school characteristics.
