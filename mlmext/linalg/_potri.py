"""The inverse of a matrix from its Cholesky factor, with a recursive triangular inversion.

LAPACK's ``dpotri`` is ``dtrtri`` (``U^-1``) then ``dlauum`` (``U^-1 U^-T``).  OpenBLAS's
``dtrtri`` inverts its diagonal blocks of up to ~384 rows with the unblocked level-2 kernel, so
at the orders of a crossed LMM's dense remainder (1,000-1,200 rows) it takes twice ``dlauum``'s
time for the same number of flops (measured: 11.1 ms against 5.5 ms at 1,004 rows, one
thread).  Inverting by halves,

    [[A, B], [0, C]]^-1 = [[A^-1, -A^-1 B C^-1], [0, C^-1]],

puts all but the leaves' work in two ``dtrmm`` calls per level (6.5 ms at 1,004 rows, 9.5 ms
against 16.6 at 1,131).  The halves are sub-blocks of one Fortran array, passed to BLAS with
their leading dimension through SciPy's Cython BLAS/LAPACK function pointers (scipy's f2py
wrappers would copy every non-contiguous block).  Without those pointers, or for small orders,
``dpotri`` itself is called.
"""
from __future__ import annotations

import ctypes
import re

import numpy as np
from scipy.linalg import lapack

__all__ = ["potri_upper"]

#: orders up to this go to dpotri whole; also the recursion's leaves (dtrtri's own blocking
#: is not the bottleneck there)
LEAF = 128

_fns = {}


def _pointers():
    """``(dtrtri, dtrmm)`` as ctypes functions from SciPy's Cython LAPACK/BLAS, or None."""
    if "ok" not in _fns:
        _fns["ok"] = None
        try:
            import scipy.linalg.cython_blas as cb
            import scipy.linalg.cython_lapack as cl
            get = ctypes.pythonapi.PyCapsule_GetPointer
            get.restype, get.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
            name = ctypes.pythonapi.PyCapsule_GetName
            name.restype, name.argtypes = ctypes.c_char_p, [ctypes.py_object]

            def fn(mod, key, sig, args):
                cap = mod.__pyx_capi__[key]
                # the C signature Cython records (its double typedef spelled "d"): the
                # prototype below must be the one called (32-bit ints, doubles)
                got = re.sub(r"__pyx_t_\w+_d\b", "d", name(cap).decode())
                if got != sig:
                    raise TypeError(f"{key}: unexpected signature {got}")
                return ctypes.CFUNCTYPE(None, *args)(get(cap, name(cap)))

            c, i, d, p = (ctypes.c_char_p, ctypes.POINTER(ctypes.c_int),
                          ctypes.POINTER(ctypes.c_double), ctypes.c_void_p)
            trtri = fn(cl, "dtrtri", "void (char *, char *, int *, d *, int *, int *)",
                       [c, c, i, p, i, i])
            trmm = fn(cb, "dtrmm", "void (char *, char *, char *, char *, int *, int *, d *, "
                      "d *, int *, d *, int *)", [c, c, c, c, i, i, d, p, i, p, i])
            _fns["ok"] = (trtri, trmm)
        except Exception:  # noqa: BLE001 - an optimization only: dpotri does the same
            pass
    return _fns["ok"]


def _int(v):
    return ctypes.byref(ctypes.c_int(v))


def _trtri_upper(fns, base, ld, off, n):
    """Invert in place the upper triangle of the order-``n`` diagonal block at element
    ``off`` of a Fortran array (address ``base``, leading dimension ``ld``); LAPACK's info."""
    trtri, trmm = fns
    if n <= LEAF:
        info = ctypes.c_int(0)
        trtri(b"U", b"N", _int(n), base + 8 * off, _int(ld), ctypes.byref(info))
        return info.value
    h = n // 2
    a, b, c = off, off + h * ld, off + h * ld + h
    info = _trtri_upper(fns, base, ld, a, h)
    if info:
        return info
    info = _trtri_upper(fns, base, ld, c, n - h)
    if info:
        return info + h
    # B <- -A^-1 B C^-1, with A and C already inverted
    minus, one = ctypes.c_double(-1.0), ctypes.c_double(1.0)
    trmm(b"L", b"U", b"N", b"N", _int(h), _int(n - h), ctypes.byref(minus), base + 8 * a,
         _int(ld), base + 8 * b, _int(ld))
    trmm(b"R", b"U", b"N", b"N", _int(h), _int(n - h), ctypes.byref(one), base + 8 * c,
         _int(ld), base + 8 * b, _int(ld))
    return 0


def potri_upper(U):
    """``(U' U)^-1`` in place of the upper-triangular ``U`` (Fortran-ordered float64, square),
    its upper triangle (the strict lower one is left as it was): ``dpotri(U, lower=0)``.

    A C-ordered lower factor ``L`` (``L L'``) is passed as ``L.T``.  Returns LAPACK's info
    (0, or ``k > 0``: the k-th diagonal entry of ``U`` is 0).
    """
    n = U.shape[0]
    if not (U.flags.f_contiguous and U.dtype == np.float64 and U.shape == (n, n)):
        # (dpotri would work on a copy: the result would be lost)
        raise ValueError("potri_upper works in place on a square Fortran-ordered float64 array")
    fns = _pointers() if n > LEAF else None
    if fns is None:
        _, info = lapack.dpotri(U, lower=0, overwrite_c=1)
        return info
    info = _trtri_upper(fns, U.ctypes.data, n, 0, n)
    if info:
        return info
    _, info = lapack.dlauum(U, lower=0, overwrite_c=1)
    return info
