"""Formula front door: lme4-style formulas for mixed models."""
