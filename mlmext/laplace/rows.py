"""The rows of a PIRLS problem: the n-sized work of an iteration, behind one interface.

:func:`~mlmext.laplace.pirls` (its blocked path) and :func:`~mlmext.laplace.laplace_gradient`
touch the rows only through a *rows* object, which returns sums of the size of the random
effects and the fixed effects:

* :class:`MemoryRows` -- the rows as numpy arrays (the in-memory models);
* :class:`~mlmext.laplace.summed.SummedRows` -- rows in chunks that are evaluated elsewhere
  (on Dask workers): each call of its ``mapper`` is one pass over the chunks, each chunk
  evaluated by :func:`~mlmext.laplace.summed.chunk_sums` and the sums added.  One pass per PIRLS iteration
  (the evaluation at the new point gives the next iteration's cross-products too), one for
  the gradient.  Canonical links only (the weights are then the observed information).

The protocol (what ``pirls`` calls): ``point(u, beta, lams)`` and ``trial(t, u, beta, lams)``
(then ``accept()``) evaluate the conditional log-likelihood at a point; ``weights_problem()``;
``factor(chol, lams, newton)`` puts the weighted cross-products of ``[Z X z]`` into the factor
and factors; ``step(u_new, beta_new, lams)`` gives ``dlin' W dlin`` of the step;
``eta``, ``d1``, ``w`` (None when the rows are not held); ``has_x``.  The gradient
(:func:`~mlmext.laplace.laplace_gradient`) calls ``gradient_sums`` and ``gradient_second``;
summed rows also give :func:`~mlmext.laplace.predict_modes` its right-hand side
(``predict_rhs``).
"""
from __future__ import annotations

import weakref

import numpy as np

from .steps import _solve_in_span
from .zops import _reweight, _zops

__all__ = ["MemoryRows"]


def _restored_on_read(name):
    """A property stored as ``name`` that :meth:`MemoryRows._restore` makes again when it was
    dropped (``_dropped``) before it is read."""
    def get(self):
        if self._dropped:
            self._restore()
        return getattr(self, name)

    def set(self, value):
        setattr(self, name, value)

    return property(get, set)


