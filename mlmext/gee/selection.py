"""gee_select: one GEE per candidate working correlation on the same rows, compared by QIC.

The rows are checked, cleaned and sorted once (with the helpers of
:mod:`mlmext.gee.inputs`); every candidate of :mod:`mlmext.gee.candidates` is then fitted
to them, scored by :func:`mlmext.gee.criteria.qic` against the independence fit, and
flagged by :mod:`mlmext.gee.diagnostics`.
"""
from __future__ import annotations

import inspect
import re
import warnings

import numpy as np
import pandas as pd
from statsmodels.genmod import families
from statsmodels.tools.sm_exceptions import (ConvergenceWarning, IterationLimitWarning, PerfectSeparationWarning,
                                             SingularMatrixWarning)

from .._args import reject_unknown
from .._frames import as_dataframe
from ..base import caller_namespace
from .candidates import _parse_structures
from .covstructs import PairwiseCovStruct
from .criteria import qic
from .fitting import ScaleFreeGEE
from .diagnostics import _correlation_problems, _describe, _n_corr_params
from .inputs import (_aliased, _check_finite, _check_label_kinds, _check_terms_have_columns,
                     _column, _formula_rows, _label, _numeric, _outside_arrays, _resolve_family)
from .results import GEESelection

__all__ = ["gee_select"]


_FIT_KEYS = set(inspect.signature(ScaleFreeGEE.fit).parameters) - {"self"}
_MODEL_KEYS = ("weights", "offset", "exposure", "dep_data", "eval_env", "missing")
_FLAGGED_WARNINGS = (ConvergenceWarning, IterationLimitWarning, SingularMatrixWarning)
# arguments of GEE / geepack that mean something else here, or that gee_select cannot honour
_HINTS = {
    "cov_struct": "did you mean cov_structs=? (a list of names or CovStruct instances)",
    "corstr": "geepack's corstr: use cov_structs=['exchangeable', 'ar1', ...]",
    "id": "geepack's id: use groups=",
    "waves": "geepack's waves: use time=",
    "subset": "select the rows first, data=df[mask]: rows are dropped and sorted before fitting, "
              "so a subset would not line up with them",
    "constraint": "QIC of a constrained GEE is not supported",
    "update_dep": "gee_select compares estimated working correlations; without updates every "
                  "structure would stay at its starting value",
    "control": "give maxiter= and ctol= directly",
    "verbose": "gee_select prints nothing; print(sel.summary()) shows the comparison",
    "type": "the working correlations are chosen with cov_structs=",
}


