"""The result of gee_select: :class:`GEESelection`, the comparison table and its summary."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from statsmodels.iolib.summary2 import Summary

__all__ = ["GEESelection"]


class GEESelection:
    """
    Working-correlation selection for a GEE by QIC; returned by :func:`gee_select`.

    Attributes
    ----------
    table : DataFrame
        One row per working correlation (index: its name) with ``QIC``,
        ``QICu``, ``CIC``, ``QuasiLik``, ``dQIC`` (QIC minus the lowest QIC of
        the unflagged rows), ``n_params`` (mean parameters, the p of QICu),
        ``n_corr_params`` (working-correlation parameters), ``working_corr``
        (the estimate in words), ``scale``, ``converged`` and ``flag`` (the
        problems of the fit, empty when there are none).
    best : str or None
        The unflagged structure with the lowest QIC.  If every structure is
        flagged, the one with the lowest QIC (with a warning).
    results : dict
        The fitted statsmodels ``GEEResults`` by name (None for a failed fit).
    qic : dict
        The output of :func:`qic` by name.
    nobs : int
        Rows used.
    n_groups : int
        Clusters.
    n_dropped : int
        Rows dropped for missing values.
    """

    def __init__(self, table, results, qics, info):
        self.table = table
        self.results = results
        self.qic = qics
        self._info = info
        self.nobs = info["nobs"]
        self.n_groups = info["n_groups"]
        self.n_dropped = info["n_dropped"]
        ok = table[(table["flag"] == "") & np.isfinite(table["QIC"])]
        if len(ok):
            self.best = str(ok["QIC"].idxmin())
        elif np.isfinite(table["QIC"]).any():
            self.best = str(table["QIC"].astype(float).idxmin())
            warnings.warn("gee_select: every working correlation is flagged; best is the lowest QIC "
                          "among flagged fits", UserWarning, stacklevel=3)
        else:
            self.best = None

    def summary(self):
        """
        A summary of the selection (statsmodels ``Summary``, text and HTML).

        Returns
        -------
        Summary
        """
        smry = Summary()
        smry.add_title("GEE working-correlation selection by QIC")
        info = self._info
        smry.add_dict({
            "Formula:": info["formula"], "Family:": info["family"],
            "Groups:": info["groups"], "Time:": info["time"] or "(position in cluster)",
            "Clusters:": str(self.n_groups), "Observations:": str(self.nobs),
            "Rows dropped (missing):": str(self.n_dropped), "Best (lowest QIC):": str(self.best),
        })
        t = self.table
        fmt = lambda col, spec: [("" if pd.isna(v) else format(v, spec)) for v in t[col]]  # noqa: E731
        tab = pd.DataFrame({"QIC": fmt("QIC", ".2f"), "QICu": fmt("QICu", ".2f"), "CIC": fmt("CIC", ".3f"),
                            "dQIC": fmt("dQIC", ".2f"), "p": fmt("n_params", "d"),
                            "n_corr": fmt("n_corr_params", "d"), "working correlation": t["working_corr"],
                            "": ["flagged" if f else "" for f in t["flag"]]}, index=t.index)
        smry.add_df(tab, align="r")
        flags = t["flag"]
        notes = [f"{name}: {f}" for name, f in flags.items() if f]
        if notes:
            smry.add_text("Flagged (not ranked as best):")
            for n in notes:
                smry.add_text("  " + n)
        smry.add_text("QIC = -2 Q + 2 CIC, CIC = trace(Omega_I V_R) with Omega_I from an independence "
                      "fit (Pan 2001; geepack's conventions: Q not divided by the scale).")
        return smry

    def __repr__(self):
        return self.summary().as_text()

    def _repr_html_(self):
        return self.summary().as_html()
