"""mlmext.plots: what each plot draws, checked against the fitted values."""
import importlib
import sys
import types

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from scipy import stats
from scipy.special import expit

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from mlmext import datasets, plots  # noqa: E402
from mlmext.formula import api as mf  # noqa: E402

Z95 = stats.norm.ppf(0.975)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def sleep():
    return mf.lmer("Reaction ~ Days + (Days | Subject)", datasets.load("sleepstudy")).fit()


@pytest.fixture(scope="module")
def cbpp():
    return mf.glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", datasets.load("cbpp"),
                    family=sm.families.Binomial()).fit()


@pytest.fixture(scope="module")
def wine():
    return mf.clmm("rating ~ temp + contact + (1 | judge)", datasets.load("wine")).fit()


def band_limits(coll, x):
    """(lower, upper) of a fill_between band at the grid value x."""
    v = coll.get_paths()[0].vertices
    y = v[np.isclose(v[:, 0], x), 1]
    return y.min(), y.max()


def delta_bounds(res, X):
    """Hand-computed delta-method bounds of X beta."""
    eta = X @ res.fe_params.to_numpy()
    se = np.sqrt(np.diag(X @ np.asarray(res.cov_params()) @ X.T))
    return eta, eta - Z95 * se, eta + Z95 * se


# ------------------------------------------------------------------ matplotlib missing
def test_missing_matplotlib_raises_helpful_import_error(monkeypatch, sleep):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    for name in [m for m in sys.modules if m.startswith("mlmext.plots")]:
        monkeypatch.delitem(sys.modules, name)    # importing the package itself needs no matplotlib
    mod = importlib.import_module("mlmext.plots")
    with pytest.raises(ImportError, match=r"pip install 'mlmext\[plots\]'"):
        importlib.import_module("mlmext.plots._common")._pyplot()
    with pytest.raises(ImportError, match="needs matplotlib"):
        mod.caterpillar(sleep)


# ------------------------------------------------------------------ caterpillar
def test_caterpillar_sleepstudy_modes_intervals_and_labels(sleep):
    fig = plots.caterpillar(sleep)
    re = sleep.ranef(condvar=True)["Subject"]
    sd = re.attrs["condsd"]
    order = np.argsort(re["Intercept"].to_numpy(), kind="stable")
    assert len(fig.axes) == 2
    assert [ax.get_title() for ax in fig.axes] == ["Subject: (Intercept)", "Subject: Days"]
    for ax, col in zip(fig.axes, ["Intercept", "Days"]):
        cont = ax.containers[0]
        pts = cont.lines[0]
        mode = re[col].to_numpy()[order]
        assert len(pts.get_xdata()) == 18
        np.testing.assert_allclose(pts.get_xdata(), mode)
        np.testing.assert_allclose(pts.get_ydata(), np.arange(18))
        seg = np.array(cont.lines[2][0].get_segments())
        np.testing.assert_allclose(seg[:, 0, 0], mode - Z95 * sd[col].to_numpy()[order])
        np.testing.assert_allclose(seg[:, 1, 0], mode + Z95 * sd[col].to_numpy()[order])
        assert any(list(line.get_xdata()) == [0, 0] for line in ax.lines)   # the zero line
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels == [str(s) for s in re.index[order]]
    assert np.all(np.diff(fig.axes[0].containers[0].lines[0].get_xdata()) >= 0)


def test_caterpillar_group_level_sort_and_unknown_group(sleep):
    fig = plots.caterpillar(sleep, group="Subject", level=0.5, sort=False)
    re = sleep.ranef(condvar=True)["Subject"]
    seg = np.array(fig.axes[0].containers[0].lines[2][0].get_segments())
    np.testing.assert_allclose(seg[:, 1, 0] - seg[:, 0, 0],
                               2 * stats.norm.ppf(0.75) * re.attrs["condsd"]["Intercept"])
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == list(re.index)
    with pytest.raises(ValueError, match="Subject"):
        plots.caterpillar(sleep, group="Days")


