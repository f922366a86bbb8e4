"""Refits of one fitted LMM design to many responses in lockstep (:func:`_lockstep_fits`,
for :func:`~mlmext.inference.refit_many`, and :func:`lockstep_refit`, for
:func:`~mlmext.inference.refit` of one response).

For a small design with one grouping factor (the dense small-system storage, one
random-effects block) the B fits run in lockstep: Newton with the exact Hessian from each
member's moment estimate of theta
(:meth:`~mlmext.linalg.levels_batch.LevelsBatch.moment_thetas`; the fit's theta where that
is lower), every member's criterion, gradient and Hessian from one batched evaluation
(:class:`~mlmext.linalg.levels_batch.LevelsBatch`), each member stopping when its own
checks pass -- the checks of a single fit: Newton decrement below 1e-7 and the Hessian
positive definite in the scaled theta; there it ends, below 1e-9, or after one more full
Newton step (the decrement squared: the single fit's iterations past the checks), whose
criterion the estimates compute.  A member that does not get there (a non-positive-definite
Hessian, a failed line search, no convergence in :data:`MAX_ITERATIONS`), or whose estimate
is near a zero standard deviation (where a single fit snaps, probes and warns), is left to
a single refit, from the lowest point found, so ``converged``, the warnings and boundary
fits are those of single refits.  The members' results make their model on first use
(:mod:`mlmext._batch_results`).  What depends on the design or the fit alone (the response
check's basis, the fit's theta's level blocks, the criterion's evaluator) is computed once.
"""
from __future__ import annotations

import numpy as np
from scipy.linalg import lapack

from .._blas import fit_threads
from ..linalg.levels_batch import LevelsBatch, constant_value, design_piece, eigh_finite
from ..optimize import OptSummary, rounding_level
from ._common import _cache
from ._refit_start import _batchable, criterion, moment_starts

__all__ = ["lockstep_refit"]

#: Newton iterations of the lockstep phase before a member is refitted on its own (from the
#: point it reached): a few slow members would keep the whole batch's rounds going
MAX_ITERATIONS = 8
#: the Newton decrement the lockstep phase iterates to (the single fit's tolerance) and the
#: checks' bound (deviance units)
TOL, CHECK_TOL = 1e-9, 1e-7
#: a standard deviation (theta diagonal times its predictor's root mean square) below this
#: sends the member to a single refit: there a single fit snaps to zero and tests the bound
NEAR_ZERO = 1e-3
#: longest Newton step (largest entry, theta in its predictors' units: the parent's diagonals
#: are ~1 there)
MAX_STEP = 0.5
_geqrf, _orgqr = lapack.dgeqrf, lapack.dorgqr

#: members evaluated together (bounds the batch's arrays: B x levels x K^2 x q^2 numbers)
CHUNK = 256
#: OpenBLAS multiplies matrices of at most this many multiply-adds (m n k) on one thread
#: (65536 x its GEMM_MULTITHREAD_THRESHOLD, 4): a batch whose largest product, the level
#: sums of the responses (levels x q by rows by members), is below it runs on one thread
ONE_THREAD_MNK = 65536 * 4


def _passes_checks(model, lv, Yo, finite):
    """Which columns certainly pass the model's response check (not constant, residual
    variation after the fixed effects): the others go through the check itself.  Raises
    refit's ``ValueError`` where a column is not finite (``finite``: the caller checked).
    The fixed design's orthonormal basis is computed once per design."""
    pos, sw, Q = design_piece(lv, "response_check", lambda: _check_basis(model))
    Yp = Yo if pos is None else Yo[pos]
    mx, mn = _max(Yp, axis=0), _min(Yp, axis=0)
    # a NaN or infinity makes its column's maximum or minimum so (all rows: no finiteness
    # test of its own, an n x B pass over Y)
    if not finite and not (pos is None and _all(np.isfinite(mx) & np.isfinite(mn))) and \
            not _all(np.isfinite(Yo), axis=None):
        raise ValueError("endog has missing or non-finite values; refit keeps the rows of the fit")
    ok = mx > mn
    if sw is not None:
        Yp = Yp * sw
    yy, QY = _sum(Yp * Yp, axis=0), Q.T @ Yp
    # the residual's sum of squares as |y|^2 - |Q'y|^2 (Q orthonormal, p columns: off by at
    # most ~(2p + 1) n ulps of |y|^2, the dot products' worst case, where the residual itself
    # would cost a product and a copy of Y): certain above 1e-10 |y|^2 or 4 (p + 1) n ulps,
    # far above the single check's bound (1e-20 |y|^2); a column below is judged by the
    # check itself
    n, p = Q.shape
    return ok & (yy - _sum(QY * QY, axis=0) > max(1e-10, 4.0 * (p + 1) * n * _EPS) * yy)


