"""make_lmer and power_curve (simr's makeLmer / powerCurve).

simr cannot be installed here (not in Debian, CRAN unreachable), so everything is checked
against direct computation: the covariance of the simulated responses against V = Z G Z' +
sigma^2 I built by hand, and power_curve against a loop of make_lmer + simulate + fresh fits.
"""
import warnings

import matplotlib
import numpy as np
import pandas as pd
import pytest
from scipy import stats

import mlmext
import mlmext.formula.api as mf
from mlmext.datasets import load
from mlmext.inference import simulate

matplotlib.use("Agg")

FORMULA = "Reaction ~ Days + (Days | Subject)"
G = np.array([[600.0, 10.0], [10.0, 35.0]])


@pytest.fixture(scope="module")
def sleep():
    return load("sleepstudy")


@pytest.fixture(scope="module")
def fit(sleep):
    return mf.lmer(FORMULA, sleep).fit()


def test_make_lmer_parameters_round_trip(sleep):
    design = sleep.drop(columns="Reaction")
    made = mlmext.make_lmer(FORMULA, design, fixef={"(Intercept)": 250.0, "Days": 5.0},
                            varcorr={"Subject": G}, sigma=25.0, seed=1)
    np.testing.assert_array_equal(made.fe_params.to_numpy(), [250.0, 5.0])
    vc = made.varcorr()
    # theta = chol(G) / sigma and back: a few ulps of round-off, nothing more
    np.testing.assert_allclose(vc["vcov"].to_numpy(dtype=float), [600, 35, 10, 625], rtol=1e-13)
    np.testing.assert_allclose(made.cov_re()["Subject"].to_numpy(), G, rtol=1e-13)
    assert made.sigma == 25.0 and made.nobs == 180 and made.specified
    assert not made.converged and "not fitted" in made.optim.message
    text = repr(made)
    assert "not fitted" in text and "at convergence" not in text and "fit by" not in text
    # the response was simulated (not the data's, which were dropped): it is a new vector
    assert made.model.endog.shape == (180,) and np.ptp(made.model.endog) > 0
    # theta= instead of varcorr=: stored as given; a labelled matrix is reordered by name;
    # a scalar is a standard deviation
    th = np.array([0.9, 0.1, 0.3])
    made2 = mlmext.make_lmer(FORMULA, design, fixef=[250.0, 5.0], theta=th, sigma=25.0, seed=1)
    np.testing.assert_array_equal(made2.theta, th)
    lab = pd.DataFrame(G[::-1, ::-1], index=["Days", "Intercept"], columns=["Days", "Intercept"])
    made3 = mlmext.make_lmer(FORMULA, design, fixef=[250.0, 5.0], varcorr={"Subject": lab},
                             sigma=25.0, seed=1)
    np.testing.assert_allclose(made3.cov_re()["Subject"].to_numpy(), G, rtol=1e-13)
    made4 = mlmext.make_lmer("Reaction ~ Days + (1 | Subject)", design, fixef=[250.0, 5.0],
                             varcorr={"Subject": 30.0}, sigma=25.0)
    np.testing.assert_allclose(made4.varcorr()["sdcor"].to_numpy(dtype=float), [30.0, 25.0],
                               rtol=1e-14)
    # the criterion is the REML criterion of the simulated response at the parameters
    p = np.concatenate([[250.0, 5.0], made.theta, [25.0]])
    assert made.criterion == pytest.approx(-2 * made.model.loglike(p, reml=True), rel=1e-12)


