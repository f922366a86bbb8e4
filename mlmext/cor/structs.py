"""Residual correlation structures within groups (nlme's ``corAR1``, ``corCAR1``, ``corCompSymm``).

Each structure says which rows belong together (``group``), in which order (``time``) and
how to whiten the rows of one fitted model: with ``R = L L'`` block-diagonal by group,
``W = L^-1`` applied to ``[Z X y]`` turns the model into a standard LMM with independent
residuals, and ``-2 log L`` gains ``log det R``.  The whitening is linear in the rows of a
group, so it costs O(n) per value of the correlation parameter.
"""
from __future__ import annotations

import numpy as np

__all__ = ["CorStruct", "AR1", "CAR1", "CompSymm"]


def _check_column(name, what):
    if not isinstance(name, str) or not name:
        raise ValueError(f"{what} must be a column name (a non-empty str); got {name!r}")
    return name


class CorStruct:
    """Base class: a correlation structure of the residuals within groups.

    Parameters
    ----------
    group : str or list of str, optional
        The grouping column(s) (several: their interaction, as nlme's ``~ 1 | a/b``).
        Default: the model's grouping factor when it has exactly one.
    """

    #: nlme's name of the parameter, as its summary prints it
    param_name = "Phi"
    label = ""
    needs_time = True

    def __init__(self, group=None):
        if group is None:
            self.group = None
        else:
            cols = [group] if isinstance(group, str) else list(group)
            if not cols:
                raise ValueError("group must name at least one column")
            self.group = tuple(_check_column(c, "group") for c in cols)

    # ------------------------------------------------------------------ the parameter
    def bounds(self, sizes):
        """Open interval of the parameter for groups of these sizes."""
        return -1.0, 1.0

    def start(self, sizes):
        return 0.2

    def to_unconstrained(self, rho, sizes):
        lo, hi = self.bounds(sizes)
        u = (rho - lo) / (hi - lo)
        return float(np.log(u / (1.0 - u)))

    def from_unconstrained(self, z, sizes):
        lo, hi = self.bounds(sizes)
        return float(lo + (hi - lo) / (1.0 + np.exp(-z)))

    def check_time(self, time, name):
        """Hook: the time values this structure accepts (sorted within groups)."""

    def whiten(self, rho, M, starts, lags):
        """``(W M, log det R)`` for rows sorted by group and time; ``starts[i]``: row i opens
        its group; ``lags[i]``: time since the previous row of its group."""
        raise NotImplementedError

    def describe(self, rho):
        return f"Correlation structure: {self.label}, {self.param_name} = {rho:.4g}"

    def __repr__(self):
        args = [f"time={self.time!r}"] if self.needs_time else []
        if self.group is not None:
            args.append(f"group={self.group[0] if len(self.group) == 1 else list(self.group)!r}")
        return f"{type(self).__name__}({', '.join(args)})"


class _Markov(CorStruct):
    """corr(e_i, e_j) = phi ** |t_i - t_j| within a group: a Markov chain along time."""

    def __init__(self, time, group=None):
        super().__init__(group)
        self.time = _check_column(time, "time")

    def whiten(self, rho, M, starts, lags):
        # row t: (v_t - a_t v_{t-1}) / sqrt(1 - a_t^2), a_t = phi^lag; a = 0 opens a group
        a = np.where(starts, 0.0, np.power(rho, np.where(starts, 1.0, lags)))
        s = np.sqrt(1.0 - a * a)
        prev = np.empty_like(M)
        prev[1:] = M[:-1]
        prev[0] = 0.0
        W = (M - a[:, None] * prev) / s[:, None]
        return W, 2.0 * float(np.log(s).sum())


class AR1(_Markov):
    """First-order autoregressive residuals within groups (nlme's ``corAR1(form = ~ time | g)``).

    ``corr(e_i, e_j) = Phi ** |t_i - t_j|`` for rows of one group, ``-1 < Phi < 1``.  The
    times must be integers (visits, days); gaps are allowed (nlme then does the same).

    Parameters
    ----------
    time : str
        Integer-valued time column; unique within a group.
    group : str or list of str, optional
        Grouping column(s); default: the model's only grouping factor.
    """

    label = "AR(1)"

    def check_time(self, time, name):
        if not np.all(time == np.round(time)):
            raise ValueError(f"AR1 needs integer times; the column {name!r} has non-integer "
                             "values: use CAR1 for continuous times")

    def start(self, sizes):
        return 0.2


class CAR1(_Markov):
    """Continuous-time AR(1) within groups (nlme's ``corCAR1(form = ~ time | g)``).

    ``corr(e_i, e_j) = Phi ** |t_i - t_j|`` for any real times, ``0 < Phi < 1``.

    Parameters
    ----------
    time : str
        Numeric time column; unique within a group.
    group : str or list of str, optional
        Grouping column(s); default: the model's only grouping factor.
    """

    label = "continuous AR(1)"

    def bounds(self, sizes):
        return 0.0, 1.0


class CompSymm(CorStruct):
    """Compound symmetry (exchangeable) residuals within groups (nlme's ``corCompSymm``).

    ``corr(e_i, e_j) = Rho`` for any two rows of a group, ``-1 / (max n_g - 1) < Rho < 1``.

    Parameters
    ----------
    group : str or list of str, optional
        Grouping column(s); default: the model's only grouping factor.  (With a random
        intercept on the same groups a positive ``Rho`` cannot be told from the intercept's
        variance: use it for groups nested in the random effects' factor.)
    """

    param_name = "Rho"
    label = "compound symmetry"
    needs_time = False
    time = None

    def bounds(self, sizes):
        nmax = int(np.max(sizes))
        return (-1.0 / (nmax - 1) if nmax > 1 else -1.0), 1.0

    def start(self, sizes):
        return 0.1

    def whiten(self, rho, M, starts, lags):
        # R_g = (1 - rho) I + rho J, R_g^-1 = W_g' W_g with the symmetric root
        # W_g = (I - a J / n_g) / sqrt(1 - rho), (1 - a)^2 = (1 - rho) / (1 + (n_g - 1) rho)
        gid = np.cumsum(starts) - 1
        n_g = np.bincount(gid).astype(float)
        a = 1.0 - np.sqrt((1.0 - rho) / (1.0 + (n_g - 1.0) * rho))
        means = np.stack([np.bincount(gid, weights=M[:, j]) / n_g for j in range(M.shape[1])], axis=1)
        W = (M - a[gid, None] * means[gid]) / np.sqrt(1.0 - rho)
        logdet = float(np.sum((n_g - 1.0) * np.log1p(-rho) + np.log1p((n_g - 1.0) * rho)))
        return W, logdet
