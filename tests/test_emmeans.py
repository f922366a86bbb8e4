"""Estimated marginal means against R's emmeans 1.8.4 (tests/reference/emmeans, made by
tools/r_reference/emmeans_reference.R): lmerTest's ham (LMM, Kenward-Roger and Satterthwaite df,
``by=``, ``at=``, pairs with Tukey / Holm / Bonferroni / no adjustment, revpairwise and
trt.vs.ctrl), cbpp (binomial GLMM, link and response scale, odds ratios) and wine (clmm, latent
scale).

Tolerances.  Means and contrasts are linear in the fixed effects (and clmm's thresholds), so they
differ from R's only as far as the two optima differ: within 1e-6 relative or 2e-3 of their SE
(the project's bound for fixed effects).  SEs within 0.2 % (the covariance of the estimates;
for the LMM they agree to ~1e-8).  df within 1e-4 relative: Kenward-Roger is analytic in both
(pbkrtest and ours) and Satterthwaite uses numerical derivatives in both (lmerTest's numDeriv;
see tests/test_lmertest.py).  Confidence limits follow from those: 2e-3 SE.  t / z ratios
within 0.2 % (their SE), p-values within 0.2 % relative or 1e-4 absolute (Tukey's p comes from
scipy's studentized_range against R's ptukey; they agree to ~1e-10 here).
"""
import warnings

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

from mlmext.formula import api as mf
from mlmext.inference import EMMContrasts, EMMeans, emmeans
from mlmext.inference.emm_contrasts import adjust_pvalues

from refcases import load_ref, read_data


def _ham_unbalanced(data):
    """The rows R keeps: tools/r_reference/emmeans_reference.R, section 4."""
    odd = data["Consumer"].astype(str).astype(int) % 2 == 1
    drop = (data["Information"].astype(str) == "1") & (data["Gender"].astype(str) == "2") & \
        data["Product"].astype(str).isin(["1", "2"]) & odd
    return data.loc[~drop]


