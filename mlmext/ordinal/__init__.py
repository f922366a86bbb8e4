"""Cumulative link mixed models for ordinal responses (R's ``ordinal::clmm``)."""
from .model import *  # noqa: F401,F403
from .model import __all__  # noqa: F401
# private pieces the tests check directly
from .model import _ClmmObjective, _interval_logprob, _log_interval_derivatives  # noqa: F401