def test_make_lmer_simulates_the_specified_moments():
    # 3 subjects x 4 days: the mean X beta and covariance Z G Z' + sigma^2 I of the
    # simulated responses, built here by hand
    design = pd.DataFrame({"Subject": np.repeat(["a", "b", "c"], 4),
                           "Days": np.tile([0.0, 1.0, 2.0, 3.0], 3)})
    beta, sigma = np.array([250.0, 5.0]), 25.0
    made = mlmext.make_lmer(FORMULA, design, fixef=beta, varcorr={"Subject": G}, sigma=sigma,
                            seed=5)
    nsim = 4000
    Y = made.simulate(nsim=nsim, seed=6).to_numpy()
    X = np.column_stack([np.ones(12), design["Days"]])
    Z = np.zeros((12, 6))
    for g in range(3):
        Z[4 * g:4 * g + 4, 2 * g] = 1.0
        Z[4 * g:4 * g + 4, 2 * g + 1] = design["Days"][4 * g:4 * g + 4]
    V = Z @ np.kron(np.eye(3), G) @ Z.T + sigma ** 2 * np.eye(12)
    se_mean = np.sqrt(np.diag(V) / nsim)
    assert np.max(np.abs(Y.mean(axis=1) - X @ beta) / se_mean) < 4.5
    # Monte-Carlo SE of a sample covariance of normals: sqrt((V_ii V_jj + V_ij^2) / n)
    se_cov = np.sqrt((np.outer(np.diag(V), np.diag(V)) + V ** 2) / nsim)
    assert np.max(np.abs(np.cov(Y) - V) / se_cov) < 4.5
    # a wrong G (the correlation's sign flipped) is detected by the same check
    V_wrong = Z @ np.kron(np.eye(3), G * [[1, -1], [-1, 1]]) @ Z.T + sigma ** 2 * np.eye(12)
    assert np.max(np.abs(np.cov(Y) - V_wrong) / se_cov) > 4.5 or not np.allclose(V, V_wrong)


def _direct_power(sleep, fit, keep_fn, breaks, term, effect, nsim, seed):
    """A loop of make_lmer + simulate + fresh fits from the formula (default Satterthwaite
    t tests), consuming one generator as power_curve documents."""
    rng = np.random.default_rng(seed)
    out = []
    for b in breaks:
        sub = sleep.loc[keep_fn(b)]
        made = mlmext.make_lmer(FORMULA, sub.drop(columns="Reaction"), fit.fe_params,
                                theta=fit.theta, sigma=fit.sigma, seed=rng)
        beta = fit.fe_params.to_numpy().copy()
        beta[list(fit.fe_params.index).index(term)] = effect
        ys = simulate(made, nsim=nsim, seed=rng, params=beta)
        hits = 0
        for k in range(nsim):
            d = sub.copy()
            d["Reaction"] = ys.iloc[:, k].to_numpy()
            with warnings.catch_warnings():      # singular refits: counted as power_sim does
                warnings.simplefilter("ignore")
                hits += mf.lmer(FORMULA, d).fit().pvalues[term] < 0.05
        out.append(hits)
    return out


def test_power_curve_along_equals_a_direct_loop(sleep, fit):
    levels = pd.unique(sleep["Subject"])
    breaks, nsim = [5, 10], 12
    with warnings.catch_warnings():
        warnings.simplefilter("error")       # a refit's warnings are counted, not shown
        pc = mlmext.power_curve(fit, "Days", along="Subject", breaks=breaks, nsim=nsim,
                                effect=4.0, seed=11)
    direct = _direct_power(sleep, fit, lambda b: sleep["Subject"].isin(levels[:b]).to_numpy(),
                           breaks, "Days", 4.0, nsim, 11)
    assert pc["successes"].tolist() == direct
    assert pc["n_levels"].tolist() == breaks and pc["nobs"].tolist() == [50, 100]
    assert pc["failed"].tolist() == [0, 0] and pc["nsim"].tolist() == [nsim, nsim]
    # the check has teeth only if some break is neither all nor no rejections
    assert any(0 < s < nsim for s in direct)


def test_power_curve_within_equals_a_direct_loop(sleep, fit):
    breaks, nsim = [4, 7], 10
    pc = mlmext.power_curve(fit, "Days", within="Subject", breaks=breaks, nsim=nsim,
                            effect=4.0, seed=3)
    rank = sleep.groupby("Subject", sort=False).cumcount().to_numpy()
    direct = _direct_power(sleep, fit, lambda b: rank < b, breaks, "Days", 4.0, nsim, 3)
    assert pc["successes"].tolist() == direct
    assert pc["nobs"].tolist() == [18 * 4, 18 * 7]
    assert any(0 < s < nsim for s in direct)