@pytest.mark.parametrize("name", ["cbpp", "wine"])
def test_caterpillar_glmm_and_clmm(name, request):
    res = request.getfixturevalue(name)
    (factor, re), = res.ranef(condvar=True).items()
    fig = plots.caterpillar(res)
    assert len(fig.axes) == 1 and fig.axes[0].get_title() == f"{factor}: (Intercept)"
    pts = fig.axes[0].containers[0].lines[0]
    np.testing.assert_allclose(pts.get_xdata(), np.sort(re["Intercept"].to_numpy()))


# ------------------------------------------------------------------ residuals
def test_resid_fitted_lmm_points_smoother_and_ax(sleep):
    fig, ax = plt.subplots()
    out = plots.resid_fitted(sleep, ax=ax)
    assert out is fig
    off = ax.collections[0].get_offsets()
    np.testing.assert_allclose(off[:, 0], sleep.fittedvalues)
    np.testing.assert_allclose(off[:, 1], sleep.resid)
    assert ax.get_ylabel() == "Residuals" and ax.get_xlabel() == "Fitted values"
    assert len(ax.lines) == 2               # zero line + lowess
    assert len(plots.resid_fitted(sleep, lowess=False).axes[0].lines) == 1


def test_resid_fitted_glmm_uses_pearson_residuals(cbpp):
    ax = plots.resid_fitted(cbpp).axes[0]
    off = ax.collections[0].get_offsets()
    np.testing.assert_allclose(off[:, 0], cbpp.fittedvalues)
    np.testing.assert_allclose(off[:, 1], cbpp.resid_pearson)
    assert ax.get_ylabel() == "Pearson residuals"


def test_resid_plots_not_for_clmm(wine):
    with pytest.raises(NotImplementedError):
        plots.resid_fitted(wine)


def test_qqplot_resid_points_and_quartile_line(sleep):
    ax = plots.qqplot_resid(sleep).axes[0]
    pts = ax.lines[0]
    n = len(sleep.resid)
    np.testing.assert_allclose(pts.get_ydata(), np.sort(sleep.resid))
    np.testing.assert_allclose(pts.get_xdata(), stats.norm.ppf((np.arange(1, n + 1) - 0.5) / n))
    q1, q3 = np.quantile(sleep.resid, [0.25, 0.75])
    ref = ax.lines[1]                       # the qqline passes through the quartiles
    z1, z3 = stats.norm.ppf([0.25, 0.75])
    assert ref.get_xy1() == pytest.approx((z1, q1))
    assert ref.get_slope() == pytest.approx((q3 - q1) / (z3 - z1))


def test_qqplot_ranef_one_panel_per_term(sleep):
    fig = plots.qqplot_ranef(sleep)
    re = sleep.ranef()["Subject"]
    assert [ax.get_title() for ax in fig.axes] == ["Subject: (Intercept)", "Subject: Days"]
    for ax, col in zip(fig.axes, re.columns):
        np.testing.assert_allclose(ax.lines[0].get_ydata(), np.sort(re[col]))
        np.testing.assert_allclose(ax.lines[0].get_xdata(),
                                   stats.norm.ppf((np.arange(1, 19) - 0.5) / 18))


# ------------------------------------------------------------------ effects
def test_effects_lmm_line_and_delta_method_band(sleep):
    ax = plots.effects(sleep, "Days", n=10).axes[0]
    line = ax.lines[0]
    x = np.linspace(0, 9, 10)
    np.testing.assert_allclose(line.get_xdata(), x)
    X = np.column_stack([np.ones_like(x), x])
    fit, lo, hi = delta_bounds(sleep, X)
    np.testing.assert_allclose(line.get_ydata(), fit)
    np.testing.assert_allclose(line.get_ydata(), sleep.predict(data=pd.DataFrame(
        {"Days": x, "Subject": "308"}), re=False))
    band = ax.collections[0]
    for i in (0, 4, 9):
        np.testing.assert_allclose(band_limits(band, x[i]), (lo[i], hi[i]))
    assert ax.get_xlabel() == "Days" and ax.get_ylabel() == "Reaction"
    # population-level: data without the grouping column give the same line
    data = sleep.model.formula_info["data"][["Reaction", "Days"]]
    line2 = plots.effects(sleep, "Days", n=10, data=data).axes[0].lines[0]
    np.testing.assert_allclose(line2.get_ydata(), fit)