def gee_select(formula, groups, data, family, cov_structs=None, time=None, **kwargs):
    """
    Fit a GEE with several working correlations and compare them by QIC.

    Parameters
    ----------
    formula : str
        The mean model, a statsmodels (patsy) formula, e.g. ``"y ~ x + C(g)"``.
        Every variable it uses must be a column of ``data`` (rows are dropped
        and sorted before fitting, so an array from outside would be misaligned;
        such a name raises ``ValueError``).
    groups : str or array_like
        The cluster column (or labels, one per row).  Labels are values: a
        column mixing numbers and strings (``1`` and ``"1"``) raises
        ``ValueError`` rather than merging or splitting clusters.
    data : DataFrame
        The data: a pandas or polars DataFrame, a pyarrow Table or a dict of
        columns.  Nullable pandas columns (``Int64``, ``Float64``,
        ``boolean``, ``string``) are read with ``pd.NA`` as a missing value.
    family : statsmodels family or str
        A Gaussian, Binomial, Poisson or Gamma family instance (any link), or
        one of the names ``"gaussian"``, ``"binomial"``, ``"poisson"``,
        ``"gamma"`` for the family with its default (canonical) link.
    cov_structs : str, CovStruct, list or dict, optional
        Names among ``"independence"``, ``"exchangeable"``, ``"ar1"``,
        ``"unstructured"``, ``"stationary"`` and ``"nested"``, or statsmodels
        ``CovStruct`` instances (named by their lowercased class name), or a
        dict ``{name: structure}``.  Default: independence, exchangeable, ar1
        and unstructured.  Independence is always included.
    time : str or array_like, optional
        The time of each observation, numeric: orders rows within clusters and
        defines the lags of ``ar1`` (``rho ** |t_j - t_k|``, in the unit of
        ``time``) and the cells of ``unstructured``.  Dates and durations
        (datetime64, timedelta64, Period, ``datetime.date``) raise
        ``ValueError``: they have no unit for a lag, so give numbers in the unit
        one lag should mean, e.g. ``(df.date - df.date.min()).dt.days``.  ``ar1``
        and ``unstructured`` need distinct times within a cluster.  Without
        ``time``, positions within the cluster are used (geepack's default
        ``waves``).
    **kwargs
        Arguments of ``GEE.fit`` (``maxiter``, ``ctol``, ``scale``,
        ``ddof_scale``, ...) are passed to every fit; defaults here are
        ``maxiter=25`` and ``ddof_scale=0`` (geepack's iteration limit and
        scale estimate) and ``ctol=1e-8``, the tolerance of the scale-free
        stopping rule (see Notes), not statsmodels' absolute one.  ``weights``, ``offset`` and ``exposure`` (column
        names or arrays), ``dep_data`` for ``nested`` (column names or a
        formula) and ``eval_env`` (as in statsmodels; by default the caller's
        variables and functions are visible to the formula) go to
        ``GEE.from_formula``.  ``missing="drop"`` (default) drops incomplete
        rows, ``missing="raise"`` raises ``ValueError`` if there are any.  Any
        other name raises ``TypeError``.

    Returns
    -------
    GEESelection
        ``.table``, ``.best``, ``.results``, ``summary()``.

    Raises
    ------
    ValueError
        For input that cannot give a meaningful comparison, naming the column
        or argument: unknown columns; non-numeric or infinite values in the
        response, a predictor, ``weights``, ``offset``, ``exposure`` or
        ``time`` (infinity is not a missing value); a constant response; a
        response outside the family's range; negative weights, non-positive
        exposure; a rank-deficient design (the aliased columns are named); fewer
        than two clusters, or clusters of one observation only; repeated times
        within a cluster for ``ar1`` or ``unstructured``; a model that predicts
        every response exactly (perfect separation).
    TypeError
        For a keyword argument that is not read (a misspelling such as
        ``weight=`` or ``cov_struct=``).

    Notes
    -----
    Rows with a missing value (NaN, None, ``pd.NA``, NaT) in any column used
    (formula, groups, time, weights, offset, exposure, dep_data) are dropped
    once, before any fit, and counted in ``n_dropped``; rows are then sorted by
    cluster and time, so every structure is fitted to the same rows in the
    same order.

    ``exchangeable``, ``ar1`` and ``unstructured`` are
    :class:`PairwiseExchangeable`, :class:`PairwiseAR1` and
    :class:`PairwiseUnstructured` (geepack's estimators).  ``stationary`` is
    statsmodels' ``Stationary`` with every lag; ``nested`` is statsmodels'
    ``Nested`` and needs ``dep_data``.

    A structure is flagged (column ``flag``) and not chosen as ``best`` when
    its fit failed or did not converge, a standard error is not finite, or its
    working correlation has estimates outside [-1, 1] or is not positive
    definite.  QIC is computed with :func:`qic`, with ``Omega_I`` from the
    independence fit in the table.

    A fit counts as converged when its last mean step is below ``ctol``
    standard errors and its last working-correlation update changed no
    correlation by more than ``ctol`` (default 1e-8; see
    :class:`mlmext.gee.fitting.ScaleFreeGEE`).  Neither depends on the units
    of the response or the covariates, unlike statsmodels' rule (score norm
    below an absolute ``ctol``) and geepack's (no parameter changed by more
    than an absolute epsilon).  Each iteration is geepack's: a Fisher-scoring
    step for the mean, then the moment estimates at the new mean, both starting
    from the GLM fit with an identity working correlation.  With geepack's
    limit of 25 iterations, a structure that does not settle stops at the same
    iterate as ``geeglm`` (dietox's unstructured fit, for one).
    """
    data = as_dataframe(data, "data")
    if not isinstance(formula, str) or "~" not in formula:
        raise ValueError(f"gee_select: formula must be a string with a response, such as 'y ~ x', "
                         f"got {formula!r}")
    if "^" in re.sub(r"`[^`]*`|(['\"]).*?\1", " ", formula):
        # patsy would evaluate Python's exclusive or: a^2 of an integer column is another column
        raise ValueError(f"formula {formula!r} uses '^': write a power as I(x**2) and R's "
                         "crossing (a + b)^2 as (a + b)**2 (in Python '^' is the exclusive or)")
    if re.search(r"\boffset\s*\(", formula):
        raise ValueError(f"formula {formula!r}: gee_select takes the offset as an argument, not in the "
                         "formula: offset='column' or offset=<array>, or exposure='column' for log(exposure)")
    family = _resolve_family(family)
    fit_kwargs = {"maxiter": 25, "ddof_scale": 0}
    fit_kwargs.update({k: kwargs.pop(k) for k in list(kwargs) if k in _FIT_KEYS})
    model_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in _MODEL_KEYS}
    reject_unknown(kwargs, "gee_select()", hints=_HINTS,
                   accepted=["formula", "groups", "data", "family", "cov_structs", "time",
                             *_MODEL_KEYS, *_FIT_KEYS])
    eval_env = model_kwargs.pop("eval_env", 0)
    if isinstance(eval_env, int):    # statsmodels' meaning: 0 is the caller's namespace, -1 an empty one
        eval_env = {} if eval_env == -1 else caller_namespace(1 + eval_env)
    missing = model_kwargs.pop("missing", "drop")
    if missing not in ("drop", "raise"):
        raise ValueError(f"gee_select: missing must be 'drop' or 'raise', got {missing!r}")
    if groups is None:
        raise ValueError("gee_select: groups is required (the column that identifies the clusters, "
                         "e.g. the subject)")

    # Arrays are matched to rows before the index is dropped; names for messages.
    names = {"groups": _label(groups), "time": _label(time)}
    aux = {"groups": _column(data, groups, "groups"), "time": _column(data, time, "time")}
    if time is not None:
        aux["time"] = _numeric(aux["time"], "time", names["time"])
    for key in ("weights", "offset", "exposure"):
        if model_kwargs.get(key) is not None:
            names[key] = _label(model_kwargs[key])
            aux[key] = _numeric(_column(data, model_kwargs[key], key), key, names[key])
    row_labels = data.index
    data = data.reset_index(drop=True)
    aux = {k: (None if v is None else v.reset_index(drop=True)) for k, v in aux.items()}
    dep_data = model_kwargs.get("dep_data")
    if isinstance(dep_data, (list, tuple)) and all(isinstance(c, str) for c in dep_data):
        for col in dep_data:
            _column(data, col, "dep_data")
    elif dep_data is not None and not isinstance(dep_data, str):
        raise ValueError("dep_data must be a list of column names or a formula such as '0 + classroom'")

    outside = _outside_arrays(formula, data, eval_env)
    if outside:
        raise ValueError(f"formula {formula!r} uses {', '.join(outside)}, not a column of data but an array "
                         "from the calling code: gee_select drops incomplete rows and sorts them by "
                         "cluster and time, so it would be misaligned. Add it to the data, e.g. "
                         f"data.assign({outside[0]}={outside[0]})")
    y, X = _formula_rows(formula, data, eval_env, "formula")
    if y.shape[1] != 1:
        hint = ("; for successes out of trials, give the proportion with the trials as weights, "
                "e.g. 'I(k / n) ~ x' with weights='n'" if isinstance(family, families.Binomial) else "")
        raise ValueError(f"the response of {formula!r} must be one numeric column "
                         f"(got {list(y.columns)}); code it as 0/1 or a number{hint}")
    _check_terms_have_columns(X, formula)
    keep = data.index.isin(y.index)
    n_missing = {"formula": int((~keep).sum())}
    for key, v in aux.items():
        if v is not None:
            n_missing[key] = int(v.isna().sum())
            keep &= v.notna().to_numpy()
    if isinstance(dep_data, str):
        dep_keep = data.index.isin(_formula_rows(dep_data, data, eval_env, "dep_data").index)
    elif isinstance(dep_data, (list, tuple)):
        dep_keep = data[list(dep_data)].notna().all(axis=1).to_numpy()
    else:
        dep_keep = np.ones(len(data), dtype=bool)
    n_missing["dep_data"] = int((~dep_keep).sum())
    keep &= dep_keep
    n_dropped = int((~keep).sum())
    if not keep.any():
        raise ValueError("gee_select: no complete rows in the columns used")
    if n_dropped and missing == "raise":
        where = ", ".join(f"{k} {n}" for k, n in n_missing.items() if n)
        raise ValueError(f"gee_select: {n_dropped} rows have missing values (rows missing in {where}); "
                         "drop them first or use missing='drop'")

    # Checks on the rows used.  inf is not missing: R's glm stops on "NA/NaN/Inf in 'y'".
    labels = row_labels[keep]
    yname = y.columns[0]
    used = np.flatnonzero(keep)          # y and X are labelled by position in data
    yv = y.loc[used, yname].to_numpy(dtype=float)
    Xk = X.loc[used]
    _check_finite(yv, f"response {yname!r}", labels)
    for j in np.flatnonzero(~np.isfinite(Xk.to_numpy(dtype=float)).all(axis=0)):
        _check_finite(Xk.iloc[:, j].to_numpy(dtype=float), f"predictor column {Xk.columns[j]!r} of the formula",
                      labels)
    for key in ("time", "weights", "offset", "exposure"):
        if aux.get(key) is not None:
            _check_finite(aux[key][keep].to_numpy(dtype=float), f"{key} {names[key]!r}", labels)
    if "weights" in aux:
        w = aux["weights"][keep].to_numpy(dtype=float)
        if w.min() < 0 or w.max() == 0:
            raise ValueError(f"weights {names['weights']!r} must be non-negative and not all zero "
                             f"(smallest {w.min():g}, largest {w.max():g})")
    if "exposure" in aux and aux["exposure"][keep].min() <= 0:
        raise ValueError(f"exposure {names['exposure']!r} must be positive: it enters the model as "
                         "log(exposure)")
    if np.ptp(yv) == 0:
        raise ValueError(f"response {yname!r} is constant ({yv[0]:g}) on the {len(yv)} rows used: "
                         "there is nothing for the mean or the working correlation to fit")
    if isinstance(family, families.Binomial):
        if "weights" in aux:
            if yv.min() < 0 or yv.max() > 1:
                raise ValueError(f"response {yname!r} must be a proportion in [0, 1] for the Binomial "
                                 "family with weights")
        elif not np.all(np.isin(yv, (0.0, 1.0))):
            raise ValueError(f"response {yname!r} is not binary (0/1) for the Binomial family; use a "
                             "proportion with weights=<number of trials> for grouped data")
    elif isinstance(family, families.Poisson) and yv.min() < 0:
        raise ValueError(f"response {yname!r} has negative values for the Poisson family")
    elif isinstance(family, families.Gamma) and yv.min() <= 0:
        raise ValueError(f"response {yname!r} must be positive for the Gamma family")
    aliased = _aliased(Xk)
    if aliased:
        cols = ", ".join(repr(Xk.columns[j]) for j in aliased)
        raise ValueError(f"the design of {formula!r} is rank deficient on the {len(Xk)} rows used: {cols} "
                         f"{'is a linear combination' if len(aliased) == 1 else 'are linear combinations'} "
                         "of the columns before it (R reports such coefficients as NA); remove "
                         f"{'it' if len(aliased) == 1 else 'them'} from the formula (a constant predictor "
                         "is collinear with the intercept)")
    # Labels 1 and "1" would be merged or split depending on how they sort (design's rule for lmer).
    _check_label_kinds(aux["groups"][keep], names["groups"])

    # Same rows, same order, for every structure: complete cases sorted by cluster and time.
    frame = data.loc[keep].copy()
    cols = {"groups": "__gee_groups", "time": "__gee_time"}
    for key, v in aux.items():
        if v is not None:
            frame[cols.get(key, f"__gee_{key}")] = v[keep].to_numpy()
    order = ["__gee_groups"] + (["__gee_time"] if time is not None else [])
    try:
        frame = frame.sort_values(order, kind="mergesort").reset_index(drop=True)
    except TypeError as exc:
        raise ValueError(f"groups {names['groups']!r} has labels that cannot be ordered ({exc}); "
                         f"convert them to strings, e.g. data[{names['groups']!r}].astype(str)") from exc
    gcol = frame["__gee_groups"].to_numpy()
    sizes = frame.groupby("__gee_groups", sort=False).size()
    if len(sizes) < 2:
        raise ValueError(f"groups {names['groups']!r} has one cluster on the rows used: the robust "
                         "covariance that QIC uses is estimated from the variation between clusters "
                         "and needs several")
    if sizes.max() == 1:
        raise ValueError(f"every cluster of groups {names['groups']!r} has one observation: there are no "
                         "within-cluster pairs to estimate a working correlation from. groups must "
                         "identify the clusters (e.g. the subject), not the rows")
    tvals = None if time is None else frame["__gee_time"].to_numpy()
    if tvals is not None and np.all(tvals == np.round(tvals)):
        tvals = tvals.astype(np.int64)     # statsmodels' Unstructured wants integer times
    for key in ("weights", "offset", "exposure"):
        if key in aux:
            model_kwargs[key] = frame[f"__gee_{key}"].to_numpy(dtype=float)
    ctx = {"frame": frame, "has_time": time is not None, "time_name": time, "dep_data": dep_data}
    candidates = _parse_structures(cov_structs, ctx)
    if time is not None:
        need = [name for name, make in candidates if getattr(make(), "_distinct_times", False)]
        dup = frame.duplicated(["__gee_groups", "__gee_time"], keep=False).to_numpy()
        if need and dup.any():
            g0, t0 = frame.loc[dup, "__gee_groups"].iloc[0], frame.loc[dup, "__gee_time"].iloc[0]
            g0 = repr(g0) if isinstance(g0, str) else str(g0)
            raise ValueError(f"time {names['time']!r} repeats within clusters of {names['groups']!r} "
                             f"({int(dup.sum())} rows; cluster {g0} has time {t0:g} more than once), "
                             f"and {', '.join(need)} pair observations by their times. Keep one row per "
                             "cluster and time, or leave out time= to pair by position in the cluster")

    def fit(make):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = ScaleFreeGEE.from_formula(formula, groups=gcol, data=frame, time=tvals, family=family,
                                     cov_struct=make(), eval_env=eval_env, **model_kwargs)
            res = model.fit(**fit_kwargs)
        separated = any(issubclass(w.category, PerfectSeparationWarning) for w in caught)
        for w in caught:   # what the table's flags (or the error on separation) report is not repeated
            if not (separated or issubclass(w.category, _FLAGGED_WARNINGS)):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        if res is None:
            raise RuntimeError(str(caught[-1].message) if caught else "GEE.fit returned None")
        return res, separated

    results, qics, rows, indep = {}, {}, [], None
    for name, make in candidates:
        row = {"QIC": np.nan, "QICu": np.nan, "CIC": np.nan, "QuasiLik": np.nan, "n_params": np.nan,
               "n_corr_params": np.nan, "working_corr": "", "scale": np.nan, "converged": False}
        flags = []
        try:
            res, separated = fit(make)
        except Exception as exc:  # a failed candidate is reported in the table, not raised
            if indep is None:      # ... except the independence fit, which every QIC needs
                raise
            res = None
            flags.append(f"fit failed: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:120]}")
        if res is not None:
            exact = (f"the mean model of {formula!r} predicts response {yname!r} exactly on the rows used "
                     "(perfect separation, or an exact fit): the estimates are not identified and QIC "
                     "is not defined; simplify the formula")
            if indep is None and separated:     # every structure starts from this GLM fit
                raise ValueError(exact)
            with np.errstate(**({"divide": "ignore", "invalid": "ignore"} if indep is None else {})):
                q = qics[name] = qic(res, independence=indep or res)
            if indep is None and not q["scale"] > 0:      # Omega_I divides by this scale
                raise ValueError(exact)
            indep = indep or res
            cs = res.cov_struct
            row.update(QIC=q["QIC"], QICu=q["QICu"], CIC=q["CIC"], QuasiLik=q["QuasiLik"],
                       n_params=int(q["n_params"]), n_corr_params=_n_corr_params(cs),
                       working_corr=_describe(cs), scale=float(res.scale), converged=bool(res.converged))
            if separated:
                flags.append("perfect separation or prediction")
            if not row["converged"]:
                flags.append(f"not converged in {res.n_iter} iterations")
            if not np.all(np.isfinite(np.asarray(res.bse, dtype=float))):
                flags.append("NaN standard errors")
            if not np.isfinite(q["QIC"]):
                flags.append("QIC not finite")
            flags.extend(_correlation_problems(res))
            if isinstance(cs, PairwiseCovStruct):
                flags.extend(cs.problems())
        results[name] = res
        row["flag"] = "; ".join(flags)
        rows.append((name, row))

    table = pd.DataFrame([r for _, r in rows], index=pd.Index([n for n, _ in rows], name="cov_struct"))
    for col in ("n_params", "n_corr_params"):
        table[col] = table[col].astype("Int64")
    ok = (table["flag"] == "") & np.isfinite(table["QIC"])
    base = table.loc[ok, "QIC"].min() if ok.any() else table["QIC"].min()
    table.insert(4, "dQIC", table["QIC"] - base)
    info = {"formula": formula, "family": f"{type(family).__name__} ({type(family.link).__name__} link)",
            "groups": groups if isinstance(groups, str) else "(array)",
            "time": time if isinstance(time, str) else (None if time is None else "(array)"),
            "nobs": len(frame), "n_groups": len(sizes), "n_dropped": n_dropped}
    return GEESelection(table, results, qics, info)
