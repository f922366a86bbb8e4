"""mlmext: multilevel (mixed-effects) models for statsmodels."""
from ._warnings import import_statsmodels_keeping_user_filters

import_statsmodels_keeping_user_filters()        # before anything imports statsmodels

from . import cor  # noqa: E402  (mlmext.cor.AR1, CAR1, CompSymm for lmer(correlation=))
from .identifiability import UnidentifiedSlopeWarning  # noqa: E402
from .inference import anova, drop1, ranova  # noqa: E402
from .model_selection import cross_validate  # noqa: E402
from .power import extend, make_lmer, power_curve  # noqa: E402

__version__ = "0.1.0"
__all__ = ["cor", "anova", "drop1", "ranova", "cross_validate", "make_lmer", "power_curve", "extend", "UnidentifiedSlopeWarning", "__version__"]