def test_effects_uses_the_formula_for_transformed_terms():
    res = mf.lmer("Reaction ~ Days + I(Days**2) + (1 | Subject)", datasets.load("sleepstudy")).fit()
    line = plots.effects(res, "Days", n=7).axes[0].lines[0]
    x = line.get_xdata()
    b = res.fe_params.to_numpy()
    np.testing.assert_allclose(line.get_ydata(), b[0] + b[1] * x + b[2] * x ** 2)


def test_effects_binomial_glmm_categorical_focal(cbpp):
    ax = plots.effects(cbpp, "period").axes[0]
    cont = ax.containers[0]
    X = np.column_stack([np.ones(4), np.vstack([np.zeros(3), np.eye(3)])])
    eta, lo, hi = delta_bounds(cbpp, X)
    y = cont.lines[0].get_ydata()
    np.testing.assert_allclose(y, expit(eta))
    assert np.all((y > 0) & (y < 1))
    seg = np.array(cont.lines[2][0].get_segments())
    np.testing.assert_allclose(seg[:, 0, 1], expit(lo))
    np.testing.assert_allclose(seg[:, 1, 1], expit(hi))
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "3", "4"]
    assert ax.get_ylabel() == "Predicted probability"
    link = plots.effects(cbpp, "period", scale="link").axes[0]
    np.testing.assert_allclose(link.containers[0].lines[0].get_ydata(), eta)


def test_effects_interaction_two_lines_inside_their_bands():
    res = mf.lmer("mAch ~ cses * sector + (cses | school)", datasets.load("hsb82")).fit()
    ax = plots.effects(res, "cses", by="sector", n=20).axes[0]
    assert len(ax.lines) == 2 and len(ax.collections) == 2
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["sector = Public", "sector = Catholic"]
    b = res.fe_params
    slopes = [b["cses"], b["cses"] + b["cses:sector[T.Catholic]"]]
    for line, band, slope in zip(ax.lines, ax.collections, slopes):
        x, y = line.get_xdata(), line.get_ydata()
        np.testing.assert_allclose(np.diff(y) / np.diff(x), slope)
        for xi, yi in zip(x, y):
            lo, hi = band_limits(band, xi)
            assert lo < yi < hi
    # a numeric `by` is drawn at its 10/50/90 % quantiles
    ax = plots.effects(res, "sector", by="cses").axes[0]
    q = np.quantile(res.model.formula_info["data"]["cses"], [0.1, 0.5, 0.9])
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [f"cses = {v:.3g}" for v in q]
    # chosen values of `by`: numbers, or some of its levels
    ax = plots.effects(res, "sector", by="cses", at=[-1, 0, 1]).axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["cses = -1", "cses = 0", "cses = 1"]
    ax = plots.effects(res, "cses", by="sector", at=["Catholic"], n=5).axes[0]
    assert len(ax.lines) == 1
    np.testing.assert_allclose(np.diff(ax.lines[0].get_ydata()) / np.diff(ax.lines[0].get_xdata()),
                               slopes[1])
    with pytest.raises(ValueError, match="not levels of 'sector'"):
        plots.effects(res, "cses", by="sector", at=["Private"])
    with pytest.raises(ValueError, match="name the variable with by="):
        plots.effects(res, "cses", at=[0, 1])