_EPS = float(np.finfo(float).eps)


_max, _min, _sum = np.maximum.reduce, np.minimum.reduce, np.add.reduce
_all, _any = np.logical_and.reduce, np.logical_or.reduce


def _check_basis(model):
    """``(rows, sqrt weights, Q)`` of :func:`_passes_checks`: the rows of positive weight
    (None: all), their square-root weights as a column (None: all 1) and the Q of the
    weighted fixed design's QR decomposition, read-only."""
    w = np.asarray(model.weights, dtype=float)
    unit = constant_value(w) == 1.0                 # (no weights: no tests over the rows)
    pos = None if unit else w > 0
    every = unit or bool(_all(pos))
    X = model.exog if every else model.exog[pos]
    sw = None
    if not (unit or _all(w == 1.0)):
        sw = np.sqrt(w if every else w[pos])[:, None]
        X = X * sw
    # (LAPACK's QR directly: NumPy's wrapper costs more than the factorization here)
    qr, tau, _, info = _geqrf(X)
    Q, _, info2 = _orgqr(qr, tau) if info == 0 else (None, None, 1)
    if info2 != 0:
        Q, _ = np.linalg.qr(X)
    for a in (pos, sw, Q):
        if a is not None:
            a.setflags(write=False)
    return (None if every else pos), sw, Q


def _lockstep_fits(r, Y, finite=False):
    """``(fits, starts)`` of the responses ``Y`` (n, B) refitted in lockstep: a member that
    needs a single refit has fit None and the theta to start it from (None: the fit's);
    None where the design is not one the lockstep handles.  Raises the single refit's
    ``ValueError`` for a response it rejects (``finite``: the caller checked that ``Y`` is
    finite)."""
    lv = _batchable(r)
    if lv is None:
        return None
    model = r.model
    off = np.asarray(model.offset, dtype=float)
    # (no offset: Y itself, Y - 0 bit for bit; a non-finite value goes through as it is)
    Yo = Y if constant_value(off) == 0.0 else Y - off[:, None]
    for b in np.flatnonzero(~_passes_checks(model, lv, Yo, finite)):
        model._check_response(Yo[:, b])          # raises the single refit's error, if any
    fits, starts = [], []
    rows = lv.m * lv.q + lv.p + 1
    for lo in range(0, Y.shape[1], CHUNK):
        hi = min(lo + CHUNK, Y.shape[1])
        # small products: one BLAS thread (as a single fit); products all below OpenBLAS's
        # threading size (one member's, or the level sums of a small batch) leave the
        # setting alone, as a single fit does (setting it costs more than its products)
        with fit_threads(rows, level_by_level=rows * Y.shape[0] * (hi - lo) <= ONE_THREAD_MNK):
            f, s = _lockstep(r, lv, Y[:, lo:hi], Yo[:, lo:hi])
        fits += f
        starts += s
    return fits, starts


def lockstep_refit(r, y):
    """``(fit, start)``: :func:`~mlmext.inference.refit` of the fit ``r`` to the response ``y``
    (checked: one finite value per row) in lockstep with one member (no model made, no
    optimizer set up); fit None where the design is not one the lockstep handles or the
    member needs a single refit (the caller's own path, its warnings), from ``start`` (None:
    the caller's own start)."""
    both = _lockstep_fits(r, y[:, None], finite=True)
    return (None, None) if both is None else (both[0][0], both[1][0])


