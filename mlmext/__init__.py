"""mlmext: multilevel (mixed-effects) models for statsmodels."""
__version__ = "0.1.0"
from .inference import anova  # noqa: E402,F401