class MemoryRows:
    """Rows held in memory: ``eta_fixed`` (n,), the conditional model, ``X`` when beta is
    updated inside PIRLS.  The arrays of the current point are attributes (``lin``, ``eta``,
    ``d1``, ``w``)."""

    summed = False

    def __init__(self, design, eta_fixed, cond, X=None):
        self.design = design
        self.ops = _zops(design)
        self.eta_fixed = np.asarray(eta_fixed, dtype=float)
        self.cond = cond
        self.has_x = X is not None
        self.X = np.asarray(X, dtype=float) if self.has_x else None
        self.fused = getattr(cond, "loglik_derivs", None)
        self.d1 = self.w = self.lin = self._eta = None
        self._dropped = False

    # d1 and w of the current point: dropped while a trial point is evaluated (see trial) and
    # made again from ``lin`` when read before a trial is accepted
    d1 = _restored_on_read("_d1")
    w = _restored_on_read("_w")

    def _restore(self):
        self._dropped = False
        _, self._d1, self._w = self._evaluate_lin(self.lin)

    @classmethod
    def at_modes(cls, design, cond, modes, X=None):
        """The rows at converged modes (for the gradient): ``eta``, ``d1``, ``w`` of ``modes``."""
        self = cls(design, modes.eta, cond, X)
        self._eta = modes.eta
        if modes.d1 is not None and modes.w is not None:
            self.d1, self.w = modes.d1, modes.w
        else:
            self.d1, self.w = cond.derivatives(modes.eta)
        return self

    @property
    def eta(self):
        """The linear predictor at the current point: ``eta_fixed + lin``, made when asked (not
        held beside ``lin`` through PIRLS: one n-sized array less at its peak of memory)."""
        if self._eta is not None or self.lin is None:
            return self._eta
        return self.eta_fixed + self.lin

    def linear(self, u, beta, lams):
        lin = self.ops.zlam(u, lams)
        if self.has_x:
            lin += self.X @ beta
        return lin

    def _evaluate(self, eta):
        """(sum loglik, d1, w) at eta; d1, w are None when the value is not finite."""
        cond = self.cond
        with np.errstate(all="ignore"):
            if self.fused is not None:
                lo, d1, w = self.fused(eta)
                ll = float(np.sum(lo))
            else:
                ll = float(np.sum(cond.loglik_obs(eta)))
                d1 = w = None
                if np.isfinite(ll):
                    d1, w = cond.derivatives(eta)
        return ll, d1, w

    def _chunked(self, n):
        return self.fused is not None and getattr(self.cond, "row_slices", False) and n > ROW_CHUNK

    def _evaluate_lin(self, lin, t=None):
        """:meth:`_evaluate` at ``eta_fixed + lin`` (``t``: at ``lin + t dlin``); on large data,
        with a conditional model that takes slices of its rows (``row_slices``), in chunks of
        :data:`ROW_CHUNK` rows: no n-sized eta, trial ``lin`` and temporaries (four arrays fewer
        at PIRLS's peak of memory), the same ``d1``, ``w`` and the log-likelihood summed in
        chunks."""
        n = lin.shape[0]
        if not self._chunked(n):
            return self._evaluate(self.eta_fixed + (lin if t is None else _moved(lin, t, self.dlin)))
        d1, w, ll = np.empty(n), np.empty(n), 0.0
        with np.errstate(all="ignore"):
            for a in range(0, n, ROW_CHUNK):
                sl = slice(a, min(a + ROW_CHUNK, n))
                lc = lin[sl] if t is None else _moved(lin[sl], t, self.dlin[sl])
                lo, d1[sl], w[sl] = self.fused(self.eta_fixed[sl] + lc, rows=sl)
                ll += float(np.sum(lo))
        return ll, d1, w

    # -- the PIRLS protocol
    def point(self, u, beta, lams):
        self.lin = self.linear(u, beta, lams)
        self._dropped = False
        self.ll, self.d1, self.w = self._evaluate_lin(self.lin)
        return self.ll

    def weights_problem(self):
        d1, w = self.d1, self.w
        if d1 is None or not (np.isfinite(d1.sum()) and np.isfinite(w.sum())) or w.min() < 0:
            return f"max |eta| = {np.max(np.abs(self.eta)):.3g}"
        return None

    def factor(self, chol, lams, newton):
        """The factor for the step from the current point (Newton weights when ``newton`` and
        the observed information is positive).  Returns ``(status, solved)``: status "ok",
        "exact" (zero working response: nothing to move) or "failed"; ``solved`` the step's
        ``(u, beta)`` when the factorization needed the solve in the span."""
        cond, X = self.cond, self.X
        wt = self.w
        self.wt_is_w = True
        if newton:
            with np.errstate(all="ignore"):
                hobs = cond.hessian_terms(self.eta)[0]
            if np.all(np.isfinite(hobs)) and hobs.min() > 0:
                wt = hobs
                self.wt_is_w = False
        self.wt = wt
        z = self._working_response(wt)
        exact = not np.any(z)                      # zero working response: nothing to move
        if exact:                                  # any response outside the span gives the factor
            z = np.random.default_rng(0).standard_normal(z.shape[0])
        _reweight(chol, (X, z) if self.has_x else z[:, None], wt)
        del z          # not held through the factorization (made again where it is read below)
        try:
            chol.update(lams)
            solved = None
        except np.linalg.LinAlgError:
            # a working response in the span of [Z Lambda, X] (a constant response: the fit is
            # exact) leaves no residual for the last pivot; the solution is linear in the
            # response, so solve for z + e and for e (e outside the span) and subtract
            solved = _solve_in_span(chol, X, self._working_response(wt), wt, lams) \
                if not exact else None
            if solved is None:
                return "failed", None
        return ("exact" if exact else "ok"), solved

    def _working_response(self, wt):
        """``lin + where(wt > 0, d1 / wt, 0)`` (the same numbers with one n-sized array)."""
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            z = np.divide(self.d1, wt, out=np.zeros_like(self.d1), where=wt > 0)
            z += self.lin
        return z

    def step(self, u_new, b_new, lams):
        self.dlin = None                   # the last step's: not held beside the new one
        dlin = self.linear(u_new, b_new if self.has_x else None, lams)
        dlin -= self.lin
        self.dlin = dlin
        with np.errstate(all="ignore"):          # a non-finite step: PIRLS says so
            return float(self.wt @ (dlin * dlin))

    def trial(self, t, u_t, b_t, lams):
        self._trial = None                 # a rejected trial's rows: not held through this one
        # nor the current point's d1, w (and the step's weights): read again only when no trial
        # is accepted, then made again from lin (the same numbers); two n-sized arrays fewer
        # at PIRLS's peak of memory
        if self._d1 is not None:
            self._d1 = self._w = self.wt = None
            self._dropped = True
        if self._chunked(self.lin.shape[0]):
            # the trial's lin is not made: lin moves in place when the trial is accepted
            ll, d1, w = self._evaluate_lin(self.lin, t)
            self._trial = (t, ll, d1, w)
        else:
            lin_t = _moved(self.lin, t, self.dlin)
            ll, d1, w = self._evaluate_lin(lin_t)
            self._trial = (lin_t, ll, d1, w)
        return ll

    def accept(self):
        self._dropped = False
        lin_t, self.ll, self.d1, self.w = self._trial
        if not isinstance(lin_t, np.ndarray):           # lin + t dlin, in place, by chunks
            lin, dlin, n = self.lin, self.dlin, self.lin.shape[0]
            for a in range(0, n, ROW_CHUNK):
                sl = slice(a, min(a + ROW_CHUNK, n))
                lin[sl] += dlin[sl] if lin_t == 1.0 else lin_t * dlin[sl]
        else:
            self.lin = lin_t
        self.dlin = None                   # taken: not held through the next factorization
        if self.d1 is None:
            with np.errstate(all="ignore"):
                self.d1, self.w = self.cond.derivatives(self.eta)

    def factor_with_w(self, chol, lams):
        """The factor with the weights ``w`` at the current point (after Newton steps); False
        when it fails.  The response column does not enter ``log|L_ZZ|``: it only has to be
        outside the span."""
        lin, d1, w, X = self.lin, self.d1, self.w, self.X
        with np.errstate(divide="ignore", invalid="ignore"):
            zf = lin + np.where(w > 0, d1 / w, 0.0)
        for resp in (zf, np.random.default_rng(0).standard_normal(lin.shape[0])):
            _reweight(chol, (X, resp) if self.has_x else resp[:, None], w)
            try:
                chol.update(lams)
                return True
            except np.linalg.LinAlgError:
                continue
        return False

    # -- the gradient's sums (rows at the modes: at_modes)
    def gradient_sums(self, chol, lams, theta, u, dw, X=None):
        """Sums of the gradient's first part: ``Lambda' Z' a`` (a = dw * leverage), and per
        theta ``Ku' d1``, ``T``, ``Ku' a``; per beta ``X' d1``, ``X' a``.

        On a factor that gives the row-independent part of the local inverse
        (``local_parts``), large data go in chunks of :data:`ROW_CHUNK` rows: the
        gradient's dozen n-sized temporaries are then chunk-sized (100 MB less at 1M rows);
        the sums add in another order (one chunk: the same arithmetic)."""
        design, ops, d1, w = self.design, self.ops, self.d1, self.w
        self._u = u
        keep_lev = bool(getattr(self.cond, "k_extra", 0))     # g_extra reads the leverages
        if not hasattr(chol, "local_parts"):
            t_list, rho_list = chol.local_inverse()
            keep = {}
            out = _gradient_sums(design, ops, lams, theta, u, d1, w, dw, X, t_list, rho_list,
                                 design.blocks, keep)
            self._Ku = keep["Ku"]
            out["lev"] = keep["lev"]
            return out
        local = chol.local_parts()
        out, levs = None, []
        chunks = _row_chunks(design, d1.shape[0])
        for a, b, cdes in chunks:
            t_list, rho_list = local.rows(cdes.blocks)
            keep = {}
            part = _gradient_sums(cdes, _zops(cdes), lams, theta, u, d1[a:b], w[a:b], dw[a:b],
                                  None if X is None else X[a:b], t_list, rho_list, cdes.blocks,
                                  keep)
            del t_list, rho_list
            if keep_lev:
                levs.append(keep["lev"])
            out = _add(out, part)
        # one chunk: Z dLambda u~ kept for gradient_second (as without chunks); else recomputed
        # there chunk by chunk
        self._Ku = keep["Ku"] if len(chunks) == 1 else None
        out["lev"] = (levs[0] if len(levs) == 1 else np.concatenate(levs)) if keep_lev else None
        return out

    def gradient_second(self, chol, lams, theta, h, v, X=None):
        """``s = H^-1 v`` (``H`` with the observed information ``h``) and the sums
        ``Ks' d1``, ``Ku' h Z Lambda s``, ``X' h Z Lambda s`` (``zs = Z Lambda s`` when the
        conditional model has parameters of its own)."""
        ops, design = self.ops, self.design
        s = _solve_md(chol, ops, lams, h, self.w, v)
        if self._Ku is not None:
            zs = ops.zlam(s, lams)
            hzs = h * zs
            Ks = ops.dtheta_cols(s, design, theta)
            Ku = self._Ku
            return s, {"Ksd1": Ks.T @ self.d1, "Kuhzs": Ku.T @ hzs,
                       "Xhzs": None if X is None else np.asarray(X).T @ hzs, "zs": zs}
        keep_zs = bool(getattr(self.cond, "k_extra", 0))
        out, zss = None, []
        for a, b, cdes in _row_chunks(design, self.d1.shape[0]):
            cops = _zops(cdes)
            zs = cops.zlam(s, lams)
            hzs = h[a:b] * zs
            part = {"Ksd1": cops.dtheta_cols(s, cdes, theta).T @ self.d1[a:b],
                    "Kuhzs": cops.dtheta_cols(self._u, cdes, theta).T @ hzs,
                    "Xhzs": None if X is None else np.asarray(X[a:b]).T @ hzs}
            if keep_zs:
                zss.append(zs)
            out = _add(out, part)
        out["zs"] = (zss[0] if len(zss) == 1 else np.concatenate(zss)) if keep_zs else None
        return s, out