def _fit(name):
    ref = load_ref("emmeans", name)
    data = read_data(ref["data"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if name == "ham":
            return ref, mf.lmer(ref["formula"], data).fit()
        if name == "ham_unbalanced":
            sub = _ham_unbalanced(data)
            assert len(sub) == ref["nobs"]
            return ref, {"m": mf.lmer(ref["formula"], sub).fit(),
                         "m2": mf.lmer(ref["formula2"], sub).fit()}
        if name == "ham_binary_covariate":    # R: g01 = as.numeric(Gender == "2")
            data = data.assign(g01=(data["Gender"].astype(str) == "2").astype(float))
            return ref, mf.lmer(ref["formula"], data).fit()
        if name == "ham_transformed":      # R's log(y) is np.log(y) here
            return ref, {k: mf.lmer("np." + f, data).fit() for k, f in ref["formulas"].items()}
        if name == "cbpp":
            return ref, mf.glmer(ref["formula"], data, family=sm.families.Binomial()).fit()
        if name in ("grouseticks", "pois_offset"):
            return ref, mf.glmer(ref.get("py_formula", ref["formula"]), data,
                                 family=sm.families.Poisson()).fit()
        return ref, mf.clmm(ref["formula"], data).fit()


@pytest.fixture(scope="module")
def fits():
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = _fit(name)
        return cache[name]
    return get


KR, SA = "kenward-roger", "satterthwaite"
# R table -> how mlmext computes it
CASES = {
    "ham": {
        "product_kr": lambda m: m.emmeans("Product"),
        "product_satt": lambda m: m.emmeans("Product", ddf=SA),
        "product_kr_pairs_tukey": lambda m: m.emmeans("Product").pairs(),
        "product_kr_pairs_holm": lambda m: m.emmeans("Product").pairs(adjust="holm"),
        "product_kr_pairs_bonferroni": lambda m: m.emmeans("Product", ddf=KR).pairs(adjust="bonferroni"),
        "product_kr_pairs_none": lambda m: m.emmeans("Product").pairs(adjust="none"),
        "product_satt_pairs_tukey": lambda m: m.emmeans("Product", ddf=SA).pairs(adjust="tukey"),
        "product_by_info_kr": lambda m: m.emmeans("Product", by="Information"),
        "product_by_info_satt": lambda m: m.emmeans("Product", by="Information", ddf=SA),
        "product_by_info_kr_pairs_tukey": lambda m: m.emmeans("Product", by="Information").pairs(),
        "product_by_info_satt_pairs_holm":
            lambda m: m.emmeans("Product", by="Information", ddf=SA).pairs(adjust="holm"),
        "product_info_kr": lambda m: m.emmeans(["Product", "Information"]),
        "product_info_kr_pairs_tukey": lambda m: m.emmeans(["Product", "Information"]).pairs(),
        "info_age40_kr": lambda m: m.emmeans("Information", at={"Age": 40}),
        "info_by_age_kr": lambda m: m.emmeans("Information", by="Age", at={"Age": [30, 50]}),
        "gender_kr_level90": lambda m: m.emmeans("Gender", level=0.9),
        "product_kr_revpairwise_bonf":
            lambda m: m.emmeans("Product").contrast("revpairwise", adjust="bonferroni"),
        "product_kr_trtvsctrl_holm":
            lambda m: m.emmeans("Product").contrast("trt.vs.ctrl", adjust="holm"),
        "product_kr_trtvsctrl_dunnettx": lambda m: m.emmeans("Product").contrast("trt.vs.ctrl"),
        "product_kr_pairs_sidak": lambda m: m.emmeans("Product").pairs(adjust="sidak"),
    },
    "cbpp": {
        "period_link": lambda m: m.emmeans("period"),
        "period_response": lambda m: m.emmeans("period", type="response"),
        "period_link_pairs_tukey": lambda m: m.emmeans("period").pairs(),
        "period_link_pairs_holm": lambda m: m.emmeans("period").pairs(adjust="holm"),
        "period_response_pairs_tukey": lambda m: m.emmeans("period", type="response").pairs(),
        "period_response_trtvsctrl_bonf":
            lambda m: m.emmeans("period", type="response").contrast("trt.vs.ctrl", adjust="bonferroni"),
        "period_regrid": lambda m: m.emmeans("period").regrid(),
        "period_regrid_pairs": lambda m: m.emmeans("period").regrid().pairs(),
    },
    "grouseticks": {
        "year_response": lambda m: m.emmeans("YEAR", type="response"),
        "year_response_pairs": lambda m: m.emmeans("YEAR", type="response").pairs(),
        "year_link_at_height": lambda m: m.emmeans("YEAR", by="cHEIGHT", at={"cHEIGHT": [-10, 10]}),
    },
    "pois_offset": {       # the offset log(t) at the mean of t, as emmeans
        "x_at_response": lambda m: m.emmeans("x", at={"x": [0, 0.5]}, type="response"),
    },
    "ham_unbalanced": {
        "product_equal": lambda m: m["m"].emmeans("Product"),
        "product_proportional": lambda m: m["m"].emmeans("Product", weights="proportional"),
        "product_outer": lambda m: m["m"].emmeans("Product", weights="outer"),
        "product_cells": lambda m: m["m"].emmeans("Product", weights="cells"),
        "product_flat": lambda m: m["m"].emmeans("Product", weights="flat"),
        "product_numeric": lambda m: m["m"].emmeans("Product", weights=[1, 2, 3, 4]),
        "info_by_gender_cells":
            lambda m: m["m"].emmeans("Information", by="Gender", weights="cells", ddf=SA),
        "product_age_proportional":
            lambda m: m["m"].emmeans("Product", at={"Age": [30, 50]}, weights="proportional"),
        "product_proportional_pairs":
            lambda m: m["m"].emmeans("Product", weights="proportional").pairs(adjust="holm"),
        "product_cells_pairs": lambda m: m["m"].emmeans("Product", weights="cells", ddf=SA).pairs(),
        "product_outer_ig": lambda m: m["m2"].emmeans("Product", weights="outer"),
        "product_proportional_ig": lambda m: m["m2"].emmeans("Product", weights="proportional"),
    },
    "ham_binary_covariate": {      # emmeans' cov.keep = "2": a 0/1 covariate is a grid factor
        "product_kr": lambda m: m.emmeans("Product"),
        "g01_kr": lambda m: m.emmeans("g01"),
        "g01_pairs": lambda m: m.emmeans("g01").pairs(),
        "product_cells": lambda m: m.emmeans("Product", weights="cells"),
        "product_mean": lambda m: m.emmeans("Product", cov_keep=0),
    },
    "ham_transformed": {
        "log_product_link": lambda m: m["log"].emmeans("Product"),
        "log_product_response": lambda m: m["log"].emmeans("Product", type="response"),
        "log_product_response_pairs":
            lambda m: m["log"].emmeans("Product", type="response").pairs(),
        "log_product_regrid": lambda m: m["log"].emmeans("Product").regrid(),
        "log_product_regrid_pairs":
            lambda m: m["log"].emmeans("Product").regrid().pairs(adjust="holm"),
        "log_info_by_gender_response_satt":
            lambda m: m["log"].emmeans("Information", by="Gender", type="response", ddf=SA),
        "sqrt_product_response": lambda m: m["sqrt"].emmeans("Product", type="response"),
        "sqrt_product_response_pairs":
            lambda m: m["sqrt"].emmeans("Product", type="response").pairs(),
        "sqrt_product_regrid": lambda m: m["sqrt"].emmeans("Product").regrid(),
        "log10_product_response": lambda m: m["log10"].emmeans("Product", type="response"),
        "log10_product_response_pairs":
            lambda m: m["log10"].emmeans("Product", type="response").pairs(adjust="none"),
        "log_info_gender_regrid_pairs":
            lambda m: m["log"].emmeans(["Information", "Gender"], ddf=SA).regrid().pairs(adjust="none"),
    },
    "wine": {
        "temp_latent": lambda m: m.emmeans("temp"),
        "temp_by_contact_latent": lambda m: m.emmeans("temp", by="contact", mode="latent"),
        "temp_by_contact_latent_pairs": lambda m: m.emmeans("temp", by="contact").pairs(),
        "temp_contact_latent_pairs_holm": lambda m: m.emmeans(["temp", "contact"]).pairs(adjust="holm"),
        "rating_by_temp_prob": lambda m: m.emmeans("rating", by="temp", mode="prob"),
        "temp_by_rating_prob_pairs": lambda m: m.emmeans("temp", by="rating", mode="prob").pairs(),
        "contact_prob": lambda m: m.emmeans("contact", mode="prob"),
        "temp_contact_meanclass": lambda m: m.emmeans(["temp", "contact"], mode="mean.class"),
        "temp_meanclass_pairs": lambda m: m.emmeans("temp", mode="mean.class").pairs(),
    },
}
PARAMS = [(d, t) for d, tabs in CASES.items() for t in tabs]
ESTIMATES = ("emmean", "prob", "rate", "response", "mean.class", "estimate", "odds.ratio",
             "ratio")
LIMITS = ("lower.CL", "upper.CL", "asymp.LCL", "asymp.UCL")


def test_the_cases_cover_every_stored_table():
    for name, tabs in CASES.items():
        assert set(load_ref("emmeans", name)["tables"]) == set(tabs)


@pytest.mark.parametrize("data,table", PARAMS)
def test_against_emmeans(fits, data, table):
    ref, res = fits(data)
    rows = pd.DataFrame(ref["tables"][table]["rows"])
    got = CASES[data][table](res)
    assert isinstance(got, (EMMeans, EMMContrasts))
    assert list(got.columns) == list(rows.columns), (list(got.columns), list(rows.columns))
    assert len(got) == len(rows)
    se_r, se = rows["SE"].to_numpy(float), got["SE"].to_numpy(float)
    np.testing.assert_allclose(se, se_r, rtol=2e-3, atol=1e-12)   # (clmm probabilities
    # averaged over the categories: exactly 1 / K, SE 0 in R, 1e-18 here)
    est = next(c for c in ESTIMATES if c in rows)
    # the SE of the estimate on the scale it is linear in (link / log of a ratio)
    log_scale = est in ("odds.ratio", "ratio", "rate")
    lin_se = se_r / rows[est].to_numpy(float) if log_scale else se_r
    lin = np.log if log_scale else (lambda v: v)
    e_r, e = rows[est].to_numpy(float), got[est].to_numpy(float)
    assert np.all(np.abs(lin(e) - lin(e_r)) <= np.maximum(1e-6 * np.abs(lin(e_r)), 2e-3 * lin_se)
                  + 1e-15), (e, e_r)
    df_r = rows["df"].to_numpy(dtype=float, na_value=np.inf)        # R's Inf is stored as null
    np.testing.assert_allclose(got["df"].to_numpy(float), df_r, rtol=1e-4)
    for c in rows.columns:
        if c in ("SE", "df", est):
            continue
        if c in LIMITS:     # back-transformed limits: compare on the linear scale
            l_r, l = rows[c].to_numpy(float), got[c].to_numpy(float)
            if est == "prob" and data == "cbpp":
                l_r, l, s = np.log(l_r / (1 - l_r)), np.log(l / (1 - l)), se_r / (e_r * (1 - e_r))
            elif est == "rate":
                l_r, l, s = np.log(l_r), np.log(l), se_r / e_r
            else:
                s = se_r
            assert np.all(np.abs(l - l_r) <= 3e-3 * s + 1e-15), (c, l, l_r)
        elif c in ("t.ratio", "z.ratio"):
            np.testing.assert_allclose(got[c].to_numpy(float), rows[c].to_numpy(float), rtol=2e-3)
        elif c == "p.value":
            p_r, p = rows[c].to_numpy(float), got[c].to_numpy(float)
            assert np.all(np.abs(p - p_r) <= np.maximum(1e-4, 2e-3 * p_r)), (p, p_r)
        elif c == "null":
            assert np.all(got[c] == 1)
        elif not pd.api.types.is_numeric_dtype(rows[c]):   # factor levels, contrast labels
            assert [str(v) for v in got[c]] == [str(v) for v in rows[c]], c
        else:                                     # numeric grid values (at=)
            np.testing.assert_allclose(got[c].to_numpy(float), rows[c].to_numpy(float))


def test_tukey_pvalues_match_ptukey_closely(fits):
    """R's ptukey against scipy's studentized_range on the stored t ratios and df."""
    ref, _ = fits("ham")
    for name in ("product_kr_pairs_tukey", "product_by_info_kr_pairs_tukey",
                 "product_info_kr_pairs_tukey"):
        rows = pd.DataFrame(ref["tables"][name]["rows"])
        k = 8 if name.startswith("product_info") else 4
        p = adjust_pvalues(rows["t.ratio"].to_numpy(float), rows["df"].to_numpy(float), "tukey", k)
        np.testing.assert_allclose(p, rows["p.value"].to_numpy(float), atol=1e-8)


def test_a_mean_is_the_equally_weighted_average_of_predictions(fits):
    """Direct computation: the grid predictions averaged over Information and Gender, Age at
    its mean over the fitted rows (emmeans' reference grid)."""
    ref, res = fits("ham")
    data = res.model.formula_info["data"]
    assert np.isclose(data["Age"].mean(), ref["age_mean"])
    rows = [{"Product": "3", "Information": i, "Gender": g, "Age": data["Age"].mean()}
            for i in ("1", "2") for g in ("1", "2")]
    grid = pd.DataFrame(rows)
    for c in ("Product", "Information", "Gender"):
        grid[c] = pd.Categorical(grid[c], categories=data[c].cat.categories)
    want = res.predict(data=grid, re=False).mean()
    got = res.emmeans("Product", ddf="asymptotic")
    assert np.isclose(got.loc[got["Product"] == "3", "emmean"].item(), want, rtol=1e-12)
    assert np.all(np.isinf(got["df"])) and "asymp.LCL" in got


def test_kenward_roger_is_the_default_and_uses_the_adjusted_covariance(fits):
    _, res = fits("ham")
    a, b = res.emmeans("Gender"), res.emmeans("Gender", ddf="kenward-roger")
    pd.testing.assert_frame_equal(pd.DataFrame(a), pd.DataFrame(b))
    L = a._emm.L
    V = np.asarray(res.cov_params_kenward_roger())
    np.testing.assert_allclose(a["SE"], np.sqrt(np.diag(L @ V @ L.T)), rtol=1e-12)


def test_response_scale_is_the_inverse_link_of_the_link_scale(fits):
    _, res = fits("cbpp")
    link, resp = res.emmeans("period"), res.emmeans("period", type="response")
    p = 1 / (1 + np.exp(-link["emmean"].to_numpy()))
    np.testing.assert_allclose(resp["prob"], p, rtol=1e-12)
    np.testing.assert_allclose(resp["SE"], link["SE"] * p * (1 - p), rtol=1e-12)
    np.testing.assert_allclose(resp["asymp.UCL"], 1 / (1 + np.exp(-link["asymp.UCL"])), rtol=1e-12)
    odds = resp.pairs()
    np.testing.assert_allclose(np.log(odds["odds.ratio"]), link.pairs()["estimate"], rtol=1e-12)


def test_printed_form_and_notes(fits):
    _, res = fits("ham")
    text = repr(res.emmeans("Product", by="Information").pairs())
    assert "Product1 - Product2" in text
    assert "P value adjustment: tukey method for comparing a family of 4 estimates" in text
    assert "averaged over the levels of: Gender" in repr(res.emmeans("Product", by="Information"))


def test_bad_input(fits):
    _, res = fits("ham")
    with pytest.raises(ValueError, match="'Sector'"):
        res.emmeans("Sector")
    with pytest.raises(ValueError, match="'Age' is numeric"):
        res.emmeans("Age")
    with pytest.raises(ValueError, match="type"):
        res.emmeans("Product", type="prob")
    with pytest.raises(ValueError, match="by: 'Consumer'"):
        res.emmeans("Product", by="Consumer")
    with pytest.raises(ValueError, match="at: \\['9'\\]"):
        res.emmeans("Product", at={"Product": ["1", "9"]})
    with pytest.raises(ValueError, match="named twice"):
        res.emmeans("Product", by="Product")
    with pytest.raises(ValueError, match="ddf"):
        res.emmeans("Product", ddf="bogus")
    with pytest.raises(ValueError, match="mode"):
        res.emmeans("Product", mode="latent")
    with pytest.raises(TypeError):
        res.emmeans("Product", adjust="tukey")
    with pytest.raises(ValueError, match="weights"):
        res.emmeans("Product", weights="proportionate")
    with pytest.raises(ValueError, match="cov_keep"):
        res.emmeans("Product", cov_keep=-1)
    with pytest.raises(ValueError, match="4 combinations"):
        res.emmeans("Product", weights=[1, 2])
    with pytest.raises(ValueError, match="regrid"):
        res.emmeans("Product").regrid()
    e = res.emmeans("Product")
    with pytest.raises(NotImplementedError, match="scheffe"):     # emmeans has it; we do not
        e.pairs(adjust="scheffe")
    with pytest.raises(ValueError, match="adjust"):
        e.pairs(adjust="tukeyy")
    with pytest.raises(ValueError, match="method"):
        e.contrast("poly")
    with pytest.raises(ValueError, match="two means"):
        res.emmeans("Product", at={"Product": ["2"]}).pairs()
    _, g = fits("cbpp")
    with pytest.raises(ValueError, match="ddf"):
        g.emmeans("period", ddf="satterthwaite")
    _, c = fits("wine")
    with pytest.raises(ValueError, match="mode='prob'|'prob'"):
        c.emmeans("temp", type="response")
    with pytest.raises(NotImplementedError, match="latent"):
        c.emmeans("temp", mode="cum.prob")
    with pytest.raises(NotImplementedError, match="weights"):
        c.emmeans("temp", mode="prob", weights="cells")


def test_the_function_and_the_method_agree(fits):
    _, res = fits("wine")
    pd.testing.assert_frame_equal(pd.DataFrame(emmeans(res, "temp", by="contact")),
                                  pd.DataFrame(res.emmeans("temp", by="contact")))


def test_tukey_on_a_family_that_is_not_pairwise_becomes_sidak(fits):
    _, res = fits("cbpp")
    e = res.emmeans("period")
    c = e.contrast("trt.vs.ctrl", adjust="tukey")
    p = adjust_pvalues(c["z.ratio"].to_numpy(), np.full(3, np.inf), "none", 4)
    np.testing.assert_allclose(c["p.value"], 1 - (1 - p) ** 3, rtol=1e-12)
    assert any("sidak" in n for n in c.attrs["notes"])


def test_plot(fits):
    pytest.importorskip("matplotlib")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from mlmext import plots
    _, res = fits("ham")
    e = res.emmeans("Product", by="Information")
    fig = e.plot()
    ax = fig.axes[0]
    assert len(ax.get_yticklabels()) == 8
    assert ax.get_yticklabels()[0].get_text() == "Product1 | Information = 1"
    fig2, ax2 = plt.subplots()
    assert plots.emmeans(e, ax=ax2) is fig2
    plt.close("all")


def test_plot_keeps_long_labels_inside_the_figure(fits):
    """A new figure is laid out so that the 'spec | by = value' labels are not cut off."""
    pytest.importorskip("matplotlib")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    _, res = fits("ham")
    fig = res.emmeans("Product", by="Information").plot()
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for label in fig.axes[0].get_yticklabels():
        box = label.get_window_extent(renderer)
        assert box.x0 >= 0, (label.get_text(), box.x0)
    plt.close("all")


def test_an_offset_argument_is_averaged_as_a_formula_offset(fits):
    """emmeans puts the mean fitted offset on every grid point, for offset(log(t)) and for
    glmer's offset= argument alike (checked in R: both give R's table)."""
    ref, res = fits("pois_offset")
    data = read_data(ref["data"]).assign(lt=lambda d: np.log(d["t"]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        arg = mf.glmer("y ~ x + (1 | g)", data, offset="lt", family=sm.families.Poisson()).fit()
    a = arg.emmeans("x", at={"x": [0, 0.5]}, type="response")
    rows = pd.DataFrame(ref["tables"]["x_at_response"]["rows"])
    log_se = rows["SE"] / rows["rate"]                # linear on the log scale
    assert np.all(np.abs(np.log(a["rate"] / rows["rate"])) <= 2e-3 * log_se)
    np.testing.assert_allclose(a["SE"], rows["SE"], rtol=2e-3)
    with pytest.raises(ValueError, match="'t' is not a variable"):
        res.emmeans("x", at={"x": [0], "t": [1.0]})


def test_an_ml_fit_defaults_to_satterthwaite(fits):
    ref, _ = fits("ham")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ml = mf.lmer(ref["formula"], read_data(ref["data"])).fit(reml=False)
    e = ml.emmeans("Gender")
    np.testing.assert_array_equal(e["df"], ml.emmeans("Gender", ddf="satterthwaite")["df"])
    assert any("REML" in n for n in e.attrs["notes"])
    with pytest.raises(ValueError, match="reml"):
        ml.emmeans("Gender", ddf="kenward-roger")


def test_cells_weights_average_the_cells_own_rows(fits):
    """weights="cells": a mean is the plain average of the fixed-effects predictions of the
    cell's fitted rows, with the covariate Age at its mean (the grid's value)."""
    ref, res = fits("ham_unbalanced")
    m = res["m"]
    data = _ham_unbalanced(read_data(ref["data"])).copy()
    data["Age"] = data["Age"].mean()
    pred = np.asarray(m.predict(data=data, re=False))
    emm = m.emmeans("Product", weights="cells")
    for p, got in zip(emm["Product"], emm["emmean"]):
        rows = (data["Product"].astype(str) == str(p)).to_numpy()
        assert got == pytest.approx(pred[rows].mean(), rel=1e-12)
    # "proportional": the marginal counts of (Information, Gender), the same in every cell
    emm = m.emmeans("Product", weights="proportional")
    counts = data.groupby(["Information", "Gender"], observed=True).size()
    for p, got in zip(emm["Product"], emm["emmean"]):
        d = pd.DataFrame([{"Product": p, "Information": i, "Gender": g, "Age": data["Age"].iloc[0]}
                          for i, g in counts.index])
        for c in ("Product", "Information", "Gender"):
            d[c] = pd.Categorical(d[c].astype(str), categories=data[c].cat.categories)
        want = np.average(np.asarray(m.predict(data=d, re=False)), weights=counts.to_numpy())
        assert got == pytest.approx(want, rel=1e-12)
