"""Inference and model comparison for mixed models (being split into modules; see intervals.py)."""
from .intervals import *  # noqa: F401,F403
from .intervals import __all__, _ddf_frame, boot_ci, profile_zeta, satterthwaite_ftest  # noqa: F401
