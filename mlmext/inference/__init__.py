"""Inference and model comparison for mixed models.

Functions that take a fitted mixed-model result, by module, and :class:`InferenceMixin`,
which puts them on the results class as methods:

* :mod:`.anova` -- :func:`anova`, likelihood-ratio tests between nested models (lme4's ``anova``),
  and with ``test="pb"`` the parametric-bootstrap test of :mod:`.pbtest` (pbkrtest's ``PBmodcomp``);
* :mod:`.lmertest` -- :func:`ranova`, :func:`drop1`, and one model's F tests (``anova(m)``,
  :func:`anova_lmm`): lmerTest's tables;
* :mod:`.ddf` -- :func:`satterthwaite`, :func:`kenward_roger`: denominator degrees of freedom
  for fixed effects and contrasts (lmerTest / pbkrtest), and t / F tests with them;
* :mod:`.intervals` -- :func:`profile`, :func:`conf_int_profile` (lme4's ``profile`` /
  ``confint(method = "profile")``), :func:`bootstrap`, :func:`conf_int_boot` (``bootMer``),
  and the Wald intervals;
* :mod:`.variance_explained` -- :func:`icc`, :func:`r2_nakagawa`, :func:`r2_snijders_bosker`;
* :mod:`.r2_multilevel` -- :func:`r2_rights_sterba` (r2mlm), :func:`r2_likelihood_ratio`
  (MuMIn's ``r.squaredLR``), :func:`r2_mitml` (mitml's ``multilevelR2``);
* :mod:`.simulation` -- :func:`simulate`, :func:`power_sim`: simulation from a fit and
  simulation-based power; :func:`refit` (``._refit``), a fit refitted to a new response;
* :mod:`.deletion` -- :func:`influence`, :func:`cooks_distance`, :func:`leverage`: case-deletion
  diagnostics and leverage (HLMdiag), per observation or per level;
* :mod:`.diagnostics` -- :func:`check_convergence`, a scale-free gradient check of the optimum;
* :mod:`.predictive` -- :func:`predictive_variance`, the variance of a new LMM observation
  around its prediction (with or without the random effects);
* :mod:`.allfit` -- :func:`allfit`: the model refitted with every available optimizer, side by
  side (lme4's ``allFit``);
* :mod:`.robust` -- :func:`cluster_robust`: cluster-robust (sandwich) covariances of LMM fixed
  effects with small-sample df (clubSandwich's CR0 / CR1 / CR2, ``coef_test``, ``Wald_test``);
* :mod:`.emmeans` -- :func:`emmeans`, estimated marginal means (R's ``emmeans``) as an
  :class:`EMMeans` table, with contrasts and their adjustments in :mod:`.emm_contrasts`;
* :mod:`.mixin` -- :class:`InferenceMixin`.

Variance parameters are named as :func:`varpar_names` says (see :mod:`.intervals`).
"""
from .allfit import AllFitTable, allfit
from .anova import AnovaTable, anova
from .ddf import kenward_roger, satterthwaite
from .lmertest import LmerTestTable, anova_lmm, drop1, ranova
from .deletion import cooks_distance, influence, leverage
from .diagnostics import ConvergenceCheck, check_convergence
from .emmeans import EMMeans, emmeans
from .emm_contrasts import EMMContrasts
from .pbtest import PBTestTable, pb_table
from .predictive import predictive_variance
from .intervals import bootstrap, conf_int_boot, conf_int_profile, profile, varpar_names
from ._refit import refit
from .refit_batch import refit_many
from .mixin import InferenceMixin
from .robust import ClusterRobust, cluster_robust, robust_note
from .simulation import PowerSimResults, power_sim, simulate
from .r2_multilevel import R2Decomposition, r2_likelihood_ratio, r2_mitml, r2_rights_sterba
from .variance_explained import icc, r2_nakagawa, r2_snijders_bosker

# public too, though never in __all__
from .ddf import kenward_roger_ftest, satterthwaite_ftest  # noqa: F401
from .intervals import boot_ci, profile_zeta  # noqa: F401

__all__ = [
    "anova", "AnovaTable", "anova_lmm", "ranova", "drop1", "LmerTestTable", "satterthwaite", "kenward_roger", "profile", "conf_int_profile",
    "bootstrap", "conf_int_boot", "icc", "r2_nakagawa", "r2_snijders_bosker", "r2_rights_sterba",
    "R2Decomposition", "r2_likelihood_ratio", "r2_mitml", "simulate",
    "power_sim", "PowerSimResults", "influence", "cooks_distance", "leverage", "check_convergence",
    "ConvergenceCheck", "allfit", "AllFitTable", "varpar_names", "InferenceMixin", "refit", "refit_many",
    "PBTestTable", "pb_table", "predictive_variance",
    "cluster_robust", "ClusterRobust", "robust_note", "emmeans", "EMMeans", "EMMContrasts",
]