def test_effects_clmm_category_probabilities_with_delta_intervals(wine):
    from mlmext.ordinal import category_probabilities
    ax = plots.effects(wine, "temp").axes[0]
    assert len(ax.containers) == 5 and ax.get_legend().get_title().get_text() == "rating"
    P = np.column_stack([c.lines[0].get_ydata() for c in ax.containers])
    np.testing.assert_allclose(P.sum(axis=1), 1.0)
    grid = pd.DataFrame({"temp": pd.Categorical(["cold", "warm"]), "contact": "no", "judge": "1"})
    np.testing.assert_allclose(P, wine.predict(data=grid, re=False))
    # delta method on logit(P) with a numerical gradient in (thresholds, fixed effects)
    X = np.array([[0.0, 0.0], [1.0, 0.0]])
    k, link = wine.model.thr.k, wine.model.link

    def logit_p(params):
        p = category_probabilities(link, wine.model.thr.T @ params[:k], X @ params[k:])
        return np.log(p / (1 - p))

    x0 = np.asarray(wine.params)
    G = np.stack([(logit_p(x0 + h) - logit_p(x0 - h)) / 2e-6 for h in 1e-6 * np.eye(x0.size)], axis=-1)
    se = np.sqrt(np.einsum("ijk,kl,ijl->ij", G, np.asarray(wine.cov_params()), G))
    for j, cont in enumerate(ax.containers):
        seg = np.array(cont.lines[2][0].get_segments())
        np.testing.assert_allclose(seg[:, 0, 1], expit(logit_p(x0)[:, j] - Z95 * se[:, j]), rtol=1e-5)
        np.testing.assert_allclose(seg[:, 1, 1], expit(logit_p(x0)[:, j] + Z95 * se[:, j]), rtol=1e-5)
    # by=: one panel per level; scale="link": x'beta with its band, one series per level
    fig = plots.effects(wine, "temp", by="contact")
    assert [a.get_title() for a in fig.axes] == ["contact = no", "contact = yes"]
    np.testing.assert_allclose(fig.axes[1].containers[4].lines[0].get_ydata(),
                               wine.predict(data=grid.assign(contact="yes"), re=False)["5"])
    with pytest.raises(ValueError, match="draws 2 panels"):
        plots.effects(wine, "temp", by="contact", ax=fig.axes[0])
    link_ax = plots.effects(wine, "temp", by="contact", scale="link").axes[0]
    assert len(link_ax.containers) == 2
    b = wine.fe_params
    np.testing.assert_allclose(link_ax.containers[1].lines[0].get_ydata(),
                               b["contact[T.yes]"] + np.array([0, b["temp[T.warm]"]]))


def test_effects_bad_arguments(sleep):
    with pytest.raises(ValueError, match="not a column"):
        plots.effects(sleep, "Nights")
    with pytest.raises(ValueError, match="scale"):
        plots.effects(sleep, "Days", scale="log")


# ------------------------------------------------------------------ profile
def test_profile_panels_zeta_zero_at_estimate_and_reference_lines():
    res = mf.lmer("Yield ~ 1 + (1 | Batch)", datasets.load("dyestuff")).fit(reml=False)
    prof = res.profile(npoints=3)
    fig = plots.profile(prof)
    names = list(pd.unique(prof["parameter"]))
    assert [ax.get_title() for ax in fig.axes] == names
    ax = fig.axes[names.index("Intercept")]
    x, zeta = ax.lines[0].get_xdata(), ax.lines[0].get_ydata()
    np.testing.assert_allclose(x[zeta == 0], res.fe_params["Intercept"])
    assert np.all(np.diff(zeta) > 0)
    hlines = sorted(line.get_ydata()[0] for line in ax.lines[1:])
    np.testing.assert_allclose(hlines, [-Z95, 0.0, Z95])
    one = plots.profile(res, params=["sigma"], npoints=2)   # computes the profile itself
    assert [ax.get_title() for ax in one.axes] == ["sigma"]
    x, zeta = one.axes[0].lines[0].get_xdata(), one.axes[0].lines[0].get_ydata()
    assert len(x) == 5
    np.testing.assert_allclose(x[zeta == 0], res.sigma, rtol=1e-6)