def _moved(lin, t, dlin):
    """``lin + t dlin`` (``t = 1``: ``lin + dlin``)."""
    return lin + t * dlin if t != 1.0 else lin + dlin


#: rows per chunk of the in-memory gradient and PIRLS evaluations (their temporaries: 1 MB
#: per n-sized array)
ROW_CHUNK = 1 << 17


class _ChunkBlock:
    """A block's rows ``a:b`` (views of its model matrix and codes), for the row-wise code."""

    def __init__(self, block, a, b):
        self.X, self.codes = block.X[a:b], block.codes[a:b]
        self.q, self.m, self.nre = block.q, block.m, block.nre
        self.t_rows, self.t_cols, self.t_idx = block.t_rows, block.t_cols, block.t_idx


class _ChunkDesign:
    def __init__(self, design, a, b):
        self.blocks = [_ChunkBlock(blk, a, b) for blk in design.blocks]
        self.ntheta = design.ntheta


_CHUNKS = weakref.WeakKeyDictionary()


def _row_chunks(design, n):
    """``(a, b, design of rows a:b)`` covering the rows; the design itself when they fit in one
    chunk.  Made once per design, so what is cached on the chunks (their ``_zops``, the local
    inverse's positions of their rows) lasts across evaluations."""
    if n <= ROW_CHUNK:
        return [(0, n, design)]
    got = _CHUNKS.get(design)
    if got is None or got[-1][1] != n:
        got = [(a, min(a + ROW_CHUNK, n), _ChunkDesign(design, a, min(a + ROW_CHUNK, n)))
               for a in range(0, n, ROW_CHUNK)]
        _CHUNKS[design] = got
    return got