def test_power_curve_clopper_pearson_and_plot(fit):
    pc = mlmext.power_curve(fit, "Days", along="Subject", breaks=[4, 6], nsim=10,
                            effect=3.0, seed=2, test="z")
    for _, row in pc.iterrows():
        x, n = int(row["successes"]), int(row["nsim"])
        ci = stats.binomtest(x, n).proportion_ci(0.95, method="exact")
        assert row["lower"] == pytest.approx(ci.low, abs=1e-12)
        assert row["upper"] == pytest.approx(ci.high, abs=1e-12)
        # Clopper-Pearson from beta quantiles, independently of binomtest
        lo = stats.beta.ppf(0.025, x, n - x + 1) if x > 0 else 0.0
        hi = stats.beta.ppf(0.975, x + 1, n - x) if x < n else 1.0
        assert row["lower"] == pytest.approx(lo, abs=1e-9)
        assert row["upper"] == pytest.approx(hi, abs=1e-9)
        assert row["power"] == x / n
    import matplotlib.pyplot as plt
    fig0, ax = plt.subplots()
    fig = pc.plot(ax=ax)
    assert fig is fig0
    np.testing.assert_array_equal(ax.lines[0].get_ydata(), pc["power"].to_numpy())
    plt.close(fig)


def test_bad_input(sleep, fit):
    design = sleep.drop(columns="Reaction")
    with pytest.raises(ValueError, match="unknown fixed effect 'Weeks'"):
        mlmext.power_curve(fit, "Weeks", along="Subject", breaks=[3], nsim=2)
    with pytest.raises(ValueError, match=r"breaks \[19\] are outside 1..18"):
        mlmext.power_curve(fit, "Days", along="Subject", breaks=[3, 19], nsim=2)
    with pytest.raises(ValueError, match="along='Patient' is not a column"):
        mlmext.power_curve(fit, "Days", along="Patient", breaks=[3], nsim=2)
    with pytest.raises(ValueError, match="exactly one of along"):
        mlmext.power_curve(fit, "Days", breaks=[3], nsim=2)
    with pytest.raises(TypeError):
        mlmext.power_curve(fit, "Days", along="Subject", breaks=[3], nsims=2)
    weighted = mf.lmer(FORMULA, sleep.assign(w=np.linspace(1, 2, 180)), weights="w").fit()
    with pytest.raises(NotImplementedError, match="weights"):
        mlmext.power_curve(weighted, "Days", along="Subject", breaks=[3], nsim=2)
    kw = dict(fixef=[250.0, 5.0], sigma=25.0)
    with pytest.raises(ValueError, match="one entry per random-effects term"):
        mlmext.make_lmer(FORMULA, design, varcorr={"Patient": G}, **kw)
    with pytest.raises(ValueError, match="2 x 2 covariance"):
        mlmext.make_lmer(FORMULA, design, varcorr={"Subject": 30.0 * np.eye(3)}, **kw)
    with pytest.raises(ValueError, match="scalar"):
        mlmext.make_lmer(FORMULA, design, varcorr={"Subject": 30.0}, **kw)
    with pytest.raises(ValueError, match="positive semi-definite"):
        mlmext.make_lmer(FORMULA, design, varcorr={"Subject": [[1.0, 2.0], [2.0, 1.0]]}, **kw)
    with pytest.raises(ValueError, match="one of them"):
        mlmext.make_lmer(FORMULA, design, varcorr={"Subject": G}, theta=[1, 0, 1], **kw)
    with pytest.raises(ValueError, match="fixef names"):
        mlmext.make_lmer(FORMULA, design, fixef={"Days": 5.0}, varcorr={"Subject": G}, sigma=25.0)
    with pytest.raises(ValueError, match="sigma"):
        mlmext.make_lmer(FORMULA, design, fixef=[250.0, 5.0], varcorr={"Subject": G}, sigma=0.0)
    with pytest.raises(ValueError, match="plain column name"):
        mlmext.make_lmer("log(Reaction) ~ Days + (Days | Subject)", design,
                         varcorr={"Subject": G}, **kw)
    with pytest.raises(TypeError):
        mlmext.make_lmer(FORMULA, design, varcorr={"Subject": G}, VarCorr=G, **kw)


