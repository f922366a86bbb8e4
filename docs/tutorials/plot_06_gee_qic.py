"""
GEE: choosing the working correlation by QIC
============================================

Generalized estimating equations (GEE) estimate a *population-averaged*
mean model for clustered data without a full likelihood: the mean model
``g(E[y]) = x' beta`` is fitted with a *working correlation* for the
observations of one cluster, and the standard errors come from the robust
(sandwich) estimator, which stays valid even when the working correlation is
wrong. A better working correlation gives more efficient estimates, so it is
still worth choosing well.

Without a likelihood there is no AIC. Pan (2001) proposed the quasi-likelihood
information criterion

.. code-block:: text

    QIC  = -2 Q + 2 trace(Omega_I V_R)
    QICu = -2 Q + 2 p
    CIC  = trace(Omega_I V_R)

where ``Q`` is the quasi-likelihood under independence at the estimates of
the fit, ``V_R`` the robust covariance of those estimates and ``Omega_I`` the
inverse model-based covariance of an independence fit. ``mf.gee_select``
fits one GEE per working correlation on the same rows and tabulates the
three criteria with geepack's conventions (R: ``geepack::geeglm`` and
``geepack::QIC``).
"""

import warnings

import matplotlib.pyplot as plt
import pandas as pd
import statsmodels.api as sm

import mlmext.gee
from mlmext import datasets, plots
from mlmext.formula import api as mf

# %%
# Pig growth: the dietox data
# ---------------------------
#
# 72 pigs were weighed weekly for 12 weeks (``Time`` 1 to 12; three pigs miss
# the last weighing). The pigs were fed one of three doses of copper
# (``Cu``: Cu000, Cu035, Cu175) and of vitamin E. The question is whether
# copper changes the weight; the repeated weighings of a pig are correlated.

dietox = datasets.load("dietox")
print(datasets.SOURCES["dietox"])
print(dietox.head())
print(f"{dietox['Pig'].nunique()} pigs, {len(dietox)} weighings")
print(dietox.groupby("Cu", observed=True)["Pig"].nunique().rename("pigs"))

# %%
# A spaghetti plot, one line per pig, with the mean weight per dose and week:

colors = {"Cu000": "tab:blue", "Cu035": "tab:orange", "Cu175": "tab:green"}
fig, ax = plt.subplots(figsize=(7, 4.5))
for (pig, cu), d in dietox.groupby(["Pig", "Cu"], observed=True):
    ax.plot(d["Time"], d["Weight"], color=colors[cu], alpha=0.25, lw=0.8)
means = dietox.groupby(["Cu", "Time"], observed=True)["Weight"].mean()
for cu, color in colors.items():
    ax.plot(means[cu].index, means[cu].values, color=color, lw=2.5, label=f"{cu} (mean)")
ax.set_xlabel("Time (weeks)")
ax.set_ylabel("Weight (kg)")
ax.set_title("dietox: weight of 72 pigs")
ax.legend()
plt.show()
# sphinx_gallery_thumbnail_number = 1

# %%
# Growth is close to linear, the pigs fan out over time (they grow at
# different rates), and the three copper doses overlap. A pig that is heavy
# in one week is heavy in the next: the correlation within a pig is strong
# and should decline with the distance in time.
#
# Comparing working correlations
# ------------------------------
#
# The mean model is ``Weight ~ Time + Cu`` (Gaussian family, identity link).
# ``gee_select`` fits it with four working correlations: independence,
# exchangeable (one correlation for every pair of weighings), AR(1)
# (correlation ``rho^|lag|``, with lags measured in ``time`` units) and
# unstructured (one correlation per pair of weeks). In R, each row is
# ``geeglm(Weight ~ Time + Cu, id = Pig, data = dietox, corstr = "ar1")``
# followed by ``QIC()``.

sel = mf.gee_select("Weight ~ Time + Cu", groups="Pig", data=dietox,
                    family=sm.families.Gaussian(),
                    cov_structs=["independence", "exchangeable", "ar1", "unstructured"],
                    time="Time")
sel

# %%
# The table behind the summary is ``sel.table``:

sel.table[["QIC", "QICu", "CIC", "dQIC", "working_corr", "converged"]]

# %%
print("best:", sel.best)