def _newton(g, H, s, ss):
    """Modified Newton steps at gradients ``g`` (n, K) and Hessians ``H`` (n, K, K) in theta:
    ``(step, decrement, smallest eigenvalue, positive definite, scaled gradient)``, the step
    and the eigenvalues in the scaled theta (the fit's: the checks' units)."""
    w, V = eigh_finite(H / ss)
    mine = w[:, 0]
    wmax = np.maximum(1.0, np.maximum(-mine, w[:, -1]))     # (eigh's are ascending)
    gs = g / s
    # where H is not positive definite, |eigenvalues| give a descent direction
    wa = np.maximum(np.abs(w), 1e-6 * wmax[:, None])
    st = -(V @ ((gs[:, None, :] @ V)[:, 0] / wa)[:, :, None])[:, :, 0]
    return st, -0.5 * _sum(gs * st, axis=1), mine, mine > 1e-8 * wmax, gs


def _lockstep(r, lv, Y, Yo):
    """Results of the members that pass the checks in lockstep Newton (None for the others),
    and for the others the lowest point found (None: the fit's theta), as a start."""
    des = r.model.re_design
    batch = LevelsBatch(criterion(r), Yo)
    nb = Y.shape[1]
    theta0 = np.asarray(r.theta, dtype=float)
    s, ss, _ = _scales(r)                                   # the fit's scaling of theta
    new = np.arange(nb)                                     # members at a new point
    T, has = moment_starts(batch, des.blocks[0], theta0)
    f, gn, Hn, cn = batch.value_grad_hess(T, None, pieces=True)
    nfev = has + 1                                    # (the fit's theta evaluated: two)
    worse = None
    if _any(has):
        # a moment start whose criterion is not below the fit's theta's: from the fit's theta
        # (evaluated there in the first round, as a step of zero)
        f0 = batch.fixed_values(_theta0_pieces(r, batch, theta0))
        worse = has & ~(f < f0)
    if worse is None or not _any(worse):
        _, d, mine, pdef, _ = _newton(gn, Hn, s, ss)
        if _all(pdef & (d < TOL)):
            # the usual case (a balanced design: the moment estimate is the optimum): every
            # member ends at its start, as the first round below would end it
            return _finish(r, lv, Y, new, T, batch.estimates(None, None, cn), T, nfev, d, mine,
                           [None] * nb)
    posn = new                                        # the new points' rows in cn's pieces
    done = []                      # (members, thetas, estimates) of the members that end
    # 0 running, 1 converged (at T), 2 converged at T + step (below), -1 single refit
    status = np.zeros(nb, dtype=int)
    dec = np.full(nb, np.inf)
    mineig = np.full(nb, np.nan)
    step = np.zeros_like(T)
    slope = np.zeros(nb)                              # gradient . step (the Armijo condition)
    t = np.ones(nb)
    iters = np.zeros(nb, dtype=int)
    if worse is not None and worse.any():
        T[worse], f[worse] = theta0, f0[worse]
        keep = ~worse
        new, gn, Hn, posn = new[keep], gn[keep], Hn[keep], posn[keep]
    T0 = T.copy()
    # One batched evaluation per round for every running member: at a new point its Newton
    # step (the full step is tried next round), in a line search the shortened step.
    for _ in range(4 * MAX_ITERATIONS):
        if new.size:
            good = np.isfinite(Hn.sum(axis=(1, 2)))       # (an indefinite system: NaN)
            if not good.all():
                status[new[~good]] = -1
                new, gn, Hn, posn = new[good], gn[good], Hn[good], posn[good]
            st, d, mine, pdef, gs = _newton(gn, Hn, s, ss)
            dec[new], mineig[new] = d, mine
            # a point passing the checks ends the member: at its point below TOL, else after
            # one more full Newton step (quadratic convergence: from a decrement d below
            # CHECK_TOL the step lands at ~d^2), whose value the estimates compute
            cert = pdef & (d < CHECK_TOL)
            if cert.any():
                at = cert & (d < TOL)
                status[new[cert]] = np.where(at[cert], 1, 2)
                if at.any():      # ending here: the estimates from this point's evaluation
                    done.append((new[at], T[new[at]], batch.estimates(None, posn[at], cn)))
            # far from the optimum a full step overshoots: at most MAX_STEP in the scaled theta
            st *= np.minimum(1.0, MAX_STEP / np.maximum(np.abs(st).max(axis=1), 1e-300))[:, None]
            slope[new] = (gs * st).sum(axis=1)
            step[new], t[new] = st / s, 1.0
            it = iters[new] + 1
            iters[new] = it
            over = (it > MAX_ITERATIONS) & ~cert
            if over.any():
                status[new[over]] = -1
        run = np.flatnonzero(status == 0)
        if run.size == 0:
            break
        tr, fr = t[run], f[run]
        Tt = T[run] + tr[:, None] * step[run]
        ft, gt, Ht, cn = batch.value_grad_hess(Tt, run, pieces=True)
        nfev[run] += 1
        ok = ft <= fr + 1e-4 * tr * slope[run] + rounding_level(fr)
        if ok.all():                                  # (the usual round: every step taken)
            new, gn, Hn, posn = run, gt, Ht, np.arange(run.size)
            T[run], f[run] = Tt, ft
            continue
        posn = np.flatnonzero(ok)
        new, gn, Hn = run[ok], gt[ok], Ht[ok]
        T[new], f[new] = Tt[ok], ft[ok]
        rej = run[~ok]
        # the next trial at the minimum of the quadratic through f(0), f'(0) and f(t), kept
        # within [t / 10, t / 2] (a non-finite value: t / 4)
        tr, s0, dfr = tr[~ok], slope[rej], ft[~ok] - fr[~ok]
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            tq = -s0 * tr ** 2 / (2.0 * (dfr - s0 * tr))
        t[rej] = np.where(np.isfinite(tq), np.clip(tq, 0.1 * tr, 0.5 * tr), 0.25 * tr)
        status[rej[t[rej] < 1e-9]] = -1               # the line search failed
    status[status == 0] = -1
    out = [None] * nb
    moved = np.isfinite(f) & np.any(T != theta0, axis=1) & (status < 1)
    starts = [des.canonical_theta(T[b]) if moved[b] else None for b in range(nb)]
    # the ends one step on: that step's point where its value does not rise above the last
    two = np.flatnonzero(status == 2)
    if two.size:
        Te = T[two] + step[two]
        est = batch.estimates(Te, two)
        back = np.flatnonzero(est[3] > f[two] + rounding_level(f[two]))
        if back.size:
            Te[back] = T[two[back]]
            for e, eb in zip(est, batch.estimates(Te[back], two[back])):
                e[back] = eb
        done.append((two, Te, est))
    if not done:
        return out, starts
    if len(done) == 1:
        conv, Te, est = done[0]
    else:
        conv = np.concatenate([c[0] for c in done])
        Te = np.concatenate([c[1] for c in done])
        est = [np.concatenate([c[2][k] for c in done]) for k in range(5)]
    return _finish(r, lv, Y, conv, Te, est, T0, nfev, dec[conv], mineig[conv], starts)


