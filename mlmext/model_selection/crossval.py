"""Grouped cross-validation of mixed models: refit on training folds, score held-out rows."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy import stats

from .._progress import Progress
from ..glmm import GeneralizedLinearMixedModel
from ..inference import predictive_variance
from ..lmm import LinearMixedModel
from .splitters import GroupKFold

_SCORES = ("rmse", "mae", "log_score", "brier")
_MODES = {"re": True, "fixed": False}


class CVResults:
    """Result of :func:`cross_validate`.

    Attributes
    ----------
    folds : pandas.DataFrame
        One row per fold (index ``fold``): ``n_train``, ``n_test``, ``n_groups_test`` (groups
        with test rows), ``n_groups_unseen`` (of those, groups with no training row),
        ``converged`` (the training fit), then one column per score and prediction:
        ``rmse_re`` (with random effects), ``rmse_fixed`` (population level), ...
    mean : pandas.Series
        The scores averaged over the folds (each fold counts once, as scikit-learn's
        ``cross_validate`` averages).
    predictions : pandas.DataFrame
        Out-of-fold predictions, indexed like the data's used rows: ``fold``, ``observed``
        (the response as the model stores it: proportions for binomial models),
        ``predicted_re`` / ``predicted_fixed`` (response scale).
    scoring : tuple of str
    """

    def __init__(self, folds, predictions, scoring, cv):
        self.folds = folds
        self.predictions = predictions
        self.scoring = tuple(scoring)
        self.cv = cv
        cols = [c for c in folds.columns if c.rsplit("_", 1)[0] in _SCORES]
        self.mean = folds[cols].mean().rename("mean")

    def __repr__(self):
        tab = pd.concat([self.folds, self.mean.to_frame().T])
        return (f"Cross-validation ({self.cv!r}, {len(self.folds)} folds)\n"
                + tab.to_string(na_rep="", float_format=lambda v: f"{v:.6g}"))


def _model_parts(model, data, family, weights, offset, fit_kwargs):
    """(model class, class kwargs, formula, data, eval env or None, fit kwargs) of the input."""
    if isinstance(model, str):
        if data is None:
            raise ValueError("data is required when model is a formula")
        if family is None:
            return LinearMixedModel, {}, model, data, None, dict(fit_kwargs or {})
        return GeneralizedLinearMixedModel, {"family": family}, model, data, None, dict(fit_kwargs or {})
    res = getattr(model, "_results", model)
    mod = getattr(res, "model", res)
    if family is not None or weights is not None or offset is not None:
        raise TypeError("family, weights and offset are taken from the model; pass them only "
                        "with a formula")
    info = getattr(mod, "formula_info", None)
    formula = getattr(mod, "formula", None)
    if info is None or not isinstance(formula, str):
        raise ValueError("model must be a formula, or a model (or fitted result) made from a "
                         "formula by mf.lmer / mf.glmer")
    if type(mod) is LinearMixedModel:
        cls, kw = LinearMixedModel, {}
    elif type(mod) is GeneralizedLinearMixedModel:
        cls, kw = GeneralizedLinearMixedModel, {"family": mod.family}
    else:
        raise NotImplementedError(f"cross_validate refits linear and binomial / Poisson mixed "
                                  f"models; not a {type(mod).__name__}")
    if info.get("has_weights") or info.get("offset_arg") is not None:
        raise NotImplementedError("the model was made with weights= or offset= arguments, which "
                                  "cannot be split into folds from here; pass the formula with "
                                  "weights= / offset= column names instead")
    if data is None:
        data = info.get("data")
        if data is None:
            raise ValueError("the model holds no data (remove_data() was called); pass data=")
    fit = {}
    if res is not mod:                       # a fitted result: refit with its settings
        if cls is LinearMixedModel:
            fit["reml"] = bool(res.reml)
        elif getattr(res, "nagq", None) is not None:
            fit["nagq"] = res.nagq
    fit.update(fit_kwargs or {})
    return cls, kw, formula, data, info.get("eval_env"), fit


def _kind(model):
    if isinstance(model, LinearMixedModel):
        return "gaussian"
    name = type(model.family).__name__
    if name not in ("Binomial", "Poisson"):
        raise NotImplementedError(f"cross_validate scores linear, binomial and Poisson mixed "
                                  f"models; not the {name} family")
    return name.lower()


def _check_scoring(scoring, kind):
    if scoring is None:
        return ("rmse", "mae", "log_score", "brier") if kind == "binomial" else ("rmse", "mae", "log_score")
    scoring = (scoring,) if isinstance(scoring, str) else tuple(scoring)
    for s in scoring:
        if s not in _SCORES:
            raise ValueError(f"unknown score {s!r} in scoring; choose from {list(_SCORES)}")
        if s == "brier" and kind != "binomial":
            raise ValueError(f"scoring 'brier' is defined for binomial models only; this model "
                             f"is {kind}")
    if not scoring:
        raise ValueError("scoring names no score")
    return scoring


def _scores(scoring, kind, y, mu, w, var):
    """Scores of predictions ``mu`` of held-out responses ``y`` (weights / trials ``w``;
    ``var``: an LMM's predictive variances)."""
    out = {}
    err = y - mu
    for s in scoring:
        if s == "rmse":
            out[s] = float(np.sqrt(np.mean(err ** 2)))
        elif s == "mae":
            out[s] = float(np.mean(np.abs(err)))
        elif s == "brier":
            # per Bernoulli trial: successes score (1 - p)^2, failures p^2
            succ = y * w
            out[s] = float(np.sum(succ * (1 - mu) ** 2 + (w - succ) * mu ** 2) / np.sum(w))
        elif kind == "gaussian":              # log_score: N(mu, predictive variance)
            out[s] = float(np.mean(stats.norm.logpdf(y, mu, np.sqrt(var))))
        elif kind == "binomial":
            n = np.round(w)
            out[s] = float(np.mean(stats.binom.logpmf(np.round(y * w), n, mu)))
        else:
            out[s] = float(np.mean(stats.poisson.logpmf(y, mu)))
    return out


def _splits(cv, rng, positions, groups):
    if isinstance(cv, (int, np.integer)) and not isinstance(cv, bool):
        cv = GroupKFold(int(cv), shuffle=rng is not None, rng=rng)
    elif rng is not None:
        raise TypeError("rng is used only when cv is a number of folds (the splitter given "
                        "has its own)")
    if hasattr(cv, "split"):
        return cv, list(cv.split(positions, groups=groups))
    try:
        pairs = [(np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)) for a, b in cv]
    except (TypeError, ValueError):
        raise ValueError("cv must be a number of folds, a splitter with split(X, y, groups), or "
                         "(train, test) pairs of row positions") from None
    return "given folds", pairs