def test_extend(sleep, fit):
    ext = mlmext.extend(fit, along="Subject", n=40, seed=4)
    d = ext.model.formula_info["data"]
    levels = pd.unique(sleep["Subject"]).astype(str)
    assert ext.nobs == 400 and d["Subject"].nunique() == 40 and ext.specified
    np.testing.assert_array_equal(ext.fe_params.to_numpy(), fit.fe_params.to_numpy())
    np.testing.assert_array_equal(ext.theta, fit.theta)
    assert ext.sigma == fit.sigma and ext.reml == fit.reml
    # the original design first, then level k copies level k mod 18 (its Days)
    assert d["Subject"].iloc[:180].tolist() == sleep["Subject"].astype(str).tolist()
    for k in (18, 30, 39):
        rows = d.loc[d["Subject"] == f"Subject_new{k + 1}", "Days"].to_numpy()
        orig = sleep.loc[sleep["Subject"].astype(str) == levels[k % 18], "Days"].to_numpy()
        np.testing.assert_array_equal(rows, orig)
    # fewer levels: the first n
    small = mlmext.extend(fit, along="Subject", n=5)
    assert small.nobs == 50
    assert set(small.model.formula_info["data"]["Subject"].astype(str)) == set(levels[:5])
    # the extended model's design is the one power_curve cuts down
    pc = mlmext.power_curve(ext, "Days", along="Subject", breaks=[40], nsim=3, seed=1,
                            test="z")
    assert pc["nobs"].tolist() == [400]
    with pytest.raises(ValueError, match="along='Patient'"):
        mlmext.extend(fit, along="Patient", n=40)
    with pytest.raises(ValueError, match="positive integer"):
        mlmext.extend(fit, along="Subject", n=0)
    with pytest.raises(ValueError, match="positive integer"):
        mlmext.extend(fit, along="Subject", n=20.5)


def test_power_sim_counts_warnings_per_simulation(sleep, fit, monkeypatch):
    """A simulation whose test warns is counted as warned (simr's warnings count) and keeps its
    p-value, instead of repeating the warning on the console.  The warning comes from a wrapper
    around the Satterthwaite df that warns on every other call, so the count is known exactly
    whatever the machine's rounding."""
    import mlmext.inference.simulation as simulation
    real = simulation.satterthwaite
    calls = []

    def warn_every_other(*args, **kwargs):
        calls.append(1)
        if len(calls) % 2 == 0:
            warnings.warn("the Satterthwaite Hessian is not positive definite (test)", RuntimeWarning)
        return real(*args, **kwargs)

    monkeypatch.setattr(simulation, "satterthwaite", warn_every_other)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ps = fit.power_sim("Days", effect=4.0, nsim=10, seed=3)
    monkeypatch.undo()
    clean = fit.power_sim("Days", effect=4.0, nsim=10, seed=3)
    assert len(calls) == 10 and ps.nsim == 10 and ps.failed == 0
    assert ps.warned == 5
    assert ps.warning_messages.to_dict() == {
        "RuntimeWarning: the Satterthwaite Hessian is not positive definite (test)": 5}
    assert "5 with warnings" in repr(ps)
    # the warned simulations keep their p-values: the same as without the warnings
    np.testing.assert_array_equal(ps.pvalues, clean.pvalues)
    assert clean.warned == 0 and np.isfinite(clean.pvalues).all()


def test_power_sim_counts_warnings_of_refits(sleep, fit):
    """Real warnings: the slope's SD is almost zero, so refits of simulated responses end on the
    boundary, where the Satterthwaite Hessian in (theta, sigma) can be indefinite (at rounding
    level on some, so how many warn depends on the machine).  The same simulations, refitted by
    hand the same way, warn exactly as often."""
    rng = np.random.default_rng(11)
    sub = sleep.loc[sleep["Subject"].isin(pd.unique(sleep["Subject"])[:5])]
    theta = np.array([fit.theta[0], 0.0, 1e-3])
    made = mlmext.make_lmer(FORMULA, sub.drop(columns="Reaction"), fit.fe_params,
                            theta=theta, sigma=fit.sigma, seed=rng)
    state = rng.bit_generator.state
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ps = made.power_sim("Days", effect=4.0, nsim=12, seed=rng)
    assert ps.nsim == 12 and ps.failed == 0
    assert ps.warning_messages.sum() >= ps.warned
    assert f"{ps.warned} with warnings" in repr(ps)
    # by hand: the same responses, refitted from the model's theta as power_sim does
    rng.bit_generator.state = state
    beta = made.fe_params.to_numpy().copy()
    beta[1] = 4.0
    ys = simulate(made, nsim=12, seed=rng, params=beta)
    warned = 0
    for k in range(12):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            made.refit(ys.iloc[:, k].to_numpy()).df_satterthwaite()
        # a boundary fit is not a warning here (lme4 says it in a message, simr does not count it)
        warned += any("singular" not in str(w.message) for w in caught)
    assert warned == ps.warned