def _finish(r, lv, Y, conv, Te, est, T0, nfev, dec, mineig, starts):
    """``(fits, starts)`` of :func:`_lockstep` from its members that end, ``conv``, at thetas
    ``Te`` with estimates ``est`` (:meth:`~mlmext.linalg.levels_batch.LevelsBatch.estimates`'),
    their Newton decrements and smallest eigenvalues there; ``T0`` and ``nfev`` of all
    members, ``starts`` (updated) those of the members refitted alone."""
    model, des = r.model, r.model.re_design
    nb = Y.shape[1]
    out = [None] * nb
    # the single fit's end: the mirror image with nonnegative diagonals; near a zero SD it
    # snaps and tests the bound, so those members go to single refits
    s, _, diag = _scales(r)
    Tc = _canonical(lv, Te, diag)
    near = _any((Tc * s)[:, diag] < NEAR_ZERO, axis=1) if diag is not None else None
    if near is not None and _any(near):
        for j in np.flatnonzero(near):    # (from there a single fit needs a third fewer steps)
            starts[conv[j]] = des.canonical_theta(Te[j])
        keep = np.flatnonzero(~near)
        est, conv, Tc, dec, mineig = [e[keep] for e in est], conv[keep], Tc[keep], dec[keep], \
            mineig[keep]
    beta, u, sigma, crit, cov = est
    tried = (f"Newton from the fit's theta or a moment estimate (the lower), {nb} response"
             f"{'s' if nb > 1 else ''} in lockstep (exact Hessian), second-order checks")
    # each member's numbers as read-only rows of the batch's read-only stacks (a view each,
    # no copies); its state and optimizer summary made when read (_member_optim)
    Tc, beta, u, cov, T0 = (_frozen(a) for a in (Tc, beta, u, cov, T0))
    args = [(T0[b], n, d, e, tried) for b, n, d, e in zip(conv.tolist(), nfev[conv].tolist(),
                                                          dec.tolist(), mineig.tolist())]
    for b, res in zip(conv.tolist(), model._lazy_results_many(
            Y[:, conv].T, (Tc, beta, u, sigma.tolist(), crit.tolist(), cov, bool(r.reml)),
            (_member_optim, args), getattr(r, "ddf", "satterthwaite"), _cache(r))):
        out[b] = res                                    # (their models made on first use)
    return out, starts