def cross_validate(model, data=None, groups=None, cv=5, scoring=None, re="both", family=None,
                   weights=None, offset=None, fit_kwargs=None, rng=None, progress=False):
    """Grouped cross-validation of a linear, binomial or Poisson mixed model.

    For each fold the model is built from the formula on the training rows and fitted;
    the held-out rows are predicted with the random effects (conditional modes for groups
    seen in training, the population value for unseen ones, as ``predict(re=True)``) and
    without them (``re=False``), and scored.

    Parameters
    ----------
    model : str, model or fitted result
        A formula (``"y ~ x + (1 | g)"``: an LMM, or a GLMM when ``family`` is given), or a
        model / fitted result made by ``mf.lmer`` / ``mf.glmer`` (its formula, family, data
        and, for a result, its ``reml`` / ``nagq`` are used).
    data : pandas.DataFrame
        Required with a formula; by default the model's data otherwise.
    groups : str or array_like
        The column of ``data`` (or one label per row of ``data``) whose groups the folds
        keep together (:class:`GroupKFold`) or stratify by (:class:`WithinGroupKFold`).
    cv : int, splitter or iterable
        A number of folds (leave-groups-out :class:`GroupKFold`), a splitter with
        ``split(X, y, groups)`` (:class:`GroupKFold`, :class:`LeaveOneGroupOut`,
        :class:`WithinGroupKFold`, or scikit-learn's group splitters), or ``(train, test)``
        pairs of positions among the rows the model uses (rows with missing values dropped).
    scoring : str or sequence of str, optional
        From ``"rmse"``, ``"mae"``, ``"log_score"`` and (binomial) ``"brier"``; all that
        apply by default.  RMSE and MAE are on the response scale (proportions for binomial
        models); ``log_score`` is the mean log predictive density of a held-out row: LMM
        the normal density around the prediction with the variance of
        :func:`mlmext.inference.predictive_variance` (``sigma^2 / weight`` plus the
        conditional variance of the row's random effects for seen levels, their full
        variance for unseen levels and for ``re=False``); binomial the binomial
        log-probability of the successes at the predicted probability, Poisson the Poisson
        log-probability at the predicted mean; ``brier`` is the mean squared error per
        Bernoulli trial.
    re : {"both", True, False}
        Score predictions with random effects (columns ``*_re``), without (``*_fixed``), or
        both.
    family : statsmodels family, optional
        With a formula: ``Binomial()`` or ``Poisson()`` for a GLMM.
    weights, offset : str, optional
        With a formula: column names of prior weights (binomial trials) and an offset.
    fit_kwargs : dict, optional
        Passed to each fold's ``fit`` (e.g. ``{"reml": False}``, ``{"nagq": 10}``).
    rng : int or numpy.random.Generator, optional
        With ``cv`` a number: shuffle the groups into folds with this seed (default: the
        deterministic size-balanced assignment).
    progress : bool
        Show a progress bar (one step per fold).

    Returns
    -------
    CVResults
        ``.folds`` (one row per fold), ``.mean``, ``.predictions``.

    Raises
    ------
    ValueError
        ``groups`` missing or not a column of ``data``, fewer groups than folds, an unknown
        score or one not defined for the family, an empty test fold.
    """
    cls, cls_kw, formula, data, env, fit_kw = _model_parts(model, data, family, weights, offset,
                                                           fit_kwargs)
    if re not in ("both", True, False):
        raise ValueError(f"re must be 'both', True or False; got {re!r}")
    modes = list(_MODES.items()) if re == "both" else [("re" if re else "fixed", bool(re))]
    if not isinstance(data, pd.DataFrame):
        raise ValueError("data must be a pandas DataFrame")
    if groups is None:
        raise ValueError("groups is required: the column of data whose groups define the folds")
    if isinstance(groups, str):
        if groups not in data.columns:
            raise ValueError(f"groups column {groups!r} is not in data (columns: {list(data.columns)})")
        glabels = data[groups].to_numpy()
    else:
        glabels = np.asarray(groups)
        if glabels.shape != (len(data),):
            raise ValueError(f"groups has {glabels.size} labels for {len(data)} rows of data")
    for name, v in (("weights", weights), ("offset", offset)):
        if v is not None and not isinstance(v, str):
            # (an array has the whole data's rows: each fold's fit takes a subset of them)
            raise ValueError(f"{name} must be a column name of data in cross_validate (the "
                             f"folds refit subsets of the rows); got {type(v).__name__}")
    index = data.index
    data = data.reset_index(drop=True)       # positions are the row labels from here on
    kw = dict(cls_kw, weights=weights, offset=offset)
    if env is None:
        # the caller's variables for the formula (from_formula counts frames from its caller)
        full = cls.from_formula(formula, data, eval_env=1, **kw)
        env = full.formula_info["eval_env"]
    else:
        full = cls.from_formula(formula, data, eval_env=env, **kw)
    kind = _kind(full)
    scoring = _check_scoring(scoring, kind)
    used = np.asarray(full.formula_info["row_labels"], dtype=np.int64)
    g_used = pd.Series(glabels[used])
    if g_used.isna().any():
        raise ValueError("groups has missing labels in rows the model uses")
    y_all = np.asarray(full.endog, dtype=float)
    w_all = np.asarray(full.weights, dtype=float)
    splitter, splits = _splits(cv, rng, used, g_used.to_numpy())
    bar = Progress(len(splits), progress, "cross-validation ")
    rows, pred = [], {f"predicted_{m}": np.full(len(used), np.nan) for m, _ in modes}
    fold_of = np.full(len(used), -1, dtype=np.int64)
    for k, (tr, te) in enumerate(splits):
        tr, te = np.asarray(tr, dtype=np.int64), np.asarray(te, dtype=np.int64)
        if te.size == 0:
            raise ValueError(f"fold {k} has no test rows")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # singular folds are common; `converged` says it
            res = cls.from_formula(formula, data.iloc[used[tr]], eval_env=env, **kw).fit(**fit_kw)
        test_df = data.iloc[used[te]]
        gte, gtr = set(g_used.iloc[te]), set(g_used.iloc[tr])
        row = {"n_train": int(tr.size), "n_test": int(te.size), "n_groups_test": len(gte),
               "n_groups_unseen": len(gte - gtr), "converged": bool(res.converged)}
        y, w = y_all[te], w_all[te]
        for label, flag in modes:
            mu = np.asarray(res.predict(data=test_df, re=flag), dtype=float)
            pred[f"predicted_{label}"][te] = mu
            var = None
            if kind == "gaussian" and "log_score" in scoring:
                var = predictive_variance(res, test_df, re=flag, weights=w).to_numpy()
            for s, v in _scores(scoring, kind, y, mu, w, var).items():
                row[f"{s}_{label}"] = v
        fold_of[te] = k
        rows.append(row)
        bar.step()
    folds = pd.DataFrame(rows, index=pd.RangeIndex(len(rows), name="fold"))
    order = ["n_train", "n_test", "n_groups_test", "n_groups_unseen", "converged"]
    folds = folds[order + [f"{s}_{m}" for s in scoring for m, _ in modes]]
    tested = fold_of >= 0
    predictions = pd.DataFrame({"fold": fold_of, "observed": y_all, **pred},
                               index=index[used])[tested]
    return CVResults(folds, predictions, scoring, splitter)