def test_profile_not_implemented_for_clmm(wine):
    with pytest.raises(NotImplementedError, match="linear and generalized linear mixed models"):
        plots.profile(wine)


# ------------------------------------------------------------------ qic
def test_qic_markers_labels_best_and_flagged():
    sel = mf.gee_select("Weight ~ Time + Cu", "Pig", datasets.load("dietox"), sm.families.Gaussian(),
                        time="Time")
    ax = plots.qic(sel).axes[0]
    names = list(sel.table.index)
    assert [t.get_text() for t in ax.get_xticklabels()] == names
    assert len(ax.collections) == 2
    for coll, crit in zip(ax.collections, ["QIC", "QICu"]):
        off = coll.get_offsets()
        assert len(off) == len(names)
        np.testing.assert_allclose(off[:, 1], sel.table[crit])
        hollow = coll.get_facecolors()[:, 3] == 0
        np.testing.assert_array_equal(hollow, (sel.table["flag"] != "").to_numpy())
    bold = [t.get_text() for t in ax.get_xticklabels() if t.get_fontweight() == "bold"]
    assert bold == [sel.best]
    assert any(t.get_text() == "best by QIC" for t in ax.texts)


def test_qic_failed_fit_left_out_with_note():
    table = pd.DataFrame({"QIC": [10.0, np.nan, 12.0], "QICu": [9.0, np.nan, 11.5],
                          "flag": ["", "fit failed", ""]}, index=["independence", "ar1", "exchangeable"])
    ax = plots.qic(types.SimpleNamespace(table=table, best="independence"), criteria="QIC").axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["independence", "exchangeable"]
    assert len(ax.collections[0].get_offsets()) == 2
    assert any("ar1" in t.get_text() for t in ax.texts)
    with pytest.raises(ValueError, match="AIC"):
        plots.qic(types.SimpleNamespace(table=table, best=None), criteria=("AIC",))


def test_caterpillar_of_many_levels_shows_the_extremes():
    rng = np.random.default_rng(2)
    g = np.repeat(np.arange(500), 2)
    d = pd.DataFrame({"y": rng.standard_normal(500)[g] + rng.standard_normal(1000), "g": g})
    res = mf.lmer("y ~ 1 + (1 | g)", d).fit()
    fig = plots.caterpillar(res, max_levels=40)
    ax = fig.axes[0]
    assert fig.get_size_inches()[1] < 12                      # not a 60-inch figure
    assert len(ax.get_yticks()) == 40
    assert "(20 lowest, 20 highest of 500 levels)" in ax.get_title()
    modes = res.ranef()["g"].iloc[:, 0]
    shown = [t.get_text() for t in ax.get_yticklabels()]
    lo, hi = modes.sort_values().index[:20], modes.sort_values().index[-20:]
    assert shown == [str(v) for v in lo] + [str(v) for v in hi]
    assert any(line.get_linestyle() == "--" for line in ax.get_lines())   # the gap
    every = plots.caterpillar(res, max_levels=None, sort=False, figsize=(4, 8))
    assert len(every.axes[0].get_yticks()) == 500
    first = plots.caterpillar(res, sort=False, max_levels=30)
    assert "(first 30 of 500 levels)" in first.axes[0].get_title()
    for f in (fig, every, first):
        plt.close(f)


def test_qic_scale_kept_on_the_unflagged_fits():
    table = pd.DataFrame({"QIC": [100.0, 5000.0, 102.0], "QICu": [99.0, 4990.0, 101.5],
                          "flag": ["", "correlation outside [-1, 1]", ""]},
                         index=["independence", "unstructured", "exchangeable"])
    ax = plots.qic(types.SimpleNamespace(table=table, best="independence")).axes[0]
    lo, hi = ax.get_ylim()
    assert 98 < lo < 99.5 and 102 < hi < 104                  # the unflagged fits' range
    assert any("off the scale (flagged): unstructured (5000)" in t.get_text() for t in ax.texts)
    tri = [c for c in ax.collections[2:]]
    assert len(tri) == 2 and all(c.get_offsets()[0, 1] == pytest.approx(hi) for c in tri)
    # no flagged fit far away: the scale is left alone
    near = table.assign(QIC=[100.0, 103.0, 102.0], QICu=[99.0, 102.0, 101.5])
    ax2 = plots.qic(types.SimpleNamespace(table=near, best="independence")).axes[0]
    assert not any("off the scale" in t.get_text() for t in ax2.texts)