#: an OptSummary without fields, whose ``replaced`` makes one of the fields given (all)
_NO_FIELDS = object.__new__(OptSummary)


def _member_optim(theta, criterion, initial, nfev, decrement, min_eigenvalue, tried):
    """A lockstep member's :class:`~mlmext.optimize.OptSummary` (every field in its own
    form: read-only float arrays, tuples; no ``__post_init__``)."""
    return _NO_FIELDS.replaced(
        initial=initial, final=theta, fmin=criterion, feval=nfev, tried=((tried, True, nfev),),
        converged=True, optimizer=tried, message=f"Newton decrement {decrement:.3g}",
        extra_items=(("snapped", []), ("decrement", decrement),
                     ("min_eigenvalue", min_eigenvalue)))


def _scales(r):
    """The fit's scaling of theta ``s`` (its predictors' units, the checks' units),
    ``outer(s, s)`` and which entries of theta are standard deviations (bounded below;
    None: none), read-only: computed once per fit."""
    c = _cache(r)
    got = c.get("lockstep_scales")
    if got is None:
        des = r.model.re_design
        s, diag = des.theta_units(), np.isfinite(des.lower)
        got = c["lockstep_scales"] = (s, np.outer(s, s), diag if diag.any() else None)
        for a in got:
            if a is not None:
                a.setflags(write=False)
    return got


def _theta0_pieces(r, batch, theta0):
    """:meth:`~mlmext.linalg.levels_batch.LevelsBatch.fixed_theta` of the fit's theta, which
    every batch of its refits evaluates (computed once per fit, read-only)."""
    c = _cache(r)
    if "lockstep_theta0" not in c:
        c["lockstep_theta0"] = batch.fixed_theta(theta0)
    return c["lockstep_theta0"]


def _canonical(lv, T, diag=None):
    """``design.canonical_theta`` of each row of ``T`` (the one block ``lv.blk``): every
    template column whose diagonal is negative negated (the same model).  ``diag``: which
    entries of theta are the template's diagonals (:func:`_scales`'), where given."""
    if diag is not None and not _any(T[:, diag] < 0, axis=None):
        return T.copy()             # (the usual end: no column to negate, no map to make)
    blk = lv.blk
    dcol = design_piece(lv, "diagonal_of_column", lambda: _diagonal_of_column(blk))
    neg = T[:, dcol] < 0
    if not _any(neg, axis=None):
        return T.copy()
    sign = np.where(neg, -1.0, 1.0)
    Tc = T.copy()
    Tc[:, blk.t_idx] = T[:, blk.t_idx] * sign
    return Tc


def _diagonal_of_column(blk):
    """Each template entry's column's diagonal (its index in theta), read-only."""
    rows, cols, idx = (np.asarray(a) for a in (blk.t_rows, blk.t_cols, blk.t_idx))
    on = rows == cols
    diag_of = np.full(int(_max(cols)) + 1, -1)
    diag_of[cols[on]] = idx[on]
    dcol = diag_of[cols]
    if not _all(dcol >= 0):                 # (a template column without its diagonal)
        raise KeyError("a template column without a diagonal entry")
    dcol.setflags(write=False)
    return dcol


def _frozen(a):
    """``a`` (a float array this batch made, held by nothing else) made read-only in place."""
    if a.dtype != np.float64:
        a = np.array(a, dtype=float)
    a.setflags(write=False)
    return a
