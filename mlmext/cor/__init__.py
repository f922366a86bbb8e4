"""Residual correlation within groups for linear mixed models (nlme's ``correlation=``).

>>> import mlmext
>>> from mlmext.formula import api as mf
>>> res = mf.lmer("Reaction ~ Days + (1 | Subject)", df,
...               correlation=mlmext.cor.AR1(time="Days", group="Subject")).fit()

* :class:`AR1` -- ``corr = Phi ** |t_i - t_j|`` on integer times (nlme's ``corAR1``);
* :class:`CAR1` -- the same on continuous times, ``0 < Phi < 1`` (``corCAR1``);
* :class:`CompSymm` -- exchangeable within a group (``corCompSymm``).
"""
from .model import CorrelatedDeviance, CorrelatedLinearMixedModel
from .results import CorrelatedLMMResults
from .structs import AR1, CAR1, CompSymm, CorStruct

__all__ = ["AR1", "CAR1", "CompSymm", "CorStruct", "CorrelatedLinearMixedModel",
           "CorrelatedDeviance", "CorrelatedLMMResults"]