# ------------------------------------------------------------------ ax= on every plot
def test_every_plot_takes_ax_and_returns_its_figure(sleep, cbpp, wine):
    """Each function draws into the caller's axes (one per panel) and returns their figure."""
    prof = mf.lmer("Yield ~ 1 + (1 | Batch)", datasets.load("dyestuff")).fit(reml=False).profile(npoints=2)
    sel = mf.gee_select("Weight ~ Time + Cu", "Pig", datasets.load("dietox"),
                        sm.families.Gaussian(), time="Time")
    calls = {                                       # name -> (call, panels)
        "caterpillar": (lambda ax: plots.caterpillar(sleep, ax=ax), 2),
        "qqplot_ranef": (lambda ax: plots.qqplot_ranef(sleep, ax=ax), 2),
        "resid_fitted": (lambda ax: plots.resid_fitted(cbpp, ax=ax), 1),
        "qqplot_resid": (lambda ax: plots.qqplot_resid(sleep, ax=ax), 1),
        "effects": (lambda ax: plots.effects(wine, "temp", by="contact", ax=ax), 2),
        "predictor_effects": (lambda ax: plots.predictor_effects(wine, ax=ax), 2),
        "profile": (lambda ax: plots.profile(prof, ax=ax), 3),
        "qic": (lambda ax: plots.qic(sel, ax=ax), 1),
        "influence_plot": (lambda ax: plots.influence_plot(sleep, group="Subject", ax=ax), 1),
        "emmeans": (lambda ax: plots.emmeans(wine.emmeans("temp", by="contact"), ax=ax), 1),
    }
    assert set(calls) == set(plots.__all__)
    for name, (call, k) in calls.items():
        fig, axes = plt.subplots(1, k + 1)          # one spare axes, which stays empty
        got = call(axes[0] if k == 1 else axes[:k])
        assert got is fig, name
        assert len(fig.axes) == k + 1, name         # no axes added or removed
        assert all(a.has_data() for a in axes[:k]) and not axes[k].has_data(), name
        with pytest.raises(ValueError, match=f"draws {k} panel"):
            call(list(axes) + [axes[0]] if k == 1 else axes[:k - 1])
        plt.close(fig)


def test_predictor_effects_one_panel_per_variable_by_its_partner():
    hsb = datasets.load("hsb82")
    fit = mf.lmer("mAch ~ cses * sector + np.exp(meanses) + (cses | school)", hsb).fit()
    fig = plots.predictor_effects(fit)
    assert [a.get_title() for a in fig.axes] == [
        "Effect of cses by sector", "Effect of sector by cses", "Effect of meanses"]
    # each panel is effects() of its predictor: the curves coincide
    ref = plots.effects(fit, "cses", by="sector")
    for got, want in zip(fig.axes[0].lines, ref.axes[0].lines):
        np.testing.assert_array_equal(got.get_ydata(), want.get_ydata())
    assert len(fig.axes[1].containers) == 3          # sector at three quantiles of cses
    one = plots.predictor_effects(fit, predictors=["meanses"])
    assert len(one.axes) == 1 and one.axes[0].get_xlabel() == "meanses"
    with pytest.raises(ValueError, match="not variables of the fixed effects"):
        plots.predictor_effects(fit, predictors=["school"])
    null = mf.lmer("mAch ~ 1 + (1 | school)", hsb).fit()
    with pytest.raises(ValueError, match="intercept only"):
        plots.predictor_effects(null)


