"""mlmext: multilevel (mixed-effects) models for statsmodels."""
from .design import UnidentifiedSlopeWarning
from .inference import anova

__version__ = "0.1.0"
__all__ = ["anova", "UnidentifiedSlopeWarning", "__version__"]
