"""Threshold structures of a cumulative link model (flexible, equidistant, symmetric)."""
from __future__ import annotations

import math

import numpy as np

__all__ = ["Thresholds"]


class Thresholds:
    """Threshold structure: ``theta = T alpha`` with ``alpha = g(psi)``, ``psi`` unconstrained.

    ``alpha`` are R's threshold parameters (``coef`` of ``clmm``); ``T`` is
    ordinal's ``tJac``.  The internal parameters ``psi`` make the thresholds
    increasing by construction (positive spacings are ``exp`` of a
    parameter).

    Parameters
    ----------
    kind : {"flexible", "equidistant", "symmetric"}
    levels : list of str
        The response categories in order (``K`` of them).
    """

    def __init__(self, kind, levels):
        kind = str(kind).lower()
        self.kind = kind
        self.levels = [str(v) for v in levels]
        K = len(self.levels)
        nt = K - 1
        self.n_thresholds = nt
        self.labels = [f"{a}|{b}" for a, b in zip(self.levels[:-1], self.levels[1:])]
        if kind == "flexible":
            T = np.eye(nt)
            names = list(self.labels)
        elif kind == "equidistant":
            if nt < 2:
                raise ValueError("equidistant thresholds need a response with 3 or more categories")
            T = np.column_stack([np.ones(nt), np.arange(nt, dtype=float)])
            names = ["threshold.1", "spacing"]
        elif kind == "symmetric":
            if nt < 2:
                raise ValueError("symmetric thresholds need a response with 3 or more categories")
            if nt % 2:          # odd: a central threshold and spacings out from it
                h = (nt - 1) // 2
                T = np.zeros((nt, h + 1))
                T[:, 0] = 1.0
                for k in range(1, h + 1):
                    T[h - k, k] = -1.0
                    T[h + k, k] = 1.0
                names = ["central"] + [f"spacing.{k}" for k in range(1, h + 1)]
            else:               # even: two central thresholds and spacings out from them
                h = nt // 2
                T = np.zeros((nt, h + 1))
                T[:h, 0] = 1.0
                T[h:, 1] = 1.0
                for k in range(1, h):
                    T[h - 1 - k, 1 + k] = -1.0
                    T[h + k, 1 + k] = 1.0
                names = ["central.1", "central.2"] + [f"spacing.{k}" for k in range(1, h)]
        else:
            raise ValueError(f"threshold must be 'flexible', 'equidistant' or 'symmetric', not {kind!r}")
        self.T = T
        self.names = names
        self.k = T.shape[1]
        self._tril = np.tril(np.ones((self.k, self.k)))
        # which alpha are built from exp() increments: (index, base index or -1)
        self._odd = nt % 2 == 1

    # alpha = g(psi) ----------------------------------------------------------------
    def alpha(self, psi):
        """R's threshold parameters from the internal ones."""
        psi = np.asarray(psi, dtype=float)
        if self.kind == "flexible":
            a = np.empty_like(psi)
            a[0] = psi[0]
            a[1:] = psi[0] + np.cumsum(np.exp(psi[1:]))
            return a
        if self.kind == "equidistant":
            return np.array([psi[0], np.exp(psi[1])])
        if self._odd:
            return np.concatenate([[psi[0]], np.cumsum(np.exp(psi[1:]))])
        return np.concatenate([[psi[0], psi[0] + np.exp(psi[1])], np.cumsum(np.exp(psi[2:]))])

    def jacobian(self, psi):
        """``d alpha / d psi`` (k, k)."""
        psi = np.asarray(psi, dtype=float)
        k = self.k
        e = np.exp(psi)
        if self.kind == "flexible":
            J = self._tril * e
            J[:, 0] = 1.0
            return J
        J = np.zeros((k, k))
        if self.kind == "equidistant":
            J[0, 0] = 1.0
            J[1, 1] = e[1]
        elif self._odd:
            J[0, 0] = 1.0
            for j in range(1, k):
                J[j:, j] = e[j]
        else:
            J[0, 0] = J[1, 0] = 1.0
            J[1, 1] = e[1]
            for j in range(2, k):
                J[j:, j] = e[j]
        return J

    def psi(self, alpha):
        """Internal parameters for R's threshold parameters (which must give increasing thresholds)."""
        a = np.asarray(alpha, dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            if self.kind == "flexible":
                out = np.concatenate([[a[0]], np.log(np.diff(a))])
            elif self.kind == "equidistant":
                out = np.array([a[0], np.log(a[1])])
            elif self._odd:
                out = np.concatenate([[a[0]], np.log(np.diff(np.concatenate([[0.0], a[1:]])))])
            else:
                out = np.concatenate([[a[0], np.log(a[1] - a[0])],
                                      np.log(np.diff(np.concatenate([[0.0], a[2:]])))])
        if not np.all(np.isfinite(out)):
            raise ValueError(f"threshold parameters {a} do not give increasing thresholds")
        return out

    def thresholds(self, alpha):
        return self.T @ np.asarray(alpha, dtype=float)

    def alpha_from_thresholds(self, th):
        """Least-squares ``alpha`` for given thresholds (exact for flexible ones)."""
        if self.kind == "flexible":
            return np.array(th, dtype=float)
        return np.linalg.lstsq(self.T, np.asarray(th, dtype=float), rcond=None)[0]


def _increasing(th):
    t = th.tolist()                  # a handful of values: plain Python is fastest
    return all(a < b for a, b in zip(t, t[1:])) and math.isfinite(t[0]) and math.isfinite(t[-1])