# ------------------------------------------------------------------ influence dot plot
def test_influence_plot_sorted_points_internal_cutoff_and_flags(sleep):
    """HLMdiag's dotplot_diag: values sorted upwards, the internal cut-off Q3 + 3 IQR as a line,
    the points beyond it red triangles."""
    tab = sleep.influence(1)                        # 180 single-observation deletions
    v = np.sort(tab["cooks_d"].to_numpy())
    q1, q3 = np.quantile(v, [0.25, 0.75])
    cut = q3 + 3 * (q3 - q1)
    assert (v > cut).sum() >= 1                     # the plot has something to flag
    ax = plots.influence_plot(tab, "cooks_d").axes[0]
    pts = np.vstack([np.column_stack(line.get_data()) for line in ax.lines if line.get_marker() in "o^"])
    np.testing.assert_allclose(np.sort(pts[:, 0]), v)
    order = np.argsort(pts[:, 1])
    np.testing.assert_allclose(pts[order, 0], v)     # position 1..n follows the sorted values
    red = [line for line in ax.lines if line.get_marker() == "^"][0]
    np.testing.assert_allclose(np.sort(red.get_xdata()), v[v > cut])
    vlines = [line.get_xdata()[0] for line in ax.lines if line.get_linestyle() == "-" and line.get_marker() in ("None", "")]
    assert vlines == pytest.approx([cut])
    # too many rows for tick labels: the five furthest beyond the line are named
    top = tab["cooks_d"].sort_values(ascending=False).index[:5]
    assert sorted(t.get_text() for t in ax.texts) == sorted(str(i) for i in top)
    assert ax.get_xlabel() == "cooks_d"


def test_influence_plot_two_sided_covratio_numeric_cutoffs_and_labels(sleep):
    tab = sleep.influence("Subject", method="refit")
    v = tab["covratio"].to_numpy()
    q1, q3 = np.quantile(v, [0.25, 0.75])
    ax = plots.influence_plot(sleep, "covratio", group="Subject", method="refit").axes[0]
    vlines = sorted(line.get_xdata()[0] for line in ax.lines if line.get_marker() in ("None", ""))
    assert vlines == pytest.approx([q1 - 3 * (q3 - q1), q3 + 3 * (q3 - q1)])
    # every subject named, smallest at the bottom
    names = [t.get_text() for t in ax.get_yticklabels()]
    assert names == [str(s) for s in tab["covratio"].sort_values(kind="stable").index]
    assert ax.get_ylabel() == "Subject"
    # a numeric cut-off flags the values above it; a pair flags both tails; None draws no line
    lev = sleep.leverage()["ranef"]
    cut = float(np.median(lev))
    ax2 = plots.influence_plot(lev, cutoff=cut).axes[0]
    assert ax2.get_xlabel() == "ranef" and ax2.get_ylabel() == "observation"
    red = [line for line in ax2.lines if line.get_marker() == "^"][0]
    np.testing.assert_allclose(np.sort(red.get_xdata()), np.sort(lev[lev > cut]))
    assert 0 < (lev > cut).sum() < len(lev)
    ax3 = plots.influence_plot(tab, "rvc_sigma2", cutoff=(-0.1, 0.05)).axes[0]
    red = [line for line in ax3.lines if line.get_marker() == "^"][0]
    x = tab["rvc_sigma2"]
    assert sorted(red.get_xdata()) == sorted(x[(x < -0.1) | (x > 0.05)])
    ax4 = plots.influence_plot(tab, "mdffits", cutoff=None).axes[0]
    assert all(line.get_marker() in "o^" for line in ax4.lines)


def test_influence_plot_bad_arguments(sleep, wine):
    tab = sleep.influence("Subject")
    with pytest.raises(ValueError, match="unknown diagnostic"):
        plots.influence_plot(tab, "cooksd")
    with pytest.raises(ValueError, match="cutoff must be"):
        plots.influence_plot(tab, cutoff="external")
    with pytest.raises(NotImplementedError, match="linear mixed models"):
        plots.influence_plot(wine, group="judge")
