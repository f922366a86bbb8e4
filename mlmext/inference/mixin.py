"""``InferenceMixin``: the inference functions as methods of the mixed-model results class."""
from __future__ import annotations

import pandas as pd

from ._common import _fe_names
from .allfit import allfit
from .coefs import coef, corr_fe, corr_fe_text
from .ddf import kenward_roger, params_table_ddf, satterthwaite, t_test_ddf
from .ddf_default import ddf_active, default_pvalues, default_wald_test, df_series
from .deletion import cooks_distance, influence, leverage
from .diagnostics import check_convergence
from .emmeans import emmeans
from ._refit import refit
from .refit_batch import refit_many
from .intervals import _wald_conf_int, bootstrap, conf_int_boot, conf_int_profile, profile
from .robust import get_robustcov_results, robust_t_test, robust_wald_test
from .simulation import power_sim, simulate
from .r2_multilevel import r2_likelihood_ratio, r2_mitml, r2_rights_sterba
from .variance_explained import icc, r2_nakagawa, r2_snijders_bosker


class InferenceMixin:
    """Inference methods of mixed-model results (first base class of ``MixedResults``)."""

    cov_type = "nonrobust"      # "cluster" on the results of get_robustcov_results
    cov_kwds = {}

    def get_robustcov_results(self, cov_type="cluster", **kwargs):
        """A NEW results object whose covariance of the fixed effects is cluster-robust.

        As R's clubSandwich for ``lmer`` fits (``vcovCR``): the sandwich with the model's
        marginal covariance ``V`` as working model, by cluster.  ``bse``, ``cov_params()``,
        ``tvalues``, ``pvalues``, ``conf_int()``, ``t_test``, ``wald_test`` and ``summary()``
        of the new object use it; this result is unchanged.

        Parameters
        ----------
        cov_type : {"cluster", "nonrobust"}
            ``"nonrobust"`` gives a copy with the model-based covariance.
        type : {"CR2", "CR0", "CR1", "CR1p", "CR1S"}
            Small-sample correction (clubSandwich's names; default CR2, Bell-McCaffrey /
            Pustejovsky-Tipton).  CR1 is CR0 times ``J / (J - 1)`` for ``J`` clusters.
        groups : None, str or array_like
            The clusters.  Default: the grouping factor with the fewest levels (the outermost
            one, as clubSandwich); a grouping factor or model-frame column by name; or one
            value per fitted row.  Every grouping factor must be nested in the clusters.
        df : {"satterthwaite", "z", "naive-t", "naive-tp"}
            The tests' reference distribution (clubSandwich's ``coef_test`` tests):
            ``"satterthwaite"`` (default) t tests on Pustejovsky-Tipton's df per
            coefficient, and HTZ F tests in ``wald_test``; normal / chi-square; t on
            ``J - 1`` or ``J - p`` df.

        Returns
        -------
        MixedResultsWrapper
            ``cov_type == "cluster"``, ``cov_kwds`` the settings used; ``df_resid_inference``
            holds the df per coefficient.

        Raises
        ------
        NotImplementedError
            For GLMM and clmm fits, and models with prior weights.
        ValueError
            For unknown settings, and clusters that do not nest the random effects.
        TypeError
            For keyword arguments other than ``type``, ``groups`` and ``df``.
        """
        return self._results_wrapper(get_robustcov_results(self, cov_type, **kwargs))

    @property
    def pvalues(self):
        """Two-sided p-values of the fixed effects: for LMMs, t tests on the df method of the
        fit (``fit(ddf=...)``: Satterthwaite by default, as lmerTest's ``summary``); z tests
        for ``ddf="z"``, GLMMs and clmm; cluster-robust results: their own tests."""
        if ddf_active(self):
            return default_pvalues(self)
        return super().pvalues

    @property
    def df_inference(self):
        """The df of each fixed effect's t test (the ``df`` column of ``summary()``), a Series;
        None for z tests.  Computed on first use, then cached.  Cluster-robust results: their
        own df (``df_resid_inference``)."""
        return df_series(self)

    def wald_test(self, r_matrix, cov_p=None, invcov=None, use_f=None, df_constraints=None,
                  scalar=True):
        """statsmodels' Wald test.  LMMs with t tests (``fit(ddf=...)``, default): an F test on
        Satterthwaite's (lmerTest's ``contestMD``) or Kenward-Roger's (pbkrtest's) denominator
        df; ``use_f=False`` gives the chi-square test.  On a cluster-robust result with
        Satterthwaite df (the default), clubSandwich's HTZ F test."""
        default = (self.cov_kwds.get("df") == "satterthwaite" or ddf_active(self))
        if default and cov_p is None and invcov is None:
            if use_f is False:
                return super().wald_test(r_matrix, use_f=False, df_constraints=df_constraints,
                                         scalar=scalar)
            if df_constraints is not None or not scalar:
                # (both were ignored: the F test below has its own numerator df and scalars)
                raise TypeError("df_constraints= and scalar=False apply to statsmodels' own Wald "
                                "test: pass cov_p=res.cov_params() (with use_f) for it, or "
                                "use_f=False for the chi-square test; the default F test uses "
                                "the fit's denominator df")
            if ddf_active(self):
                return default_wald_test(self, r_matrix)
            return robust_wald_test(self, r_matrix)
        return super().wald_test(r_matrix, cov_p=cov_p, invcov=invcov, use_f=use_f,
                                 df_constraints=df_constraints, scalar=scalar)

    def df_satterthwaite(self):
        """Satterthwaite denominator df per fixed effect (lmerTest's ``summary`` df).

        Returns
        -------
        pandas.Series
            Indexed by the fixed-effect names.
        """
        return pd.Series(satterthwaite(self), index=_fe_names(self), name="df_satterthwaite")

    def df_kenward_roger(self):
        """Kenward-Roger denominator df per fixed effect (REML fits; pbkrtest / lmerTest).

        Returns
        -------
        pandas.Series
        """
        return pd.Series(kenward_roger(self)[0], index=_fe_names(self), name="df_kenward_roger")

    def cov_params_kenward_roger(self):
        """pbkrtest's adjusted covariance of the fixed effects (``vcovAdj``)."""
        V = kenward_roger(self)[1]
        return pd.DataFrame(V, index=_fe_names(self), columns=_fe_names(self))

    def coef(self):
        """Per-level coefficients, fixed effects plus conditional modes (lme4's ``coef(fit)``).

        Returns
        -------
        dict of pandas.DataFrame
            Per grouping factor: levels x fixed effects.  See :func:`mlmext.inference.coefs.coef`.
        """
        return coef(self)

    @property
    def corr_fe(self):
        """Correlation matrix of the fixed-effect estimates (a DataFrame; lme4's
        ``cov2cor(vcov(fit))``, printed by ``summary(correlation=True)``)."""
        return corr_fe(self)

    def _corr_fe_text(self):
        return corr_fe_text(self.corr_fe)

    def t_test(self, r_matrix, cov_p=None, use_t=None, df=None):
        """t tests of linear hypotheses ``R beta = q``, optionally with lmerTest's df.

        Parameters
        ----------
        r_matrix : array_like, str, or tuple
            As in statsmodels (``"Days = 0"``, a matrix, or ``(R, q)``).
        cov_p, use_t
            As in statsmodels: with ``cov_p``, or ``use_t=False`` (z tests), statsmodels'
            own tests (``use_t=True`` with ``cov_p``: t on ``df_resid``); not with ``df``.
        df : {None, "satterthwaite", "kenward-roger", "z"}
            Denominator degrees of freedom per contrast; None: the fit's method
            (``fit(ddf=...)``, Satterthwaite by default for LMMs; z for GLMM / clmm);
            ``"z"``: normal tests.  Kenward-Roger also uses the adjusted covariance for the
            standard errors (as lmerTest).  On a cluster-robust result
            (:meth:`get_robustcov_results`) leave it None: the tests then use the robust
            covariance and its own df (clubSandwich's Satterthwaite df per contrast).

        Returns
        -------
        statsmodels.stats.contrast.ContrastResults
        """
        if isinstance(df, str) and df.strip().lower() == "z":
            if use_t:
                raise TypeError("df='z' gives normal tests: use_t=True contradicts it")
            return super().t_test(r_matrix, cov_p=cov_p, use_t=False)
        if df is not None and (cov_p is not None or use_t is False):
            # (both were ignored: the df and, for Kenward-Roger, the covariance are the fit's)
            raise TypeError(f"df={df!r} tests with the fit's own covariance and t distribution: "
                            "cov_p= and use_t=False apply with df=None (statsmodels' tests)")
        if df is None:
            if self.cov_kwds.get("df") == "satterthwaite" and cov_p is None and use_t is not False:
                return robust_t_test(self, r_matrix)        # a df per contrast
            if ddf_active(self):
                if cov_p is None and use_t is not False:
                    return t_test_ddf(self, r_matrix, self.ddf)
                use_t = bool(use_t)           # statsmodels' df_resid is not the fit's df
            return super().t_test(r_matrix, cov_p=cov_p, use_t=use_t)
        return t_test_ddf(self, r_matrix, df)

    def conf_int(self, alpha=0.05, cols=None, method="wald", nsim=500, seed=None,
                 boot_type="perc", progress=False, names="descriptive", nb_alpha=None):
        """Confidence intervals for the fixed effects, and variance parameters.

        Parameters
        ----------
        alpha : float
            1 - confidence level.
        cols : array_like, optional
            ``method="wald"``: as statsmodels (positions of fixed effects).  Otherwise the
            rows to compute (names or positions).
        method : {"wald", "profile", "boot"}
            ``"wald"``: Wald intervals for the fixed effects, with the quantiles of the
            fit's tests (LMMs: t on each coefficient's Satterthwaite or Kenward-Roger df,
            the latter with its adjusted standard errors, as ``summary()``; normal for
            ``fit(ddf="z")``, GLMM and clmm).
            ``"profile"``: profile-likelihood intervals (lme4's
            ``confint(method = "profile")``, see :func:`conf_int_profile`) for LMMs (the
            profile of the ML fit) and GLMMs (the fit's own Laplace or adaptive
            Gauss-Hermite deviance; a family's dispersion and zero-inflation coefficients
            re-optimized and profiled as in glmmTMB; ``glmer_nb``: alpha held at its
            estimate as in lme4, see ``nb_alpha``); not for clmm.
            ``"boot"``: parametric bootstrap (:func:`conf_int_boot`).
        nsim, seed, boot_type, progress
            Bootstrap settings: replicates, seed, ``"perc"``/``"basic"``/``"norm"``,
            progress bar.
        names : {"descriptive", "lme4"}
            Row names of the variance parameters: ``sd_Days|Subject``,
            ``cor_Days.Intercept|Subject``, ``sigma`` -- or lme4's ``.sig01``, ``.sigma``.
        nb_alpha : {None, "fixed", "free"}
            Profile intervals of ``glmer_nb`` fits: alpha held at its estimate
            (``"fixed"``, the default: lme4's) or re-optimized and profiled (``"free"``:
            glmmTMB's); ``TypeError`` for other models and methods.

        Returns
        -------
        pandas.DataFrame or numpy.ndarray
            Columns ``0`` (lower) and ``1`` (upper) for every method, as statsmodels';
            rows indexed by parameter name (index name ``parameter``).  Wald: the fixed
            effects (an array for array data, as statsmodels).  Profile / boot: rows for the
            variance parameters (sd / correlation scale, then ``sigma`` for LMMs) and the
            fixed effects; one-sided intervals at a bound (an SD whose profile stays above
            the cutoff down to 0 gets the lower limit 0, as in lme4) are listed in
            ``attrs["boundary"]`` (profile).
        """
        m = str(method).lower()
        if nb_alpha is not None and m != "profile":
            raise TypeError(f"nb_alpha applies to method='profile' only (got method={method!r})")
        # settings another method would read: not dropped in silence (boot_type="basic"
        # with the default Wald method gave the Wald intervals)
        unread = {"nsim": nsim != 500, "seed": seed is not None, "boot_type": boot_type != "perc",
                  "progress": bool(progress)} if m not in ("boot", "bootstrap") else {}
        unread["names"] = m == "wald" and names != "descriptive"
        unread = [k for k, given in unread.items() if given]
        if unread:
            raise TypeError(f"conf_int(method={method!r}) does not read {', '.join(unread)} "
                            "(bootstrap settings are for method='boot', names for 'profile' "
                            "and 'boot': Wald rows are the fixed effects' names)")
        if m == "wald":
            return _wald_conf_int(self, alpha, cols)
        if m == "profile":
            return conf_int_profile(self, alpha=alpha, cols=cols, names=names, nb_alpha=nb_alpha)
        if m in ("boot", "bootstrap"):
            return conf_int_boot(self, alpha=alpha, cols=cols, nsim=nsim, seed=seed,
                                 boot_type=boot_type, progress=progress, names=names)
        raise ValueError(f"unknown method {method!r}; use 'wald', 'profile' or 'boot'")

    def profile(self, cols=None, alpha=0.01, npoints=6, names="descriptive", nb_alpha=None):
        """Profile zeta traces (lme4's ``profile``) for LMMs and GLMMs.

        Parameters
        ----------
        cols : list, optional
            Parameters (names or positions); all by default.
        alpha : float
            Each trace reaches the profile interval of level ``1 - alpha`` (or a bound).
        npoints : int
            Points per side.
        names : {"descriptive", "lme4"}
        nb_alpha : {None, "fixed", "free"}
            ``glmer_nb`` fits: alpha held at its estimate (lme4's, the default) or
            re-optimized and profiled (glmmTMB's); see :meth:`conf_int`.

        Returns
        -------
        pandas.DataFrame
            ``parameter``, ``value``, ``zeta``; :func:`mlmext.plots.profile` draws it.
            See :func:`mlmext.inference.profile`.
        """
        return profile(self, cols=cols, alpha=alpha, npoints=npoints, names=names,
                       nb_alpha=nb_alpha)

    def bootstrap(self, func=None, nsim=100, seed=None, re=True, progress=False):
        """Parametric bootstrap replicates; see :func:`mlmext.inference.bootstrap`."""
        return bootstrap(self, func=func, nsim=nsim, seed=seed, re=re, progress=progress)

    def icc(self):
        """Adjusted and conditional ICC; see :func:`mlmext.inference.icc`."""
        return icc(self)

    def r2(self, method="nakagawa", **kwargs):
        """R² of the model.

        Parameters
        ----------
        method : {"nakagawa", "snijders-bosker", "rights-sterba", "lr", "mitml"}
            Nakagawa & Schielzeth marginal / conditional (:func:`r2_nakagawa`),
            Snijders & Bosker level-1 / level-2 (:func:`r2_snijders_bosker`), Rights &
            Sterba's decomposition as R's r2mlm (:func:`r2_rights_sterba`, also
            ``"r2mlm"``), MuMIn's likelihood-ratio R² (:func:`r2_likelihood_ratio`) or
            mitml's RB1 / RB2 / SB / MVP (:func:`r2_mitml`).
        **kwargs
            Passed on (``null=``, ``group_size=``, ``null_re=``).
        """
        m = method.lower().replace("_", "-")
        if m == "nakagawa":
            return r2_nakagawa(self, **kwargs)
        if m in ("snijders-bosker", "sb"):
            return r2_snijders_bosker(self, **kwargs)
        if m in ("rights-sterba", "r2mlm"):
            return r2_rights_sterba(self, **kwargs)
        if m in ("lr", "likelihood-ratio"):
            return r2_likelihood_ratio(self, **kwargs)
        if m in ("mitml", "multilevelr2"):
            return r2_mitml(self, **kwargs)
        raise ValueError("method must be 'nakagawa', 'snijders-bosker', 'rights-sterba', 'lr' "
                         f"or 'mitml'; got {method!r}")

    def emmeans(self, specs, by=None, at=None, type="link", ddf=None, level=0.95, mode=None,
                weights="equal", cov_keep=2, **kwargs):
        """Estimated marginal means (R's ``emmeans``): ``res.emmeans("sector", by="female")``.

        Returns an :class:`~mlmext.inference.EMMeans` table (a DataFrame) with ``pairs()``,
        ``contrast()``, ``regrid()`` and ``plot()``; see :func:`mlmext.inference.emmeans` for
        the arguments (``type="response"`` back-transforms GLMM means and those of a
        transformed LMM response such as ``np.log(y)``; ``weights=`` as emmeans'; LMM df
        Kenward-Roger by default, ``ddf="satterthwaite"``; clmm means on the latent scale).
        """
        return emmeans(self, specs, by=by, at=at, type=type, ddf=ddf, level=level, mode=mode,
                       weights=weights, cov_keep=cov_keep, **kwargs)

    def refit(self, endog, **fit_kwargs):
        """The model refitted to a new response; see :func:`mlmext.inference.refit`."""
        return refit(self, endog, **fit_kwargs)

    def refit_many(self, Y, **fit_kwargs):
        """The model refitted to each column of ``Y`` (one result per column, as
        ``[self.refit(y) for y in Y.T]``, batched where the design allows); see
        :func:`mlmext.inference.refit_many`."""
        return refit_many(self, Y, **fit_kwargs)

    def simulate(self, nsim=1, seed=None, re=True, use_u=False, params=None):
        """Simulated responses; see :func:`mlmext.inference.simulate`."""
        return simulate(self, nsim=nsim, seed=seed, re=re, use_u=use_u, params=params)

    def power_sim(self, term, effect=None, nsim=100, alpha=0.05, test="satterthwaite", seed=None,
                  conf_level=0.95, progress=False):
        """Simulation-based power for a fixed effect; see :func:`mlmext.inference.power_sim`."""
        return power_sim(self, term, effect=effect, nsim=nsim, alpha=alpha, test=test, seed=seed,
                         conf_level=conf_level, progress=progress)

    def influence(self, group=None, method="one-step"):
        """Case-deletion influence (Cook's distance, MDFFITS, COVTRACE, COVRATIO, RVC) per level
        or per observation; see :func:`mlmext.inference.influence`."""
        return influence(self, group=group, method=method)

    def cooks_distance(self, group=None, method="one-step"):
        """Cook's distance per level or observation; see :func:`mlmext.inference.cooks_distance`."""
        return cooks_distance(self, group=group, method=method)

    def leverage(self, group=1):
        """Leverage (overall, fixed and random parts); see :func:`mlmext.inference.leverage`."""
        return leverage(self, group=group)

    def check_convergence(self, tol=1e-5):
        """Gradient check of the optimum; see :func:`mlmext.inference.check_convergence`."""
        return check_convergence(self, tol=tol)

    def allfit(self, methods=None, maxfev=20000):
        """Refit with every available optimizer and compare (lme4's ``allFit``).

        Parameters
        ----------
        methods : sequence of str, optional
            Optimizers besides the default fit (see :func:`mlmext.inference.allfit`).
        maxfev : int
            Evaluations allowed to each derivative-free minimizer (GLMMs, clmm).

        Returns
        -------
        AllFitTable
            One row per optimizer: deviance, estimates, ``converged``, ``seconds``, ``note``;
            ``summary()`` gives the largest differences between the fits.
        """
        return allfit(self, methods=methods, maxfev=maxfev)

    def _ddf_params_table(self, ddf, alpha=0.05):
        """The fixed-effects table with t tests on ``ddf`` degrees of freedom (for ``summary``)."""
        return params_table_ddf(self, ddf, alpha)