def _add(total, part):
    """The sum of two dicts of sums (None entries stay None)."""
    if total is None:
        return part
    return {k: None if v is None else v + part[k] for k, v in total.items()}


def _gradient_sums(design, ops, lams, theta, u, d1, w, dw, X, t_list, rho_list, blocks, keep=None):
    lev = np.zeros(d1.shape[0])
    for tb, rb in zip(t_list, rho_list):
        lev += np.einsum("ij,ij->i", tb, rb)
    a = dw * lev
    Ku = ops.dtheta_cols(u, design, theta)          # (n, ntheta): Z dLambda_k u~
    T = np.zeros(design.ntheta)
    for kb, (b, rb) in enumerate(zip(blocks, rho_list)):
        if ops.all_ones[kb]:
            T[b.t_idx[0]] += w @ rb[:, 0]
            continue
        for r, c, k in zip(b.t_rows, b.t_cols, b.t_idx):
            T[k] += w @ (b.X[:, r] * rb[:, c])
    out = {"ztva": ops.ztv(a, lams), "Kud1": Ku.T @ d1, "T": T, "Kua": Ku.T @ a,
           "Xd1": None if X is None else np.asarray(X).T @ d1,
           "Xa": None if X is None else np.asarray(X).T @ a}
    if keep is not None:
        keep.update(lev=lev, a=a, Ku=Ku)
    return out


def _solve_md(chol, ops, lams, h, w, v, tol=1e-13, maxiter=200):
    """Solve ``(Lambda' Z' H Z Lambda + I) x = v`` (observed information ``h``) by conjugate
    gradients preconditioned with the factor for the weights ``w`` held by ``chol``."""
    x = chol.solve_re(v)
    if h is w:
        return x
    apply = lambda y: y + ops.ztv(h * ops.zlam(y, lams), lams)
    r = v - apply(x)
    z = chol.solve_re(r)
    pvec = z.copy()
    rz = float(r @ z)
    vnorm = max(float(np.sqrt(v @ v)), 1e-300)
    for _ in range(maxiter):
        if np.sqrt(abs(rz)) <= tol * vnorm or not np.isfinite(rz):
            break
        Ap = apply(pvec)
        alpha = rz / float(pvec @ Ap)
        x += alpha * pvec
        r -= alpha * Ap
        z = chol.solve_re(r)
        rz_new = float(r @ z)
        pvec = z + (rz_new / rz) * pvec
        rz = rz_new
    return x