# %%
# How to read the table:
#
# * **Unstructured** is flagged: it did not converge in geepack's 25
#   iterations, and its 66 estimated correlations include values above 1, so
#   its working correlation matrix is not positive definite. geepack returns
#   the same estimates; ``gee_select`` keeps the row but never picks it.
# * **Independence** has the lowest QIC, but **exchangeable** is only 0.15
#   higher: the two are tied. **AR(1)** (rho = 0.94 per week) is about 1970
#   higher.
# * QIC is dominated by the ``-2 Q`` term. For a Gaussian response, ``Q`` is
#   minus half the residual sum of squares at the fit's estimates (geepack's
#   convention does not divide it by the scale), and ordinary least squares,
#   the independence fit, minimizes the residual sum of squares by
#   construction. A working correlation therefore wins on QIC only through a
#   smaller penalty ``2 CIC``, and here the penalties differ by a few units
#   while the ``Q`` terms differ by up to 2000.
# * By the penalty alone, CIC (proposed for choosing the working correlation
#   by Hin and Wang, 2009), AR(1) has the smallest value, 26.0 against 29.6
#   and 29.7.
#
# ``plots.qic`` draws the criteria for each structure; the best structure by
# QIC is labelled (in both panels) and flagged ones get hollow markers and
# grey names. On the left QIC and QICu, on the right CIC:

fig, (ax_qic, ax_cic) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
plots.qic(sel, ax=ax_qic)
plots.qic(sel, criteria=("CIC",), ax=ax_cic)
plt.show()

# %%
# The estimates of the independence and exchangeable fits are practically
# the same; AR(1) weights the weighings differently and estimates a lower
# slope:

pd.DataFrame({name: res.params for name, res in sel.results.items()
              if name != "unstructured"}).round(3)

# %%
# Robust and naive standard errors
# --------------------------------
#
# ``sel.results[name]`` is the statsmodels ``GEEResults`` of each fit. Its
# ``bse`` are the robust (sandwich) standard errors; the *naive* ones assume
# that the working correlation is the true one.

best = sel.results[sel.best]
exch = sel.results["exchangeable"]
ses = pd.DataFrame({
    "independence: robust": best.bse,
    "independence: naive": best.standard_errors(cov_type="naive"),
    "exchangeable: robust": exch.bse,
    "exchangeable: naive": exch.standard_errors(cov_type="naive"),
})
ses.round(3)

# %%
# The robust standard errors hardly depend on the working correlation. The
# naive ones do, and each working correlation misses something different:
#
# * Under **independence**, the naive SEs of the copper effects (0.59 and
#   0.60) are well under a half of the robust ones (1.57 and 1.88): copper is
#   constant within a pig, so its information comes from 72 pigs, not from
#   861 weighings.
# * Under **exchangeable**, the naive SE of the ``Time`` slope is 0.033
#   against 0.080 robust. An exchangeable correlation treats every pig's
#   deviation from the mean line as a constant shift, but the spaghetti plot
#   shows pigs growing at different rates, which adds uncertainty to the
#   average slope that only the robust estimator sees.
#
# Use the robust standard errors (statsmodels' default for GEE); the
# comparison with the naive ones shows what the working correlation misses.
#
# Comparing mean models: QICu
# ---------------------------
#
# QICu replaces the trace penalty by ``2 p`` and is meant for comparing
# mean models fitted with the same working correlation. Here: is ``Cu``
# needed?

sel_time = mf.gee_select("Weight ~ Time", groups="Pig", data=dietox,
                         family=sm.families.Gaussian(),
                         cov_structs=["independence", "exchangeable"], time="Time")
sel_cu = mf.gee_select("Weight ~ Time + Cu", groups="Pig", data=dietox,
                       family=sm.families.Gaussian(),
                       cov_structs=["independence", "exchangeable"], time="Time")
mean_models = pd.concat({"Weight ~ Time": sel_time.table, "Weight ~ Time + Cu": sel_cu.table})
mean_models[["QIC", "QICu", "CIC", "QuasiLik", "scale"]].round(2)

# %%
# Adding ``Cu`` lowers QICu by about 1030 with either working correlation,
# which would say "keep copper". But ``Q`` is measured in squared kilograms
# (minus half the residual sum of squares) while the penalty counts
# parameters: with a residual variance of about 50 kg^2, any term that
# reduces the residual sum of squares at all wins. Pan's quasi-likelihood
# is divided by the dispersion. With one common dispersion ``phi`` for both
# models (the scale of the larger independence fit), in ``Q / phi`` and in
# ``Omega_I`` (``qic(res, scale=phi)``), the criteria are:

phi = sel_cu.table.loc["independence", "scale"]
rows = {}
for label, s in [("Weight ~ Time", sel_time), ("Weight ~ Time + Cu", sel_cu)]:
    for name, res in s.results.items():
        q = mlmext.gee.qic(res, scale=phi)
        rows[(label, name)] = {"QICu / common scale": -2 * q["QuasiLik"] / phi + 2 * q["n_params"],
                               "QIC / common scale": -2 * q["QuasiLik"] / phi + 2 * q["CIC"],
                               "CIC": q["CIC"]}
print(f"common scale phi = {phi:.2f}")
pd.DataFrame(rows).T.round(1)

# %%
# On this scale QICu still prefers the model with copper (869 against 886),
# but QIC prefers the one without it (904 against 920). The reason is in the
# penalties. CIC takes the place of ``p``, the number of parameters; adding
# the two copper coefficients raises it by about 19 instead of 2, because the
# robust variances of the copper effects are 7 to 10 times their
# independence-model variances (the SE table above). QICu's ``2 p`` is right
# only when the working correlation is correct; for a covariate that is
# constant within clusters it overstates the evidence. The robust Wald test
# agrees with QIC:

print(best.wald_test("Cu[T.Cu035] = 0, Cu[T.Cu175] = 0", scalar=True))

# %%
# With a chi-squared of 1.77 on 2 df (p = 0.41) there is no evidence that
# copper changes the weight. For a Gaussian response, compare mean models
# with robust Wald tests or with QIC on a common scale, not with the unscaled
# QICu.
#
# statsmodels' own ``qic()``
# --------------------------
#
# statsmodels' ``GEEResults.qic(scale=None)`` returns QIC and QICu as well,
# with different conventions (see its source):
#
# * it divides ``Q`` by the scale, by default the fit's **own** scale
#   estimate, and warns that such values are not for comparing models. For a
#   Gaussian fit ``Q / scale`` is then ``-n / 2`` whatever the fit, so QICu
#   is the same for every structure;
# * its ``Omega`` is ``sum D' D / scale``, evaluated at the fit's own
#   estimates and without the inverse variance function ``A^-1`` of Pan's
#   definition. That makes no difference for the
#   Gaussian family (``A`` is the identity), but it does for binomial and
#   Poisson models, where it can change the ranking;
# * it returns neither CIC nor the quasi-likelihood.

with warnings.catch_warnings():
    warnings.simplefilter("ignore")          # statsmodels warns for scale=None
    sm_own = {name: res.qic() for name, res in sel.results.items()}
sm_common = {name: res.qic(scale=phi) for name, res in sel.results.items()}
pd.DataFrame({
    "statsmodels QIC (own scale)": {k: v[0] for k, v in sm_own.items()},
    "statsmodels QICu (own scale)": {k: v[1] for k, v in sm_own.items()},
    "statsmodels QIC (common scale)": {k: v[0] for k, v in sm_common.items()},
    "mlmext / geepack QIC": sel.table["QIC"],
}).round(2)

# %%
# With each fit's own scale, statsmodels' QICu is 869 for every structure
# and its QIC favours AR(1), whose larger scale estimate and smaller
# robust variances shrink its penalty. With a common scale it equals ``-2 Q / phi + 2 CIC`` and puts
# exchangeable (920.12) narrowly ahead of independence (920.35), the same
# near-tie as ``gee_select`` with the order reversed. ``mlmext.gee.qic``
# computes the geepack-convention values for any statsmodels GEE fit:

mlmext.gee.qic(exch)

# %%
# Summary
# -------
#
# * ``mf.gee_select(formula, groups=..., data=..., family=..., cov_structs=[...],
#   time=...)`` fits every working correlation on the same rows; ``.table``
#   holds QIC, QICu and CIC, ``.best`` the unflagged structure with the
#   lowest QIC, ``.results`` the statsmodels fits.
# * Read the flags: a structure that did not converge or has an impossible
#   correlation is not a candidate.
# * Differences of a fraction of a unit are ties; with a Gaussian response
#   QIC leans towards independence through ``Q``, so look at CIC too.
# * Report robust standard errors; compare mean models with robust Wald
#   tests or QIC on a common scale rather than the unscaled QICu.
#
# Reference: W. Pan (2001), Akaike's information criterion in generalized
# estimating equations, Biometrics 57, 120-125. L.-Y. Hin and Y.-G. Wang
# (2009), Working-correlation-structure identification in generalized
# estimating equations, Statistics in Medicine 28, 642-658.
